//! `GET /v1/health`, `GET /v1/members`, `GET /v1/regions`: answers from
//! the [`ClusterView`](crate::ClusterView).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use crate::body::{clip, unique_query_pairs};
use crate::cluster::{HealthReport, RegionInfo};
use crate::errors::ApiError;
use crate::state::ApiState;

/// Health thresholds from the query string; `None` is not checked.
#[derive(Debug, Default, PartialEq)]
struct Thresholds {
    gaps: Option<u64>,
    p99_lag: Option<f64>,
    max_queue: Option<u64>,
    /// `require_leader=1`: unhealthy while the region has no live global
    /// member (no leader: rollups are not published, global changes are
    /// not relayed).
    require_leader: bool,
    /// `require_rollups=1`: unhealthy while the region leader's last
    /// rollup evaluation failed (as its row of `global.patina_regions`
    /// says, or this node's own publisher when it leads).
    require_rollups: bool,
    failure_status: Option<StatusCode>,
}

impl Thresholds {
    fn parse(raw: Option<&str>) -> Result<Thresholds, ApiError> {
        let mut t = Thresholds::default();
        // A gate must not pass because a threshold was misspelled or given
        // twice with the looser one last.
        for (key, value) in unique_query_pairs(raw)? {
            match key.as_str() {
                "gaps" => t.gaps = Some(count(&key, &value)?),
                "max_queue" => t.max_queue = Some(count(&key, &value)?),
                "require_leader" => t.require_leader = flag(&key, &value)?,
                "require_rollups" => t.require_rollups = flag(&key, &value)?,
                "p99_lag" => {
                    let secs = value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0);
                    t.p99_lag = Some(secs.ok_or_else(|| {
                        ApiError::QueryString(format!(
                            "p99_lag={:?} is not a number of seconds ≥ 0: e.g. p99_lag=0.5",
                            clip(&value)
                        ))
                    })?);
                }
                "failure_status" => {
                    let code = value
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (200..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok());
                    t.failure_status = Some(code.ok_or_else(|| {
                        ApiError::QueryString(format!(
                            "failure_status={:?} is not an HTTP status between 200 and 599: e.g. failure_status=503",
                            clip(&value)
                        ))
                    })?);
                }
                _ => {
                    return Err(ApiError::QueryString(format!(
                        "unknown threshold {}: known are gaps, p99_lag, max_queue, \
                         require_leader, require_rollups, failure_status",
                        clip(&key)
                    )))
                }
            }
        }
        Ok(t)
    }

    /// The thresholds `report` exceeds, as `name value > threshold`.
    /// `p99_lag` is the live lag: catch-up lag has a field of its own and
    /// no threshold (catching up already fails the check).
    fn exceeded(&self, report: &HealthReport) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(max) = self.gaps.filter(|max| report.gaps > *max) {
            out.push(format!("gaps {} > {max}", report.gaps));
        }
        if let Some(max) = self.p99_lag.filter(|max| report.p99_lag > *max) {
            out.push(format!("p99_lag {} > {max}", report.p99_lag));
        }
        if let Some(max) = self.max_queue.filter(|max| report.queue_size > *max) {
            out.push(format!("queue_size {} > {max}", report.queue_size));
        }
        if self.require_leader && report.leader.is_none() {
            out.push(format!(
                "region {} has no leader (no live global member)",
                report.region
            ));
        }
        out
    }
}

fn flag(key: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(ApiError::QueryString(format!(
            "{key}={:?} is not 1 (true) or 0 (false): e.g. {key}=1",
            clip(value)
        ))),
    }
}

fn count(key: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::QueryString(format!(
            "{key}={:?} is not a whole number ≥ 0: e.g. {key}=10",
            clip(value)
        ))
    })
}

/// The health answer: the report, and why the status is not 200 (null
/// when it is).
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(flatten)]
    report: &'a HealthReport,
    /// Whether `regional.db` missed deletes whose tombstones peers
    /// collected: it refuses writes until re-seeded.
    stale: bool,
    /// Whether the node is back after an absence longer than half the
    /// tombstone retention and has not caught up with a peer yet: writes
    /// wait until it has.
    returning: bool,
    reason: Option<String>,
}

pub(crate) async fn health(
    State(state): State<ApiState>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let thresholds = Thresholds::parse(raw_query.as_deref())?;
    let report = state.cluster.health();
    let collection = state.node.collection(patina_node::DbKind::Regional);
    // A stale node waits for re-seeding, not for a return check or a
    // catch-up (it pulls nothing): its reason says only that.
    let (stale, returning) = match collection.stale {
        Some(stale) => (Some(stale), None),
        None => (None, collection.returning),
    };
    let mut reasons: Vec<String> = stale.iter().chain(&returning).cloned().collect();
    if stale.is_none() {
        reasons.extend(report.catch_up.reason.iter().cloned());
        if report.catching_up && reasons.is_empty() {
            reasons.push("catching up".to_owned());
        }
    }
    reasons.extend(thresholds.exceeded(&report));
    if thresholds.require_rollups {
        if let Some(error) = own_rollup_error(&state).await? {
            reasons.push(format!(
                "region {}'s rollups are failing: {error}",
                report.region
            ));
        }
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        tracing::debug!(?reasons, "health check failed");
        thresholds
            .failure_status
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    };
    let answer = Answer {
        report: &report,
        stale: stale.is_some(),
        returning: returning.is_some(),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    };
    Ok((status, Json(json!({ "response": answer }))).into_response())
}

