//! Schema planning: what statements bring a database's tables to the
//! tables a schema text declares — additively, or (with [`Drops::Allowed`])
//! also dropping the tables and columns the text no longer declares.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{CrrError, Result, SchemaViolation};
use crate::schema::{introspect, quote_ident, ColumnInfo, TableInfo};
use crate::schema_rules::{drop_refused, validate, violation};
use crate::sql_text::{normalized, tokenize, Kind};

mod statements;
mod table_text;

use statements::*;
use table_text::*;

/// Whether a schema change may drop tables and columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Drops {
    /// A CRR table or a column missing from the text is refused: data is
    /// never deleted because a file lost a line.
    #[default]
    Refused,
    /// They are dropped with their data and clocks (a destructive schema
    /// change, docs/crr.md). Renames stay refused.
    Allowed,
}

/// What it takes to bring a database's tables to a schema text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPlan {
    /// SQL statements to run, in order, after the drops: CREATE TABLE for new tables, ALTER TABLE ... ADD COLUMN for new columns, CREATE INDEX for new indexes.
    pub statements: Vec<String>,
    /// Tables the schema creates (not yet in the database), in schema order.
    pub new_tables: Vec<String>,
    /// Existing tables that gain columns or indexes.
    pub altered_tables: Vec<String>,
    /// CRR tables the text no longer declares, to drop (only planned with
    /// [`Drops::Allowed`]).
    pub dropped_tables: Vec<String>,
    /// Columns existing tables no longer declare, to drop (only planned
    /// with [`Drops::Allowed`]).
    pub dropped_columns: Vec<DroppedColumns>,
}

impl SchemaPlan {
    /// Whether applying the plan deletes data.
    pub fn drops(&self) -> bool {
        !self.dropped_tables.is_empty() || !self.dropped_columns.is_empty()
    }
}

/// The columns a plan drops from one existing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DroppedColumns {
    pub table: String,
    /// In table order.
    pub columns: Vec<String>,
    /// The table's indexes that name one of them: SQLite cannot drop an
    /// indexed column, and the text can no longer declare such an index.
    pub indexes: Vec<String>,
}

/// Plans how to bring the tables of database `schema` on `conn` to `sql`
/// additively: [`plan_with`] refusing drops.
pub fn plan(conn: &Connection, schema: &str, sql: &str) -> Result<SchemaPlan> {
    plan_with(conn, schema, sql, Drops::Refused)
}

/// Plans how to bring the tables of database `schema` on `conn` to `sql`:
/// the text of one or more schema files (CREATE TABLE and CREATE INDEX
/// statements, `IF NOT EXISTS` allowed, comments allowed).
///
/// Statements come grouped per table, in schema order: a new table's
/// CREATE TABLE then its indexes; an existing table's ALTER TABLE ... ADD
/// COLUMN statements then its new indexes. They are meant to run on `conn`
/// itself: for a `schema` other than `main` they name it (`CREATE TABLE
/// "global".t ...`, `CREATE INDEX "global".i ON t ...`).
///
/// Tables of the database that the text does not mention are left alone,
/// except CRR tables: a CRR table missing from the text is refused like a
/// removed column, or with [`Drops::Allowed`] planned as dropped.
/// Every table of the text must satisfy the CRR rules, and existing tables
/// may only gain columns (appended, nullable or defaulted, not in the
/// primary key) and indexes, or with [`Drops::Allowed`] lose non-key
/// columns — never both in one plan: a column removed and another added
/// (or a table removed and one with its columns added) reads as a rename,
/// which is refused whatever `drops` says. Anything else refuses the whole
/// plan with [`CrrError::Schema`] naming every violation. `conn` is only
/// read.
pub fn plan_with(conn: &Connection, schema: &str, sql: &str, drops: Drops) -> Result<SchemaPlan> {
    let scratch = Connection::open_in_memory()?;
    let (mut violations, ran) = load(&scratch, sql)?;
    let mut planner = Planner {
        target: conn,
        schema,
        scratch: &scratch,
        drops,
        plan: SchemaPlan::default(),
        violations: Vec::new(),
    };
    // A statement that did not run leaves the scratch tables incomplete:
    // comparing them would only add noise.
    if ran {
        let tables = scratch_tables(&scratch)?;
        for (name, table_sql) in &tables {
            planner.table(name, table_sql)?;
        }
        planner.removed_tables(&tables)?;
    }
    violations.append(&mut planner.violations);
    if violations.is_empty() {
        Ok(planner.plan)
    } else {
        Err(CrrError::Schema(violations))
    }
}

