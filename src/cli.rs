//! The command line: one `Command` variant per top-level subcommand
//! (`patina db …` now; `agent`, `exec`, `query`, … slot in beside it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use patina_crr::SiteId;

use crate::devcluster_cmd::{parse_regions, RegionCounts};

#[derive(Debug, Parser)]
#[command(
    name = "patina",
    version,
    about = "Regionalized state distribution: SQLite tables replicated as CRDTs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a node: `patina agent -c /etc/patina/patina.toml`.
    Agent(AgentArgs),
    /// Runs SQL statements as one transaction on a node (POST /v1/transactions).
    Exec(ExecArgs),
    /// Runs a read-only query on a node (POST /v1/queries).
    Query(QueryArgs),
    /// Subscribes to a query: prints its rows, then every change, until
    /// Ctrl-C (POST /v1/subscriptions, GET /v1/subscriptions/{id}).
    Sub(SubArgs),
    /// Re-reads and applies the node's schema files (POST /v1/reload).
    Reload(ReloadArgs),
    /// Lists the members of the node's clusters as it sees them
    /// (GET /v1/members).
    Members(MembersArgs),
    /// Lists the regions the node knows (its own, the global cluster's,
    /// those whose rows the rollup tables hold): leader, global members,
    /// last rollup, rollup rows (GET /v1/regions).
    Regions(MembersArgs),
    /// Takes an online backup of the node's databases into a new directory
    /// on the node's host (POST /v1/backup).
    Backup(BackupArgs),
    /// Prepares the data dir of a NEW node from a backup (offline).
    Restore(RestoreArgs),
    /// Checks the node's health (GET /v1/health) against thresholds: exits
    /// 0 when healthy, 1 when not; with --wait, polls until healthy (a
    /// deploy gate: roll out a region, `patina health --wait`, go on).
    Health(HealthArgs),
    /// Checks that the node's region holds the same rows on every member
    /// (GET /v1/digest on each): prints the tables, buckets and keys that
    /// differ and how to repair them; exits 0 only when every member was
    /// compared and all agree.
    Check(CheckArgs),
    /// Debug tools working directly on a CRR database file (no daemon).
    #[command(subcommand)]
    Db(DbCommand),
    /// Makes the certificates of mutual TLS between nodes ([gossip.tls]).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Runs a local multi-region cluster of agents until Ctrl-C.
    Devcluster(DevclusterArgs),
}

/// Starts a local multi-region cluster, each node a `patina agent`
/// process on 127.0.0.1 (no certificates: dev only), with a demo schema: a
/// regional `machines` table and the global `app_regions` rollup of it.
/// Prints every node's API address; Ctrl-C or SIGTERM stops them all.
///
/// The first node of each region is a global member, and the second too in
/// a region of 3 or more nodes (kill the leader to see another take over).
#[derive(Debug, Args)]
pub struct DevclusterArgs {
    /// The regions and their node counts (1 to 16 each), e.g.
    /// ams=3,ord=3,nrt=2.
    #[arg(long, value_name = "REGION=N,...", value_parser = parse_regions)]
    pub regions: RegionCounts,
    /// Folder for the nodes' configs, data and logs: new, empty, or one a
    /// previous devcluster of the same regions used (restarted with its
    /// data). Default: a new folder under the temp dir, kept.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    Ca(TlsCaArgs),
    Cert(TlsCertArgs),
}

