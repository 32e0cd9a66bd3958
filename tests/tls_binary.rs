//! Trust with the real binary: `patina tls ca` and `patina tls cert` make
//! files two agents start with and replicate over (mutual TLS); an agent
//! without TLS and without `gossip.insecure = true` refuses to start, as
//! does one whose certificate is for another region; an API bound beyond
//! loopback without a token is warned about.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use patina_testkit::eventually_blocking as eventually;
use support::{setup, setup_on, setup_peer, Agent, BIN};

/// Runs `patina ARGS`: (success, stdout, stderr).
fn patina(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces the config's `insecure = true` with a [gossip.tls] table of the
/// node's files in `certs`.
fn use_tls(config: &Path, certs: &Path, node: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let secure = text.replace("insecure = true\n", "");
    assert_ne!(text, secure, "setup's [gossip] section changed shape");
    let tls = format!(
        "[gossip.tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n",
        certs.join(format!("{node}.pem")),
        certs.join(format!("{node}.key")),
        certs.join("ca.pem"),
    );
    std::fs::write(config, secure + &tls).unwrap();
}

fn issue(certs: &Path, node: &str, clusters: &[&str]) {
    let dir = certs.to_str().unwrap();
    let mut args = vec!["tls", "cert", "--ca", dir, "--out", dir, "--node", node];
    for cluster in clusters {
        args.extend(["--cluster", cluster]);
    }
    let (ok, out, err) = patina(&args);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{node}.pem")), "{out}");
}

#[test]
fn agents_replicate_over_mutual_tls_with_files_from_patina_tls() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap();
    let (ok, out, err) = patina(&["tls", "ca", "--out", dir]);
    assert!(ok, "{err}");
    assert!(out.contains("ca.pem"), "{out}");
    // The CA key is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "ca.key is readable by others: {mode:o}");
    // A second CA in the same place would orphan every certificate.
    let (ok, _, err) = patina(&["tls", "ca", "--out", dir]);
    assert!(!ok && err.contains("--force"), "{err}");

    issue(certs.path(), "a", &["test"]);
    issue(certs.path(), "b", &["test", "global"]);

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = setup(da.path());
    use_tls(&config_a, certs.path(), "a");
    let a = Agent::start(&config_a);
    let config_b = setup_peer(db.path(), &[&a.gossip]);
    use_tls(&config_b, certs.path(), "b");
    let b = Agent::start(&config_b);
    assert!(
        !b.startup_log.iter().any(|l| l.contains("insecure")),
        "a node with TLS does not warn about insecure gossip: {:#?}",
        b.startup_log
    );

    let (ok, _, err) = a.cli(&["exec", "INSERT INTO machines VALUES ('m1', 'web', 1)"]);
    assert!(ok, "{err}");
    eventually("the write on b", Duration::from_secs(30), || {
        let (ok, out, _) = b.cli(&["query", "--json", "SELECT id FROM machines"]);
        ok && out.contains("\"m1\"")
    });
}

#[test]
fn an_agent_without_tls_or_insecure_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("insecure = true\n", "")).unwrap();
    let (ok, _, err) = patina(&["agent", "-c", config.to_str().unwrap()]);
    assert!(!ok, "the agent started without TLS");
    assert!(
        err.contains("`gossip.tls`") && err.contains("`gossip.insecure`"),
        "{err}"
    );
    assert!(err.contains("patina tls cert"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is opened before the refusal"
    );
}

#[test]
fn an_agent_with_a_certificate_for_another_region_refuses_to_start() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap();
    assert!(patina(&["tls", "ca", "--out", dir]).0);
    issue(certs.path(), "ams1", &["ams"]);
    let data = tempfile::tempdir().unwrap();
    let config = setup(data.path());
    use_tls(&config, certs.path(), "ams1");
    let (ok, _, err) = patina(&["agent", "-c", config.to_str().unwrap()]);
    assert!(!ok, "an ams certificate served region test");
    assert!(err.contains("not for cluster \"test\""), "{err}");
    assert!(err.contains("patina tls cert --cluster test"), "{err}");
}

