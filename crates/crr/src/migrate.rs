//! Additive schema planning: what statements bring a database's tables to
//! the tables a schema text declares, without dropping or changing anything.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{CrrError, Result, SchemaViolation};
use crate::schema::{introspect, quote_ident, ColumnInfo, TableInfo};
use crate::schema_rules::{validate, violation};
use crate::sql_text::{normalized, tokenize, Kind};

mod statements;
mod table_text;

use statements::*;
use table_text::*;

/// What it takes to bring a database's tables to a schema text, additively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaPlan {
    /// SQL statements to run, in order: CREATE TABLE for new tables, ALTER TABLE ... ADD COLUMN for new columns, CREATE INDEX for new indexes.
    pub statements: Vec<String>,
    /// Tables the schema creates (not yet in the database), in schema order.
    pub new_tables: Vec<String>,
    /// Existing tables that gain columns or indexes.
    pub altered_tables: Vec<String>,
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
/// except CRR tables: a CRR table missing from the text is refused (like a
/// removed column) until destructive schema changes exist.
/// Every table of the text must satisfy the CRR rules, and existing tables
/// may only gain columns (appended, nullable or defaulted, not in the
/// primary key) and indexes. Anything else refuses the whole plan with
/// [`CrrError::Schema`] naming every violation. `conn` is only read.
pub fn plan(conn: &Connection, schema: &str, sql: &str) -> Result<SchemaPlan> {
    let scratch = Connection::open_in_memory()?;
    let (mut violations, ran) = load(&scratch, sql)?;
    let mut planner = Planner {
        target: conn,
        schema,
        scratch: &scratch,
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
    plan: SchemaPlan,
    violations: Vec<SchemaViolation>,
}

/// A schema object of the target: (type, name, sql).
type TargetObject = (String, String, String);

impl Planner<'_> {
    /// A CRR table missing from the schema files is refused, as a removed
    /// column is: dropping tables is not supported, and silently keeping
    /// one would make the files lie about what replicates.
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
            if !kept.iter().any(|(k, _)| k.eq_ignore_ascii_case(&name)) {
                self.violations.push(violation(
                    &name,
                    None,
                    "table was removed: dropping tables is not supported (keep it in the schema)",
                ));
            }
        }
        Ok(())
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
    /// table; anything else that differs is a violation.
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
        self.violations
            .extend(existing_columns(existing, &old, &new, &old_text, &new_text));
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

#[cfg(test)]
mod tests;
