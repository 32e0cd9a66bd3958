//! What an edge proxy needs to route requests for one app, kept current
//! from the node on its own host: the regions that run the app (the global
//! `app_regions` rollup, the same on every node of every region) and the
//! app's machines in this region (the regional `machines` table, which no
//! other region ever holds). Both are subscriptions, so the view changes as
//! soon as the node merges a change, with no polling.
//!
//! Also compiled into tests/devcluster_binary.rs, which runs it against a
//! `patina devcluster`.

use std::collections::BTreeMap;

use patina_client::{ChangeKind, Client, ClientError, Statement, SubEvent};
use serde_json::Value as Json;

const REGIONS_SQL: &str = "SELECT app, region, machines, started FROM app_regions WHERE app = ?";
const MACHINES_SQL: &str = "SELECT id, state FROM machines WHERE app = ?";

/// Follows `app`'s routing on the node behind `client`, handing `out` one
/// line per change of either view (the first after each snapshot). Returns
/// only on an error: a subscription that cannot be resumed, say.
pub async fn follow(
    client: &Client,
    app: &str,
    out: &(dyn Fn(String) + Sync),
) -> Result<(), ClientError> {
    let regions = follow_one(client, REGIONS_SQL, app, out, |rows| {
        regions_line(app, rows)
    });
    let machines = follow_one(client, MACHINES_SQL, app, out, |rows| {
        machines_line(app, rows)
    });
    tokio::try_join!(regions, machines)?;
    Ok(())
}

/// One subscription, its rows by row id, and the line they make.
async fn follow_one(
    client: &Client,
    sql: &str,
    app: &str,
    out: &(dyn Fn(String) + Sync),
    line: impl Fn(&BTreeMap<u64, Vec<Json>>) -> String,
) -> Result<(), ClientError> {
    let statement = Statement::Positional(sql.to_owned(), vec![Json::from(app)]);
    let mut sub = client.subscribe(&statement).await?;
    let mut rows = BTreeMap::new();
    // None until the snapshot is complete: a half-read snapshot is no
    // routing state.
    let mut shown: Option<String> = None;
    while let Some(event) = sub.next().await? {
        match event {
            SubEvent::Columns(_) => {}
            SubEvent::Row { row_id, cells } => {
                rows.insert(row_id, cells);
            }
            SubEvent::EndOfQuery { .. } => {
                let now = line(&rows);
                out(now.clone());
                shown = Some(now);
            }
            SubEvent::Change {
                kind,
                row_id,
                cells,
                ..
            } => {
                match kind {
                    ChangeKind::Insert | ChangeKind::Update => rows.insert(row_id, cells),
                    ChangeKind::Delete => rows.remove(&row_id),
                };
                // One transaction can bring several events; print only
                // what actually changes the routing.
                let now = line(&rows);
                if shown.as_ref().is_some_and(|s| *s != now) {
                    out(now.clone());
                    shown = Some(now);
                }
            }
        }
    }
    Err(ClientError::Protocol(format!(
        "the subscription to {sql:?} ended"
    )))
}

fn text(cell: Option<&Json>) -> String {
    match cell {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Null) | None => "?".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `app web: regions now ams(2 started), ord(1 started)`, by region name.
pub fn regions_line(app: &str, rows: &BTreeMap<u64, Vec<Json>>) -> String {
    let mut regions: Vec<(String, String)> = rows
        .values()
        .map(|cells| (text(cells.get(1)), text(cells.get(3))))
        .collect();
    regions.sort();
    let list: Vec<String> = regions
        .iter()
        .map(|(region, started)| format!("{region}({started} started)"))
        .collect();
    format!("app {app}: regions now {}", or_none(list))
}

/// `local machines of web: m1 started, m2 stopped`, by machine id.
pub fn machines_line(app: &str, rows: &BTreeMap<u64, Vec<Json>>) -> String {
    let mut machines: Vec<(String, String)> = rows
        .values()
        .map(|cells| (text(cells.first()), text(cells.get(1))))
        .collect();
    machines.sort();
    let list: Vec<String> = machines
        .iter()
        .map(|(id, state)| format!("{id} {state}"))
        .collect();
    format!("local machines of {app}: {}", or_none(list))
}

fn or_none(list: Vec<String>) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}