/// Creates a CA: writes ca.pem (give it to every node as ca_file) and
/// ca.key (keep it off the nodes; it signs their certificates).
///
/// One CA can serve every region: what admits a node to a cluster is the
/// cluster its certificate names, not the CA.
#[derive(Debug, Args)]
pub struct TlsCaArgs {
    /// Folder to write ca.pem and ca.key into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// The CA's common name.
    #[arg(long, value_name = "NAME", default_value = "Patina CA")]
    pub name: String,
    /// Days the CA is valid.
    #[arg(long, value_name = "N", default_value_t = 3650)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Issues a node certificate signed by the CA: writes NODE.pem and NODE.key
/// (cert_file and key_file of [gossip.tls]).
///
/// Its SAN URIs name the node (patina://node/NODE) and every cluster it may
/// join (patina://cluster/CLUSTER): its region, plus `global` for a global
/// member. Peers of any other cluster refuse it.
#[derive(Debug, Args)]
pub struct TlsCertArgs {
    /// The node's name: 1 to 63 of a-z, 0-9, - and ., e.g. web1.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// A cluster the node may join (its region, or `global`); repeat for
    /// several.
    #[arg(long = "cluster", value_name = "CLUSTER", required = true)]
    pub clusters: Vec<String>,
    /// Folder holding the CA's ca.pem and ca.key (`patina tls ca`).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub ca: PathBuf,
    /// Folder to write NODE.pem and NODE.key into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Pin the node's actor id (32 hex characters, the content of
    /// DATA_DIR/actor_id): peers then accept frames from this certificate
    /// only as that actor.
    #[arg(long, value_name = "HEX32", value_parser = parse_site_id)]
    pub actor: Option<SiteId>,
    /// Days the certificate is valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The config file (see config/patina.example.toml). Every key can be
    /// overridden by PATINA_<SECTION>__<KEY> environment variables.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Where the node's API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The node's API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub api: String,
    /// Bearer token, when the node sets api.authz.bearer_token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PATINA_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's answer as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// SQL statements, one per argument, run as one transaction.
    #[arg(value_name = "SQL", required = true)]
    pub sql: Vec<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// One JSON object per row instead of an aligned table.
    #[arg(long)]
    pub json: bool,
    /// One read-only statement.
    #[arg(value_name = "SQL")]
    pub sql: String,
}

/// Prints a subscription's snapshot, then its changes as they come
/// (`insert 3 ["m1","web"] #12`: kind, row id, cells, change id), until
/// Ctrl-C. A dropped connection is resumed from the last change id seen.
#[derive(Debug, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print every event as one JSON line, exactly as the API sends it.
    #[arg(long)]
    pub json: bool,
    /// Re-attach to an existing subscription by id instead of giving SQL.
    #[arg(long, value_name = "ID", conflicts_with = "sql")]
    pub id: Option<String>,
    /// Only the changes after this change id (no snapshot).
    #[arg(long, value_name = "N")]
    pub from: Option<u64>,
    /// One read-only SELECT.
    #[arg(value_name = "SQL", required_unless_present = "id")]
    pub sql: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Also drop the tables and columns the schema files no longer
    /// declare, with their data and clocks on this node (a destructive
    /// schema change; renames stay refused). Without it a removal is
    /// refused and nothing changes.
    #[arg(long)]
    pub allow_destructive: bool,
}

/// Takes an online backup: the node copies both databases, each a
/// consistent snapshot with its replication bookkeeping, while writes go
/// on, and writes a manifest.json saying what the copy holds. The agent
/// writes the files, so DIR is on the agent's host; it must not exist (its
/// parent must). A relative DIR is taken from this command's current
/// directory, which names the right place only on the agent's host.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The new directory to write the backup into.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Print the API's answer (with the manifest) as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Prepares the data dir of a new node from a backup (`patina backup`),
/// with no agent running on it: a fresh actor id, the backed-up node's
/// writes kept as a peer's, and every actor's versions up to the backup
/// recorded as applied, so the new node fetches only what is newer. The
/// backed-up node's actor id is never the new node's.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (holding manifest.json).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The new node's data dir (node.data_dir): missing or empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// One JSON object per line (member or region) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Poll until the node is healthy (or --timeout passes). An unreachable
    /// node (restarting) counts as not healthy yet.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub timeout: f64,
    /// Unhealthy with more versions missing than this.
    #[arg(long, value_name = "N")]
    pub gaps: Option<u64>,
    /// Unhealthy with a live replication lag p99 over this many seconds.
    #[arg(long, value_name = "SECS")]
    pub p99_lag: Option<f64>,
    /// Unhealthy with more received changes waiting than this.
    #[arg(long, value_name = "N")]
    pub max_queue: Option<u64>,
    /// Unhealthy while the node's region has no leader (no live global
    /// member: rollups and global relay stopped).
    #[arg(long)]
    pub require_leader: bool,
    /// Unhealthy while the region leader's last rollup evaluation failed.
    #[arg(long)]
    pub require_rollups: bool,
    /// Print the whole health report as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Compares the consistency digest of the node at --api with its region's
/// other members (regional.db and global.db) and, on a global member, with
/// the global cluster's (global.db). Members gossip no API address: give
/// the API of each other member with --peer (repeat it); each answer is
/// matched to a member by the actor id it carries, and a member nobody
/// answered for fails the check.
///
/// Digests differ while changes are in flight: a difference is reported
/// only when it persists over --attempts digests taken 1 s apart. --token
/// is sent to every node.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The API address of another member (repeat for each).
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,
    /// Digests to take before a difference counts.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub attempts: u32,
    /// Seconds to wait for each node's answer (a digest reads every row:
    /// about 2 s per million).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub timeout: f64,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    Exec(DbExecArgs),
    Changes(ChangesArgs),
    Apply(ApplyArgs),
    Dump(DumpArgs),
}

