//! The agent's configuration: one TOML file (`config/patina.example.toml`
//! documents every key) plus environment overrides
//! `PATINA_<SECTION>__<KEY>[__<KEY>…]`.
//!
//! Loading reads the file, parses it into a TOML table, applies the
//! environment overrides to that table, deserializes it (an unknown key is an
//! error), then validates and normalizes. Every error names the key it is
//! about and where the value came from: the file or an environment variable.
//!
//! Relative paths (`node.data_dir`, `db.*schema_paths`, `*.tls.*_file`) are
//! kept as written, so they resolve against the process's current directory,
//! not the config file's: `cargo run -- agent -c config/dev.toml` from the
//! repository root finds `config/demo-schema.sql`. Loading never opens those
//! paths; the agent reports a missing schema or certificate when it opens it.

// `patina agent` is this module's user and is being wired in separately;
// until then only the tests below call it.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Environment variables starting with this (and holding `__`) override keys.
pub const ENV_PREFIX: &str = "PATINA_";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/patina";
pub const DEFAULT_GOSSIP_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7878);
pub const DEFAULT_GLOBAL_GOSSIP_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7879);
pub const DEFAULT_API_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
pub const DEFAULT_BODY_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// A query running longer holds one of the node's few read connections;
/// 30 s is far beyond any lookup and still ends a runaway in bounded time.
pub const DEFAULT_QUERY_TIMEOUT_SECS: f64 = 30.0;
/// A subscription without a listener this long is removed (an hour: a
/// client re-attaching after a restart or a network cut finds it, an
/// abandoned one frees its place).
pub const DEFAULT_SUBSCRIPTION_IDLE_EXPIRY_SECS: f64 = 3600.0;
/// A deleted row's tombstone is kept at least this long after every member
/// applied the delete (a week): a node away for less rejoins by syncing,
/// one away longer must be re-seeded from a backup (docs/crr.md).
pub const DEFAULT_TOMBSTONE_RETENTION_SECS: f64 = 604_800.0;
/// The name of the global cluster, so no region may take it.
pub const GLOBAL_CLUSTER_NAME: &str = "global";
const REGION_LEN_MAX: usize = 32;

/// The whole configuration, validated.
///
/// Invariant after loading: `global_gossip.is_some() == node.global` (a
/// `[global_gossip]` section of a non-global node is checked, then dropped;
/// a global node without one gets the defaults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub db: DbConfig,
    #[serde(default)]
    pub gossip: GossipConfig,
    #[serde(default)]
    pub global_gossip: Option<GlobalGossipConfig>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub rollup: Vec<RollupConfig>,
    /// What loading ignored and the agent should say so about (logged at
    /// start).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The regional cluster's name: 1–32 of `a-z`, `0-9`, `-`; not `global`.
    pub region: String,
    /// Also a member of the global cluster.
    #[serde(default)]
    pub global: bool,
    /// Holds `regional.db`, `global.db`, the actor id and known members.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// Regional tables: `.sql` files or folders of them.
    pub schema_paths: Vec<PathBuf>,
    /// Global tables (rollup targets, global flags): `.sql` files or folders.
    pub global_schema_paths: Vec<PathBuf>,
    /// Whether applying the schema files at start and on SIGHUP may drop
    /// the tables and columns they no longer declare (their data with
    /// them). `patina reload --allow-destructive` asks for it per reload.
    pub allow_destructive_schema: bool,
    /// Seconds a deleted row's tombstone (its clock) is kept after this
    /// node applied the delete, once every member has; 0: kept forever.
    pub tombstone_retention: f64,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            schema_paths: Vec::new(),
            global_schema_paths: Vec::new(),
            allow_destructive_schema: false,
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION_SECS,
        }
    }
}

impl DbConfig {
    /// `tombstone_retention` as the replicator takes it.
    pub fn tombstone_retention(&self) -> Option<std::time::Duration> {
        (self.tombstone_retention > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.tombstone_retention))
    }
}

