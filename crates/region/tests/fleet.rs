//! Regions in one process: isolation, relay, leaders and rollups, with
//! real nodes on 127.0.0.1 (patina-testkit's `TestFleet`).

use std::time::Duration;

use patina_node::Value;
use patina_testkit::{eventually, expected_app_regions, FleetOptions, RegionSpec, TestFleet};

const WAIT: Duration = Duration::from_secs(30);

fn three_regions() -> Vec<RegionSpec<'static>> {
    vec![
        RegionSpec {
            name: "ams",
            nodes: 3,
            global_members: 2,
        },
        RegionSpec {
            name: "ord",
            nodes: 2,
            global_members: 1,
        },
        RegionSpec {
            name: "nrt",
            nodes: 2,
            global_members: 1,
        },
    ]
}

async fn count(fleet: &TestFleet, i: usize, sql: &str) -> i64 {
    match fleet.rows(i, sql).await[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("{sql}: {v:?}"),
    }
}

/// `app_regions` on node `i`, ordered.
async fn app_regions(fleet: &TestFleet, i: usize) -> Vec<Vec<Value>> {
    fleet
        .rows(
            i,
            "SELECT app, region, machines, started FROM app_regions ORDER BY app, region",
        )
        .await
}

/// What every node's `app_regions` should be: each region's rollup of its
/// own machines (read on one of its running nodes: a crashed one holds
/// what it had), merged.
async fn truth(fleet: &TestFleet, regions: &[&str]) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for r in regions {
        let i = fleet
            .of_region(r)
            .into_iter()
            .find(|&i| fleet.nodes[i].runtime.is_some())
            .expect("a running node in the region");
        all.extend(expected_app_regions(&fleet.nodes[i].node, r).await);
    }
    all.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    all
}

