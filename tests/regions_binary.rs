//! Regions with real agents: a global member relays global tables between
//! regions, rollups reach every region while regional rows stay home,
//! `/v1/regions` and `patina regions` show the fleet, and a rollup that
//! does not fit the schema stops the start with a message naming it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use patina_client::Statement;
use support::{runtime, Agent, BIN};

const GLOBAL_SCHEMA: &str = "CREATE TABLE app_regions (app TEXT NOT NULL, region TEXT NOT NULL, machines INTEGER, PRIMARY KEY (app, region));
CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);";

const ROLLUP: &str = "[[rollup]]\nname = \"app_regions\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) AS machines FROM machines GROUP BY app\"\n";

struct NodeSpec<'a> {
    region: &'a str,
    global: bool,
    bootstrap: Option<&'a str>,
    global_bootstrap: Option<&'a str>,
    rollups: &'a str,
}

fn config(dir: &Path, spec: NodeSpec<'_>) -> PathBuf {
    support::setup(dir);
    std::fs::create_dir_all(dir.join("global")).unwrap();
    std::fs::write(dir.join("global/global.sql"), GLOBAL_SCHEMA).unwrap();
    let list = |b: Option<&str>| b.map(|b| format!("{b:?}")).unwrap_or_default();
    let mut text = format!(
        "[node]\nregion = {:?}\nglobal = {}\ndata_dir = {:?}\n[db]\nschema_paths = [{:?}]\nglobal_schema_paths = [{:?}]\n[api]\naddr = \"127.0.0.1:0\"\n[gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
        spec.region,
        spec.global,
        dir.join("data"),
        dir.join("schema"),
        dir.join("global"),
        list(spec.bootstrap),
    );
    if spec.global {
        text.push_str(&format!(
            "[global_gossip]\naddr = \"127.0.0.1:0\"\ninsecure = true\nbootstrap = [{}]\n",
            list(spec.global_bootstrap)
        ));
    }
    text.push_str(spec.rollups);
    let path = dir.join("patina.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn rows(agent: &Agent, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let mut stream = agent.client().query(&Statement::from(sql)).await.unwrap();
    let mut out = Vec::new();
    while let Some(row) = stream.next().await.unwrap() {
        out.push(row);
    }
    out
}

async fn wait_rows(agent: &Agent, sql: &str, want: &[Vec<serde_json::Value>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = rows(agent, sql).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} on {}: {got:?}, want {want:?}",
            agent.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn global_tables_and_rollups_cross_regions_and_machines_stay_home() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ams1 = Agent::start(&config(
        dirs[0].path(),
        NodeSpec {
            region: "ams",
            global: true,
            bootstrap: None,
            global_bootstrap: None,
            rollups: ROLLUP,
        },
    ));
    let ams2 = Agent::start(&config(
        dirs[1].path(),
        NodeSpec {
            region: "ams",
            global: false,
            bootstrap: Some(&ams1.gossip),
            global_bootstrap: None,
            rollups: ROLLUP,
        },
    ));
    let ord1 = Agent::start(&config(
        dirs[2].path(),
        NodeSpec {
            region: "ord",
            global: true,
            bootstrap: None,
            global_bootstrap: ams1.global_gossip.as_deref(),
            rollups: ROLLUP,
        },
    ));
    runtime().block_on(async {
        // An edge subscriber in ord that would choke on any ams machine.
        let ord_client = ord1.client();
        let mut ord_machines = ord_client
            .subscribe(&Statement::from("SELECT id, app FROM machines"))
            .await
            .unwrap();
        // A plain ams node writes machines (regional) and a flag (global).
        let c = ams2.client();
        for (id, app) in [("m1", "web"), ("m2", "web"), ("m3", "api")] {
            let sql = format!("INSERT INTO machines VALUES ('{id}', '{app}', 0)");
            c.transact(&[Statement::from(sql.as_str())]).await.unwrap();
        }
        c.transact(&[Statement::from(
            "INSERT INTO flags VALUES ('deploys', 'frozen')",
        )])
        .await
        .unwrap();
        // ord, another region, gets the flag and the rollup of ams...
        wait_rows(
            &ord1,
            "SELECT name, value FROM flags",
            &[vec!["deploys".into(), "frozen".into()]],
        )
        .await;
        wait_rows(
            &ord1,
            "SELECT app, region, machines FROM app_regions ORDER BY app",
            &[
                vec!["api".into(), "ams".into(), 1.into()],
                vec!["web".into(), "ams".into(), 2.into()],
            ],
        )
        .await;
        // ...and an ord write reaches ams's plain node.
        ord1.client()
            .transact(&[Statement::from(
                "INSERT INTO machines VALUES ('o1', 'web', 0)",
            )])
            .await
            .unwrap();
        wait_rows(
            &ams2,
            "SELECT app, region, machines FROM app_regions ORDER BY app, region",
            &[
                vec!["api".into(), "ams".into(), 1.into()],
                vec!["web".into(), "ams".into(), 2.into()],
                vec!["web".into(), "ord".into(), 1.into()],
            ],
        )
        .await;
        // The ord subscriber saw its own machine and nothing of ams.
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), ord_machines.next())
                .await
                .expect("ord's subscriber got no event")
                .unwrap()
                .expect("ord's subscription ended");
            if let patina_client::SubEvent::Change { cells, .. } = event {
                assert_eq!(cells[0], "o1", "an ams machine reached an ord subscriber");
                break;
            }
        }
        // The machines themselves never left their region.
        assert_eq!(
            rows(&ord1, "SELECT id FROM machines").await,
            vec![vec![serde_json::Value::from("o1")]]
        );
        wait_rows(&ams1, "SELECT count(*) FROM machines", &[vec![3.into()]]).await;

        // The fleet as a global member sees it, and as a plain node does.
        let regions = ams1.client().regions().await.unwrap();
        let names: Vec<&str> = regions
            .iter()
            .filter_map(|r| r["region"].as_str())
            .collect();
        assert_eq!(names, ["ams", "ord"], "{regions:?}");
        assert_eq!(regions[1]["global_members"].as_array().unwrap().len(), 1);
        assert_eq!(regions[0]["rollups"]["app_regions"], 2);
        let regions = ams2.client().regions().await.unwrap();
        let names: Vec<&str> = regions
            .iter()
            .filter_map(|r| r["region"].as_str())
            .collect();
        assert_eq!(
            names,
            ["ams", "ord"],
            "a plain node learns of ord from global.db"
        );
        let leader = regions[0]["leader"].as_str().unwrap().to_owned();
        // What ord's leader wrote of ord in global.patina_regions reaches
        // ams's plain node, which has no membership of ord to ask.
        let ord_leader = ord1.client().health().await.unwrap()["leader"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let ord = loop {
            let regions = ams2.client().regions().await.unwrap();
            let ord = regions
                .iter()
                .find(|r| r["region"] == "ord")
                .cloned()
                .unwrap();
            if ord["leader"] == ord_leader.as_str() && ord["last_rollup"].is_number() {
                break ord;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ord's row never reached ams2: {regions:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(ord["global_members"], serde_json::json!([ord_leader]));
        assert!(ord["updated"].is_number(), "{ord}");
        let health = ams2.client().health().await.unwrap();
        assert_eq!(health["leader"].as_str(), Some(leader.as_str()));
        let members = ams1.client().members().await.unwrap();
        let clusters: std::collections::BTreeSet<&str> = members
            .iter()
            .filter_map(|m| m["cluster"].as_str())
            .collect();
        assert_eq!(clusters, ["ams", "global"].into());
        // The leader's metrics: it leads, it wrote rows, and its global
        // cluster's replication is labelled so.
        let metrics = reqwest::get(format!("http://{}/metrics", ams1.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("patina_rollup_leading 1"), "{metrics}");
        assert!(
            !metrics.contains("patina_rollup_rows_written_total 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("patina_replication_relayed_out_total{cluster=\"global\"}"),
            "{metrics}"
        );
    });
    let (ok, out, err) = ord1.cli(&["regions"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ams") && out.contains("ord") && out.contains("app_regions=2"),
        "{out}"
    );
}

/// Runs an agent that must refuse to start; returns its stderr.
fn refused_start(config: &Path) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["agent", "-c"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rollup_that_does_not_fit_the_schema_stops_the_start_naming_it() {
    let cases = [
        (
            "[[rollup]]\nname = \"nowhere\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) AS n FROM machines GROUP BY app\"\n",
            "no global table \"nowhere\"",
        ),
        (
            "[[rollup]]\nname = \"machines\"\nkey = [\"app\"]\nquery = \"SELECT app FROM machines GROUP BY app\"\n",
            "is a regional table",
        ),
        (
            "[[rollup]]\nname = \"flags\"\nkey = [\"name\"]\nquery = \"SELECT app AS name FROM machines GROUP BY app\"\n",
            "PRIMARY KEY (name, region)",
        ),
        (
            "[[rollup]]\nname = \"app_regions\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) AS total FROM machines GROUP BY app\"\n",
            "returns \"total\"",
        ),
        (
            "[[rollup]]\nname = \"app_regions\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) AS machines FROM nowhere GROUP BY app\"\n",
            "does not prepare",
        ),
    ];
    for (rollup, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = config(
            dir.path(),
            NodeSpec {
                region: "ams",
                global: true,
                bootstrap: None,
                global_bootstrap: None,
                rollups: rollup,
            },
        );
        let err = refused_start(&config);
        assert!(
            err.contains("rollup") && err.contains(why),
            "{rollup}: {err}"
        );
    }
}

/// Polls `patina health --require-rollups` on `agent` until its exit
/// status is `ok`; returns what it printed.
fn wait_rollups_health(agent: &Agent, ok: bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (passed, out, err) = agent.cli(&["health", "--require-rollups"]);
        if passed == ok {
            return format!("{out}{err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health --require-rollups stayed {passed}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failing_rollup_shuts_the_regions_health_gate_on_every_node() {
    // A target that refuses an app with 3 machines or more.
    const CHECKED: &str = "CREATE TABLE app_regions (app TEXT NOT NULL, region TEXT NOT NULL, machines INTEGER CHECK (machines < 3), PRIMARY KEY (app, region));
CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);";
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    fn spec(global: bool, bootstrap: Option<&str>) -> NodeSpec<'_> {
        NodeSpec {
            region: "ams",
            global,
            bootstrap,
            global_bootstrap: None,
            rollups: ROLLUP,
        }
    }
    let checked = |path: PathBuf| {
        std::fs::write(path.parent().unwrap().join("global/global.sql"), CHECKED).unwrap();
        path
    };
    let leader_config = checked(config(dirs[0].path(), spec(true, None)));
    let leader = Agent::start(&leader_config);
    let plain = Agent::start(&checked(config(
        dirs[1].path(),
        spec(false, Some(&leader.gossip)),
    )));
    wait_rollups_health(&plain, true);

    runtime().block_on(async {
        let c = plain.client();
        for id in ["m1", "m2", "m3"] {
            let sql = format!("INSERT INTO machines VALUES ('{id}', 'web', 0)");
            c.transact(&[Statement::from(sql.as_str())]).await.unwrap();
        }
    });
    // The plain node learns of the failure from the leader's row.
    let said = wait_rollups_health(&plain, false);
    assert!(
        said.contains("rollups are failing") && said.contains("CHECK"),
        "{said}"
    );
    let regions = runtime().block_on(plain.client().regions()).unwrap();
    assert!(
        regions[0]["rollup_error"]
            .as_str()
            .is_some_and(|e| e.contains("app_regions")),
        "{regions:?}"
    );
    // Without the threshold the node is healthy: rollups are the
    // region's concern, not this node's.
    assert!(plain.cli(&["health"]).0);

    // The leader restarts from kill -9 and fails again at once: the
    // region keeps the time of its last good publication.
    let last_rollup = |agent: &Agent| {
        let regions = runtime().block_on(agent.client().regions()).unwrap();
        regions[0]["last_rollup"].as_f64()
    };
    let before = last_rollup(&plain).expect("a publication before the failures");
    // Back on its gossip port, as a deployed node would be.
    let text = std::fs::read_to_string(&leader_config).unwrap();
    let text = text.replacen(
        "[gossip]\naddr = \"127.0.0.1:0\"",
        &format!("[gossip]\naddr = {:?}", leader.gossip),
        1,
    );
    std::fs::write(&leader_config, text).unwrap();
    leader.kill9();
    let leader = Agent::start(&leader_config);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while runtime().block_on(leader.client().health()).unwrap()["leader"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_rollups_health(&leader, false);
    for agent in [&leader, &plain] {
        let after = last_rollup(agent);
        assert!(after.is_some_and(|t| t >= before), "{after:?} < {before}");
    }

    runtime().block_on(async {
        plain
            .client()
            .transact(&[Statement::from("DELETE FROM machines WHERE id = 'm3'")])
            .await
            .unwrap();
    });
    wait_rollups_health(&plain, true);
    wait_rollups_health(&leader, true);
}