/// The regional cluster's transport (QUIC over UDP).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    #[serde(deserialize_with = "de_addr")]
    pub addr: SocketAddr,
    /// What peers should dial, when not `addr` (NAT, 0.0.0.0 binds).
    #[serde(deserialize_with = "de_opt_addr")]
    pub external_addr: Option<SocketAddr>,
    /// Peers to join through, `HOST:PORT` (host names allowed).
    pub bootstrap: Vec<String>,
    /// None: a generated self-signed certificate, peers not verified —
    /// allowed only with `insecure` ([`Config::gossip_trust`]).
    pub tls: Option<TlsConfig>,
    /// Run without authenticating peers (dev clusters): must be said
    /// explicitly, never a default.
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// With it, peers must present certificates it signed (mutual TLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The global cluster's transport; used only when `node.global`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalGossipConfig {
    #[serde(deserialize_with = "de_addr")]
    pub addr: SocketAddr,
    #[serde(deserialize_with = "de_opt_addr")]
    pub external_addr: Option<SocketAddr>,
    /// Global members of any region, `HOST:PORT`.
    pub bootstrap: Vec<String>,
    pub tls: Option<TlsConfig>,
    /// As `gossip.insecure`.
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    #[serde(deserialize_with = "de_addr")]
    pub addr: SocketAddr,
    /// Some: every route requires `Authorization: Bearer <token>`.
    pub authz: Option<AuthzConfig>,
    /// Larger request bodies get 413.
    pub body_limit_bytes: u64,
    /// Seconds a query (or a subscription's query) may run before it is
    /// interrupted with an error.
    pub query_timeout: f64,
    /// Seconds a subscription may have no attached stream before it is
    /// removed; 0: never removed by itself.
    pub subscription_idle_expiry: f64,
    /// Subscriptions this node holds at most; creating more is refused
    /// (503) until some are removed or expire.
    pub subscriptions_max: u64,
}

/// API authorization. `Debug` does not print the token.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    pub bearer_token: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// None: `/metrics` is served on the API port.
    #[serde(deserialize_with = "de_opt_addr")]
    pub prometheus_addr: Option<SocketAddr>,
}

/// A SQL aggregate the region's leader writes into a global table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// The target global table (a plain SQL identifier).
    pub name: String,
    /// The query's key columns; the target's primary key is (key…, region).
    pub key: Vec<String>,
    /// A read-only SELECT over regional tables.
    pub query: String,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            addr: DEFAULT_GOSSIP_ADDR,
            external_addr: None,
            bootstrap: Vec::new(),
            tls: None,
            insecure: false,
        }
    }
}

impl Default for GlobalGossipConfig {
    fn default() -> Self {
        GlobalGossipConfig {
            addr: DEFAULT_GLOBAL_GOSSIP_ADDR,
            external_addr: None,
            bootstrap: Vec::new(),
            tls: None,
            insecure: false,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: DEFAULT_API_ADDR,
            authz: None,
            body_limit_bytes: DEFAULT_BODY_LIMIT_BYTES,
            query_timeout: DEFAULT_QUERY_TIMEOUT_SECS,
            subscription_idle_expiry: DEFAULT_SUBSCRIPTION_IDLE_EXPIRY_SECS,
            subscriptions_max: patina_subs::SUBSCRIPTIONS_MAX_DEFAULT as u64,
        }
    }
}

impl fmt::Debug for AuthzConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthzConfig")
            .field("bearer_token", &"<redacted>")
            .finish()
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// Text given to [`Config::from_toml_str`] (tests).
    #[cfg(test)]
    Text,
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            #[cfg(test)]
            Origin::Text => f.write_str("config"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: Origin, message: String },
    /// `known` reads like "known keys of [api]: addr, authz, body_limit_bytes".
    #[error("{origin}: unknown key `{key}` ({known})")]
    UnknownKey {
        origin: Origin,
        key: String,
        known: String,
    },
    #[error("{origin}: `{key}` is required{}", .hint.map(|h| format!(": {h}")).unwrap_or_default())]
    MissingKey {
        origin: Origin,
        key: String,
        hint: Option<&'static str>,
    },
    #[error("{origin}: `{key}`: {message}")]
    InvalidValue {
        origin: Origin,
        key: String,
        message: String,
    },
    /// A `PATINA_…__…` variable that cannot be an override at all.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("`{section}.tls` is not set and `{section}.insecure` is not true: gossip refuses to run with peers it cannot authenticate. Configure [{section}.tls] cert_file, key_file and ca_file (`patina tls ca` and `patina tls cert` make them), or, for a dev cluster only, set {section}.insecure = true")]
    Unauthenticated { section: &'static str },
    #[error("`{section}.tls.ca_file` is not set, so peers would not be verified, and `{section}.insecure` is not true: set ca_file to the CA that signs your nodes' certificates, or, for a dev cluster only, set {section}.insecure = true")]
    UnverifiedPeers { section: &'static str },
}

/// How a cluster's transport treats its peers, once
/// [`Config::gossip_trust`] has allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Mutual TLS: peers present certificates the CA signed for this cluster.
    Authenticated,
    /// `insecure = true`: anyone who reaches the port is a peer.
    Insecure,
}

