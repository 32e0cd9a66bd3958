//! `patina agent -c FILE`: runs one node until SIGTERM/SIGINT; SIGHUP
//! re-reads the schema files. Tells systemd when it is ready (Type=notify).

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use patina_node::{DbKind, Drops, Node, NodeOptions};
use patina_region::{RegionError, RegionOptions, RegionRuntime, RollupConfig, RollupTiming};
use patina_replicator::{ClusterOptions, ReplicatorConfig, SwimProfile};
use patina_subs::Subscriptions;
use patina_transport::TlsFiles;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::{self, Config};

/// In-flight requests get this long to finish after a stop signal; open
/// streams (subscriptions, updates) never finish and are cut after it.
/// Queries are interrupted at once.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Leaving the cluster gracefully gets this long. With [`SHUTDOWN_GRACE`]
/// it keeps a stop well within 10 s (config/patina.service's
/// TimeoutStopSec), whatever clients do.
const LEAVE_GRACE: Duration = Duration::from_secs(3);
/// Then the runtime gets this long to wind down its threads.
const RUNTIME_GRACE: Duration = Duration::from_secs(2);
/// Allocations from this size up get their own mapping from glibc malloc,
/// returned to the OS when freed (its default starts at 128 KiB).
const MALLOC_MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Fixes glibc's mmap threshold, unless `MALLOC_MMAP_THRESHOLD_` or
/// `GLIBC_TUNABLES` says otherwise. Left dynamic, glibc raises it to the
/// size of each mapped block freed (up to 32 MiB) and its trim threshold
/// to twice that: after one big transaction's buffers (a 15 MB request
/// body, its packed statements) were freed, the next ones came from the
/// arenas and up to 64 MiB of freed memory stayed resident in each
/// (benches/big_tx: writer peak 91-98 MiB in round 1 and 47-66 MiB after;
/// fixed, 57-62 and 22-31; issue 15). Called before any thread starts.
fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        // SAFETY: mallopt only changes allocator parameters; no allocation
        // is touched, and no other thread exists yet to race with it.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        }
    }
}

pub fn run(config_path: &Path) -> anyhow::Result<()> {
    fix_malloc_mmap_threshold();
    init_logging();
    let config = Config::load(config_path, config::process_env())?;
    // Before anything is opened: a node that would gossip with peers it
    // cannot authenticate is refused unless the config says so explicitly.
    let trust = config
        .gossip_trust()
        .with_context(|| format!("config file {}", config_path.display()))?;
    warn_exposure(&config, &trust);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("patina")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config, config_path.to_owned()));
    // Blocking tasks still running (a read the interrupt has not reached
    // yet) must not hold the exit past the stop budget.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    result
}

/// Logs what the config leaves open: unauthenticated gossip, an API other
/// hosts can reach without a token.
fn warn_exposure(config: &Config, trust: &[(&str, config::Trust)]) {
    for (section, trust) in trust {
        let insecure = match *section {
            "gossip" => config.gossip.insecure,
            _ => config.global_gossip.as_ref().is_some_and(|g| g.insecure),
        };
        match trust {
            config::Trust::Insecure => tracing::warn!(
                "{section}.insecure = true: peers are NOT authenticated; anyone who can reach \
                 the gossip port can join the cluster and write to every node. Dev clusters \
                 only: configure [{section}.tls] with cert_file, key_file and ca_file for \
                 production (docs/security.md)"
            ),
            config::Trust::Authenticated if insecure => tracing::warn!(
                "{section}.insecure = true has no effect: [{section}.tls] with ca_file \
                 authenticates peers; remove insecure"
            ),
            config::Trust::Authenticated => {}
        }
    }
    let api = config.api.addr;
    if !api.ip().is_loopback() && config.api.authz.is_none() {
        tracing::warn!(
            %api,
            "the API listens on a non-loopback address without api.authz: any host that \
             reaches it can read and write every table. Set api.authz.bearer_token, or bind \
             api.addr to 127.0.0.1"
        );
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || OneLineStderr { ansi })
        .try_init();
}

/// Stderr for log records (the formatter writes each whole), with control
/// characters inside a record escaped: a field quoting client input (a
/// backup path, an SQL error) cannot forge a log line of its own or make
/// the log binary. `ansi`: the formatter's colour escapes are kept.
struct OneLineStderr {
    ansi: bool,
}

