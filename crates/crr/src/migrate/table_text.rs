//! CREATE TABLE texts compared column by column: which differences an
//! existing CRR can take (added columns) and which it cannot.

use crate::error::SchemaViolation;
use crate::schema::{ColumnInfo, TableInfo};
use crate::schema_rules::violation;
use crate::sql_text::{normalized, paren_items, span, tokenize};

/// A CREATE TABLE text cut into its parts.
pub(super) struct TableText {
    pub(super) columns: Vec<ColumnDef>,
    /// (text, normalized) of each table constraint.
    pub(super) constraints: Vec<(String, Vec<String>)>,
    /// WITHOUT ROWID, STRICT: what follows the column list.
    pub(super) options: (String, Vec<String>),
}

pub(super) struct ColumnDef {
    pub(super) name: String,
    /// Exactly as written, so CHECK, COLLATE and DEFAULT survive.
    pub(super) text: String,
    pub(super) norm: Vec<String>,
}

impl TableText {
    pub(super) fn parse(sql: &str) -> TableText {
        let tokens = tokenize(sql);
        let (items, rest) = paren_items(&tokens);
        let mut out = TableText {
            columns: Vec::new(),
            constraints: Vec::new(),
            options: (span(sql, rest).to_owned(), normalized(rest)),
        };
        for item in items {
            let Some(first) = item.first() else { continue };
            let text = span(sql, item).to_owned();
            let is_constraint = ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"]
                .iter()
                .any(|k| first.is_word(k));
            if is_constraint {
                out.constraints.push((text, normalized(item)));
            } else {
                out.columns.push(ColumnDef {
                    name: first.unquoted(),
                    text,
                    norm: normalized(item),
                });
            }
        }
        out
    }

    pub(super) fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// Table options and table constraints cannot change.
pub(super) fn table_changes(table: &str, old: &TableText, new: &TableText) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    if old.options.1 != new.options.1 {
        let rule = format!(
            "table options changed from `{}` to `{}`: WITHOUT ROWID and STRICT cannot change",
            old.options.0, new.options.0
        );
        out.push(violation(table, None, rule));
    }
    let missing_from =
        |list: &[(String, Vec<String>)], c: &Vec<String>| !list.iter().any(|(_, n)| n == c);
    for (text, norm) in &old.constraints {
        if missing_from(&new.constraints, norm) {
            let rule = format!("table constraint `{text}` was removed: constraints of an existing table cannot change");
            out.push(violation(table, None, rule));
        }
    }
    for (text, norm) in &new.constraints {
        if missing_from(&old.constraints, norm) {
            let rule = format!("table constraint `{text}` was added: constraints of an existing table cannot change");
            out.push(violation(table, None, rule));
        }
    }
    out
}

/// Every existing column the text keeps must stay, in order, unchanged:
/// the violations, and the names of the columns it no longer declares.
pub(super) fn existing_columns(
    table: &str,
    old: &TableInfo,
    new: &TableInfo,
    old_text: &TableText,
    new_text: &TableText,
) -> (Vec<SchemaViolation>, Vec<String>) {
    let mut out = Vec::new();
    let mut removed = Vec::new();
    let mut last = None;
    for c in &old.columns {
        let Some(pos) = position(new, &c.name) else {
            removed.push(c.name.clone());
            continue;
        };
        if last.is_some_and(|l| pos < l) {
            let rule =
                "column order changed: existing columns keep their order (new ones go at the end)";
            out.push(violation(table, Some(&c.name), rule));
        }
        last = Some(pos);
        let defs = (old_text.column(&c.name), new_text.column(&c.name));
        if let Some(rule) = column_change(c, &new.columns[pos], defs) {
            out.push(violation(table, Some(&c.name), rule));
        }
    }
    (out, removed)
}

pub(super) fn column_change(
    old: &ColumnInfo,
    new: &ColumnInfo,
    defs: (Option<&ColumnDef>, Option<&ColumnDef>),
) -> Option<String> {
    let shown = |v: Option<&str>| match v {
        None | Some("") => "(none)".to_owned(),
        Some(v) => v.to_owned(),
    };
    let norm = |v: &Option<String>| v.as_deref().map(|d| normalized(&tokenize(d)));
    // Names match ignoring ASCII case, as SQLite does: nothing to change.
    let rule = if old.pk_order != new.pk_order {
        "primary key changed: the primary key of an existing table cannot change".to_owned()
    } else if !old.decl_type.eq_ignore_ascii_case(&new.decl_type) {
        format!(
            "declared type changed from {} to {}: only additive changes are supported",
            shown(Some(&old.decl_type)),
            shown(Some(&new.decl_type)),
        )
    } else if old.notnull != new.notnull {
        let change = if new.notnull { "added" } else { "removed" };
        format!("NOT NULL was {change}: only additive changes are supported")
    } else if norm(&old.default) != norm(&new.default) {
        format!(
            "DEFAULT changed from {} to {}: only additive changes are supported",
            shown(old.default.as_deref()),
            shown(new.default.as_deref())
        )
    } else {
        let (Some(o), Some(n)) = defs else {
            return None;
        };
        if o.norm == n.norm {
            return None;
        }
        format!(
            "column definition changed from `{}` to `{}`: only additive changes are supported",
            o.text, n.text
        )
    };
    Some(rule)
}

pub(super) fn position(table: &TableInfo, column: &str) -> Option<usize> {
    table
        .columns
        .iter()
        .position(|c| c.name.eq_ignore_ascii_case(column))
}