impl Config {
    /// Reads the TOML file, applies env overrides, validates.
    ///
    /// `env` is the process environment, e.g. [`process_env`]; variables
    /// that do not start with `PATINA_` or hold no `__` are ignored.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        build(&text, &Origin::File(path.to_path_buf()), env)
    }

    /// Whether each cluster's transport may start: it must authenticate
    /// its peers (`tls` with `ca_file`) unless `insecure = true` says
    /// otherwise explicitly. Checked by the agent at start rather than at
    /// load, so `patina` tools reading a config do not depend on it.
    /// Returns (section, trust) for each cluster the node joins.
    pub fn gossip_trust(&self) -> Result<Vec<(&'static str, Trust)>, ConfigError> {
        let g = &self.gossip;
        let mut out = vec![("gossip", trust("gossip", g.tls.as_ref(), g.insecure)?)];
        if let Some(gg) = &self.global_gossip {
            let section = "global_gossip";
            out.push((section, trust(section, gg.tls.as_ref(), gg.insecure)?));
        }
        Ok(out)
    }

    /// Like [`Config::load`] for the text of a config file.
    #[cfg(test)]
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        build(text, &Origin::Text, env)
    }
}

fn trust(
    section: &'static str,
    tls: Option<&TlsConfig>,
    insecure: bool,
) -> Result<Trust, ConfigError> {
    match (tls, insecure) {
        (Some(tls), _) if tls.ca_file.is_some() => Ok(Trust::Authenticated),
        (_, true) => Ok(Trust::Insecure),
        (Some(_), false) => Err(ConfigError::UnverifiedPeers { section }),
        (None, false) => Err(ConfigError::Unauthenticated { section }),
    }
}

/// The process environment for [`Config::load`]. Unlike `std::env::vars`
/// it does not panic on a variable that is not Unicode: it skips it.
pub fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// One `PATINA_A__B=value` variable.
struct Override {
    var: String,
    /// `a.b`: the lowercased parts.
    path: Vec<String>,
    /// The value as TOML when it parses as a TOML value, else a string.
    typed: toml::Value,
    raw: String,
}

fn build(
    text: &str,
    file: &Origin,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let base: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: file.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let overrides = env_overrides(env)?;
    // A variable whose TOML reading does not fit its key is retried as the
    // plain string (region "123", a token "true"); once per variable. When
    // that fails too, the error reported is about the string if the key
    // wants one (an address "123"), else about the TOML reading (`-5`).
    let mut as_string = HashSet::new();
    let mut first_errors: Vec<(String, ConfigError)> = Vec::new();
    loop {
        let mut table = base.clone();
        let env_keys = apply_overrides(&mut table, &overrides, &as_string)?;
        let origin_of = |key: &str| origin_of(key, &env_keys, file);
        match serde_path_to_error::deserialize::<_, Config>(table) {
            Ok(mut config) => {
                validate(&config).map_err(|(key, message)| ConfigError::InvalidValue {
                    origin: origin_of(&key),
                    key,
                    message,
                })?;
                normalize(&mut config);
                return Ok(config);
            }
            Err(e) => {
                let key = e.path().to_string();
                let message = e.inner().message();
                let error = deserialize_error(&key, message, origin_of(&key));
                let retry = (0..overrides.len()).find(|i| {
                    let o = &overrides[*i];
                    !as_string.contains(i) && !o.typed.is_str() && o.path.join(".") == key
                });
                match retry {
                    Some(i) if message.starts_with("invalid type") => {
                        as_string.insert(i);
                        if !message.ends_with("expected a string") {
                            first_errors.push((key, error));
                        }
                    }
                    _ => {
                        return Err(match first_errors.into_iter().find(|(k, _)| *k == key) {
                            Some((_, first)) => first,
                            None => error,
                        })
                    }
                }
            }
        }
    }
}

fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let fail = |message: &str| ConfigError::Env {
            var: var.clone(),
            message: message.to_string(),
        };
        if path.iter().any(String::is_empty) {
            return Err(fail(
                "empty name part: write PATINA_<SECTION>__<KEY>, e.g. PATINA_API__ADDR",
            ));
        }
        if path[0] == "rollup" {
            return Err(fail(
                "[[rollup]] entries cannot be set from the environment; declare them in the config file",
            ));
        }
        let typed = raw
            .parse::<toml::Value>()
            .unwrap_or_else(|_| toml::Value::String(raw.clone()));
        out.push(Override {
            var,
            path,
            typed,
            raw,
        });
    }
    // Sorted, so that a parent table is set before keys inside it.
    out.sort_by(|a, b| a.var.cmp(&b.var));
    let mut seen = std::collections::HashMap::new();
    for o in &out {
        if let Some(first) = seen.insert(&o.path, &o.var) {
            return Err(ConfigError::Env {
                var: o.var.clone(),
                message: format!("sets `{}`, as {first} does", o.path.join(".")),
            });
        }
    }
    Ok(out)
}

/// Applies the overrides; returns each key (dotted) they set or created,
/// with the variable that did.
fn apply_overrides(
    table: &mut toml::Table,
    overrides: &[Override],
    as_string: &HashSet<usize>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env_keys = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        let mut current = &mut *table;
        let mut dotted = String::new();
        for (depth, part) in o.path.iter().enumerate() {
            if !dotted.is_empty() {
                dotted.push('.');
            }
            dotted.push_str(part);
            if depth + 1 == o.path.len() {
                let value = if as_string.contains(&i) {
                    toml::Value::String(o.raw.clone())
                } else {
                    o.typed.clone()
                };
                current.insert(part.clone(), value);
                env_keys.push((dotted.clone(), o.var.clone()));
                break;
            }
            if !current.contains_key(part) {
                env_keys.push((dotted.clone(), o.var.clone()));
            }
            let entry = current
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(t) => t,
                other => {
                    return Err(ConfigError::InvalidValue {
                        origin: Origin::Env(o.var.clone()),
                        key: dotted,
                        message: format!("is a {}, not a table with keys to set", other.type_str()),
                    })
                }
            };
        }
    }
    Ok(env_keys)
}

/// The variable that set `key` or a table holding it, else the file.
fn origin_of(key: &str, env_keys: &[(String, String)], file: &Origin) -> Origin {
    env_keys
        .iter()
        .filter(|(set, _)| {
            key.strip_prefix(set.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
        .max_by_key(|(set, _)| set.len())
        .map_or_else(|| file.clone(), |(_, var)| Origin::Env(var.clone()))
}

/// Turns serde's message about `path` into an error naming the full key.
fn deserialize_error(path: &str, message: &str, origin: Origin) -> ConfigError {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" / "expected
        // `a`" / "there are no fields"; `path` already ends with `x`.
        let known: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let parent = path.rsplit_once('.').map_or("", |(parent, _)| parent);
        return ConfigError::UnknownKey {
            origin,
            key: path.to_string(),
            known: format!("known keys {}: {}", table_label(parent), known.join(", ")),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let key = match (path, field) {
            // `[node]` is required for its region only.
            ("", "node") => "node.region".to_string(),
            ("", _) => field.to_string(),
            _ => format!("{path}.{field}"),
        };
        return ConfigError::MissingKey {
            origin,
            hint: required_hint(&key),
            key,
        };
    }
    // In TOML's words rather than serde's and Rust's.
    let message = match message.split_once(", expected struct ") {
        Some((head, _)) => format!("{head}, expected a table"),
        None => message.replace("expected a sequence", "expected an array"),
    };
    ConfigError::InvalidValue {
        origin,
        key: path.to_string(),
        message,
    }
}

/// "of [api]", "of [[rollup]]", "at the top level".
fn table_label(table: &str) -> String {
    if table.is_empty() {
        return "at the top level".to_string();
    }
    match table.split_once('[') {
        Some((array, _)) => format!("of [[{array}]]"),
        None => format!("of [{table}]"),
    }
}

fn required_hint(key: &str) -> Option<&'static str> {
    // `rollup[0].name` → `rollup.name`
    let mut plain = String::new();
    for part in key.split('.') {
        if !plain.is_empty() {
            plain.push('.');
        }
        plain.push_str(part.split('[').next().unwrap_or(part));
    }
    Some(match plain.as_str() {
        "node.region" => "the name of this node's region, e.g. \"ams\"",
        "gossip.tls.cert_file" | "global_gossip.tls.cert_file" => {
            "the PEM certificate chain this node presents to its peers"
        }
        "gossip.tls.key_file" | "global_gossip.tls.key_file" => "the PEM private key of cert_file",
        "api.authz.bearer_token" => "the token clients send as `Authorization: Bearer <token>`",
        "rollup.name" => "the global table the rollup writes, e.g. \"app_regions\"",
        "rollup.key" => "the query's key columns, e.g. [\"app\"]",
        "rollup.query" => "the SELECT whose rows the leader writes",
        _ => return None,
    })
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_addr(&String::deserialize(d)?).map_err(D::Error::custom)
}

fn de_opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse_addr(&text).map_err(D::Error::custom))
        .transpose()
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| {
        format!(
            "invalid socket address {text:?}: {e} (expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"; no host names here)"
        )
    })
}

