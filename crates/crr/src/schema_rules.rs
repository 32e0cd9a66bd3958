//! cr-sqlite's rules for making a table a CRR (crr-model.md 11).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, SchemaViolation};
use crate::schema::{introspect, quote_ident, TableInfo};

use crate::sql_text::tokenize;

pub(crate) fn violation(
    table: &str,
    column: Option<&str>,
    rule: impl Into<String>,
) -> SchemaViolation {
    SchemaViolation {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        rule: rule.into(),
        drops_data: false,
    }
}

/// A removal refused only because it would delete data: allowed when drops
/// are ([`crate::migrate::Drops::Allowed`]).
pub(crate) fn drop_refused(
    table: &str,
    column: Option<&str>,
    rule: impl Into<String>,
) -> SchemaViolation {
    SchemaViolation {
        drops_data: true,
        ..violation(table, column, rule)
    }
}

/// Checks every rule for making `schema.table` a CRR; an empty result means
/// the table can become one.
pub(crate) fn validate(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<SchemaViolation>> {
    validate_as(conn, schema, table, Owner::User)
}

/// Whose table is validated: Patina's own replicated tables take the
/// reserved names no user table may take, and follow every other rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    User,
    Patina,
}

pub(crate) fn validate_as(
    conn: &Connection,
    schema: &str,
    table: &str,
    owner: Owner,
) -> Result<Vec<SchemaViolation>> {
    let sql = match table_sql(conn, schema, table)? {
        TableSql::Table(sql) => sql,
        TableSql::Missing => return Ok(vec![violation(table, None, "no such table")]),
        TableSql::View => {
            return Ok(vec![violation(
                table,
                None,
                "this is a view, not a table: only tables can be CRRs",
            )])
        }
    };
    if tokenize(&sql).get(1).is_some_and(|t| t.is_word("VIRTUAL")) {
        return Ok(vec![violation(
            table,
            None,
            "virtual tables cannot be CRRs: their rows live outside SQLite's tables",
        )]);
    }
    let Some(info) = introspect(conn, schema, table)? else {
        return Ok(vec![violation(table, None, "no such table")]);
    };
    let mut out = reserved_names(&info);
    if owner == Owner::Patina {
        out.retain(|v| v.column.is_some());
    }
    out.extend(primary_key_rules(&info));
    out.extend(not_null_rules(&info));
    out.extend(unique_rules(conn, schema, table)?);
    out.extend(autoincrement_rule(&sql, &info));
    out.extend(check_rules(&sql, &info));
    out.extend(foreign_key_rules(conn, schema, table)?);
    Ok(out)
}

enum TableSql {
    Table(String),
    View,
    Missing,
}

fn table_sql(conn: &Connection, schema: &str, table: &str) -> Result<TableSql> {
    let row: Option<(String, Option<String>)> = conn
        .query_row(
            &format!(
                "SELECT type, sql FROM {}.sqlite_master
                 WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view')",
                quote_ident(schema)
            ),
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => TableSql::Missing,
        Some((kind, _)) if kind == "view" => TableSql::View,
        Some((_, sql)) => TableSql::Table(sql.unwrap_or_default()),
    })
}

fn reserved_names(info: &TableInfo) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    if crate::schema::is_reserved_table_name(&info.name) {
        out.push(violation(
            &info.name,
            None,
            "names starting with crr_ or patina_, or containing __crr_, are reserved for Patina's own tables: rename the table",
        ));
    }
    for c in info
        .columns
        .iter()
        .filter(|c| c.name == crate::schema::SENTINEL)
    {
        out.push(violation(
            &info.name,
            Some(&c.name),
            format!(
                "the column name {} is reserved: changes use it to name a row's existence",
                crate::schema::SENTINEL
            ),
        ));
    }
    out
}

fn primary_key_rules(info: &TableInfo) -> Vec<SchemaViolation> {
    if info.pk.is_empty() {
        return vec![violation(
            &info.name,
            None,
            "no primary key: declare a PRIMARY KEY (replicas identify rows by it; rowids are local)",
        )];
    }
    info.pk_columns()
        .filter(|c| !c.notnull)
        .map(|c| {
            violation(
                &info.name,
                Some(&c.name),
                "a primary key column must be declared NOT NULL \
                 (e.g. `id INTEGER PRIMARY KEY NOT NULL`; SQLite otherwise allows NULL keys)",
            )
        })
        .collect()
}

