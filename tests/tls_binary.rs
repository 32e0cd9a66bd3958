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
