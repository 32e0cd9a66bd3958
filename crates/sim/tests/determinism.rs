//! Same arguments, same run: the event log and every figure of the
//! report but wall time, speed and memory.

use patina_sim::{simulate, SimConfig};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        nodes: 60,
        regions: 3,
        global_per_region: 2,
        seconds: 15,
        loss: 0.02,
        seed,
        faults: true,
        ..SimConfig::default()
    }
}

#[test]
fn one_seed_twice_gives_the_same_log_and_report() {
    let (a, _) = simulate(config(11)).expect("valid");
    let (b, _) = simulate(config(11)).expect("valid");
    assert_eq!(a.event_log_hash, b.event_log_hash);
    assert_eq!(a.deterministic_json(), b.deterministic_json());
    assert!(a.events > 10_000, "{} events", a.events);
}

#[test]
fn another_seed_gives_another_run() {
    let (a, _) = simulate(config(11)).expect("valid");
    let (b, _) = simulate(config(12)).expect("valid");
    assert_ne!(a.event_log_hash, b.event_log_hash);
}