fn not_null_rules(info: &TableInfo) -> Vec<SchemaViolation> {
    // Generated columns are computed, never written by a merge.
    info.columns
        .iter()
        .filter(|c| c.pk_order == 0 && !c.generated && c.notnull && c.default.is_none())
        .map(|c| {
            violation(
                &info.name,
                Some(&c.name),
                "a NOT NULL column that is not part of the primary key needs a DEFAULT \
                 (replicas create rows column by column)",
            )
        })
        .collect()
}

fn unique_rules(conn: &Connection, schema: &str, table: &str) -> Result<Vec<SchemaViolation>> {
    // A schema prefix on a pragma function is ignored: the schema goes in
    // as its hidden argument.
    let mut stmt = conn.prepare(
        "SELECT name, origin FROM pragma_index_list(?1, ?2) WHERE \"unique\" AND origin <> 'pk'",
    )?;
    let indexes = stmt
        .query_map([table, schema], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for (index, origin) in indexes {
        let columns = index_columns(conn, schema, &index)?;
        let what = if origin == "c" {
            format!("unique index {index}")
        } else {
            "a UNIQUE constraint".to_owned()
        };
        let rule = format!(
            "{what} on ({}) is not supported: two replicas can each write the same value \
             and the merge cannot keep both; drop the uniqueness (a plain index is fine)",
            columns.join(", ")
        );
        let column = match columns.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        out.push(violation(table, column, rule));
    }
    Ok(out)
}

fn index_columns(conn: &Connection, schema: &str, index: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT coalesce(name, '<expression>') FROM pragma_index_info(?1, ?2) ORDER BY seqno",
    )?;
    let names = stmt
        .query_map([index, schema], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

/// A CHECK may read at most one replicated column besides the primary key
/// (docs/crr.md, "Constraints a merge can break"): merging keeps the newest
/// value of each column separately, so two valid writes to two columns can
/// merge into a row no write ever checked — and every node would then
/// refuse that merge, forever.
fn check_rules(sql: &str, info: &TableInfo) -> Vec<SchemaViolation> {
    let tokens = tokenize(sql);
    let generated = generated_reads(&tokens, info);
    let mut out = generated_not_null_rules(info, &generated);
    let mut i = 0;
    while i + 1 < tokens.len() {
        if !(tokens[i].is_word("CHECK") && tokens[i + 1].is_punct('(')) {
            i += 1;
            continue;
        }
        let (start, mut depth, mut end) = (i, 0usize, i + 1);
        while end < tokens.len() {
            if tokens[end].is_punct('(') {
                depth += 1;
            } else if tokens[end].is_punct(')') {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            end += 1;
        }
        let end = end.min(tokens.len() - 1);
        let read = replicated_reads(&tokens[start + 2..end], info, &generated);
        if read.len() > 1 {
            out.push(violation(
                &info.name,
                None,
                format!(
                    "`{}` reads the columns {}: merging concurrent writes keeps each column's \
                     newest value separately, so a merged row could break it on every node; \
                     check one column (plus the primary key) per constraint",
                    crate::sql_text::span(sql, &tokens[start..=end]),
                    read.join(" and ")
                ),
            ));
        }
        i = end + 1;
    }
    out
}

/// The replicated non-key columns `tokens` read, a generated column
/// standing for the columns its expression reads.
fn replicated_reads<'i>(
    tokens: &[crate::sql_text::Token<'_>],
    info: &'i TableInfo,
    generated: &HashMap<&'i str, Vec<&'i str>>,
) -> Vec<&'i str> {
    let mut read: Vec<&str> = Vec::new();
    for t in tokens {
        let name = t.unquoted();
        let Some(c) = info
            .columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&name) && c.pk_order == 0)
        else {
            continue;
        };
        let names = match generated.get(c.name.as_str()) {
            Some(reads) => reads.clone(),
            None if c.generated => Vec::new(),
            None => vec![c.name.as_str()],
        };
        for n in names {
            if !read.contains(&n) {
                read.push(n);
            }
        }
    }
    read
}

