//! Table introspection and cr-sqlite's schema rules (crr-model.md 11).

use rusqlite::Connection;

use crate::error::Result;

/// One column of a table, as SQLite reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The declared type, as written (`""` when none).
    pub decl_type: String,
    pub notnull: bool,
    /// The DEFAULT expression's text, if any.
    pub default: Option<String>,
    /// 1-based position in the PRIMARY KEY, 0 when not part of it.
    pub pk_order: u32,
    /// Generated columns are not replicated: no clocks, no changes.
    pub generated: bool,
}

/// A table's shape: what capture and merge need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// Every column in table-definition order, generated ones included.
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns`, in PRIMARY KEY order.
    pub pk: Vec<usize>,
    /// Indexes into `columns` of the replicated non-pk columns, in table order.
    /// A column's position in this list is its clock slot.
    pub non_pk: Vec<usize>,
}

impl TableInfo {
    pub fn pk_columns(&self) -> impl ExactSizeIterator<Item = &ColumnInfo> + '_ {
        self.pk.iter().map(|&i| &self.columns[i])
    }

    pub fn non_pk_columns(&self) -> impl ExactSizeIterator<Item = &ColumnInfo> + '_ {
        self.non_pk.iter().map(|&i| &self.columns[i])
    }

    /// The clock slot of a replicated non-pk column.
    pub fn slot_of(&self, column: &str) -> Option<usize> {
        self.non_pk
            .iter()
            .position(|&i| self.columns[i].name == column)
    }

    /// [`slot_of`](Self::slot_of) ignoring ASCII case, as SQLite names
    /// columns (schema files may spell a name differently from the table).
    pub fn slot_of_ignore_case(&self, column: &str) -> Option<usize> {
        self.non_pk
            .iter()
            .position(|&i| self.columns[i].name.eq_ignore_ascii_case(column))
    }
}

/// Reads a table's shape; `None` if `schema.table` does not exist.
pub fn introspect(conn: &Connection, schema: &str, table: &str) -> Result<Option<TableInfo>> {
    // The schema goes in as the pragma function's argument: SQLite ignores a
    // `schema.` prefix on pragma table-valued functions.
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1, ?2)",
    )?;
    let columns = stmt
        .query_map([table, schema], |r| {
            let hidden: i64 = r.get(5)?;
            Ok(ColumnInfo {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                notnull: r.get(2)?,
                default: r.get(3)?,
                pk_order: r.get(4)?,
                generated: hidden == 2 || hidden == 3,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if columns.is_empty() {
        return Ok(None);
    }
    let mut pk: Vec<usize> = (0..columns.len())
        .filter(|&i| columns[i].pk_order > 0)
        .collect();
    pk.sort_by_key(|&i| columns[i].pk_order);
    let non_pk = (0..columns.len())
        .filter(|&i| columns[i].pk_order == 0 && !columns[i].generated)
        .collect();
    Ok(Some(TableInfo {
        name: table.to_owned(),
        columns,
        pk,
        non_pk,
    }))
}

/// Quotes an SQL identifier: `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `table` is one of Patina's own tables, or could be mistaken for
/// one: `crr_*` (clocks, sites, the version index) and `*__crr_*` belong to
/// this crate, `patina_*` to the node (replication bookkeeping). Clients may
/// read them but never write them, and no user table may take such a name.
pub fn is_reserved_table_name(table: &str) -> bool {
    let lower = table.to_ascii_lowercase();
    lower.starts_with("crr_") || lower.starts_with("patina_") || lower.contains("__crr_")
}

/// The column id of a row's sentinel (cr-sqlite's `-1`): the clock entry that
/// records the row's existence and causal length rather than a column.
pub const SENTINEL: &str = "-1";
