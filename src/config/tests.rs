use super::*;

const EXAMPLE: &str = include_str!("../../config/patina.example.toml");
const DEV: &str = include_str!("../../config/dev.toml");
const MINIMAL: &str = "[node]\nregion = \"ams\"\n";

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> String {
    match Config::from_toml_str(text, env(vars)) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn example_file_loads() {
    let config = Config::from_toml_str(EXAMPLE, no_env()).unwrap();
    assert_eq!(config.node.region, "ams");
    assert!(!config.node.global);
    assert_eq!(
        config.db.schema_paths,
        [PathBuf::from("/etc/patina/schema")]
    );
    assert_eq!(config.gossip.external_addr, Some(addr("10.0.0.1:7878")));
    assert_eq!(config.gossip.bootstrap.len(), 2);
    let tls = config.gossip.tls.as_ref().unwrap();
    assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/patina/ca.pem")));
    // Given, but ignored on a non-global node.
    assert_eq!(config.global_gossip, None);
    assert_eq!(config.rollup.len(), 1);
    assert_eq!(config.rollup[0].name, "app_regions");
    assert_eq!(config.rollup[0].key, ["app"]);

    let global = Config::from_toml_str(EXAMPLE, env(&[("PATINA_NODE__GLOBAL", "true")]));
    let global_gossip = global.unwrap().global_gossip.unwrap();
    assert_eq!(global_gossip.bootstrap, ["10.1.0.1:7879"]);
}

/// The commented-out `# key = value` lines of the example are valid too.
#[test]
fn example_file_commented_keys_load() {
    let mut uncommented = 0;
    let text: String = EXAMPLE
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or("");
            let is_key = rest.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            });
            if is_key {
                uncommented += 1;
                format!("{rest}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(uncommented, 5);
    let config = Config::from_toml_str(&text, env(&[("PATINA_NODE__GLOBAL", "true")])).unwrap();
    let global_gossip = config.global_gossip.unwrap();
    assert_eq!(global_gossip.external_addr, Some(addr("10.0.0.1:7879")));
    assert!(global_gossip.tls.is_some());
    assert!(config.api.authz.is_some());
    assert_eq!(
        config.telemetry.prometheus_addr,
        Some(addr("127.0.0.1:9090"))
    );
}

#[test]
fn example_file_documents_every_key() {
    let keys = [
        "[node]",
        "region =",
        "global =",
        "data_dir =",
        "[db]",
        "schema_paths =",
        "global_schema_paths =",
        "allow_destructive_schema =",
        "tombstone_retention =",
        "[gossip]",
        "addr =",
        "external_addr =",
        "bootstrap =",
        "insecure =",
        "[gossip.tls]",
        "cert_file =",
        "key_file =",
        "ca_file =",
        "[global_gossip]",
        "tls = {",
        "[api]",
        "body_limit_bytes =",
        "authz.bearer_token =",
        "[telemetry]",
        "prometheus_addr =",
        "[[rollup]]",
        "name =",
        "key =",
        "query =",
    ];
    for key in keys {
        assert!(EXAMPLE.contains(key), "{key} is not in the example");
    }
}

#[test]
fn dev_file_loads_and_its_paths_exist_from_the_repo_root() {
    let config = Config::from_toml_str(DEV, no_env()).unwrap();
    assert_eq!(config.node.region, "dev");
    assert_eq!(config.node.data_dir, PathBuf::from("./data/node1"));
    assert_eq!(config.api.addr, addr("127.0.0.1:8080"));
    assert_eq!(config.gossip.addr, addr("127.0.0.1:7878"));
    assert!(config.gossip.bootstrap.is_empty());
    assert_eq!(config.gossip.tls, None);
    // Said explicitly, as the agent requires without TLS.
    assert!(config.gossip.insecure);
    assert_eq!(
        config.gossip_trust().unwrap(),
        [("gossip", Trust::Insecure)]
    );
    assert_eq!(config.api.authz, None);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in &config.db.schema_paths {
        assert!(path.is_relative());
        assert!(root.join(path).is_file(), "{} is missing", path.display());
    }
}

#[test]
fn global_bootstrap_on_a_node_that_is_not_global_is_dropped_with_a_warning() {
    let text = format!("{MINIMAL}\n[global_gossip]\nbootstrap = [\"10.0.0.9:7879\"]\n");
    let config = Config::from_toml_str(&text, no_env()).unwrap();
    assert_eq!(config.global_gossip, None);
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].contains("node.global = false"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn defaults() {
    let config = Config::from_toml_str(MINIMAL, no_env()).unwrap();
    let expected = Config {
        node: NodeConfig {
            region: "ams".to_string(),
            global: false,
            data_dir: PathBuf::from("/var/lib/patina"),
        },
        db: DbConfig {
            schema_paths: vec![],
            global_schema_paths: vec![],
            allow_destructive_schema: false,
            tombstone_retention: 604_800.0,
        },
        gossip: GossipConfig {
            addr: addr("0.0.0.0:7878"),
            external_addr: None,
            bootstrap: vec![],
            tls: None,
            insecure: false,
        },
        global_gossip: None,
        api: ApiConfig {
            addr: addr("127.0.0.1:8080"),
            authz: None,
            body_limit_bytes: 64 * 1024 * 1024,
            query_timeout: 30.0,
            subscription_idle_expiry: 3600.0,
            subscriptions_max: 10_000,
        },
        telemetry: TelemetryConfig {
            prometheus_addr: None,
        },
        rollup: vec![],
        warnings: vec![],
    };
    assert_eq!(config, expected);

    // A global node without [global_gossip] gets its defaults.
    let config = Config::from_toml_str(&format!("{MINIMAL}global = true\n"), no_env());
    let global_gossip = config.unwrap().global_gossip.unwrap();
    assert_eq!(global_gossip.addr, addr("0.0.0.0:7879"));
    assert_eq!(global_gossip, GlobalGossipConfig::default());
}

#[test]
fn env_overrides_scalars_bools_and_arrays() {
    let vars = env(&[
        ("PATINA_API__ADDR", "127.0.0.1:9000"),
        ("PATINA_NODE__GLOBAL", "true"),
        ("PATINA_DB__SCHEMA_PATHS", r#"["a.sql","b"]"#),
        ("PATINA_API__BODY_LIMIT_BYTES", "1024"),
        ("PATINA_NODE__DATA_DIR", "/tmp/x"),
        ("PATINA_Node__Region", "nrt"),
        ("PATINA_GLOBAL_GOSSIP__ADDR", "0.0.0.0:9999"),
        // Not overrides: no `__`, or not PATINA_.
        ("PATINA_LOG", "debug"),
        ("HOME", "/root"),
    ]);
    let text = format!("{MINIMAL}[api]\naddr = \"127.0.0.1:1\"\n");
    let config = Config::from_toml_str(&text, vars).unwrap();
    assert_eq!(config.api.addr, addr("127.0.0.1:9000"));
    assert!(config.node.global);
    assert_eq!(config.node.region, "nrt");
    assert_eq!(
        config.db.schema_paths,
        [PathBuf::from("a.sql"), PathBuf::from("b")]
    );
    assert_eq!(config.api.body_limit_bytes, 1024);
    assert_eq!(config.node.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(config.global_gossip.unwrap().addr, addr("0.0.0.0:9999"));
}

#[test]
fn env_overrides_nested_tables() {
    let vars = env(&[
        ("PATINA_GOSSIP__TLS__CERT_FILE", "/etc/patina/node.pem"),
        ("PATINA_GOSSIP__TLS__KEY_FILE", "/etc/patina/node.key"),
        ("PATINA_API__AUTHZ__BEARER_TOKEN", "s3cret"),
    ]);
    let config = Config::from_toml_str(MINIMAL, vars).unwrap();
    let tls = config.gossip.tls.unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("/etc/patina/node.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/etc/patina/node.key"));
    assert_eq!(tls.ca_file, None);
    let authz = config.api.authz.unwrap();
    assert_eq!(authz.bearer_token, "s3cret");
    assert!(!format!("{authz:?}").contains("s3cret"));

    // Into a table the file has, keeping its other keys.
    let text = format!("{MINIMAL}[gossip.tls]\ncert_file = \"a\"\nkey_file = \"b\"\n");
    let vars = env(&[("PATINA_GOSSIP__TLS__CA_FILE", "ca.pem")]);
    let tls = Config::from_toml_str(&text, vars)
        .unwrap()
        .gossip
        .tls
        .unwrap();
    assert_eq!(tls.cert_file, PathBuf::from("a"));
    assert_eq!(tls.ca_file, Some(PathBuf::from("ca.pem")));

    // A whole table as an inline TOML table.
    let vars = env(&[("PATINA_API__AUTHZ", r#"{ bearer_token = "t" }"#)]);
    let config = Config::from_toml_str(MINIMAL, vars).unwrap();
    assert_eq!(config.api.authz.unwrap().bearer_token, "t");
}

#[test]
fn env_values_that_read_as_other_toml_types_are_taken_as_strings_where_needed() {
    let vars = env(&[
        ("PATINA_NODE__REGION", "123"),
        ("PATINA_API__AUTHZ__BEARER_TOKEN", "true"),
    ]);
    let config = Config::from_toml_str(MINIMAL, vars).unwrap();
    assert_eq!(config.node.region, "123");
    assert_eq!(config.api.authz.unwrap().bearer_token, "true");
    let vars = env(&[("PATINA_NODE__REGION", "\"2024-01-01\"")]);
    assert_eq!(
        Config::from_toml_str(MINIMAL, vars).unwrap().node.region,
        "2024-01-01"
    );
    // When the string does not fit either, the error is about the value.
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_API__BODY_LIMIT_BYTES", "-5")]),
        "environment variable PATINA_API__BODY_LIMIT_BYTES: `api.body_limit_bytes`: \
         invalid value: integer `-5`, expected u64"
    );
    let e = load_err(MINIMAL, &[("PATINA_API__ADDR", "123")]);
    assert!(
        e.starts_with(
            "environment variable PATINA_API__ADDR: `api.addr`: invalid socket address \"123\""
        ),
        "{e}"
    );
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_NODE__GLOBAL", "yes")]),
        "environment variable PATINA_NODE__GLOBAL: `node.global`: \
         invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn env_errors_name_the_variable() {
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_API__ADRR", "127.0.0.1:9000")]),
        "environment variable PATINA_API__ADRR: unknown key `api.adrr` \
         (known keys of [api]: addr, authz, body_limit_bytes, query_timeout, subscription_idle_expiry, subscriptions_max)"
    );
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_APII__ADDR", "x")]),
        "environment variable PATINA_APII__ADDR: unknown key `apii` (known keys at the \
         top level: node, db, gossip, global_gossip, api, telemetry, rollup)"
    );
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_GOSSIP__TLS__CERTFILE", "a")]),
        "environment variable PATINA_GOSSIP__TLS__CERTFILE: unknown key \
         `gossip.tls.certfile` (known keys of [gossip.tls]: cert_file, key_file, ca_file)"
    );
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_API__ADDR", "localhost")]),
        "environment variable PATINA_API__ADDR: `api.addr`: invalid socket address \
         \"localhost\": invalid socket address syntax (expected IP:PORT, e.g. \
         \"127.0.0.1:8080\" or \"[::1]:8080\"; no host names here)"
    );
    // A table the variable created, missing its other required key.
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_GOSSIP__TLS__CERT_FILE", "a")]),
        "environment variable PATINA_GOSSIP__TLS__CERT_FILE: `gossip.tls.key_file` is \
         required: the PEM private key of cert_file"
    );
    let e = load_err(MINIMAL, &[("PATINA_ROLLUP__NAME", "x")]);
    assert!(
        e.starts_with("environment variable PATINA_ROLLUP__NAME: [[rollup]] entries cannot be set"),
        "{e}"
    );
    let e = load_err(MINIMAL, &[("PATINA_API__", "x")]);
    assert!(
        e.starts_with("environment variable PATINA_API__: empty name part"),
        "{e}"
    );
    assert_eq!(
        load_err(MINIMAL, &[("PATINA_NODE__REGION__X", "x")]),
        "environment variable PATINA_NODE__REGION__X: `node.region`: is a string, not a \
         table with keys to set"
    );
    let e = load_err(
        MINIMAL,
        &[
            ("PATINA_api__addr", "127.0.0.1:2"),
            ("PATINA_API__AUTHZ__BEARER_TOKEN", "t"),
            ("PATINA_API__ADDR", "127.0.0.1:1"),
        ],
    );
    assert_eq!(
        e,
        "environment variable PATINA_api__addr: sets `api.addr`, as PATINA_API__ADDR does"
    );
    // A semantic error in an overridden value names the variable too.
    let e = load_err(MINIMAL, &[("PATINA_NODE__REGION", "AMS")]);
    assert!(
        e.starts_with(
            "environment variable PATINA_NODE__REGION: `node.region`: invalid region \"AMS\""
        ),
        "{e}"
    );
}