#[test]
fn insecure_gossip_and_an_exposed_api_without_a_token_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup_on(dir.path(), "0.0.0.0:0"));
    let log = agent.startup_log.join("\n");
    assert!(
        log.contains("WARN") && log.contains("gossip.insecure = true"),
        "{log}"
    );
    assert!(log.contains("without api.authz"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&setup(dir.path()));
    let log = agent.startup_log.join("\n");
    assert!(!log.contains("api.authz"), "loopback needs no token: {log}");
}

/// Makes `config` (from `setup`, after `use_tls`) a global member of
/// region `region` with a `flags` global table, its global gossip under
/// TLS with the node's files, joining through `bootstrap`.
fn make_global(config: &Path, certs: &Path, node: &str, region: &str, bootstrap: Option<&str>) {
    let dir = config.parent().unwrap();
    std::fs::create_dir_all(dir.join("global")).unwrap();
    std::fs::write(
        dir.join("global/flags.sql"),
        "CREATE TABLE flags (name TEXT PRIMARY KEY NOT NULL, value TEXT);",
    )
    .unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    let text = text
        .replace(
            "region = \"test\"\n",
            &format!("region = {region:?}\nglobal = true\n"),
        )
        .replace(
            "[db]\n",
            &format!("[db]\nglobal_schema_paths = [{:?}]\n", dir.join("global")),
        );
    let list = bootstrap.map(|b| format!("{b:?}")).unwrap_or_default();
    let global = format!(
        "[global_gossip]\naddr = \"127.0.0.1:0\"\nbootstrap = [{list}]\n[global_gossip.tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n",
        certs.join(format!("{node}.pem")),
        certs.join(format!("{node}.key")),
        certs.join("ca.pem"),
    );
    std::fs::write(config, text + &global).unwrap();
}

#[test]
fn the_global_cluster_admits_only_certificates_that_name_it() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap();
    assert!(patina(&["tls", "ca", "--out", dir]).0);
    issue(certs.path(), "ams1", &["ams", "global"]);
    issue(certs.path(), "ord1", &["ord", "global"]);
    issue(certs.path(), "ord2", &["ord"]);

    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let config_a = setup(da.path());
    use_tls(&config_a, certs.path(), "ams1");
    make_global(&config_a, certs.path(), "ams1", "ams", None);
    let a = Agent::start(&config_a);
    let a_global = a.global_gossip.clone().expect("a global member");

    // A certificate that names ord but not global: refused at start.
    let config_c = setup(dc.path());
    use_tls(&config_c, certs.path(), "ord2");
    make_global(&config_c, certs.path(), "ord2", "ord", Some(&a_global));
    let (ok, _, err) = patina(&["agent", "-c", config_c.to_str().unwrap()]);
    assert!(
        !ok,
        "a certificate without global served the global cluster"
    );
    assert!(err.contains("not for cluster \"global\""), "{err}");

    // One that names both joins, and a global write crosses regions.
    let config_b = setup(db.path());
    use_tls(&config_b, certs.path(), "ord1");
    make_global(&config_b, certs.path(), "ord1", "ord", Some(&a_global));
    let b = Agent::start(&config_b);
    let rt = support::runtime();
    rt.block_on(async {
        a.client()
            .transact(&[patina_client::Statement::from(
                "INSERT INTO flags VALUES ('tls', 'on')",
            )])
            .await
            .unwrap();
    });
    eventually("the flag in ord", Duration::from_secs(30), || {
        rt.block_on(async {
            let Ok(mut rows) = b
                .client()
                .query(&patina_client::Statement::from("SELECT value FROM flags"))
                .await
            else {
                return false;
            };
            matches!(rows.next().await, Ok(Some(row)) if row[0] == "on")
        })
    });
}
