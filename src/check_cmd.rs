//! `patina check`: compares a node's consistency digest (`GET /v1/digest`)
//! with every member of its region — both databases — and, on a global
//! member, with the global cluster's members for `global.db`; prints the
//! buckets that differ and, in them, the keys and what each node holds.
//!
//! Members gossip their gossip address, not their API address (which is
//! often 127.0.0.1 on each host), so the API of every other member is given
//! with `--peer`; each answer names its node in the `patina-actor-id`
//! header, which ties it to a member. A member with no peer answering for
//! it fails the check: an unchecked member is not a member that agrees.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use patina_client::{Client, Statement};
use serde_json::Value as Json;

use crate::cli::CheckArgs;

/// Digests taken while writes flow may differ by what is in flight; a
/// difference is reported only if it is still there this long after.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Differing buckets whose keys are fetched and printed, per table.
const BUCKETS_LISTED_MAX: usize = 8;
/// Differing keys printed per bucket.
const KEYS_PRINTED_MAX: usize = 20;

const DATABASES: [&str; 2] = ["regional", "global"];

/// One node taking part in the check.
struct Peer {
    /// Its API address, as given.
    addr: String,
    actor: String,
    client: Client,
    /// A member of the checked node's region holds both databases; a
    /// member of the global cluster from another region only `global`.
    regional: bool,
    digest: Json,
}

impl Peer {
    fn name(&self) -> String {
        format!("{} ({})", self.addr, short(&self.actor))
    }
}