// ---- running the schema text in a scratch database ----

/// Runs the allowed statements of `sql` in `scratch`; returns the violations
/// and whether every allowed statement ran.
fn load(scratch: &Connection, sql: &str) -> Result<(Vec<SchemaViolation>, bool)> {
    let tokens = tokenize(sql);
    let mut violations = Vec::new();
    for tokens in split_statements(&tokens) {
        let statement = classify(sql, tokens);
        match statement.object {
            Object::Refused(rule) => violations.push(violation(&statement.table, None, rule)),
            Object::Table | Object::Index => {
                if let Err(e) = scratch.execute(statement.text, []) {
                    let rule = format!("schema SQL does not run: {e}");
                    violations.push(violation(&statement.table, None, rule));
                    return Ok((violations, false));
                }
            }
        }
    }
    violations.extend(temp_objects(scratch)?);
    Ok((violations, true))
}

fn temp_objects(scratch: &Connection) -> Result<Vec<SchemaViolation>> {
    let mut stmt = scratch.prepare("SELECT tbl_name FROM temp.sqlite_master ORDER BY rowid")?;
    let tables = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tables
        .iter()
        .map(|t| {
            violation(
                t,
                None,
                "temporary tables and indexes are not allowed in schema files",
            )
        })
        .collect())
}

/// (name, CREATE TABLE sql) of the scratch tables, in schema order.
fn scratch_tables(scratch: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = scratch.prepare(
        "SELECT name, coalesce(sql, '') FROM main.sqlite_master
         WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
    )?;
    let tables = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tables)
}

// ---- comparing with the target ----

struct Planner<'c> {
    target: &'c Connection,
    schema: &'c str,
    scratch: &'c Connection,
    drops: Drops,
    plan: SchemaPlan,
    violations: Vec<SchemaViolation>,
}

/// A schema object of the target: (type, name, sql).
type TargetObject = (String, String, String);