pub(crate) async fn members(State(state): State<ApiState>) -> Response {
    Json(state.cluster.members()).into_response()
}

/// Why this region's leader last failed to evaluate its rollups, if it
/// did: this node's own publisher's word when it leads, else the
/// leader's row of `global.patina_regions`.
async fn own_rollup_error(state: &ApiState) -> Result<Option<String>, ApiError> {
    let mine = state.node.region();
    let Some(own) = state
        .cluster
        .regions()
        .into_iter()
        .find(|r| r.region == mine)
    else {
        return Ok(None);
    };
    if own.led_here {
        return Ok(own.rollup_error);
    }
    let records = state
        .node
        .region_records()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(records
        .into_iter()
        .find(|r| r.region == mine)
        .and_then(|r| r.rollup_error))
}

fn entry<'a>(regions: &'a mut Vec<RegionInfo>, region: &str) -> &'a mut RegionInfo {
    let at = match regions.iter().position(|r| r.region == region) {
        Some(at) => at,
        None => {
            regions.push(RegionInfo::empty(region));
            regions.len() - 1
        }
    };
    &mut regions[at]
}

/// Regions as memberships show them, plus every region whose rows a
/// rollup target holds (what a node outside the global cluster learns of
/// other regions through `global.db`), with those row counts.
pub(crate) async fn regions(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut regions = state.cluster.regions();
    for name in state.cluster.rollup_names() {
        let sql = format!(
            "SELECT region, count(*) FROM global.\"{}\" GROUP BY region",
            name.replace('"', "\"\"")
        );
        let stream = state
            .node
            .query(patina_node::Statement::new(sql), state.config.query_timeout)
            .await
            .map_err(|e| ApiError::Internal(format!("counting rollup {name:?}: {e}")))?;
        let mut rows = stream.rows;
        while let Some(event) = rows.recv().await {
            let patina_node::RowEvent::Row(row) = event else {
                continue;
            };
            let (Some(patina_node::Value::Text(region)), Some(patina_node::Value::Integer(n))) =
                (row.first(), row.get(1))
            else {
                continue;
            };
            entry(&mut regions, region)
                .rollups
                .insert(name.clone(), (*n).max(0) as u64);
        }
    }
    // What each region's leader says of it, through global.db.
    let records = state
        .node
        .region_records()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let first_hand = state.cluster.regions_first_hand();
    let mine = state.node.region();
    for record in &records {
        let seen = record.region == mine || first_hand;
        entry(&mut regions, &record.region).complete_from(record, seen);
    }
    regions.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(Json(regions).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gaps: u64, p99_lag: f64, queue_size: u64) -> HealthReport {
        HealthReport {
            gaps,
            members: 1,
            p99_lag,
            queue_size,
            region: "ams".into(),
            global_member: false,
            leader: None,
            global_lag: None,
            global_p99_lag: None,
            catching_up: false,
            catch_up: crate::cluster::CatchUpReport::alone(),
            catchup_p99_lag: 0.0,
            parked_versions: 0,
            refused_versions: 0,
            dropped_changes: 0,
        }
    }

    #[test]
    fn thresholds_are_exceeded_strictly() {
        let t = Thresholds::parse(Some("gaps=2&p99_lag=0.5&max_queue=10")).unwrap();
        assert!(t.exceeded(&report(2, 0.5, 10)).is_empty());
        assert_eq!(t.exceeded(&report(3, 0.5, 10)).len(), 1);
        assert_eq!(t.exceeded(&report(3, 0.6, 11)).len(), 3);
        assert!(Thresholds::parse(None)
            .unwrap()
            .exceeded(&report(9, 9.0, 9))
            .is_empty());
    }

    #[test]
    fn a_region_without_a_leader_fails_when_one_is_required() {
        let t = Thresholds::parse(Some("require_leader=1")).unwrap();
        let leaderless = report(0, 0.0, 0);
        assert_eq!(leaderless.leader, None);
        let why = t.exceeded(&leaderless);
        assert_eq!(why, ["region ams has no leader (no live global member)"]);
        let led = HealthReport {
            leader: Some(patina_node::SiteId([1; 16])),
            ..report(0, 0.0, 0)
        };
        assert!(t.exceeded(&led).is_empty());
        assert!(Thresholds::parse(Some("require_leader=0"))
            .unwrap()
            .exceeded(&leaderless)
            .is_empty());
    }

    #[test]
    fn bad_thresholds() {
        for bad in [
            "gaps=-1",
            "gaps=x",
            "p99_lag=-0.1",
            "p99_lag=NaN",
            "max_queue=1.5",
            "failure_status=99",
            "failure_status=600",
            "failure_status=abc",
            "require_leader=yes",
            "require_rollups=2",
            "require_rollups=1&require_rollups=0",
            "REQUIRE_ROLLUPS=1",
            "require_rolups=1",
        ] {
            assert!(Thresholds::parse(Some(bad)).is_err(), "{bad}");
        }
        let t = Thresholds::parse(Some("failure_status=429")).unwrap();
        assert_eq!(t.failure_status, Some(StatusCode::TOO_MANY_REQUESTS));
    }
}