/// Whether `region` may name a region (also what `patina devcluster`
/// accepts); on failure, what is wrong with it.
pub fn check_region(region: &str) -> Result<(), String> {
    let region_ok = (1..=REGION_LEN_MAX).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(format!(
            "invalid region {region:?}: use 1 to {REGION_LEN_MAX} characters of a-z, 0-9 and -, e.g. \"ams\""
        ));
    }
    if region == GLOBAL_CLUSTER_NAME {
        return Err(format!(
            "{region:?} is the global cluster's name; pick another region name"
        ));
    }
    Ok(())
}

/// Semantic checks serde cannot do; on failure, the key and the message.
fn validate(config: &Config) -> Result<(), (String, String)> {
    let err = |key: &str, message: String| Err((key.to_string(), message));
    if let Err(message) = check_region(&config.node.region) {
        return err("node.region", message);
    }
    if config.node.data_dir.as_os_str().is_empty() {
        return err("node.data_dir", "must not be empty".to_string());
    }
    for (key, paths) in [
        ("db.schema_paths", &config.db.schema_paths),
        ("db.global_schema_paths", &config.db.global_schema_paths),
    ] {
        if let Some(i) = paths.iter().position(|p| p.as_os_str().is_empty()) {
            return err(&format!("{key}[{i}]"), "must not be empty".to_string());
        }
    }
    // Ten years bounds it within what Duration holds; below a second a
    // node restarting is away longer than the retention.
    let retention = config.db.tombstone_retention;
    if !(retention == 0.0 || (1.0..=315_360_000.0).contains(&retention)) {
        return err(
            "db.tombstone_retention",
            "must be 0 (keep tombstones forever) or a number of seconds from 1 to 315360000, \
             e.g. 604800 (a week)"
                .to_string(),
        );
    }
    let g = &config.gossip;
    check_transport("gossip", g.external_addr, &g.bootstrap, g.tls.as_ref())?;
    if let Some(gg) = &config.global_gossip {
        check_transport(
            "global_gossip",
            gg.external_addr,
            &gg.bootstrap,
            gg.tls.as_ref(),
        )?;
        if config.node.global && clash(gg.addr, g.addr) {
            return err(
                "global_gossip.addr",
                format!(
                    "{} is also gossip.addr; the global cluster needs its own UDP port",
                    gg.addr
                ),
            );
        }
    }
    check_api(&config.api, &config.telemetry)?;
    check_rollups(&config.rollup)
}

fn check_transport(
    section: &str,
    external_addr: Option<SocketAddr>,
    bootstrap: &[String],
    tls: Option<&TlsConfig>,
) -> Result<(), (String, String)> {
    if let Some(addr) = external_addr {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err((
                format!("{section}.external_addr"),
                format!("{addr} cannot be dialed: give the IP and port peers should use"),
            ));
        }
    }
    for (i, peer) in bootstrap.iter().enumerate() {
        check_peer(peer).map_err(|message| (format!("{section}.bootstrap[{i}]"), message))?;
    }
    if let Some(tls) = tls {
        let files = [
            ("cert_file", Some(&tls.cert_file)),
            ("key_file", Some(&tls.key_file)),
            ("ca_file", tls.ca_file.as_ref()),
        ];
        for (name, path) in files {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err((
                    format!("{section}.tls.{name}"),
                    "must not be empty".to_string(),
                ));
            }
        }
    }
    Ok(())
}

/// A bootstrap peer: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, port not 0.
fn check_peer(peer: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "invalid peer address {peer:?}: expected HOST:PORT, e.g. \"10.0.0.2:7878\", \"node2.ams.internal:7878\" or \"[fd00::2]:7878\""
        )
    };
    let port = match peer.parse::<SocketAddr>() {
        Ok(addr) => addr.port(),
        Err(_) => {
            let (host, port) = peer.rsplit_once(':').ok_or_else(bad)?;
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    (1..=63).contains(&label.len())
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !host_ok {
                return Err(bad());
            }
            port.parse::<u16>().map_err(|_| bad())?
        }
    };
    if port == 0 {
        return Err(format!(
            "invalid peer address {peer:?}: port 0 cannot be dialed"
        ));
    }
    Ok(())
}