impl Planner<'_> {
    /// A CRR table missing from the schema files is refused, as a removed
    /// column is, unless drops are allowed: silently keeping one would make
    /// the files lie about what replicates.
    fn removed_tables(&mut self, kept: &[(String, String)]) -> Result<()> {
        let sql = format!("SELECT name FROM {}.crr_tables ORDER BY id", self.schema);
        let existing: Vec<String> = match self.target.prepare(&sql) {
            Ok(mut stmt) => stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            // A database that was never a CRR database has none.
            Err(_) => Vec::new(),
        };
        for name in existing {
            // Patina's own tables (`ensure_internal_crr`) are never in the
            // schema files.
            if crate::schema::is_reserved_table_name(&name) {
                continue;
            }
            if kept.iter().any(|(k, _)| k.eq_ignore_ascii_case(&name)) {
                continue;
            }
            if let Some(new) = self.same_columns_as(&name)? {
                let rule = format!(
                    "table was removed and table {new} added with the same columns: renaming a \
                     table is not supported. Add {new} in one reload, copy the rows with \
                     INSERT INTO {new} SELECT … FROM {name}, then drop {name} in a later reload \
                     that allows destructive changes"
                );
                self.violations.push(violation(&name, None, rule));
                continue;
            }
            match self.drops {
                Drops::Refused => self.violations.push(drop_refused(
                    &name,
                    None,
                    "table was removed: dropping it deletes its rows and clocks on this node",
                )),
                Drops::Allowed => self.plan.dropped_tables.push(name),
            }
        }
        Ok(())
    }

    /// A table this plan creates whose columns are those of the target's
    /// `table`: with `table` removed, a rename.
    fn same_columns_as(&self, table: &str) -> Result<Option<String>> {
        let names = |t: Option<TableInfo>| {
            let mut names: Vec<String> = t
                .into_iter()
                .flat_map(|t| t.columns)
                .map(|c| c.name.to_ascii_lowercase())
                .collect();
            names.sort_unstable();
            names
        };
        let old = names(introspect(self.target, self.schema, table)?);
        for new in &self.plan.new_tables {
            if names(introspect(self.scratch, "main", new)?) == old {
                return Ok(Some(new.clone()));
            }
        }
        Ok(None)
    }

    fn table(&mut self, name: &str, sql: &str) -> Result<()> {
        self.violations
            .extend(validate(self.scratch, "main", name)?);
        match self.target_object(name)? {
            None => {
                let create = self.qualify(sql)?;
                self.plan.statements.push(create);
                let indexes = self.indexes(name)?;
                self.plan.statements.extend(indexes);
                self.plan.new_tables.push(name.to_owned());
            }
            Some((kind, existing, existing_sql)) if kind == "table" => {
                let mut statements = self.alter(name, sql, &existing, &existing_sql)?;
                statements.extend(self.indexes(name)?);
                if !statements.is_empty() {
                    self.plan.statements.extend(statements);
                    self.plan.altered_tables.push(existing);
                }
            }
            Some((kind, existing, _)) => {
                let rule = format!("the database already has a {kind} named {existing}");
                self.violations.push(violation(name, None, rule));
            }
        }
        Ok(())
    }

    fn target_object(&self, name: &str) -> Result<Option<TargetObject>> {
        let row = self
            .target
            .query_row(
                &format!(
                    "SELECT type, name, coalesce(sql, '') FROM {}.sqlite_master
                     WHERE name = ?1 COLLATE NOCASE",
                    quote_ident(self.schema)
                ),
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row)
    }

    fn is_main(&self) -> bool {
        self.schema.eq_ignore_ascii_case("main")
    }

    /// Makes a CREATE TABLE/INDEX text from sqlite_master (which always
    /// reads `CREATE [UNIQUE] TABLE|INDEX name…`) name the target schema.
    fn qualify(&self, sql: &str) -> Result<String> {
        if self.is_main() {
            return Ok(sql.to_owned());
        }
        let tokens = tokenize(sql);
        let name = tokens
            .iter()
            .position(|t| t.is_word("TABLE") || t.is_word("INDEX"))
            .and_then(|i| tokens.get(i + 1))
            .ok_or_else(|| {
                CrrError::Corrupt(format!("unexpected schema SQL from SQLite: {sql}"))
            })?;
        let (head, tail) = sql.split_at(name.start);
        Ok(format!("{head}{}.{tail}", quote_ident(self.schema)))
    }

    fn table_ref(&self, table: &str) -> String {
        if self.is_main() {
            quote_ident(table)
        } else {
            format!("{}.{}", quote_ident(self.schema), quote_ident(table))
        }
    }

    /// The scratch indexes of `table` missing from the target, as statements.
    fn indexes(&mut self, table: &str) -> Result<Vec<String>> {
        let mut stmt = self.scratch.prepare(
            "SELECT name, sql FROM main.sqlite_master
             WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY rowid",
        )?;
        let indexes = stmt
            .query_map([table], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for (index, sql) in indexes {
            match self.target_object(&index)? {
                None => out.push(self.qualify(&sql)?),
                Some((kind, _, existing)) if kind == "index" => {
                    if normalized(&tokenize(&existing)) != normalized(&tokenize(&sql)) {
                        let rule = format!(
                            "index {index} differs from the database's: changing an index is not \
                             supported; create a new index under a new name"
                        );
                        self.violations.push(violation(table, None, rule));
                    }
                }
                Some((kind, existing, _)) => {
                    let rule = format!(
                        "index {index}: the database already has a {kind} named {existing}"
                    );
                    self.violations.push(violation(table, None, rule));
                }
            }
        }
        Ok(out)
    }

    /// ALTER TABLE statements for the columns `sql` adds to the existing
    /// table, or the columns it drops (planned in `plan.dropped_columns`);
    /// anything else that differs is a violation.
    fn alter(
        &mut self,
        name: &str,
        sql: &str,
        existing: &str,
        existing_sql: &str,
    ) -> Result<Vec<String>> {
        let (Some(old), Some(new)) = (
            introspect(self.target, self.schema, existing)?,
            introspect(self.scratch, "main", name)?,
        ) else {
            return Ok(Vec::new());
        };
        let old_text = TableText::parse(existing_sql);
        let new_text = TableText::parse(sql);
        let before = self.violations.len();
        self.violations
            .extend(table_changes(existing, &old_text, &new_text));
        let (changed, removed) = existing_columns(existing, &old, &new, &old_text, &new_text);
        self.violations.extend(changed);
        let added: Vec<&str> = new
            .columns
            .iter()
            .filter(|c| position(&old, &c.name).is_none())
            .map(|c| c.name.as_str())
            .collect();
        if !removed.is_empty() && !added.is_empty() {
            self.violations
                .extend(renamed_columns(existing, &removed, &added));
            return Ok(Vec::new());
        }
        if !removed.is_empty() {
            self.removed_columns(existing, existing_sql, &old, &new, removed)?;
            return Ok(Vec::new());
        }
        let additions = self.new_columns(existing, &old, &new, &new_text);
        if self.violations.len() > before || additions.is_empty() {
            return Ok(Vec::new());
        }
        self.violations
            .extend(dry_run(existing, existing_sql, &additions, &new)?);
        let table = self.table_ref(existing);
        Ok(additions
            .iter()
            .map(|(_, def)| format!("ALTER TABLE {table} ADD COLUMN {def}"))
            .collect())
    }

    /// Plans dropping `removed` (columns of the existing `table` that the
    /// text no longer declares), or says why it cannot be.
    fn removed_columns(
        &mut self,
        table: &str,
        existing_sql: &str,
        old: &TableInfo,
        new: &TableInfo,
        removed: Vec<String>,
    ) -> Result<()> {
        let mut droppable = Vec::new();
        for column in removed {
            let in_pk = old
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&column) && c.pk_order > 0);
            if in_pk {
                let rule = "a primary-key column cannot be dropped: the keys of existing rows \
                            would change (make a new table with the new key instead)";
                self.violations.push(violation(table, Some(&column), rule));
            } else if self.drops == Drops::Refused {
                let rule = "column was removed: dropping it deletes its values and clocks on \
                            this node";
                self.violations
                    .push(drop_refused(table, Some(&column), rule));
            } else {
                droppable.push(column);
            }
        }
        if droppable.is_empty() || self.drops == Drops::Refused {
            return Ok(());
        }
        let problems = dry_run_drop(table, existing_sql, &droppable, new)?;
        if !problems.is_empty() {
            self.violations.extend(problems);
            return Ok(());
        }
        let indexes = self.indexes_naming(table, &droppable)?;
        self.plan.dropped_columns.push(DroppedColumns {
            table: table.to_owned(),
            columns: droppable,
            indexes,
        });
        Ok(())
    }

    /// The target's indexes on `table` whose definition names one of
    /// `columns` (in its key or its WHERE).
    fn indexes_naming(&self, table: &str, columns: &[String]) -> Result<Vec<String>> {
        let mut stmt = self.target.prepare(&format!(
            "SELECT name, sql FROM {}.sqlite_master
             WHERE type = 'index' AND tbl_name = ?1 COLLATE NOCASE AND sql IS NOT NULL
             ORDER BY rowid",
            quote_ident(self.schema)
        ))?;
        let indexes = stmt
            .query_map([table], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(indexes
            .into_iter()
            .filter(|(_, sql)| {
                let tokens = tokenize(sql);
                // The index's own name comes before ON: only what follows
                // the table's name is about columns.
                let body = tokens
                    .iter()
                    .position(|t| t.is_word("ON"))
                    .map_or(&tokens[..0], |on| &tokens[(on + 2).min(tokens.len())..]);
                body.iter().any(|t| {
                    matches!(t.kind, Kind::Word | Kind::Quoted)
                        && columns.iter().any(|c| t.unquoted().eq_ignore_ascii_case(c))
                })
            })
            .map(|(name, _)| name)
            .collect())
    }

    /// (column name, definition text) of each column to add.
    fn new_columns(
        &mut self,
        table: &str,
        old: &TableInfo,
        new: &TableInfo,
        text: &TableText,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (pos, c) in new.columns.iter().enumerate() {
            if position(old, &c.name).is_some() {
                continue;
            }
            let def = text.column(&c.name);
            let problems = new_column_problems(pos, old.columns.len(), c, def);
            if problems.is_empty() {
                if let Some(def) = def {
                    out.push((c.name.clone(), def.text.clone()));
                }
            }
            self.violations.extend(
                problems
                    .into_iter()
                    .map(|rule| violation(table, Some(&c.name), rule)),
            );
        }
        out
    }
}

