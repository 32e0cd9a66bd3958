//! The routes, in one place: the router and the metrics' `route` label
//! both use them.

pub const TRANSACTIONS: &str = "/v1/transactions";
pub const QUERIES: &str = "/v1/queries";
pub const HEALTH: &str = "/v1/health";
pub const TABLE_STATS: &str = "/v1/table_stats";
pub const MEMBERS: &str = "/v1/members";
pub const REGIONS: &str = "/v1/regions";
pub const METRICS: &str = "/metrics";
pub const SUBSCRIPTIONS: &str = "/v1/subscriptions";
pub const SUBSCRIPTION: &str = "/v1/subscriptions/{id}";
pub const UPDATES: &str = "/v1/updates/{table}";
pub const RELOAD: &str = "/v1/reload";
pub const DIGEST: &str = "/v1/digest";
pub const BACKUP: &str = "/v1/backup";
pub const ALL: &[&str] = &[
    RELOAD,
    BACKUP,
    SUBSCRIPTIONS,
    SUBSCRIPTION,
    UPDATES,
    TRANSACTIONS,
    QUERIES,
    HEALTH,
    TABLE_STATS,
    MEMBERS,
    REGIONS,
    DIGEST,
    METRICS,
];