/// Two binds of one protocol that cannot both succeed (port 0: never).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_api(api: &ApiConfig, telemetry: &TelemetryConfig) -> Result<(), (String, String)> {
    if let Some(authz) = &api.authz {
        // Checked without echoing the token: errors end up in logs.
        let token = &authz.bearer_token;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "api.authz.bearer_token".to_string(),
                "must be non-empty printable ASCII without spaces (it is sent in an HTTP header)"
                    .to_string(),
            ));
        }
    }
    if api.body_limit_bytes == 0 {
        return Err((
            "api.body_limit_bytes".to_string(),
            "must be at least 1".to_string(),
        ));
    }
    // An hour: long enough for any export, and within what Duration holds.
    if !(api.query_timeout > 0.0 && api.query_timeout <= 3600.0) {
        return Err((
            "api.query_timeout".to_string(),
            "must be a number of seconds above 0 and at most 3600, e.g. 30".to_string(),
        ));
    }
    // A year bounds it within what Duration holds; below a second, a
    // client re-attaching after a dropped connection would find its
    // subscription gone.
    let expiry = api.subscription_idle_expiry;
    if !(expiry == 0.0 || (1.0..=31_536_000.0).contains(&expiry)) {
        return Err((
            "api.subscription_idle_expiry".to_string(),
            "must be 0 (never expire) or a number of seconds from 1 to 31536000, e.g. 3600"
                .to_string(),
        ));
    }
    if !(1..=1_000_000).contains(&api.subscriptions_max) {
        return Err((
            "api.subscriptions_max".to_string(),
            "must be a whole number from 1 to 1000000, e.g. 10000".to_string(),
        ));
    }
    if let Some(addr) = telemetry.prometheus_addr {
        if clash(addr, api.addr) {
            return Err((
                "telemetry.prometheus_addr".to_string(),
                format!("{addr} is also api.addr; leave prometheus_addr out to serve /metrics on the API port"),
            ));
        }
    }
    Ok(())
}

fn check_rollups(rollups: &[RollupConfig]) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    for (i, rollup) in rollups.iter().enumerate() {
        let key = |field: &str| format!("rollup[{i}].{field}");
        if !is_identifier(&rollup.name) {
            return Err((
                key("name"),
                format!(
                    "invalid table name {:?}: use letters, digits and _, not starting with a digit",
                    rollup.name
                ),
            ));
        }
        if !names.insert(rollup.name.as_str()) {
            return Err((
                key("name"),
                format!("rollup {:?} is declared twice", rollup.name),
            ));
        }
        if rollup.key.is_empty() {
            return Err((
                key("key"),
                "must name at least one column, e.g. [\"app\"]".to_string(),
            ));
        }
        let mut columns = HashSet::new();
        for (j, column) in rollup.key.iter().enumerate() {
            let at = format!("{}[{j}]", key("key"));
            if !is_identifier(column) {
                return Err((at, format!("invalid column name {column:?}: use letters, digits and _, not starting with a digit")));
            }
            if column.eq_ignore_ascii_case("region") {
                return Err((
                    at,
                    "the leader adds the region column itself; leave it out of the key".to_string(),
                ));
            }
            if !columns.insert(column.to_ascii_lowercase()) {
                return Err((at, format!("column {column:?} is named twice")));
            }
        }
        if rollup.query.trim().is_empty() {
            return Err((key("query"), "must not be empty".to_string()));
        }
    }
    Ok(())
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn normalize(config: &mut Config) {
    if !config.node.global {
        if config
            .global_gossip
            .as_ref()
            .is_some_and(|g| !g.bootstrap.is_empty())
        {
            config.warnings.push(
                "[global_gossip] has bootstrap peers but node.global = false: this node does not \
                 join the global cluster (it reads global tables through its region's global \
                 members). Set node.global = true to make it a global member, or remove the section"
                    .into(),
            );
        }
        config.global_gossip = None;
    } else if config.global_gossip.is_none() {
        config.global_gossip = Some(GlobalGossipConfig::default());
    }
}

#[cfg(test)]
mod tests;