/// For each generated column, the replicated non-key columns its
/// expression reads, through other generated columns too: a constraint
/// on it constrains them together.
fn generated_reads<'i>(
    tokens: &[crate::sql_text::Token<'_>],
    info: &'i TableInfo,
) -> HashMap<&'i str, Vec<&'i str>> {
    let (items, _) = crate::sql_text::paren_items(tokens);
    let mut expressions = Vec::new();
    for item in items {
        let Some(first) = item.first() else { continue };
        let name = first.unquoted();
        let Some(c) = info
            .columns
            .iter()
            .find(|c| c.generated && c.name.eq_ignore_ascii_case(&name))
        else {
            continue;
        };
        let Some(at) = item
            .windows(2)
            .position(|w| w[0].is_word("AS") && w[1].is_punct('('))
        else {
            continue;
        };
        expressions.push((c.name.as_str(), &item[at + 1..]));
    }
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    // Generated columns may read generated columns: iterate to a fixpoint
    // (each round can only add names; at most one round per column).
    for _ in 0..=expressions.len() {
        let mut changed = false;
        for (name, expr) in &expressions {
            let reads = replicated_reads(expr, info, &out);
            if out.get(name) != Some(&reads) {
                out.insert(name, reads);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    out
}

/// NOT NULL on a generated column reading two or more replicated columns
/// is a CHECK over them (`AS (CASE WHEN lo < hi THEN 1 END) NOT NULL`).
fn generated_not_null_rules(
    info: &TableInfo,
    generated: &HashMap<&str, Vec<&str>>,
) -> Vec<SchemaViolation> {
    info.columns
        .iter()
        .filter(|c| c.generated && c.notnull)
        .filter_map(|c| {
            let reads = generated.get(c.name.as_str())?;
            (reads.len() > 1).then(|| {
                violation(
                    &info.name,
                    Some(&c.name),
                    format!(
                        "NOT NULL on a generated column reading {} is a constraint over \
                         several columns: merging concurrent writes could break it on every \
                         node; drop the NOT NULL",
                        reads.join(" and ")
                    ),
                )
            })
        })
        .collect()
}

fn autoincrement_rule(sql: &str, info: &TableInfo) -> Option<SchemaViolation> {
    if !tokenize(sql).iter().any(|t| t.is_word("AUTOINCREMENT")) {
        return None;
    }
    let column = info.pk_columns().next().map(|c| c.name.as_str());
    Some(violation(
        &info.name,
        column,
        "AUTOINCREMENT is not supported: each replica would hand out the same ids; \
         drop it and use keys that are unique across replicas (e.g. random ids)",
    ))
}

fn foreign_key_rules(conn: &Connection, schema: &str, table: &str) -> Result<Vec<SchemaViolation>> {
    let mut stmt = conn.prepare(
        "SELECT \"table\", \"from\" FROM pragma_foreign_key_list(?1, ?2) ORDER BY id, seq",
    )?;
    let keys = stmt
        .query_map([table, schema], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(keys
        .into_iter()
        .map(|(parent, from)| {
            let rule = format!(
                "foreign keys are not supported (REFERENCES {parent}): replicas merge rows \
                 independently, so a reference can point at a row another replica deleted; \
                 drop the REFERENCES clause"
            );
            violation(table, Some(&from), rule)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, table: &str) -> Vec<SchemaViolation> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        validate(&conn, "main", table).unwrap()
    }

    fn assert_ok(sql: &str) {
        let v = check(sql, "t");
        assert!(v.is_empty(), "{sql}: {v:?}");
    }

    /// Exactly one violation, on `t` and `column`, whose rule mentions `word`.
    fn assert_refused(sql: &str, column: Option<&str>, word: &str) {
        let v = check(sql, "t");
        assert_eq!(v.len(), 1, "{sql}: {v:?}");
        assert_eq!(v[0].table, "t");
        assert_eq!(v[0].column.as_deref(), column, "{v:?}");
        assert!(v[0].rule.contains(word), "{:?} lacks {word:?}", v[0].rule);
    }

    #[test]
    fn missing_table_is_one_violation() {
        let v = check("CREATE TABLE other(id INTEGER PRIMARY KEY NOT NULL)", "t");
        assert_eq!(v, vec![violation("t", None, "no such table")]);
    }

    #[test]
    fn views_are_not_tables() {
        let v = check(
            "CREATE TABLE x(id INTEGER PRIMARY KEY NOT NULL); CREATE VIEW t AS SELECT * FROM x",
            "t",
        );
        assert_eq!(v.len(), 1);
        assert!(v[0].rule.contains("view"));
    }

    #[test]
    fn primary_key_is_required() {
        assert_refused("CREATE TABLE t(a TEXT, b INT)", None, "no primary key");
        assert_ok("CREATE TABLE t(a TEXT NOT NULL PRIMARY KEY, b INT)");
    }

    #[test]
    fn integer_primary_key_needs_not_null() {
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a)",
            Some("id"),
            "NOT NULL",
        );
        assert_ok("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a)");
    }

    #[test]
    fn composite_key_with_a_nullable_part_is_refused() {
        assert_refused(
            "CREATE TABLE t(a TEXT NOT NULL, b INT, c, PRIMARY KEY (a, b))",
            Some("b"),
            "NOT NULL",
        );
        assert_ok("CREATE TABLE t(a TEXT NOT NULL, b INT NOT NULL, c, PRIMARY KEY (a, b))");
    }

    #[test]
    fn not_null_column_needs_a_default() {
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT NOT NULL)",
            Some("a"),
            "DEFAULT",
        );
        assert_ok("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT NOT NULL DEFAULT '')");
    }

    #[test]
    fn unique_constraints_and_indexes_are_refused() {
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a TEXT UNIQUE)",
            Some("a"),
            "UNIQUE",
        );
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a, b, UNIQUE (a, b))",
            None,
            "(a, b)",
        );
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a); CREATE UNIQUE INDEX t_a ON t(a)",
            Some("a"),
            "unique index t_a",
        );
        assert_ok("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, a); CREATE INDEX t_a ON t(a)");
        assert_ok("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a)");
    }

    #[test]
    fn autoincrement_is_refused() {
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, a)",
            Some("id"),
            "AUTOINCREMENT",
        );
        assert_ok(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, \"autoincrement\" TEXT DEFAULT 'AUTOINCREMENT')
             -- AUTOINCREMENT in a comment",
        );
    }

    #[test]
    fn foreign_keys_are_refused() {
        assert_refused(
            "CREATE TABLE p(id INTEGER PRIMARY KEY NOT NULL);
             CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, p_id INT REFERENCES p(id))",
            Some("p_id"),
            "REFERENCES p",
        );
        assert_refused(
            "CREATE TABLE p(id INTEGER PRIMARY KEY NOT NULL);
             CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, p_id INT, FOREIGN KEY (p_id) REFERENCES p)",
            Some("p_id"),
            "foreign keys",
        );
        assert_ok("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, p_id INT)");
    }

    #[test]
    fn checks_over_two_replicated_columns_are_refused() {
        let v = check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, lo INT, hi INT, CHECK (lo < hi))",
            "t",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].rule.contains("lo and hi") && v[0].rule.contains("CHECK (lo < hi)"),
            "{v:?}"
        );
        // Written on a column, reading another: the same.
        let v = check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, lo INT CHECK (lo <= \"Hi\"), hi INT)",
            "t",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        // One column, with the key (fixed for a row) and functions: merges
        // keep each written value of that column, each of which passed.
        assert!(check(
            "CREATE TABLE t(a TEXT NOT NULL, b INT NOT NULL, n INT CHECK (n > b AND length(a) > 0),
             s TEXT, CHECK (s IN ('started', 'stopped')), PRIMARY KEY (a, b))",
            "t"
        )
        .is_empty());
        // A CHECK inside a string literal or a column named check is no CHECK.
        assert!(check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, x TEXT DEFAULT 'CHECK (lo < hi)', lo INT, hi INT)",
            "t"
        )
        .is_empty());
    }

    #[test]
    fn constraints_on_generated_columns_count_the_columns_they_read() {
        let v = check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, lo INT, hi INT,
             span INT GENERATED ALWAYS AS (hi - lo) VIRTUAL, CHECK (span > 0))",
            "t",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].rule.contains("hi and lo"), "{v:?}");
        // Through another generated column, and as NOT NULL.
        let v = check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, lo INT, hi INT,
             d INT AS (hi - lo), ok INT AS (CASE WHEN d > 0 THEN 1 END) NOT NULL)",
            "t",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].column.as_deref(), Some("ok"), "{v:?}");
        // One replicated column behind a generated one is safe.
        assert!(check(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, n INT,
             twice INT AS (n * 2) STORED CHECK (twice >= 0) NOT NULL)",
            "t"
        )
        .is_empty());
    }

    #[test]
    fn reserved_names_are_refused() {
        let v = check(
            "CREATE TABLE crr_x(id INTEGER PRIMARY KEY NOT NULL)",
            "crr_x",
        );
        assert_eq!(v.len(), 1);
        assert!(v[0].rule.contains("reserved"));
        let v = check(
            "CREATE TABLE a__crr_b(id INTEGER PRIMARY KEY NOT NULL)",
            "a__crr_b",
        );
        assert_eq!(v.len(), 1);
        assert_refused(
            "CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, \"-1\" INT)",
            Some("-1"),
            "reserved",
        );
        let v = check(
            "CREATE TABLE Patina_applied(id INTEGER PRIMARY KEY NOT NULL)",
            "Patina_applied",
        );
        assert!(v[0].rule.contains("patina_"), "{v:?}");
        assert_ok("CREATE TABLE t(id INTEGER PRIMARY KEY NOT NULL, crr_a INT)");
        assert!(check(
            "CREATE TABLE my_crr(id INTEGER PRIMARY KEY NOT NULL)",
            "my_crr"
        )
        .is_empty());
    }

    #[test]
    fn accepted_features() {
        assert_ok(
            "CREATE TABLE t(id REAL PRIMARY KEY NOT NULL, a TEXT COLLATE NOCASE CHECK (a <> ''),
             b INT, c INT GENERATED ALWAYS AS (b + 1) STORED, d INT NOT NULL AS (b * 2), CHECK (b > 0)) STRICT",
        );
        assert_ok("CREATE TABLE t(id BLOB PRIMARY KEY, a) WITHOUT ROWID");
        assert_ok("CREATE TABLE t(id TEXT NOT NULL, a, PRIMARY KEY (id)) WITHOUT ROWID");
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let v = check(
            "CREATE TABLE p(id INTEGER PRIMARY KEY NOT NULL);
             CREATE TABLE crr_t(id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT NOT NULL UNIQUE,
               b INT REFERENCES p(id))",
            "crr_t",
        );
        let columns: Vec<_> = v.iter().map(|v| v.column.as_deref()).collect();
        assert_eq!(v.len(), 6, "{v:?}");
        assert!(v.iter().all(|v| v.table == "crr_t"));
        assert_eq!(
            columns,
            [
                None,
                Some("id"),
                Some("a"),
                Some("a"),
                Some("id"),
                Some("b")
            ]
        );
    }

    fn attached(main_table: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "ATTACH ':memory:' AS \"glo bal\";
             CREATE TABLE \"glo bal\".t(id INTEGER PRIMARY KEY, a TEXT UNIQUE, b REFERENCES x);
             CREATE TABLE main.{main_table}(id INTEGER PRIMARY KEY NOT NULL)"
        ))
        .unwrap();
        conn
    }

    #[test]
    fn attached_schemas_are_checked() {
        let conn = attached("other");
        assert_eq!(validate(&conn, "glo bal", "t").unwrap().len(), 3);
        assert_eq!(validate(&conn, "main", "t").unwrap().len(), 1);
    }

    #[test]
    fn attached_schema_shadowed_by_main() {
        let conn = attached("t");
        assert_eq!(validate(&conn, "glo bal", "t").unwrap().len(), 3);
        assert!(validate(&conn, "main", "t").unwrap().is_empty());
    }
}