fn short(actor: &str) -> &str {
    actor.get(..8).unwrap_or(actor)
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.attempts >= 1,
        "--attempts {} is not at least 1",
        args.attempts
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout > 0.0,
        "--timeout {} is not a number of seconds > 0",
        args.timeout
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    let client = |addr: &str| -> anyhow::Result<Client> {
        Ok(Client::new(addr)?
            .with_token(args.api.token.clone())
            .with_timeout(timeout)?)
    };
    let home = client(&args.api.api)?;
    let peer_clients = args
        .peers
        .iter()
        .map(|addr| Ok((addr.clone(), client(addr)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    runtime.block_on(async {
        let (actor, digest) = home
            .digest("")
            .await
            .with_context(|| format!("asking {} for its digest", args.api.api))?;
        let members = home
            .members()
            .await
            .with_context(|| format!("asking {} for its members", args.api.api))?;
        let mut nodes = vec![Peer {
            addr: args.api.api.clone(),
            actor,
            client: home,
            regional: true,
            digest,
        }];
        let mut problems = Vec::new();
        let expected = Expected::from_members(&members, &nodes[0].actor)?;
        for (addr, client) in peer_clients {
            match client.digest("").await {
                Ok((actor, digest)) => match expected.scope_of(&actor) {
                    _ if nodes.iter().any(|n| n.actor == actor) => problems.push(format!(
                        "peer {addr} answers as {actor}, a node already checked (given twice?)"
                    )),
                    Some(regional) => nodes.push(Peer {
                        addr,
                        actor,
                        client,
                        regional,
                        digest,
                    }),
                    None => problems.push(format!(
                        "peer {addr} answers as {actor}, which is not a member of {}'s clusters: not compared",
                        args.api.api
                    )),
                },
                Err(e) => problems.push(format!("peer {addr} cannot be checked: {e}")),
            }
        }
        let mut down = Vec::new();
        for (member, is_down) in expected.unchecked(&nodes) {
            if is_down {
                // Stopped, left or retired: nothing to compare now.
                down.push(member.to_owned());
            } else {
                problems.push(format!(
                    "member {member} was not checked: give its API address with --peer"
                ));
            }
        }
        same_format(&nodes)?;

        let mut diffs = compare(&nodes);
        for _ in 1..args.attempts {
            if diffs.is_empty() {
                break;
            }
            tokio::time::sleep(RECHECK_INTERVAL).await;
            for node in &mut nodes {
                node.digest = node
                    .client
                    .digest("")
                    .await
                    .with_context(|| format!("asking {} for its digest again", node.addr))?
                    .1;
            }
            // A node upgraded meanwhile digests in another format.
            same_format(&nodes)?;
            diffs = compare(&nodes);
        }

        let names: Vec<String> = nodes.iter().map(Peer::name).collect();
        println!("compared {} node(s): {}", nodes.len(), names.join(", "));
        for member in &down {
            println!("not compared, down: {member}");
        }
        for diff in &diffs {
            print_diff(diff, &nodes).await;
        }
        if diffs.is_empty() && problems.is_empty() {
            println!("{}", agreement(&nodes));
            if !down.is_empty() {
                println!(
                    "{} down member(s) not compared (a crashed node is health's concern; a \
                     re-seeded node's old actor stays down for good)",
                    down.len()
                );
            }
            return Ok(());
        }
        for p in &problems {
            println!("not checked: {p}");
        }
        let mut why = Vec::new();
        // A table some nodes lack, or whose columns differ between nodes
        // (a column dropped or added on some only), is a schema
        // difference, not lost rows: every row hashes differently then.
        let mut schema = Vec::new();
        let mut rows_differ = Vec::new();
        for diff in diffs {
            if !diff.missing.is_empty() || columns_differ(&diff, &nodes).await {
                schema.push(diff);
            } else {
                rows_differ.push(diff);
            }
        }
        let diffs = rows_differ;
        if !schema.is_empty() {
            let tables: Vec<String> = schema
                .iter()
                .map(|d| {
                    let lacking: Vec<String> = d.missing.iter().map(|&i| nodes[i].name()).collect();
                    if lacking.is_empty() {
                        format!("{}.{} (its columns differ)", d.db, d.table)
                    } else {
                        format!("{}.{} (not on {})", d.db, d.table, lacking.join(", "))
                    }
                })
                .collect();
            why.push(format!(
                "the nodes' schemas differ: {}. A schema change is not applied everywhere yet \
                 (or a destructive one was applied on some nodes only): give every node the same \
                 schema files, `patina reload` each (with --allow-destructive where a drop is \
                 meant), then check again",
                tables.join(", ")
            ));
        }
        if !diffs.is_empty() {
            let tables: Vec<String> = diffs.iter().map(|d| format!("{}.{}", d.db, d.table)).collect();
            why.push(format!(
                "the nodes hold different rows in {} ({}), and replication will not repair it: \
                 every node counts those versions as applied. {}Re-seed each node whose rows are \
                 wrong from a backup of a healthy one: `patina backup --api HEALTHY_ADDR --to DIR`, \
                 then stop the wrong node's agent, `patina restore --from DIR --data-dir D` (D: a \
                 new, empty directory), point its node.data_dir at D and start it again \
                 (docs/operations.md)",
                plural(tables.len(), "table"),
                tables.join(", "),
                minority(&diffs, &nodes)
                    .map(|m| format!("The majority holds other rows than {m}. "))
                    .unwrap_or_default()
            ));
        }
        if !problems.is_empty() {
            why.push(format!(
                "{} could not be compared (listed above)",
                plural(problems.len(), "node")
            ));
        }
        anyhow::bail!("{}", why.join("; "))
    })
}

/// Fails, naming each node's format, unless every node digests in one
/// format: hashes of two formats differ without the rows differing (a
/// release that hashes other fields renames the format).
fn same_format(nodes: &[Peer]) -> anyhow::Result<()> {
    let named: Vec<(String, &Json)> = nodes.iter().map(|n| (n.name(), &n.digest)).collect();
    match format_mismatch(&named) {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Why digests of these (node name, digest) pairs cannot be compared, if
/// their formats (name and bucket count) are not all the same.
fn format_mismatch(digests: &[(String, &Json)]) -> Option<String> {
    let mut by_format: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, digest) in digests {
        let format = match digest["format"].as_str() {
            Some(f) => format!("{f} ({} buckets)", digest["buckets"]),
            None => "no format named".to_owned(),
        };
        by_format.entry(format).or_default().push(name);
    }
    if by_format.len() <= 1 {
        return None;
    }
    let listed: Vec<String> = by_format
        .iter()
        .map(|(format, names)| format!("{format} on {}", names.join(", ")))
        .collect();
    Some(format!(
        "the nodes digest in different formats, whose hashes cannot be compared: {}; \
         run one Patina release on all of them, then check again",
        listed.join("; ")
    ))
}

/// The members a check must cover, from the checked node's `/v1/members`.
struct Expected {
    members: BTreeMap<String, ExpectedMember>,
}

struct ExpectedMember {
    described: String,
    /// It holds regional.db too (a member of this node's region).
    regional: bool,
    /// Down in every cluster this node shares with it.
    down: bool,
}

impl Expected {
    fn from_members(members: &[Json], me: &str) -> anyhow::Result<Expected> {
        let mine = members
            .iter()
            .find(|m| m["actor_id"] == me && m["cluster"] != "global")
            .with_context(|| format!("the node ({me}) does not list itself among its members"))?;
        let region = mine["region"].as_str().unwrap_or_default().to_owned();
        let mut out = BTreeMap::new();
        for m in members {
            let (Some(actor), Some(cluster)) = (m["actor_id"].as_str(), m["cluster"].as_str())
            else {
                continue;
            };
            if actor == me {
                continue;
            }
            let regional = cluster == region;
            let described = format!(
                "{actor} (region {}, gossip {}, {})",
                m["region"].as_str().unwrap_or("?"),
                m["addr"].as_str().unwrap_or("?"),
                m["state"].as_str().unwrap_or("?")
            );
            let down = m["state"] == "down";
            let entry = out.entry(actor.to_owned()).or_insert(ExpectedMember {
                described,
                regional: false,
                down: true,
            });
            entry.regional |= regional;
            entry.down &= down;
        }
        Ok(Expected { members: out })
    }

    /// `Some(holds regional.db)` for a member, `None` for a stranger.
    fn scope_of(&self, actor: &str) -> Option<bool> {
        self.members.get(actor).map(|m| m.regional)
    }

    /// The members no answer came from: (described, SWIM holds it down).
    fn unchecked<'a>(&'a self, nodes: &'a [Peer]) -> impl Iterator<Item = (&'a str, bool)> + 'a {
        self.members
            .iter()
            .filter(|(actor, _)| !nodes.iter().any(|n| &n.actor == *actor))
            .map(|(_, m)| (m.described.as_str(), m.down))
    }
}

/// A table the nodes holding its database disagree on.
#[derive(Debug, PartialEq)]
struct TableDiff {
    db: &'static str,
    table: String,
    /// Indexes of the nodes holding the database.
    nodes: Vec<usize>,
    /// Nodes (indexes) that lack the table.
    missing: Vec<usize>,
    /// Buckets whose hashes differ among the nodes that have the table.
    buckets: Vec<usize>,
}

/// Whether the nodes holding `diff`'s table name different columns for it
/// (each asked through `/v1/queries`; a node that does not answer counts
/// as not differing, so the rows' advice stands).
async fn columns_differ(diff: &TableDiff, nodes: &[Peer]) -> bool {
    let schema = if diff.db == "global" {
        "global"
    } else {
        "main"
    };
    let statement = Statement::Positional(
        "SELECT name FROM pragma_table_info(?1, ?2) ORDER BY cid".into(),
        vec![Json::from(diff.table.clone()), Json::from(schema)],
    );
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    for &i in diff.nodes.iter().filter(|i| !diff.missing.contains(i)) {
        let Ok(mut rows) = nodes[i].client.query(&statement).await else {
            continue;
        };
        let mut columns = Vec::new();
        while let Ok(Some(row)) = rows.next().await {
            columns.extend(row.first().and_then(Json::as_str).map(str::to_owned));
        }
        seen.insert(columns);
    }
    seen.len() > 1
}

fn compare(nodes: &[Peer]) -> Vec<TableDiff> {
    let digests: Vec<(&Json, bool)> = nodes.iter().map(|n| (&n.digest, n.regional)).collect();
    compare_digests(&digests)
}

/// The tables whose digests differ; `digests` pairs each node's digest with
/// whether it holds `regional.db`.
fn compare_digests(digests: &[(&Json, bool)]) -> Vec<TableDiff> {
    let mut out = Vec::new();
    for db in DATABASES {
        let holders: Vec<usize> = (0..digests.len())
            .filter(|&i| db == "global" || digests[i].1)
            .collect();
        let tables_of = |i: usize| digests[i].0["databases"][db].as_object();
        let names: BTreeSet<&String> = holders
            .iter()
            .filter_map(|&i| tables_of(i))
            .flat_map(|t| t.keys())
            .collect();
        for name in names {
            let table = |i: usize| tables_of(i).and_then(|t| t.get(name));
            let missing: Vec<usize> = holders
                .iter()
                .copied()
                .filter(|&i| table(i).is_none())
                .collect();
            let present: Vec<&Json> = holders.iter().filter_map(|&i| table(i)).collect();
            let hashes: BTreeSet<String> = present.iter().map(|t| t["hash"].to_string()).collect();
            if missing.is_empty() && hashes.len() <= 1 {
                continue;
            }
            let bucket_count = present
                .first()
                .and_then(|t| t["buckets"].as_array())
                .map_or(0, Vec::len);
            let buckets = (0..bucket_count)
                .filter(|&b| {
                    let in_bucket: BTreeSet<String> = present
                        .iter()
                        .map(|t| t["buckets"][b].to_string())
                        .collect();
                    in_bucket.len() > 1
                })
                .collect();
            out.push(TableDiff {
                db,
                table: name.clone(),
                nodes: holders.clone(),
                missing,
                buckets,
            });
        }
    }
    out
}

async fn print_diff(diff: &TableDiff, nodes: &[Peer]) {
    let rows: Vec<String> = diff
        .nodes
        .iter()
        .filter(|i| !diff.missing.contains(i))
        .map(|&i| {
            let t = &nodes[i].digest["databases"][diff.db][&diff.table];
            format!(
                "{} on {}",
                plural(t["rows"].as_u64().unwrap_or(0) as usize, "row"),
                nodes[i].addr
            )
        })
        .collect();
    println!(
        "{}.{} differs: {}; {} of {} buckets differ",
        diff.db,
        diff.table,
        rows.join("; "),
        diff.buckets.len(),
        nodes[0].digest["buckets"]
    );
    for &i in &diff.missing {
        println!(
            "  {} has no table {} in {}.db",
            nodes[i].name(),
            diff.table,
            diff.db
        );
    }
    for &bucket in diff.buckets.iter().take(BUCKETS_LISTED_MAX) {
        print_bucket(diff, bucket, nodes).await;
    }
    if diff.buckets.len() > BUCKETS_LISTED_MAX {
        println!(
            "  … and {} more differing buckets (GET /v1/digest?table={}&bucket=N lists one)",
            diff.buckets.len() - BUCKETS_LISTED_MAX,
            diff.table
        );
    }
}

async fn print_bucket(diff: &TableDiff, bucket: usize, nodes: &[Peer]) {
    let holders: Vec<usize> = diff
        .nodes
        .iter()
        .copied()
        .filter(|i| !diff.missing.contains(i))
        .collect();
    let hashes: Vec<String> = holders
        .iter()
        .map(|&i| {
            let t = &nodes[i].digest["databases"][diff.db][&diff.table];
            format!(
                "{} on {}",
                t["buckets"][bucket].as_str().unwrap_or("?"),
                nodes[i].addr
            )
        })
        .collect();
    println!("  bucket {bucket}: {}", hashes.join(", "));
    let query = format!("table={}&bucket={bucket}", url_escape(&diff.table));
    let mut listed: Vec<(usize, BTreeMap<String, Json>)> = Vec::new();
    for &i in &holders {
        match nodes[i].client.digest(&query).await {
            Ok((_, json)) => {
                let keys = json["databases"][diff.db][&diff.table]["keys"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let by_pk = keys
                    .into_iter()
                    .map(|k| (k["packed_pk"].as_str().unwrap_or_default().to_owned(), k))
                    .collect();
                listed.push((i, by_pk));
            }
            Err(e) => println!("    cannot list the bucket on {}: {e}", nodes[i].name()),
        }
    }
    let differing = differing_keys(&listed);
    for pk in differing.iter().take(KEYS_PRINTED_MAX) {
        let shown = listed
            .iter()
            .find_map(|(_, keys)| keys.get(pk.as_str()))
            .map_or_else(|| Json::Null, |k| k["pk"].clone());
        println!("    key {shown} (packed {pk}):");
        for (i, keys) in &listed {
            let held = keys.get(pk.as_str()).map_or_else(
                // Digests leave tombstones out: a deleted key is listed
                // nowhere, like one never written.
                || "no such key (deleted, or never written)".to_owned(),
                describe_key,
            );
            println!("      {}: {held}", nodes[*i].addr);
        }
    }
    if differing.len() > KEYS_PRINTED_MAX {
        println!(
            "    … and {} more differing keys",
            differing.len() - KEYS_PRINTED_MAX
        );
    }
}

/// The packed keys whose state is not the same on every listing.
fn differing_keys(listed: &[(usize, BTreeMap<String, Json>)]) -> Vec<String> {
    let all: BTreeSet<&String> = listed.iter().flat_map(|(_, keys)| keys.keys()).collect();
    all.into_iter()
        .filter(|pk| {
            let hashes: BTreeSet<Option<String>> = listed
                .iter()
                .map(|(_, keys)| keys.get(pk.as_str()).map(|k| k["hash"].to_string()))
                .collect();
            hashes.len() > 1
        })
        .cloned()
        .collect()
}

/// `cl 1, app="web" [v2 db_version 7 of 5f2e0a1b seq 0], …`.
fn describe_key(key: &Json) -> String {
    let mut out = format!("cl {}", key["cl"]);
    match (key["in_table"].as_bool(), key["cl"].as_u64()) {
        (Some(false), Some(cl)) if cl % 2 == 0 => out.push_str(" (deleted)"),
        (Some(false), _) => out.push_str(" (its clock says alive, the table has no row)"),
        (Some(true), Some(0)) => out.push_str(" (a row without a clock: written around capture)"),
        (Some(true), Some(cl)) if cl % 2 == 0 => {
            out.push_str(" (its clock says deleted, the table has the row)")
        }
        _ => {}
    }
    if let Some(columns) = key["columns"].as_object() {
        for (name, column) in columns {
            out.push_str(&format!(", {name}"));
            if let Some(value) = column.get("value") {
                out.push_str(&format!("={value}"));
            }
            match column["clock"].as_object() {
                Some(c) => out.push_str(&format!(
                    " [v{} db_version {} of {} seq {}]",
                    c["col_version"],
                    c["db_version"],
                    short(c["site_id"].as_str().unwrap_or("?")),
                    c["seq"]
                )),
                None => out.push_str(" [no clock]"),
            }
        }
    }
    out
}

/// The node whose digest differs from all others' in every differing
/// table, when there are three nodes or more: the likely wrong one.
fn minority(diffs: &[TableDiff], nodes: &[Peer]) -> Option<String> {
    let mut suspects: Option<BTreeSet<usize>> = None;
    for d in diffs {
        let hash_of = |i: usize| &nodes[i].digest["databases"][d.db][&d.table]["hash"];
        let mut count: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &d.nodes {
            count.entry(hash_of(i).to_string()).or_default().push(i);
        }
        let biggest = count.values().map(Vec::len).max()?;
        if biggest * 2 <= d.nodes.len() {
            return None;
        }
        let outside: BTreeSet<usize> = count
            .values()
            .filter(|v| v.len() < biggest)
            .flatten()
            .copied()
            .collect();
        suspects = Some(match suspects {
            None => outside,
            Some(s) => s.union(&outside).copied().collect(),
        });
    }
    let names: Vec<String> = suspects?.into_iter().map(|i| nodes[i].name()).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn agreement(nodes: &[Peer]) -> String {
    let count = |db: &str| {
        nodes[0].digest["databases"][db]
            .as_object()
            .map_or((0, 0), |t| {
                (
                    t.len(),
                    t.values().filter_map(|t| t["rows"].as_u64()).sum::<u64>(),
                )
            })
    };
    let (regional, global) = (count("regional"), count("global"));
    if nodes.len() == 1 {
        return format!(
            "nothing to compare: {} has no other member; {} in regional.db ({} rows), {} in global.db ({} rows)",
            nodes[0].addr,
            plural(regional.0, "table"),
            regional.1,
            plural(global.0, "table"),
            global.1
        );
    }
    format!(
        "all {} nodes agree: {} in regional.db ({} rows), {} in global.db ({} rows)",
        nodes.len(),
        plural(regional.0, "table"),
        regional.1,
        plural(global.0, "table"),
        global.1
    )
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A table name as a query-string value.
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(tables: Json) -> Json {
        json!({"format": "f", "buckets": 4, "databases": tables})
    }

    fn table(hash: &str, buckets: [&str; 4]) -> Json {
        json!({"rows": 1, "hash": hash, "buckets": buckets})
    }

    #[test]
    fn differing_buckets_and_missing_tables() {
        let z = "0";
        let a = digest(json!({
            "regional": {"t": table("h1", [z, "x", z, "y"]), "u": table("u", [z; 4])},
            "global": {"g": table("g1", ["p", z, z, z])}
        }));
        let b = digest(json!({
            "regional": {"t": table("h2", [z, "x", z, "Y"])},
            "global": {"g": table("g1", ["p", z, z, z])}
        }));
        // Another region's global member: global.db only.
        let c = digest(json!({
            "regional": {"t": table("other", [z; 4])},
            "global": {"g": table("g2", ["q", z, z, z])}
        }));
        let diffs = compare_digests(&[(&a, true), (&b, true), (&c, false)]);
        assert_eq!(
            diffs,
            vec![
                TableDiff {
                    db: "regional",
                    table: "t".into(),
                    nodes: vec![0, 1],
                    missing: vec![],
                    buckets: vec![3],
                },
                TableDiff {
                    db: "regional",
                    table: "u".into(),
                    nodes: vec![0, 1],
                    missing: vec![1],
                    buckets: vec![],
                },
                TableDiff {
                    db: "global",
                    table: "g".into(),
                    nodes: vec![0, 1, 2],
                    missing: vec![],
                    buckets: vec![0],
                },
            ]
        );
        assert!(compare_digests(&[(&a, true), (&a.clone(), true)]).is_empty());
    }

    #[test]
    fn formats_must_agree() {
        let format = |name: &str| json!({"format": name, "buckets": 256, "databases": {}});
        let (one, two) = (format("patina-digest-1/x"), format("patina-digest-2/x"));
        let ask = |digests: &[(&str, &Json)]| {
            let named: Vec<(String, &Json)> =
                digests.iter().map(|(n, d)| (n.to_string(), *d)).collect();
            format_mismatch(&named)
        };
        assert_eq!(ask(&[("a", &two), ("b", &two)]), None);
        assert_eq!(
            ask(&[("a", &two), ("b", &one), ("c", &two)]).unwrap(),
            "the nodes digest in different formats, whose hashes cannot be compared: \
             patina-digest-1/x (256 buckets) on b; patina-digest-2/x (256 buckets) on a, c; \
             run one Patina release on all of them, then check again"
        );
        let fewer = json!({"format": "patina-digest-2/x", "buckets": 16, "databases": {}});
        assert!(ask(&[("a", &two), ("b", &fewer)]).is_some());
        let none = json!({"databases": {}});
        assert!(ask(&[("a", &two), ("b", &none)])
            .unwrap()
            .contains("no format named on b"));
    }

    #[test]
    fn members_to_compare() {
        let member = |actor: &str, region: &str, cluster: &str| {
            json!({"actor_id": actor, "addr": "10.0.0.1:7000", "region": region,
                   "cluster": cluster, "state": "alive"})
        };
        // A global member of ams: itself in both clusters, a regional peer
        // that is a global member too, a plain regional peer, and the
        // global member of another region.
        let members = [
            member("me", "ams", "ams"),
            member("me", "ams", "global"),
            member("g2", "ams", "ams"),
            member("g2", "ams", "global"),
            member("plain", "ams", "ams"),
            member("ord1", "ord", "global"),
        ];
        let expected = Expected::from_members(&members, "me").unwrap();
        assert_eq!(expected.scope_of("g2"), Some(true));
        assert_eq!(expected.scope_of("plain"), Some(true));
        assert_eq!(expected.scope_of("ord1"), Some(false), "global.db only");
        assert_eq!(expected.scope_of("me"), None, "the node itself is no peer");
        assert_eq!(expected.scope_of("stranger"), None);
        let unchecked: Vec<(&str, bool)> = expected.unchecked(&[]).collect();
        assert_eq!(
            unchecked,
            [
                ("g2 (region ams, gossip 10.0.0.1:7000, alive)", false),
                ("ord1 (region ord, gossip 10.0.0.1:7000, alive)", false),
                ("plain (region ams, gossip 10.0.0.1:7000, alive)", false),
            ]
        );
        assert!(Expected::from_members(&members, "nobody").is_err());

        // A retired node (down) is not asked for; one down in the region
        // but alive on the global cluster still is.
        let mut with_down = members.to_vec();
        let mut retired = member("old", "ams", "ams");
        retired["state"] = json!("down");
        let mut half = member("g2", "ams", "ams");
        half["state"] = json!("down");
        with_down[2] = half;
        with_down.push(retired);
        let expected = Expected::from_members(&with_down, "me").unwrap();
        let down: Vec<&str> = expected
            .unchecked(&[])
            .filter(|(_, down)| *down)
            .map(|(m, _)| m)
            .collect();
        assert_eq!(down, ["old (region ams, gossip 10.0.0.1:7000, down)"]);
    }

    #[test]
    fn keys_that_differ() {
        let key = |hash: &str| json!({"hash": hash});
        let one: BTreeMap<String, Json> =
            [("01".to_owned(), key("a")), ("02".to_owned(), key("b"))]
                .into_iter()
                .collect();
        let two: BTreeMap<String, Json> =
            [("01".to_owned(), key("a")), ("03".to_owned(), key("c"))]
                .into_iter()
                .collect();
        assert_eq!(differing_keys(&[(0, one), (1, two)]), ["02", "03"]);
    }

    #[test]
    fn key_descriptions() {
        let key = json!({"pk": ["m1"], "cl": 1, "in_table": true, "hash": "h", "columns": {
            "app": {"value": "web", "clock": {"col_version": 2, "db_version": 7, "site_id": "5f2e0a1b99", "seq": 0}}
        }});
        assert_eq!(
            describe_key(&key),
            "cl 1, app=\"web\" [v2 db_version 7 of 5f2e0a1b seq 0]"
        );
        let gone = json!({"cl": 2, "in_table": false, "columns": {}});
        assert_eq!(describe_key(&gone), "cl 2 (deleted)");
        let bare =
            json!({"cl": 0, "in_table": true, "columns": {"app": {"value": null, "clock": null}}});
        assert_eq!(
            describe_key(&bare),
            "cl 0 (a row without a clock: written around capture), app=null [no clock]"
        );
        assert_eq!(url_escape("a b&c"), "a%20b%26c");
    }
}
