//! cr-sqlite's rules for making a table a CRR (crr-model.md 11), and the
//! small SQL lexer that these checks and schema planning share.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, SchemaViolation};
use crate::schema::{introspect, quote_ident, TableInfo};

use sql_text::tokenize;

pub(crate) fn violation(
    table: &str,
    column: Option<&str>,
    rule: impl Into<String>,
) -> SchemaViolation {
    SchemaViolation {
        table: table.to_owned(),
        column: column.map(str::to_owned),
        rule: rule.into(),
    }
}

/// Checks every rule for making `schema.table` a CRR; an empty result means
/// the table can become one.
pub(crate) fn validate(
    conn: &Connection,
    schema: &str,
    table: &str,
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
    out.extend(primary_key_rules(&info));
    out.extend(not_null_rules(&info));
    out.extend(unique_rules(conn, schema, table)?);
    out.extend(autoincrement_rule(&sql, &info));
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
    let lower = info.name.to_ascii_lowercase();
    if lower.starts_with("crr_") || lower.contains("__crr_") {
        out.push(violation(
            &info.name,
            None,
            "names starting with crr_ or containing __crr_ are reserved for Patina's bookkeeping",
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

/// Just enough SQL lexing to find keywords, split column lists and compare
/// definitions without being fooled by literals, quoted names or comments.
pub(crate) mod sql_text {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Kind {
        /// A keyword or bare identifier.
        Word,
        Number,
        /// `"x"`, `` `x` `` or `[x]`.
        Quoted,
        /// `'x'`.
        Str,
        /// Any other single character.
        Punct,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Token<'a> {
        pub kind: Kind,
        pub text: &'a str,
        /// Byte offsets into the tokenized text.
        pub start: usize,
        pub end: usize,
    }

    impl Token<'_> {
        pub(crate) fn is_word(&self, keyword: &str) -> bool {
            self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
        }

        pub(crate) fn is_punct(&self, c: char) -> bool {
            self.kind == Kind::Punct && self.text.starts_with(c)
        }

        /// The name this token spells, quotes removed.
        pub(crate) fn unquoted(&self) -> String {
            if self.kind != Kind::Quoted {
                return self.text.to_owned();
            }
            let inner = self.text.get(1..).unwrap_or_default();
            match self.text.as_bytes().first() {
                Some(b'[') => inner.strip_suffix(']').unwrap_or(inner).to_owned(),
                Some(&q) => {
                    let q = char::from(q).to_string();
                    let inner = inner.strip_suffix(q.as_str()).unwrap_or(inner);
                    inner.replace(&q.repeat(2), &q)
                }
                None => String::new(),
            }
        }

        /// The form two definitions are compared in: SQLite ignores the
        /// ASCII case of keywords and names and how names are quoted.
        pub(crate) fn normalized(&self) -> String {
            match self.kind {
                Kind::Word | Kind::Number => self.text.to_ascii_lowercase(),
                Kind::Quoted => self.unquoted().to_ascii_lowercase(),
                Kind::Str | Kind::Punct => self.text.to_owned(),
            }
        }
    }

    pub(crate) fn normalized(tokens: &[Token<'_>]) -> Vec<String> {
        tokens.iter().map(Token::normalized).collect()
    }

    /// The source text from the first to the last token.
    pub(crate) fn span<'a>(sql: &'a str, tokens: &[Token<'_>]) -> &'a str {
        match (tokens.first(), tokens.last()) {
            (Some(a), Some(b)) => sql.get(a.start..b.end).unwrap_or_default(),
            _ => "",
        }
    }

    /// Unterminated literals and comments run to the end of the text; any
    /// input tokenizes.
    pub(crate) fn tokenize(sql: &str) -> Vec<Token<'_>> {
        let bytes = sql.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let (kind, end) = match scan(bytes, i) {
                Scan::Skip(end) => {
                    i = end;
                    continue;
                }
                Scan::Token(kind, end) => (kind, end),
            };
            // Token ends only fall on ASCII bytes or the end, so on char boundaries.
            let text = sql.get(i..end).unwrap_or_default();
            out.push(Token {
                kind,
                text,
                start: i,
                end,
            });
            i = end;
        }
        out
    }

    enum Scan {
        Skip(usize),
        Token(Kind, usize),
    }

    fn scan(bytes: &[u8], i: usize) -> Scan {
        let next = bytes.get(i + 1).copied();
        match bytes[i] {
            b if b.is_ascii_whitespace() => Scan::Skip(i + 1),
            // A byte order mark, e.g. at the start of a concatenated file.
            0xEF if bytes[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => Scan::Skip(i + 3),
            b'-' if next == Some(b'-') => Scan::Skip(find(bytes, i + 2, b"\n")),
            b'/' if next == Some(b'*') => Scan::Skip(find(bytes, i + 2, b"*/")),
            b'\'' => Scan::Token(Kind::Str, quoted_end(bytes, i, b'\'')),
            q @ (b'"' | b'`') => Scan::Token(Kind::Quoted, quoted_end(bytes, i, q)),
            b'[' => Scan::Token(Kind::Quoted, find(bytes, i + 1, b"]")),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                Scan::Token(Kind::Number, number_end(bytes, i))
            }
            b if b.is_ascii_digit() => Scan::Token(Kind::Number, number_end(bytes, i)),
            b if is_word_byte(b) => {
                let len = bytes[i..].iter().take_while(|&&b| is_word_byte(b)).count();
                Scan::Token(Kind::Word, i + len)
            }
            _ => Scan::Token(Kind::Punct, i + 1),
        }
    }

    fn is_word_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
    }

    /// The index just past the first `pat` at or after `from`, or the end.
    fn find(bytes: &[u8], from: usize, pat: &[u8]) -> usize {
        (from..bytes.len())
            .find(|&j| bytes[j..].starts_with(pat))
            .map_or(bytes.len(), |j| j + pat.len())
    }

    /// A doubled quote inside the literal stands for one quote.
    fn quoted_end(bytes: &[u8], start: usize, quote: u8) -> usize {
        let mut j = start + 1;
        while j < bytes.len() {
            if bytes[j] == quote {
                if bytes.get(j + 1) != Some(&quote) {
                    return j + 1;
                }
                j += 1;
            }
            j += 1;
        }
        bytes.len()
    }

    fn number_end(bytes: &[u8], start: usize) -> usize {
        let mut j = start;
        while j < bytes.len() {
            let b = bytes[j];
            let exponent_sign = matches!(b, b'+' | b'-')
                && matches!(bytes.get(j.wrapping_sub(1)), Some(b'e' | b'E'))
                && !bytes[start..].starts_with(b"0x")
                && !bytes[start..].starts_with(b"0X");
            if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || exponent_sign) {
                break;
            }
            j += 1;
        }
        j
    }

    /// The top-level items of the first parenthesized list, split at commas:
    /// for a CREATE TABLE, its column definitions and table constraints.
    /// Also returns the tokens after the list (table options).
    pub(crate) fn paren_items<'t, 'a>(
        tokens: &'t [Token<'a>],
    ) -> (Vec<&'t [Token<'a>]>, &'t [Token<'a>]) {
        let Some(open) = tokens.iter().position(|t| t.is_punct('(')) else {
            return (Vec::new(), &[]);
        };
        let mut items = Vec::new();
        let mut depth = 0usize;
        let mut start = open + 1;
        for (i, t) in tokens.iter().enumerate().skip(open) {
            if t.is_punct('(') {
                depth += 1;
            } else if t.is_punct(')') {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    items.push(&tokens[start..i]);
                    return (items, &tokens[i + 1..]);
                }
            } else if t.is_punct(',') && depth == 1 {
                items.push(&tokens[start..i]);
                start = i + 1;
            }
        }
        (items, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::sql_text::{paren_items, tokenize, Kind};
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

    #[test]
    fn lexer_handles_literals_comments_and_nesting() {
        let sql = "x('a,''b', \"c\"\"d\", [e,f], `g`, (1, 2), -- z,\n 1.5e-3 /* , */ , é)";
        let tokens = tokenize(sql);
        let (items, rest) = paren_items(&tokens);
        assert!(rest.is_empty());
        let texts: Vec<_> = items
            .iter()
            .map(|i| super::sql_text::span(sql, i))
            .collect();
        assert_eq!(
            texts,
            [
                "'a,''b'",
                "\"c\"\"d\"",
                "[e,f]",
                "`g`",
                "(1, 2)",
                "1.5e-3",
                "é"
            ]
        );
        assert_eq!(items[1][0].unquoted(), "c\"d");
        assert_eq!(items[2][0].unquoted(), "e,f");
        assert_eq!(items[5][0].kind, Kind::Number);
        assert!(tokenize("'unterminated").len() == 1);
        assert!(tokenize("/* open").is_empty());
    }
}