/// Why `column`, new at `pos` of a table that had `old_len` columns, cannot
/// be added with ALTER TABLE ADD COLUMN.
fn new_column_problems(
    pos: usize,
    old_len: usize,
    c: &ColumnInfo,
    def: Option<&ColumnDef>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if pos < old_len {
        out.push("a new column must come after all existing columns (SQLite appends added columns at the end)");
    }
    if c.pk_order > 0 {
        out.push("a new column cannot be part of the primary key (the keys of existing rows cannot change)");
    }
    match def {
        None => out.push("cannot find this column's definition in the CREATE TABLE text"),
        Some(d) if c.generated && d.norm.iter().skip(1).any(|t| t == "stored") => out.push(
            "a STORED generated column cannot be added to an existing table (ALTER TABLE ADD COLUMN \
             cannot add one); make it VIRTUAL",
        ),
        Some(_) => {}
    }
    if c.default.as_deref().is_some_and(|d| !is_constant(d)) {
        out.push(
            "a column added to an existing table needs a constant DEFAULT (a literal): SQLite \
             cannot add a column whose default is CURRENT_TIMESTAMP or an expression",
        );
    }
    out
}

/// Whether a DEFAULT is a literal, which ADD COLUMN can fill existing rows with.
fn is_constant(default: &str) -> bool {
    let tokens = tokenize(default);
    let mut t = tokens.as_slice();
    while t.len() >= 2 && t[0].is_punct('(') && t[t.len() - 1].is_punct(')') {
        t = &t[1..t.len() - 1];
    }
    match t {
        [lit] => {
            matches!(lit.kind, Kind::Number | Kind::Str)
                || ["NULL", "TRUE", "FALSE"].iter().any(|k| lit.is_word(k))
        }
        [a, b] => {
            let signed = (a.is_punct('-') || a.is_punct('+')) && b.kind == Kind::Number;
            let blob = a.is_word("X") && b.kind == Kind::Str;
            signed || blob
        }
        _ => false,
    }
}