/// Runs SQL as one captured local transaction.
///
/// Opens the database (creating it if needed, with --site-id if given),
/// applies the --schema file's CREATE TABLE / CREATE INDEX statements
/// additively (every table in it becomes a CRR), then runs every SQL argument,
/// in order, in ONE transaction (an argument may hold several statements;
/// only SELECT/INSERT/UPDATE/DELETE are allowed, query results are
/// discarded) and commits it.
///
/// Output: one JSON line on stdout, `{"version":N}` with the db_version the
/// transaction was recorded under, or `{"version":null}` when nothing
/// replicated changed (or no SQL was given). If a statement fails, nothing
/// of the transaction is written (the --schema step is a transaction of its
/// own: it stays applied).
#[derive(Debug, Args)]
pub struct DbExecArgs {
    #[command(flatten)]
    pub db: DbPath,

    /// Site id for a NEW database (32 hex characters). An existing database
    /// keeps its own; naming a different one is an error.
    #[arg(long, value_name = "HEX32", value_parser = parse_site_id)]
    pub site_id: Option<SiteId>,

    /// A .sql file of CREATE TABLE / CREATE INDEX statements, applied
    /// additively before the SQL runs.
    #[arg(long, value_name = "FILE.sql")]
    pub schema: Option<PathBuf>,

    /// SQL to run (each argument may hold several statements; use `--`
    /// before an argument that starts with `-`).
    #[arg(value_name = "SQL", required_unless_present = "schema")]
    pub sql: Vec<String>,
}

/// Prints changes as JSON lines, one per change, in (db_version, seq) order.
///
/// Each line is `{"table","pk","cid","val","col_version","db_version",
/// "site_id","cl","seq"}` in that key order; `pk` and `site_id` are
/// lowercase hex; `val` is null, an integer (INTEGER), a number with a `.`
/// or exponent (REAL, e.g. 1.0; ±infinity as 1e999 / -1e999), a string
/// (TEXT) or {"blob":"<hex>"} (BLOB). The output is what `patina db apply`
/// reads.
#[derive(Debug, Args)]
pub struct ChangesArgs {
    #[command(flatten)]
    pub db: ExistingDb,

    /// Only changes whose stored db_version is above N. Stored db_versions
    /// are each origin site's own numbering, so this mixes local and
    /// forwarded changes (cr-sqlite's `db_version > N`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub since: u64,

    /// Leave out the changes whose clock belongs to this site (32 hex
    /// characters), e.g. the site the output will be applied to.
    #[arg(long, value_name = "HEX32", value_parser = parse_site_id)]
    pub exclude_site: Option<SiteId>,
}

/// Merges changes read from stdin (the JSON lines `patina db changes` prints).
///
/// Blank lines are skipped. Every line is checked before anything is
/// written; a malformed line or change fails the whole batch (nothing is
/// applied) with the line number. The changes are merged as ONE batch; a
/// summary (won / lost / ignored counts) goes to stderr, stdout stays empty.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub db: ExistingDb,
}

/// Prints every row of every CRR table as JSON lines.
///
/// One line per row: {"table":"<name>","row":{"<column>":<value>,…}},
/// tables by name, rows by primary key (ORDER BY the pk columns), columns in
/// table-definition order, generated columns included. Values are encoded
/// as in `patina db changes`. Two converged replicas dump identically.
#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub db: ExistingDb,
}

/// A database file, created if missing.
#[derive(Debug, Args)]
pub struct DbPath {
    /// The SQLite database file (created if it does not exist).
    #[arg(long = "db", value_name = "FILE")]
    pub path: PathBuf,
}

/// A database file that must already exist.
#[derive(Debug, Args)]
pub struct ExistingDb {
    /// The SQLite database file; it must exist (create it with
    /// `patina db exec --db FILE --schema FILE.sql`).
    #[arg(long = "db", value_name = "FILE")]
    pub path: PathBuf,
}

/// A site id argument: 32 hex characters.
fn parse_site_id(s: &str) -> Result<SiteId, String> {
    s.parse().map_err(|_| {
        format!(
            "a site id must be 32 hex characters (16 bytes), e.g. 0123456789abcdef0123456789abcdef; \
             got {s:?}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn site_id_arguments() {
        assert!(parse_site_id("11111111111111111111111111111111").is_ok());
        assert!(parse_site_id("ABCDEF0123456789abcdef0123456789").is_ok());
        let err = parse_site_id("xyz").unwrap_err();
        assert!(err.contains("32 hex characters"), "{err}");
        assert!(parse_site_id("1111111111111111111111111111111g").is_err());
    }
}