async fn sorted_app_regions(fleet: &TestFleet, i: usize) -> Vec<Vec<Value>> {
    let mut rows = app_regions(fleet, i).await;
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

async fn wait_rollups_converged(fleet: &TestFleet, regions: &[&str]) {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let want = truth(fleet, regions).await;
        let mut ok = true;
        for i in 0..fleet.nodes.len() {
            if fleet.nodes[i].runtime.is_none() {
                continue;
            }
            let got = sorted_app_regions(fleet, i).await;
            if got != want {
                ok = false;
                last = format!(
                    "node {i} ({}): {got:?}\nwant {want:?}",
                    fleet.nodes[i].region
                );
                break;
            }
        }
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "app_regions did not converge: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_write_reaches_every_region_and_a_regional_one_stays_home() {
    let fleet = TestFleet::start(&three_regions(), FleetOptions::default()).await;
    // A plain (not global) node of ord writes a global table.
    let ord_plain = fleet.of_region("ord")[1];
    assert!(!fleet.nodes[ord_plain].global_member);
    fleet
        .exec(ord_plain, "INSERT INTO flags VALUES ('maintenance', 'off')")
        .await;
    // ams writes regional rows.
    let ams_plain = fleet.of_region("ams")[2];
    for id in 0..20 {
        fleet
            .exec(
                ams_plain,
                &format!(
                    "INSERT INTO machines VALUES ({id}, 'app{}', 'started', 0)",
                    id % 3
                ),
            )
            .await;
    }
    for i in 0..fleet.nodes.len() {
        eventually(&format!("the flag on node {i}"), WAIT, || async {
            count(&fleet, i, "SELECT count(*) FROM flags").await == 1
        })
        .await;
    }
    for &i in &fleet.of_region("ams") {
        eventually(&format!("ams machines on node {i}"), WAIT, || async {
            count(&fleet, i, "SELECT count(*) FROM machines").await == 20
        })
        .await;
    }
    // The rollup of ams reached every region, so the global path is
    // working; the machines themselves never left ams.
    wait_rollups_converged(&fleet, &["ams", "ord", "nrt"]).await;
    for r in ["ord", "nrt"] {
        for &i in &fleet.of_region(r) {
            assert_eq!(
                count(&fleet, i, "SELECT count(*) FROM machines").await,
                0,
                "node {i} of {r}"
            );
            if let Some(g) = fleet.nodes[i].runtime().global() {
                assert_eq!(g.counters().isolation_refused("machines"), 0);
            }
        }
    }
    // Every global member of every region sees the others, with regions.
    let g = fleet.nodes[fleet.of_region("nrt")[0]]
        .runtime()
        .global()
        .unwrap()
        .members();
    let mut regions: Vec<String> = g
        .borrow()
        .iter()
        .map(|m| m.identity.region.to_string())
        .collect();
    regions.sort();
    regions.dedup();
    assert_eq!(regions, vec!["ams", "ord"]);
}

/// Waits until every node of `nodes` names `leader` as its region's.
async fn wait_leader(fleet: &TestFleet, nodes: &[usize], leader: patina_wire::ActorId) {
    for &i in nodes {
        let mut named = fleet.nodes[i].runtime().leader();
        let ok = tokio::time::timeout(WAIT, named.wait_for(|l| *l == Some(leader)))
            .await
            .is_ok();
        assert!(ok, "node {i} names {:?}, not {leader}", *named.borrow());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_of_a_region_names_the_same_leader_and_a_crashed_one_is_replaced() {
    let mut fleet = TestFleet::start(&three_regions(), FleetOptions::default()).await;
    let ams = fleet.of_region("ams");
    let globals: Vec<_> = ams
        .iter()
        .copied()
        .filter(|&i| fleet.nodes[i].global_member)
        .collect();
    let smallest = globals
        .iter()
        .copied()
        .min_by_key(|&i| fleet.nodes[i].node.actor_id())
        .unwrap();
    let leader_id = fleet.nodes[smallest].node.actor_id();
    wait_leader(&fleet, &ams, leader_id).await;
    // At start every global member led alone for a moment and may have
    // written ams's row after the real leader did: the leader corrects it,
    // and every node of every region ends up reading the real leader.
    wait_region_row(&fleet, (0..fleet.nodes.len()).collect(), leader_id, None).await;
    for id in 0..10 {
        fleet
            .exec(
                ams[2],
                &format!("INSERT INTO machines VALUES ({id}, 'web', 'started', 0)"),
            )
            .await;
    }
    wait_rollups_converged(&fleet, &["ams", "ord", "nrt"]).await;
    assert!(fleet.nodes[smallest].runtime().rollups().borrow().leading);

    fleet.crash(smallest).await;
    let next = globals.iter().copied().find(|&i| i != smallest).unwrap();
    let next_id = fleet.nodes[next].node.actor_id();
    let rest: Vec<usize> = ams.iter().copied().filter(|&i| i != smallest).collect();
    wait_leader(&fleet, &rest, next_id).await;
    // The new leader keeps the rollups converging.
    for id in 10..15 {
        fleet
            .exec(
                ams[2],
                &format!("INSERT INTO machines VALUES ({id}, 'api', 'stopped', 0)"),
            )
            .await;
    }
    fleet
        .exec(ams[2], "DELETE FROM machines WHERE id < 5")
        .await;
    wait_rollups_converged(&fleet, &["ams", "ord", "nrt"]).await;
    assert!(fleet.nodes[next].runtime().rollups().borrow().leading);
    // Every node of every region reads, in global.patina_regions, that
    // ams is led by the new leader, its crashed predecessor gone.
    let survivors: Vec<usize> = (0..fleet.nodes.len()).filter(|&i| i != smallest).collect();
    wait_region_row(&fleet, survivors, next_id, Some(leader_id)).await;
}

/// Waits until each of `nodes` reads ams's row of patina_regions naming
/// `leader`, without `gone` among its global members, with a rollup time.
async fn wait_region_row(
    fleet: &TestFleet,
    nodes: Vec<usize>,
    leader: patina_wire::ActorId,
    gone: Option<patina_wire::ActorId>,
) {
    for i in nodes {
        let node = fleet.nodes[i].node.clone();
        eventually("ams's row naming its leader", WAIT, || {
            let node = node.clone();
            async move {
                let records = node.region_records().await.unwrap();
                records.iter().any(|r| {
                    r.region == "ams"
                        && r.leader == Some(leader)
                        && gone.is_none_or(|g| !r.global_members.contains(&g))
                        && r.last_rollup_ms.is_some()
                })
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_the_global_cluster_keeps_working_and_catches_up() {
    let fleet = TestFleet::start(&three_regions(), FleetOptions::default()).await;
    let nrt = fleet.of_region("nrt");
    let ord = fleet.of_region("ord");
    fleet
        .exec(ord[1], "INSERT INTO flags VALUES ('before', '1')")
        .await;
    for &i in &nrt {
        eventually("the first flag in nrt", WAIT, || async {
            count(&fleet, i, "SELECT count(*) FROM flags").await == 1
        })
        .await;
    }
    // Cut nrt's global members off the global cluster.
    fleet.cut_from_global("nrt");
    fleet
        .exec(ord[1], "INSERT INTO flags VALUES ('during', '1')")
        .await;
    // nrt keeps serving: regional writes replicate, global reads answer
    // with the last state.
    for id in 0..5 {
        fleet
            .exec(
                nrt[1],
                &format!("INSERT INTO machines VALUES ({id}, 'edge', 'started', 0)"),
            )
            .await;
    }
    eventually("nrt's machines on its other node", WAIT, || async {
        count(&fleet, nrt[0], "SELECT count(*) FROM machines").await == 5
    })
    .await;
    assert_eq!(count(&fleet, nrt[1], "SELECT count(*) FROM flags").await, 1);
    eventually("the second flag in ord", WAIT, || async {
        count(&fleet, ord[0], "SELECT count(*) FROM flags").await == 2
    })
    .await;
    assert_eq!(
        count(&fleet, nrt[0], "SELECT count(*) FROM flags").await,
        1,
        "nothing reached nrt while it was cut off"
    );
    fleet.heal_global("nrt");
    for i in 0..fleet.nodes.len() {
        eventually(&format!("both flags on node {i}"), WAIT, || async {
            count(&fleet, i, "SELECT count(*) FROM flags").await == 2
        })
        .await;
    }
    wait_rollups_converged(&fleet, &["ams", "ord", "nrt"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_column_rolled_out_region_by_region_loses_nothing() {
    let fleet = TestFleet::start(&three_regions(), FleetOptions::default()).await;
    // ams reloads first: flags gains a nullable column.
    for &i in &fleet.of_region("ams") {
        let path = fleet.nodes[i].dir.path().join("global/global.sql");
        let sql = std::fs::read_to_string(&path).unwrap().replace(
            "CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);",
            "CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT, owner TEXT);",
        );
        std::fs::write(&path, sql).unwrap();
        fleet.nodes[i].node.reload_schema().await.unwrap();
    }
    let ams = fleet.of_region("ams")[2];
    fleet
        .exec(ams, "INSERT INTO flags VALUES ('a', '1', 'team-a')")
        .await;
    fleet
        .exec(ams, "INSERT INTO flags (name, value) VALUES ('b', '2')")
        .await;
    // The other regions, still on the old schema, serve every row with the
    // columns they know at once, holding the new column's values.
    for r in ["ord", "nrt"] {
        for &i in &fleet.of_region(r) {
            eventually(&format!("both flags on node {i} ({r})"), WAIT, || async {
                fleet
                    .rows(i, "SELECT name, value FROM flags ORDER BY name")
                    .await
                    == vec![
                        vec![Value::Text("a".into()), Value::Text("1".into())],
                        vec![Value::Text("b".into()), Value::Text("2".into())],
                    ]
            })
            .await;
        }
    }
    let ord = fleet.of_region("ord")[1];
    assert!(
        fleet.nodes[ord]
            .node
            .held_versions(patina_node::DbKind::Global)
            .borrow()
            .waiting()
            > 0
    );
    // Their reload applies what was held: nothing lost, nothing half-applied.
    for r in ["ord", "nrt"] {
        for &i in &fleet.of_region(r) {
            let path = fleet.nodes[i].dir.path().join("global/global.sql");
            let sql = std::fs::read_to_string(&path).unwrap().replace(
                "CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);",
                "CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT, owner TEXT);",
            );
            std::fs::write(&path, sql).unwrap();
            fleet.nodes[i].node.reload_schema().await.unwrap();
        }
    }
    for i in 0..fleet.nodes.len() {
        eventually(&format!("the owner on node {i}"), WAIT, || async {
            fleet
                .rows(i, "SELECT name, owner FROM flags ORDER BY name")
                .await
                == vec![
                    vec![Value::Text("a".into()), Value::Text("team-a".into())],
                    vec![Value::Text("b".into()), Value::Null],
                ]
        })
        .await;
    }
}

/// A peer of the global cluster that offers a regional change (a bug, or
/// an attack) gets nothing written anywhere, and the refusal is counted by
/// table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_change_offered_on_the_global_cluster_is_refused_and_counted() {
    use patina_wire::{ActorId, ChangeChunk, ClusterName, DbKind, Message, Span, WireChange};
    let fleet = TestFleet::start(&three_regions(), FleetOptions::default()).await;
    let target = fleet.of_region("ord")[0];
    let global = fleet.nodes[target].runtime().global().unwrap();
    let (rogue, _inbound) = patina_transport::Transport::bind(
        patina_transport::TransportConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            external_addr: None,
            cluster: ClusterName::new("global").unwrap(),
            actor: ActorId::random(),
            tls: None,
        },
        None,
    )
    .unwrap();
    let pk = patina_crr::pk::pack_values(&[Value::Integer(666)]).unwrap();
    let poison = ChangeChunk {
        db: DbKind::Regional,
        actor: ActorId::random(),
        version: 1,
        seqs: Span::new(0, 0),
        last_seq: 0,
        committed_ms: 0,
        changes: vec![WireChange {
            table: "machines".into(),
            pk,
            cid: "app".into(),
            val: Value::Text("poison".into()),
            col_version: 1,
            cl: 1,
            seq: 0,
        }],
    };
    rogue
        .send_frames(global.addr(), vec![Message::Changes(poison)])
        .await
        .unwrap();
    let counters = global.counters();
    eventually("the refusal counted", WAIT, || async {
        counters.isolation_refused("machines") == 1
    })
    .await;
    for i in 0..fleet.nodes.len() {
        assert_eq!(
            count(&fleet, i, "SELECT count(*) FROM machines").await,
            0,
            "node {i}"
        );
    }
}