/// Replays the ALTER statements on a copy of the existing table's
/// definition, so what SQLite refuses is refused at planning time.
fn dry_run(
    table: &str,
    existing_sql: &str,
    additions: &[(String, String)],
    new: &TableInfo,
) -> Result<Vec<SchemaViolation>> {
    let replay = Connection::open_in_memory()?;
    // Not every table can be rebuilt alone (e.g. a collation only the
    // target has); applying the plan still checks for real.
    if replay.execute(existing_sql, []).is_err() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (column, def) in additions {
        let alter = format!("ALTER TABLE {} ADD COLUMN {def}", quote_ident(table));
        if let Err(e) = replay.execute(&alter, []) {
            out.push(violation(
                table,
                Some(column),
                format!("SQLite cannot add this column: {e}"),
            ));
        }
    }
    let replayed = introspect(&replay, "main", table)?.map(|t| t.columns);
    if out.is_empty() && replayed.as_ref() != Some(&new.columns) {
        let rule = "ALTER TABLE ADD COLUMN would not reproduce this table's definition; \
                    declare the new columns the way they are meant to be added";
        out.push(violation(table, None, rule));
    }
    Ok(out)
}

/// One violation per removed column of a table that also gains columns:
/// what reads as a rename, with the way to do one.
fn renamed_columns(table: &str, removed: &[String], added: &[&str]) -> Vec<SchemaViolation> {
    removed
        .iter()
        .map(|old| {
            let new = match added {
                [one] => (*one).to_owned(),
                _ => "<new column>".to_owned(),
            };
            let rule = format!(
                "column was removed and {} added in the same reload: renaming a column is not \
                 supported. Add the new column in one reload, copy the data with an UPDATE \
                 (UPDATE {} SET {} = {}), then drop {} in a later reload that allows \
                 destructive changes",
                added.join(", "),
                quote_ident(table),
                quote_ident(&new),
                quote_ident(old),
                old
            );
            violation(table, Some(old), rule)
        })
        .collect()
}

/// Replays dropping `columns` on a copy of the existing table's definition
/// (its indexes left out: the plan drops those that name them), so what
/// SQLite refuses — a column a CHECK or a generated column reads — is
/// refused at planning time.
fn dry_run_drop(
    table: &str,
    existing_sql: &str,
    columns: &[String],
    new: &TableInfo,
) -> Result<Vec<SchemaViolation>> {
    let replay = Connection::open_in_memory()?;
    if replay.execute(existing_sql, []).is_err() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for column in columns {
        let drop = format!(
            "ALTER TABLE {} DROP COLUMN {}",
            quote_ident(table),
            quote_ident(column)
        );
        if let Err(e) = replay.execute(&drop, []) {
            out.push(violation(
                table,
                Some(column),
                format!("SQLite cannot drop this column: {e}"),
            ));
        }
    }
    let replayed = introspect(&replay, "main", table)?.map(|t| t.columns);
    if out.is_empty() && replayed.as_ref() != Some(&new.columns) {
        let rule = "ALTER TABLE DROP COLUMN would not leave this table's definition; declare \
                    the remaining columns exactly as they are";
        out.push(violation(table, None, rule));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
