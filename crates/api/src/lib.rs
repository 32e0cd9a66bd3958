//! `patina-api`: Patina's HTTP API — Corrosion's v1 API, wire-compatible,
//! plus Patina's own endpoints and Prometheus metrics. Only this crate
//! knows HTTP; it calls a [`patina_node::Node`] and
//! [`patina_subs::Subscriptions`] for everything else, and reads cluster
//! facts (members, regions, health numbers) through the [`ClusterView`] seam.
//! It never writes a database except through `Node::transact`.
//!
//! [`router`] builds the routes; [`serve`] runs them on one listener that
//! speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) alike.
//!
//! # Endpoints
//! - `POST /v1/transactions[?timeout=SECONDS]` — statements in one transaction.
//! - `POST /v1/queries[?timeout=SECONDS][&after=[global:]ACTOR:VERSION…]` — NDJSON rows;
//!   `after=` waits for a version of `regional.db`, or with `global:` of `global.db`
//!   (each database numbers its versions separately).
//! - `GET /v1/health[?gaps=N&p99_lag=SECONDS&max_queue=N&failure_status=CODE]`.
//! - `POST /v1/table_stats` — row counts of tables.
//! - `GET /v1/members`, `GET /v1/regions` — Patina additions, shapes below.
//! - `GET /v1/digest[?table=NAME][&bucket=N]` — Patina addition: the
//!   consistency digest (docs/api.md); the answering node's actor id is the
//!   `patina-actor-id` header, never in the body.
//! - `GET /metrics` — Prometheus (OpenMetrics) text.
//! - `POST /v1/subscriptions[?from=N][&skip_rows=true]`,
//!   `GET /v1/subscriptions/{id}[?from=N][&skip_rows=true]`,
//!   `POST /v1/updates/{table}` — NDJSON streams (`subscriptions.rs`).
//! - `POST /v1/reload` — Patina addition: re-reads and applies the schema
//!   files (as SIGHUP does); body empty, `{}` or `{"allow_destructive":true}`
//!   (a destructive reload: tables and columns the files no longer declare
//!   are dropped; docs/api.md). 200 `{"reloaded":true}` (plus
//!   `"dropped":[…]` when something was dropped), or 400 `{"error":"…"}`
//!   naming the table and the rule when the change is refused (nothing is
//!   changed then; a removal without `allow_destructive` is refused), 503
//!   while stopping.
//! - `POST /v1/backup` — Patina addition: an online backup of both
//!   databases into a new directory on the node's host, body
//!   `{"to":"/abs/dir"}`; 200 `{"dir","time","manifest"}` once written and
//!   fsynced, 400 for a target that cannot be used, 409 while another runs
//!   (`backup.rs`; seeding a node from it: `patina restore`).
//!
//! # Decisions api.md leaves open
//! - **Transaction timeout.** `?timeout=S` (seconds, fractional allowed,
//!   `0 < S ≤ 3600`) bounds how long the request waits for the commit. When
//!   it runs out the answer is **504** in the transactions shape,
//!   `{"results":[{"error":"…"}],"time":…,"version":null,"actor_id":"…"}`.
//!   A write is never half-applied — its statements commit together or not
//!   at all — but a timed-out transaction is *not* cancelled: it may still
//!   commit after the 504. Check for its effects before retrying. (504, not
//!   408: 408 tells a client its request was never processed, and clients
//!   retry it automatically, which could apply the write twice.) Without
//!   `timeout` the request waits for the commit however long it takes.
//! - **Query timeout.** `?timeout=S` (default 5 s, same range) bounds what
//!   happens before the first line: waiting for every `after=` version and
//!   for a free read connection. Running out gives 504 `{"error":"…"}`.
//!   Once rows flow there is no limit. `eoq.time` is the seconds from the
//!   start of the query to its last row.
//! - **Statement errors.** In a transaction of several statements the
//!   error reads `statement I of N: <SQLite's message>` (I counts from 1);
//!   a lone statement's error is SQLite's message alone.
//! - **Parameters.** Per api.md; in addition an empty array is an empty
//!   BLOB, an integer beyond i64 is refused with 400 naming it (Corrosion
//!   stores a REAL that has lost digits; the body's shape is right, its
//!   value is not), a named
//!   parameter key without its sigil (`:`, `@`, `$`) is refused with 422,
//!   and `{"query", "params", "named_params"}` with both kinds of
//!   parameters non-null is refused with 422. Unknown object keys and
//!   unknown query-string parameters are ignored.
//! - **Query-string errors** (a bad `timeout`, `after`, health threshold)
//!   → 400 `{"error":"…"}`.
//! - **Auth** (when a bearer token is configured) applies to every path,
//!   unknown ones included, before anything else is looked at.
//! - **Unknown path** → 404, **wrong method** → 405, both `{"error":"…"}`.
//!
//! # `GET /v1/health`
//! ```text
//! {"response":{"gaps":0,"members":2,"p99_lag":0.004,"queue_size":0,
//!   "region":"ams","global_member":false,"leader":null,"global_lag":null,
//!   "catching_up":true,"catch_up":{"phase":"fetching","missing_versions":478,
//!   "elapsed_secs":0.7,"reason":"catching up: 478 versions …"},
//!   "catchup_p99_lag":12.1,"parked_versions":0,"refused_versions":0,
//!   "dropped_changes":0,"reason":"catching up: 478 versions …"}}
//! ```
//! Corrosion's four keys keep their meaning, except that `p99_lag` is the
//! *live* lag only (versions pushed by broadcast, committed after this node
//! started and applied after it caught up); `catchup_p99_lag` is the rest
//! (versions written while the node was away or applied while it caught
//! up). The `p99_lag=` threshold checks the live lag.
//! - **Catching up.** A node that has peers to learn from (a bootstrap
//!   list, or members remembered from its last run) starts catching up:
//!   until it holds every version the peers that answered its first sync
//!   round advertised (`docs/replication.md`, Catching up), health answers
//!   503 (or `failure_status`) whatever the thresholds, `catching_up` is
//!   true and `reason` says why. `catch_up.phase` is `alone` (nobody to
//!   learn from: 200 at once), `waiting_for_peers`, `fetching`,
//!   `caught_up`, or `no_peer_answered` (no peer answered within 30 s:
//!   the node serves what it holds rather than hold a deploy forever).
//! - `reason` (top level of `response`) is null with 200, otherwise every
//!   cause: the catch-up reason and each threshold exceeded
//!   (`gaps 5 > 4`), joined by `; `.
//! - `parked_versions`: remote versions part of which waits for a schema
//!   reload here (`Node::held_versions`: they count as applied for `gaps`
//!   and catching up, but those changes are not readable yet).
//!   `refused_versions`: remote versions part of which local constraints
//!   refused (retried at each reload). `dropped_changes`: remote changes
//!   ignored since the node started because they name a table or column a
//!   destructive schema change dropped here (docs/crr.md); their versions
//!   count as applied, so nothing waits for them and they are not fetched
//!   again.
//!
//! # `GET /v1/members`
//! One entry per (member, cluster) this node knows: a global member
//! appears once for its region and once for `global`.
//! ```text
//! [{"actor_id":"d5f1…f2","addr":null,"region":"ams","cluster":"ams",
//!   "state":"alive","rtt_ms":null}]
//! ```
//! `addr` is the gossip address (`"10.0.0.1:7878"`, null until there is
//! a transport), `state` is `alive`, `suspect` or `down`, `rtt_ms` a float
//! or null (unmeasured; always null for the node itself).
//!
//! # `GET /v1/regions`
//! ```text
//! [{"region":"ams","leader":"d5f1…f2","global_members":["d5f1…f2"],
//!   "last_rollup":null,"rollups":{}}]
//! ```
//! `leader` is the live global member with the smallest actor id, or null;
//! `last_rollup` the unix time (seconds, float) of the region's last
//! rollup, or null; `rollups` maps each rollup name to its row count.

mod auth;
mod backup;
mod body;
mod cluster;
mod digest;
mod errors;
mod health;
mod json;
mod metrics;
mod queries;
mod reload;
mod router;
mod routes;
mod serve;
mod state;
mod subscriptions;
mod transactions;

pub use cluster::{
    CatchUpReport, ClusterView, HealthReport, LoneNode, MemberInfo, MemberState, RegionInfo,
    RegionView,
};
pub use digest::ACTOR_HEADER;
pub use metrics::Metrics;
pub use router::{metrics_router, router};
pub use serve::{serve, serve_router};
pub use state::{ApiConfig, ApiState, BODY_LIMIT_BYTES_DEFAULT};