#[test]
fn unknown_keys_in_the_file_are_named() {
    assert_eq!(
        load_err(&format!("{MINIMAL}[api]\nadrr = \"127.0.0.1:1\"\n"), &[]),
        "config: unknown key `api.adrr` (known keys of [api]: addr, authz, body_limit_bytes, query_timeout, subscription_idle_expiry, subscriptions_max)"
    );
    assert_eq!(
        load_err(&format!("colour = 1\n{MINIMAL}"), &[]),
        "config: unknown key `colour` (known keys at the top level: node, db, gossip, \
         global_gossip, api, telemetry, rollup)"
    );
    assert_eq!(
        load_err(
            &format!("{MINIMAL}[gossip.tls]\ncert_file = \"a\"\nkey_file = \"b\"\nca = \"c\"\n"),
            &[]
        ),
        "config: unknown key `gossip.tls.ca` (known keys of [gossip.tls]: cert_file, \
         key_file, ca_file)"
    );
    assert_eq!(
        load_err(&format!("{MINIMAL}[api.authz]\ntoken = \"t\"\n"), &[]),
        "config: unknown key `api.authz.token` (known keys of [api.authz]: bearer_token)"
    );
    assert_eq!(
        load_err(&format!("{MINIMAL}[[rollup]]\nname = \"a\"\nkey = [\"k\"]\nquery = \"SELECT 1\"\n[[rollup]]\nnam = \"b\"\n"), &[]),
        "config: unknown key `rollup[1].nam` (known keys of [[rollup]]: name, key, query)"
    );
    // An ignored [global_gossip] is still checked for typos.
    assert_eq!(
        load_err(&format!("{MINIMAL}[global_gossip]\nadr = \"x\"\n"), &[]),
        "config: unknown key `global_gossip.adr` (known keys of [global_gossip]: addr, \
         external_addr, bootstrap, tls, insecure)"
    );
}

