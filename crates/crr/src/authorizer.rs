//! SQLite's authorizer as a second line behind `CrrTx`'s statement check:
//! it sees every statement as SQLite compiles it (including statements
//! smuggled behind a leading `;`), and every call of `crr_capture`.
//!
//! Always: `crr_capture` may only be called by a capture trigger — called by
//! hand it would forge or hide writes. While a `CrrTx` prepares a user
//! statement: no transaction control, no PRAGMA, no DDL, no ATTACH, and no
//! writes to Patina's own tables.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

use crate::error::Result;

/// Whether the statement being prepared comes from a user, and what was
/// last refused (for the error message).
#[derive(Clone, Default)]
pub(crate) struct UserSql {
    on: Arc<AtomicBool>,
    refused: Arc<Mutex<Option<Refusal>>>,
}

/// Why the authorizer refused a user statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// What the statement does (`PRAGMA x`, `CREATE TABLE`…).
    Statement(String),
    /// It writes this table of Patina's own.
    InternalTable(String),
}

impl From<Refusal> for crate::error::CrrError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Statement(what) => crate::error::CrrError::StatementNotAllowed(what),
            Refusal::InternalTable(table) => crate::error::CrrError::InternalTable(table),
        }
    }
}

impl UserSql {
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        if on {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// What the authorizer refused since `set(true)`, if anything.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub(crate) fn install(conn: &mut Connection, user: UserSql) -> Result<()> {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let on = user.on.load(Ordering::Relaxed);
        match refusal(&ctx, on) {
            None => Authorization::Allow,
            Some(what) => {
                // The first refusal names the statement; later ones follow from it.
                user.refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(what);
                Authorization::Deny
            }
        }
    }))?;
    Ok(())
}

// sqlite_master is written by DDL, which is refused by its own action (with
// a better message); without PRAGMA writable_schema it is read-only.
use crate::schema::is_reserved_table_name as is_internal_table;

fn is_capture_trigger(accessor: Option<&str>) -> bool {
    accessor.is_some_and(|t| {
        ["__crr_ins", "__crr_upd", "__crr_del"]
            .iter()
            .any(|s| t.ends_with(s))
    })
}

/// Why `ctx` is refused, or `None` to allow it.
fn refusal(ctx: &AuthContext<'_>, user: bool) -> Option<Refusal> {
    use AuthAction::*;
    let internal = match ctx.action {
        Insert { table_name } | Delete { table_name } | Update { table_name, .. }
            if user && is_internal_table(table_name) =>
        {
            Some(table_name)
        }
        _ => None,
    };
    if let Some(table) = internal {
        return Some(Refusal::InternalTable(table.to_owned()));
    }
    statement_refusal(ctx, user).map(Refusal::Statement)
}

fn statement_refusal(ctx: &AuthContext<'_>, user: bool) -> Option<String> {
    use AuthAction::*;
    match ctx.action {
        Function { function_name } if function_name.eq_ignore_ascii_case("crr_capture") => {
            (!is_capture_trigger(ctx.accessor)).then(|| "calling crr_capture".to_owned())
        }
        _ if !user => None,
        Transaction { operation } => Some(format!("{operation:?}").to_uppercase()),
        Savepoint { operation, .. } => Some(format!("SAVEPOINT {operation:?}").to_uppercase()),
        Pragma { pragma_name, .. } => Some(format!("PRAGMA {pragma_name}")),
        Attach { .. } => Some("ATTACH".to_owned()),
        Detach { .. } => Some("DETACH".to_owned()),
        CreateTable { .. } | CreateTempTable { .. } => Some("CREATE TABLE".to_owned()),
        CreateIndex { .. } | CreateTempIndex { .. } => Some("CREATE INDEX".to_owned()),
        CreateTrigger { .. } | CreateTempTrigger { .. } => Some("CREATE TRIGGER".to_owned()),
        CreateView { .. } | CreateTempView { .. } => Some("CREATE VIEW".to_owned()),
        DropTable { .. } | DropTempTable { .. } => Some("DROP TABLE".to_owned()),
        DropIndex { .. } | DropTempIndex { .. } => Some("DROP INDEX".to_owned()),
        DropTrigger { .. } | DropTempTrigger { .. } => Some("DROP TRIGGER".to_owned()),
        DropView { .. } | DropTempView { .. } => Some("DROP VIEW".to_owned()),
        AlterTable { .. } => Some("ALTER TABLE".to_owned()),
        Reindex { .. } | Analyze { .. } | CreateVtable { .. } | DropVtable { .. } => {
            Some("schema maintenance (REINDEX/ANALYZE/virtual tables)".to_owned())
        }
        _ => None,
    }
}