impl std::io::Write for OneLineStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr()
            .lock()
            .write_all(&escape_record(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One log record with its inner control characters escaped (`\n`,
/// `\x00`…); its final newline kept.
fn escape_record(buf: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match buf.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        i += 1;
        // Unicode's line breaks (NEL, LINE and PARAGRAPH SEPARATOR) split
        // lines for some log viewers too.
        let rest = &body[i..];
        if byte == 0xc2 && rest.first() == Some(&0x85) {
            out.extend_from_slice(b"\\u{85}");
            i += 1;
            continue;
        }
        if byte == 0xe2
            && rest.len() >= 2
            && rest[0] == 0x80
            && (rest[1] == 0xa8 || rest[1] == 0xa9)
        {
            out.extend_from_slice(if rest[1] == 0xa8 {
                b"\\u{2028}"
            } else {
                b"\\u{2029}"
            });
            i += 2;
            continue;
        }
        match byte {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(byte),
            0x1b if ansi => out.push(byte),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out.extend_from_slice(end);
    out
}

async fn serve(config: Config, config_path: std::path::PathBuf) -> anyhow::Result<()> {
    let node = Node::open(NodeOptions {
        region: config.node.region.clone(),
        global_member: config.node.global,
        data_dir: config.node.data_dir.clone(),
        schema_paths: config.db.schema_paths.clone(),
        global_schema_paths: config.db.global_schema_paths.clone(),
        schema_drops: schema_drops(&config),
    })
    .context("the node did not start")?;
    let subs = Subscriptions::open_for(&node).context("the subscriptions did not start")?;
    tracing::info!(actor = %node.actor_id(), region = node.region(), data_dir = %config.node.data_dir.display(), "node started");
    let region = start_region(&config, &node)?;

    let listener = TcpListener::bind(config.api.addr)
        .await
        .with_context(|| format!("cannot listen on api.addr {}", config.api.addr))?;
    let api_addr = listener.local_addr()?;
    let mut metrics = patina_api::Metrics::new();
    metrics.register_region(&region);
    metrics.register_node(node.clone());
    let state = patina_api::ApiState::new(
        node.clone(),
        subs,
        patina_api::ApiConfig {
            bearer_token: config.api.authz.as_ref().map(|a| a.bearer_token.clone()),
            body_limit_bytes: usize::try_from(config.api.body_limit_bytes).unwrap_or(usize::MAX),
            query_timeout: Duration::from_secs_f64(config.api.query_timeout),
            subscription_idle_expiry: (config.api.subscription_idle_expiry > 0.0)
                .then(|| Duration::from_secs_f64(config.api.subscription_idle_expiry)),
            subscriptions_max: usize::try_from(config.api.subscriptions_max).unwrap_or(usize::MAX),
        },
    )
    .with_metrics(Arc::new(metrics))
    .with_cluster_view(Arc::new(patina_api::RegionView::new(&region)));
    let (stop, stopped) = watch::channel(false);
    if let Some(addr) = config.telemetry.prometheus_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on telemetry.prometheus_addr {addr}"))?;
        let router = patina_api::metrics_router(state.metrics.clone());
        tokio::spawn(patina_api::serve_router(
            listener,
            router,
            wait(stopped.clone()),
        ));
        tracing::info!(%addr, "metrics listening");
    }
    // Handlers are installed before the node says it is ready: a SIGTERM
    // right after READY must stop it cleanly, not kill it.
    let signals = Signals::install().context("cannot install signal handlers")?;
    tokio::spawn(handle_signals(node.clone(), signals, stop, config_path));
    tracing::info!(addr = %api_addr, "API listening");
    notify_systemd("READY=1");

    let server = tokio::spawn(patina_api::serve(listener, state, wait(stopped.clone())));
    wait(stopped).await;
    notify_systemd("STOPPING=1");
    tracing::info!("stopping");
    node.close_reads();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e).context("the API server failed"),
        Ok(Err(e)) => return Err(e).context("the API server task failed"),
        Err(_) => {
            tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway")
        }
    }
    // Leave the region gracefully: peers stop probing at once.
    if tokio::time::timeout(LEAVE_GRACE, region.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("leaving the cluster took over {LEAVE_GRACE:?}; stopping anyway");
    }
    Ok(())
}

/// Joins the node's regional cluster (`[gossip]`, carrying both
/// databases) and, for a global member, the global cluster
/// (`[global_gossip]`, `global.db` only), and starts the rollups; a rollup
/// that does not fit the schema stops the start.
fn start_region(config: &Config, node: &Node) -> anyhow::Result<RegionRuntime> {
    let region = &config.node.region;
    let cluster_name = |name: &str, key: &str| {
        patina_wire::ClusterName::new(name)
            .map_err(|e| anyhow::anyhow!("{key} {name:?} cannot name a cluster: {e}"))
    };
    let region_name = cluster_name(region, "node.region")?;
    let tls = |t: &Option<config::TlsConfig>| {
        t.as_ref().map(|t| TlsFiles {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            ca_file: t.ca_file.clone(),
        })
    };
    let g = &config.gossip;
    // `gossip_trust` allowed what runs without TLS; the transport warns
    // again when it does.
    let regional = ClusterOptions {
        cluster: region_name.clone(),
        region: region_name.clone(),
        global_member: config.node.global,
        swim: SwimProfile::Lan,
        bind: g.addr,
        external_addr: g.external_addr,
        bootstrap: g.bootstrap.clone(),
        tls: tls(&g.tls),
        members_file: config.node.data_dir.join(format!("members-{region}")),
        dbs: &[DbKind::Regional, DbKind::Global],
        replicator: ReplicatorConfig {
            tombstone_retention: config.db.tombstone_retention(),
            ..ReplicatorConfig::default()
        },
        socket: None,
    };
    let global = match &config.global_gossip {
        Some(gg) => Some(ClusterOptions {
            cluster: cluster_name(config::GLOBAL_CLUSTER_NAME, "the global cluster")?,
            region: region_name,
            global_member: true,
            swim: SwimProfile::Wan,
            bind: gg.addr,
            external_addr: gg.external_addr,
            bootstrap: gg.bootstrap.clone(),
            tls: tls(&gg.tls),
            members_file: config.node.data_dir.join("members-global"),
            dbs: &[DbKind::Global],
            replicator: ReplicatorConfig::default(),
            socket: None,
        }),
        None => None,
    };
    let rollups = config
        .rollup
        .iter()
        .map(|r| RollupConfig {
            name: r.name.clone(),
            key: r.key.clone(),
            query: r.query.clone(),
        })
        .collect();
    let runtime = RegionRuntime::start(
        node.clone(),
        RegionOptions {
            regional,
            global,
            rollups,
            rollup_timing: RollupTiming::default(),
        },
    )
    .map_err(|e| match e {
        RegionError::Cluster { cluster, error } => {
            let addr = match cluster {
                "global" => config.global_gossip.as_ref().map(|g| g.addr),
                _ => Some(g.addr),
            };
            let key = if cluster == "global" {
                "global_gossip.addr"
            } else {
                "gossip.addr"
            };
            anyhow::anyhow!(
                "cannot start the {cluster} transport on {key} {}: {error}",
                addr.map_or_else(String::new, |a| a.to_string())
            )
        }
        other => anyhow::anyhow!(other),
    })?;
    tracing::info!(addr = %runtime.regional().addr(), cluster = %region, "gossip listening");
    if let Some(global) = runtime.global() {
        tracing::info!(addr = %global.addr(), cluster = "global", "global gossip listening");
    }
    if !config.rollup.is_empty() && !config.node.global {
        tracing::info!(
            rollups = config.rollup.len(),
            "rollups are published by the region's leader, a global member; this node only reads them"
        );
    }
    Ok(runtime)
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Whether applying the schema files at start and on SIGHUP may drop
/// tables and columns (`db.allow_destructive_schema`).
fn schema_drops(config: &Config) -> Drops {
    if config.db.allow_destructive_schema {
        Drops::Allowed
    } else {
        Drops::Refused
    }
}

/// SIGTERM/SIGINT stop the node; SIGHUP reloads the schema files,
/// dropping what they no longer declare if the config file says
/// `db.allow_destructive_schema = true` now (read again for each SIGHUP, so
/// the operator sets it for one reload; the other keys need a restart).
async fn handle_signals(
    node: Node,
    mut signals: Signals,
    stop: watch::Sender<bool>,
    config_path: std::path::PathBuf,
) {
    loop {
        tokio::select! {
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                notify_systemd("RELOADING=1");
                let drops = match Config::load(&config_path, config::process_env()) {
                    Ok(config) => schema_drops(&config),
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: the config file cannot be read again; reloading without db.allow_destructive_schema");
                        Drops::Refused
                    }
                };
                match node.reload_schema_with(drops).await {
                    Ok(_) => tracing::info!("schema files reloaded"),
                    Err(e) => tracing::error!(error = %e, "schema reload refused; the running schema is unchanged"),
                }
                notify_systemd("READY=1");
            }
        }
    }
    let _ = stop.send(true);
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
fn notify_systemd(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::escape_record;

    #[test]
    fn a_log_record_stays_one_line() {
        let record = b"WARN backup failed target=/x\n2026 ERROR FAKE\x00\x1b[31m\n";
        assert_eq!(
            escape_record(record, false),
            b"WARN backup failed target=/x\\n2026 ERROR FAKE\\x00\\x1b[31m\n".to_vec()
        );
        assert_eq!(escape_record(b"a\x1b[1mb\n", true), b"a\x1b[1mb\n".to_vec());
        assert_eq!(escape_record(b"no end", false), b"no end".to_vec());
        assert_eq!(
            escape_record("a\u{2028}b\u{85}c\u{2029}é\n".as_bytes(), false),
            b"a\\u{2028}b\\u{85}c\\u{2029}\xc3\xa9\n".to_vec()
        );
    }
}