#[test]
fn bad_values_are_named() {
    let e = load_err(&format!("{MINIMAL}[api]\naddr = \"x\"\n"), &[]);
    assert!(
        e.starts_with("config: `api.addr`: invalid socket address \"x\": "),
        "{e}"
    );
    let e = load_err(
        &format!("{MINIMAL}[gossip]\nexternal_addr = \"10.0.0.1\"\n"),
        &[],
    );
    assert!(
        e.starts_with("config: `gossip.external_addr`: invalid socket address \"10.0.0.1\""),
        "{e}"
    );
    let e = load_err(
        &format!("{MINIMAL}[telemetry]\nprometheus_addr = 9090\n"),
        &[],
    );
    assert_eq!(
        e,
        "config: `telemetry.prometheus_addr`: invalid type: integer `9090`, expected a string"
    );
    let e = load_err("[node]\nregion = \"ams\"\nglobal = \"yes\"\n", &[]);
    assert_eq!(
        e,
        "config: `node.global`: invalid type: string \"yes\", expected a boolean"
    );
    let e = load_err(
        &format!("{MINIMAL}[gossip]\nexternal_addr = \"0.0.0.0:7878\"\n"),
        &[],
    );
    assert!(
        e.starts_with("config: `gossip.external_addr`: 0.0.0.0:7878 cannot be dialed"),
        "{e}"
    );
    let e = load_err("node = 5\n", &[]);
    assert_eq!(
        e,
        "config: `node`: invalid type: integer `5`, expected a table"
    );
    let e = load_err(&format!("{MINIMAL}[api]\nbody_limit_bytes = 0\n"), &[]);
    assert_eq!(e, "config: `api.body_limit_bytes`: must be at least 1");
    for expiry in ["0.5", "-1", "31536001"] {
        let e = load_err(
            &format!("{MINIMAL}[api]\nsubscription_idle_expiry = {expiry}\n"),
            &[],
        );
        assert_eq!(
            e,
            "config: `api.subscription_idle_expiry`: must be 0 (never expire) or a number of \
             seconds from 1 to 31536000, e.g. 3600",
            "{expiry}"
        );
    }
    let e = load_err(
        &format!("{MINIMAL}[db]\nschema_paths = [\"a\", \"\"]\n"),
        &[],
    );
    assert_eq!(e, "config: `db.schema_paths[1]`: must not be empty");
    let e = load_err("[node\nregion = \"ams\"\n", &[]);
    assert!(
        e.starts_with("config: invalid TOML: ") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn regions() {
    for ok in ["ams", "us-east-1", "a", &"x".repeat(32)] {
        let text = format!("[node]\nregion = \"{ok}\"\n");
        assert_eq!(
            Config::from_toml_str(&text, no_env()).unwrap().node.region,
            ok
        );
    }
    for bad in ["AMS", "", "a_b", "a b", "ämß", &"x".repeat(33)] {
        let e = load_err(&format!("[node]\nregion = \"{bad}\"\n"), &[]);
        assert_eq!(
            e,
            format!("config: `node.region`: invalid region {bad:?}: use 1 to 32 characters of a-z, 0-9 and -, e.g. \"ams\"")
        );
    }
    let e = load_err("[node]\nregion = \"global\"\n", &[]);
    assert!(
        e.starts_with("config: `node.region`: \"global\" is the global cluster's name"),
        "{e}"
    );
}

#[test]
fn missing_region() {
    let expected =
        "config: `node.region` is required: the name of this node's region, e.g. \"ams\"";
    assert_eq!(load_err("[node]\nglobal = true\n", &[]), expected);
    assert_eq!(load_err("", &[]), expected);
    assert_eq!(load_err("[api]\naddr = \"127.0.0.1:1\"\n", &[]), expected);
    // The environment can supply it.
    let config = Config::from_toml_str("", env(&[("PATINA_NODE__REGION", "ams")])).unwrap();
    assert_eq!(config.node.region, "ams");
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patina.toml");
    let e = Config::load(&path, no_env()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    let e = e.to_string();
    assert!(
        e.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{e}"
    );

    std::fs::write(&path, format!("{MINIMAL}[api]\nadrr = 1\n")).unwrap();
    let e = Config::load(&path, no_env()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "config file {}: unknown key `api.adrr` (known keys of [api]: addr, authz, body_limit_bytes, query_timeout, subscription_idle_expiry, subscriptions_max)",
            path.display()
        )
    );
    std::fs::write(&path, EXAMPLE).unwrap();
    let from_file = Config::load(&path, no_env()).unwrap();
    assert_eq!(from_file, Config::from_toml_str(EXAMPLE, no_env()).unwrap());
}

#[test]
fn bootstrap_peers() {
    let ok = r#"["10.0.0.2:7878", "node2.ams.internal:7878", "localhost:1", "[fd00::2]:7878"]"#;
    let config = Config::from_toml_str(&format!("{MINIMAL}[gossip]\nbootstrap = {ok}\n"), no_env());
    assert_eq!(config.unwrap().gossip.bootstrap.len(), 4);
    for bad in [
        "10.0.0.2",
        "host",
        ":7878",
        "host:",
        "host:0",
        "host:65536",
        "fd00::2:7878",
        "a..b:1",
        "-a:1",
        "a b:1",
    ] {
        let e = load_err(
            &format!("{MINIMAL}[gossip]\nbootstrap = [\"10.0.0.1:1\", \"{bad}\"]\n"),
            &[],
        );
        assert!(
            e.starts_with(&format!(
                "config: `gossip.bootstrap[1]`: invalid peer address {bad:?}"
            )),
            "{e}"
        );
    }
    let e = load_err(
        &format!("{MINIMAL}[global_gossip]\nbootstrap = [\"x\"]\n"),
        &[],
    );
    assert!(
        e.starts_with("config: `global_gossip.bootstrap[0]`: invalid peer address"),
        "{e}"
    );
}

#[test]
fn port_clashes() {
    let text = format!("{MINIMAL}global = true\n[global_gossip]\naddr = \"127.0.0.1:7878\"\n");
    let e = load_err(&text, &[]);
    assert!(
        e.starts_with("config: `global_gossip.addr`: 127.0.0.1:7878 is also gossip.addr"),
        "{e}"
    );
    // Port 0 never clashes (tests bind everything on port 0).
    let text = format!("{MINIMAL}global = true\n[gossip]\naddr = \"127.0.0.1:0\"\n[global_gossip]\naddr = \"127.0.0.1:0\"\n[api]\naddr = \"127.0.0.1:0\"\n[telemetry]\nprometheus_addr = \"127.0.0.1:0\"\n");
    Config::from_toml_str(&text, no_env()).unwrap();
    let e = load_err(
        &format!("{MINIMAL}[telemetry]\nprometheus_addr = \"0.0.0.0:8080\"\n"),
        &[],
    );
    assert!(
        e.starts_with("config: `telemetry.prometheus_addr`: 0.0.0.0:8080 is also api.addr"),
        "{e}"
    );
}

#[test]
fn bearer_tokens() {
    for bad in ["", "a b", "tab\there"] {
        let e = load_err(MINIMAL, &[("PATINA_API__AUTHZ__BEARER_TOKEN", bad)]);
        assert!(
            e.contains("`api.authz.bearer_token`: must be non-empty printable ASCII"),
            "{e}"
        );
        assert!(
            bad.is_empty() || !e.contains(bad),
            "the token is echoed: {e}"
        );
    }
    assert_eq!(
        load_err(&format!("{MINIMAL}[api.authz]\n"), &[]),
        "config: `api.authz.bearer_token` is required: the token clients send as \
         `Authorization: Bearer <token>`"
    );
}

#[test]
fn rollups() {
    let text = format!(
        "{MINIMAL}[[rollup]]\nname = \"app_regions\"\nkey = [\"app\"]\nquery = \"SELECT app, count(*) FROM machines GROUP BY app\"\n\
         [[rollup]]\nname = \"app_images\"\nkey = [\"app\", \"image\"]\nquery = \"SELECT app, image FROM machines\"\n"
    );
    let config = Config::from_toml_str(&text, no_env()).unwrap();
    assert_eq!(config.rollup.len(), 2);
    assert_eq!(
        config.rollup[1],
        RollupConfig {
            name: "app_images".to_string(),
            key: vec!["app".to_string(), "image".to_string()],
            query: "SELECT app, image FROM machines".to_string(),
        }
    );

    let rollup = |name: &str, key: &str, query: &str| {
        format!("{MINIMAL}[[rollup]]\nname = \"x\"\nkey = [\"k\"]\nquery = \"SELECT 1\"\n[[rollup]]\nname = {name}\nkey = {key}\nquery = {query}\n")
    };
    let cases = [
        (
            rollup("\"y\"", "[]", "\"SELECT 1\""),
            "config: `rollup[1].key`: must name at least one column",
        ),
        (
            rollup("\"y\"", "[\"k\"]", "\" \""),
            "config: `rollup[1].query`: must not be empty",
        ),
        (
            rollup("\"x\"", "[\"k\"]", "\"SELECT 1\""),
            "config: `rollup[1].name`: rollup \"x\" is declared twice",
        ),
        (
            rollup("\"a-b\"", "[\"k\"]", "\"SELECT 1\""),
            "config: `rollup[1].name`: invalid table name \"a-b\"",
        ),
        (
            rollup("\"y\"", "[\"k\", \"Region\"]", "\"SELECT 1\""),
            "config: `rollup[1].key[1]`: the leader adds the region column itself",
        ),
        (
            rollup("\"y\"", "[\"k\", \"K\"]", "\"SELECT 1\""),
            "config: `rollup[1].key[1]`: column \"K\" is named twice",
        ),
        (
            rollup("\"y\"", "[\"1k\"]", "\"SELECT 1\""),
            "config: `rollup[1].key[0]`: invalid column name \"1k\"",
        ),
        (
            rollup("\"y\"", "\"k\"", "\"SELECT 1\""),
            "config: `rollup[1].key`: invalid type: string \"k\", expected an array",
        ),
    ];
    for (text, expected) in cases {
        let e = load_err(&text, &[]);
        assert!(e.starts_with(expected), "{e}\nexpected: {expected}");
    }
    assert_eq!(
        load_err(
            &format!("{MINIMAL}[[rollup]]\nname = \"x\"\nkey = [\"k\"]\n"),
            &[]
        ),
        "config: `rollup[0].query` is required: the SELECT whose rows the leader writes"
    );
}

/// Gossip must authenticate its peers unless insecure = true is said
/// explicitly; the error names both keys and how to fix it.
#[test]
fn gossip_trust_needs_tls_with_a_ca_or_an_explicit_insecure() {
    let trust = |text: &str| {
        Config::from_toml_str(text, no_env())
            .unwrap()
            .gossip_trust()
    };
    let err = trust(MINIMAL).unwrap_err().to_string();
    assert!(
        err.contains("`gossip.tls`") && err.contains("`gossip.insecure`"),
        "{err}"
    );
    assert!(err.contains("patina tls ca"), "{err}");

    let no_ca = format!("{MINIMAL}[gossip.tls]\ncert_file = \"a\"\nkey_file = \"b\"\n");
    let err = trust(&no_ca).unwrap_err().to_string();
    assert!(
        err.contains("`gossip.tls.ca_file`") && err.contains("gossip.insecure"),
        "{err}"
    );

    let insecure = format!("{MINIMAL}[gossip]\ninsecure = true\n");
    assert_eq!(trust(&insecure).unwrap(), [("gossip", Trust::Insecure)]);
    assert_eq!(trust(EXAMPLE).unwrap(), [("gossip", Trust::Authenticated)]);

    // A global member needs the same of its global cluster.
    let global = "[node]\nregion = \"ams\"\nglobal = true\n[gossip]\ninsecure = true\n".to_string();
    let err = trust(&global).unwrap_err().to_string();
    assert!(
        err.contains("`global_gossip.tls`") && err.contains("`global_gossip.insecure`"),
        "{err}"
    );
    let both = format!("{global}[global_gossip]\ninsecure = true\n");
    assert_eq!(
        trust(&both).unwrap(),
        [
            ("gossip", Trust::Insecure),
            ("global_gossip", Trust::Insecure)
        ]
    );
    let env = env(&[("PATINA_GOSSIP__INSECURE", "true")]);
    let config = Config::from_toml_str(MINIMAL, env).unwrap();
    assert_eq!(
        config.gossip_trust().unwrap(),
        [("gossip", Trust::Insecure)]
    );
}

#[test]
fn allow_destructive_schema_is_off_unless_said() {
    assert!(
        !Config::from_toml_str(MINIMAL, no_env())
            .unwrap()
            .db
            .allow_destructive_schema
    );
    let text = format!("{MINIMAL}[db]\nallow_destructive_schema = true\n");
    assert!(
        Config::from_toml_str(&text, no_env())
            .unwrap()
            .db
            .allow_destructive_schema
    );
    let from_env = env(&[("PATINA_DB__ALLOW_DESTRUCTIVE_SCHEMA", "true")]);
    assert!(
        Config::from_toml_str(MINIMAL, from_env)
            .unwrap()
            .db
            .allow_destructive_schema
    );
    let e = load_err(
        &format!("{MINIMAL}[db]\nallow_destructive_schema = \"yes\"\n"),
        &[],
    );
    assert!(
        e.contains("`db.allow_destructive_schema`") && e.contains("expected a boolean"),
        "{e}"
    );
}

#[test]
fn tombstone_retention_is_a_week_zero_or_a_bounded_number_of_seconds() {
    let config = Config::from_toml_str(MINIMAL, no_env()).unwrap();
    assert_eq!(
        config.db.tombstone_retention(),
        Some(std::time::Duration::from_secs(604_800))
    );
    let off = Config::from_toml_str(
        &format!("{MINIMAL}[db]\ntombstone_retention = 0\n"),
        no_env(),
    )
    .unwrap();
    assert_eq!(off.db.tombstone_retention(), None);
    let short = Config::from_toml_str(
        &format!("{MINIMAL}[db]\ntombstone_retention = 2.5\n"),
        no_env(),
    )
    .unwrap();
    assert_eq!(
        short.db.tombstone_retention(),
        Some(std::time::Duration::from_millis(2500))
    );
    for bad in ["0.5", "-1", "315360001"] {
        let e = Config::from_toml_str(
            &format!("{MINIMAL}[db]\ntombstone_retention = {bad}\n"),
            no_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`db.tombstone_retention`")
                && e.contains("must be 0 (keep tombstones forever)"),
            "{bad}: {e}"
        );
    }
}
