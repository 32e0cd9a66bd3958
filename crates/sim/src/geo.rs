//! Where regions are, and how long light in fibre takes between them.
//!
//! Regions are placed at 40 real cities (airport codes, the way fleets
//! name regions; coordinates are the airports', to a hundredth of a
//! degree). The one-way delay between two regions is the great-circle
//! distance times [`ROUTE_FACTOR`] at [`FIBRE_KM_PER_MS`], plus
//! [`HOP_BASE_MS`] for the routers and NICs at both ends:
//! - light in silica fibre travels at c / 1.47 ≈ 204 km/ms; 200 km/ms;
//! - cables do not follow great circles: published fibre-route studies
//!   find paths 1.3–2× the geodesic, and measured inter-city RTTs on
//!   the public internet sit near 1.5×; 1.5.
//!
//! Amsterdam–Chicago (6,630 km) comes out at 50 ms one way, 100 ms RTT:
//! the figure public latency tables give for that pair.

/// Fibre speed, km per millisecond.
pub const FIBRE_KM_PER_MS: f64 = 200.0;
/// Route length over great-circle distance.
pub const ROUTE_FACTOR: f64 = 1.5;
/// Fixed one-way cost of the hops at each end, ms.
pub const HOP_BASE_MS: f64 = 0.5;
const EARTH_RADIUS_KM: f64 = 6_371.0;

/// (name, latitude, longitude), degrees.
pub const CITIES: [(&str, f64, f64); 40] = [
    ("ams", 52.31, 4.76),
    ("ord", 41.98, -87.90),
    ("nrt", 35.77, 140.39),
    ("syd", -33.95, 151.18),
    ("gru", -23.43, -46.47),
    ("sin", 1.36, 103.99),
    ("iad", 38.95, -77.46),
    ("lhr", 51.47, -0.45),
    ("fra", 50.03, 8.56),
    ("sjc", 37.36, -121.93),
    ("bom", 19.09, 72.87),
    ("jnb", -26.14, 28.25),
    ("cdg", 49.01, 2.55),
    ("lax", 33.94, -118.41),
    ("sea", 47.45, -122.31),
    ("dfw", 32.90, -97.04),
    ("atl", 33.64, -84.43),
    ("mia", 25.79, -80.29),
    ("ewr", 40.69, -74.17),
    ("bos", 42.36, -71.01),
    ("yyz", 43.68, -79.63),
    ("yul", 45.47, -73.74),
    ("den", 39.86, -104.67),
    ("phx", 33.43, -112.01),
    ("qro", 20.62, -100.19),
    ("gdl", 20.52, -103.31),
    ("bog", 4.70, -74.15),
    ("scl", -33.39, -70.79),
    ("eze", -34.82, -58.54),
    ("gig", -22.81, -43.25),
    ("mad", 40.47, -3.56),
    ("dub", 53.42, -6.27),
    ("arn", 59.65, 17.92),
    ("hel", 60.32, 24.96),
    ("waw", 52.17, 20.97),
    ("otp", 44.57, 26.08),
    ("hkg", 22.31, 113.91),
    ("icn", 37.46, 126.44),
    ("del", 28.56, 77.10),
    ("mel", -37.67, 144.84),
];

/// The name of region `r`: its city's code; beyond 40 regions cities are
/// reused with a number (`ams2`), at the same place.
pub fn region_name(r: usize) -> String {
    let (name, _, _) = CITIES[r % CITIES.len()];
    match r / CITIES.len() {
        0 => name.to_string(),
        n => format!("{name}{}", n + 1),
    }
}

/// Great-circle distance between regions `a` and `b`, km (haversine).
pub fn distance_km(a: usize, b: usize) -> f64 {
    let (_, lat1, lon1) = CITIES[a % CITIES.len()];
    let (_, lat2, lon2) = CITIES[b % CITIES.len()];
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// One-way delay between regions `a` and `b`, ms.
pub fn one_way_ms(a: usize, b: usize) -> f64 {
    HOP_BASE_MS + distance_km(a, b) * ROUTE_FACTOR / FIBRE_KM_PER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amsterdam_chicago_is_about_fifty_ms_one_way() {
        let d = distance_km(0, 1);
        assert!((6_500.0..6_800.0).contains(&d), "{d} km");
        let ms = one_way_ms(0, 1);
        assert!((48.0..53.0).contains(&ms), "{ms} ms");
    }

    #[test]
    fn delay_is_symmetric_and_zero_distance_costs_the_hops() {
        assert_eq!(one_way_ms(3, 7), one_way_ms(7, 3));
        assert_eq!(one_way_ms(5, 5), HOP_BASE_MS);
        assert_eq!(one_way_ms(0, 40), HOP_BASE_MS);
        assert_eq!(region_name(41), "ord2");
    }
}
