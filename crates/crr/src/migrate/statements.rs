//! The schema text cut into statements, and what each one creates.

use crate::sql_text::{span, Kind, Token};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Object {
    Table,
    Index,
    Refused(String),
}

pub(super) struct Statement<'a> {
    pub(super) text: &'a str,
    pub(super) object: Object,
    /// The table the statement is about, as far as the text tells.
    pub(super) table: String,
}

/// Splits at top-level semicolons; a trigger's body keeps its own.
pub(super) fn split_statements<'t, 'a>(tokens: &'t [Token<'a>]) -> Vec<&'t [Token<'a>]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let body_end = match create_kind(&tokens[start..]) {
            Some((_, kind)) if kind == "TRIGGER" => trigger_end(tokens, start),
            _ => start,
        };
        let end = tokens[body_end..]
            .iter()
            .position(|t| t.is_punct(';'))
            .map_or(tokens.len(), |p| body_end + p);
        if end > start {
            out.push(&tokens[start..end]);
        }
        start = end + 1;
    }
    out
}

/// The index of the END closing a trigger body (CASE … END nests inside).
pub(super) fn trigger_end(tokens: &[Token<'_>], start: usize) -> usize {
    let Some(begin) = tokens[start..].iter().position(|t| t.is_word("BEGIN")) else {
        return start;
    };
    let mut cases = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(start + begin + 1) {
        if t.is_word("CASE") {
            cases += 1;
        } else if t.is_word("END") {
            if cases == 0 {
                return i;
            }
            cases -= 1;
        }
    }
    tokens.len()
}

/// For a CREATE statement: the position and uppercased keyword of the kind
/// of object it creates (`VIRTUAL` for virtual tables).
pub(super) fn create_kind(tokens: &[Token<'_>]) -> Option<(usize, String)> {
    if !tokens.first()?.is_word("CREATE") {
        return None;
    }
    let skipped = ["TEMP", "TEMPORARY", "UNIQUE"];
    let i = 1 + tokens[1..]
        .iter()
        .take_while(|t| skipped.iter().any(|k| t.is_word(k)))
        .count();
    let kind = tokens.get(i).filter(|t| t.kind == Kind::Word)?;
    Some((i, kind.text.to_ascii_uppercase()))
}

pub(super) fn classify<'a>(sql: &'a str, tokens: &[Token<'_>]) -> Statement<'a> {
    let text = span(sql, tokens);
    let Some((at, kind)) = create_kind(tokens) else {
        let first: Vec<&str> = tokens.iter().take(3).map(|t| t.text).collect();
        let rule = format!(
            "only CREATE TABLE and CREATE INDEX statements are allowed in schema files, not `{} …`",
            first.join(" ")
        );
        return Statement {
            text,
            object: Object::Refused(rule),
            table: String::new(),
        };
    };
    let name = object_name(tokens, at).unwrap_or_default();
    let on_table = word_after(tokens, "ON").unwrap_or_default();
    let (object, table) = match kind.as_str() {
        "TABLE" => (Object::Table, name),
        "INDEX" => (Object::Index, on_table),
        "VIRTUAL" => {
            let name = object_name(tokens, at + 1).unwrap_or_default();
            let rule = "virtual tables are not allowed in schema files: they cannot be CRRs";
            (Object::Refused(rule.to_owned()), name)
        }
        "VIEW" => {
            let rule = "views are not allowed in schema files: only CREATE TABLE and CREATE INDEX";
            (Object::Refused(rule.to_owned()), name)
        }
        "TRIGGER" => {
            let rule = format!(
                "trigger {name}: triggers are not allowed in schema files (Patina maintains its \
                 own); only CREATE TABLE and CREATE INDEX"
            );
            (Object::Refused(rule), on_table)
        }
        other => {
            let rule = format!(
                "CREATE {other}: only CREATE TABLE and CREATE INDEX statements are allowed in schema files"
            );
            (Object::Refused(rule), name)
        }
    };
    Statement {
        text,
        object,
        table,
    }
}

/// The name a CREATE statement gives, `kind` being the position of its
/// kind keyword: after an optional IF NOT EXISTS, the last part of
/// `[schema.]name`.
pub(super) fn object_name(tokens: &[Token<'_>], kind: usize) -> Option<String> {
    let mut i = kind + 1;
    if tokens.get(i).is_some_and(|t| t.is_word("IF")) {
        i += 3;
    }
    if tokens.get(i + 1).is_some_and(|t| t.is_punct('.')) {
        i += 2;
    }
    tokens.get(i).map(Token::unquoted)
}

pub(super) fn word_after(tokens: &[Token<'_>], keyword: &str) -> Option<String> {
    let i = tokens.iter().position(|t| t.is_word(keyword))?;
    tokens.get(i + 1).map(Token::unquoted)
}
