// PLACEHOLDER written by the lead so the crate compiles; helper-1 replaces this file whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPlan {
    pub statements: Vec<String>,
    pub new_tables: Vec<String>,
    pub altered_tables: Vec<String>,
}
pub fn plan(conn: &rusqlite::Connection, _schema: &str, sql: &str) -> crate::Result<SchemaPlan> {
    let scratch = rusqlite::Connection::open_in_memory()?;
    scratch.execute_batch(sql)?;
    let mut p = SchemaPlan::default();
    let mut st = scratch.prepare("SELECT name, sql FROM sqlite_master WHERE type='table'")?;
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (n, s) in rows {
        if crate::schema::introspect(conn, "main", &n)?.is_none() {
            p.statements.push(s);
            p.new_tables.push(n);
        }
    }
    Ok(p)
}
