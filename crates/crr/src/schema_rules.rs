// PLACEHOLDER written by the lead so the crate compiles; helper-1 replaces this file whole.
use crate::error::{Result, SchemaViolation};
use rusqlite::Connection;
pub(crate) fn validate(
    _conn: &Connection,
    _schema: &str,
    _table: &str,
) -> Result<Vec<SchemaViolation>> {
    Ok(Vec::new())
}
