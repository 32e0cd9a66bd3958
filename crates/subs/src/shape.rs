//! A subscription's shape: its statement with the literals of its WHERE
//! bound as parameters, so that subscriptions that differ only in those
//! literals (`… WHERE app = 'app1'`, `… WHERE app = 'app2'`) run one SQL
//! text. The worker analyzes a shape once and keeps one prepared statement
//! per shape (issue 14: 10,000 per-app subscriptions were 10,000 texts, each
//! analyzed on creation and re-prepared on every event, the statement cache
//! holding 16).
//!
//! A literal is bound only where a parameter means the same: a text or
//! decimal integer literal in the top-level WHERE of a one-SELECT
//! statement, outside any function call's parentheses (an expression index
//! on `json_extract(data, '$.app')` matches only that literal text). SQL
//! compares a literal and a bound value alike (neither has affinity), so
//! results are the same; the query plan may differ only where SQLite reads a
//! literal's value when planning — a partial index whose WHERE names the
//! literal (see docs/subscriptions.md).

use patina_crr::sql_text::{tokenize_complete, Kind, Token};
use patina_crr::Value;
use patina_node::{Params, Statement};

/// Prefix of the names given to bound literals of a statement with named
/// parameters.
const LITERAL_NAME: &str = ":__patina_lit_";
/// A statement with more literals than this runs as written: long `IN`
/// lists are shapes of their own anyway (their length is in the text), and
/// SQLite takes at most 32,766 parameters.
const LITERALS_MAX: usize = 256;

/// `st` with the literals of its WHERE bound as parameters; `None` when it
/// has none that can be, or is not of a shape this handles (then it runs
/// as written).
pub(crate) fn parameterized(st: &Statement) -> Option<Statement> {
    let mut toks = tokenize_complete(&st.sql)?;
    while toks.last().is_some_and(|t| t.is_punct(';')) {
        toks.pop();
    }
    if !toks.first().is_some_and(|t| t.is_word("select"))
        || toks.iter().filter(|t| t.is_word("select")).count() != 1
    {
        return None;
    }
    let (start, end) = where_clause(&toks)?;
    let literals = bindable_literals(&toks, start, end);
    if literals.is_empty() || literals.len() > LITERALS_MAX {
        return None;
    }
    match &st.params {
        Params::None => positional(st, &toks, &literals, &[]),
        Params::Positional(values) => positional(st, &toks, &literals, values),
        Params::Named(values) => named(st, &toks, &literals, values),
    }
}

/// The token range of the top-level WHERE's expression.
fn where_clause(toks: &[Token<'_>]) -> Option<(usize, usize)> {
    let mut depth = 0i32;
    let mut start = None;
    for (i, t) in toks.iter().enumerate() {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth -= 1;
        } else if depth == 0 {
            if t.is_word("where") {
                start = Some(i + 1);
            } else if start.is_some()
                && ["group", "order", "limit", "having", "window"]
                    .iter()
                    .any(|w| t.is_word(w))
            {
                return start.map(|s| (s, i));
            }
        }
    }
    start.map(|s| (s, toks.len()))
}

/// Words after which a `(` groups an expression (or, after `IN`, opens a
/// list); after any other name it opens a function's arguments.
const GROUPING_WORDS: &[&str] = &[
    "where", "and", "or", "not", "in", "is", "between", "like", "glob", "when", "then", "else",
    "case",
];

/// The literals of `toks[start..end]` that can be bound, with their values.
fn bindable_literals(toks: &[Token<'_>], start: usize, end: usize) -> Vec<(usize, Value)> {
    let mut out = Vec::new();
    // Per open parenthesis: whether it is a function call's.
    let mut calls: Vec<bool> = Vec::new();
    for i in start..end {
        let t = &toks[i];
        let prev = i.checked_sub(1).map(|p| &toks[p]);
        if t.is_punct('(') {
            let call = prev.is_some_and(|p| {
                p.kind == Kind::Quoted
                    || (p.kind == Kind::Word && !GROUPING_WORDS.iter().any(|w| p.is_word(w)))
            });
            calls.push(call);
            continue;
        }
        if t.is_punct(')') {
            calls.pop();
            continue;
        }
        if calls.iter().any(|&c| c) {
            continue;
        }
        let value = match t.kind {
            // Not the `'…'` of a blob literal `x'…'`.
            Kind::Str if !prev.is_some_and(|p| p.kind == Kind::Word && p.end == t.start) => {
                t.string_value().map(Value::Text)
            }
            // Decimal integers only: SQLite reads an integer literal that
            // overflows, a hexadecimal one or a real by rules of its own.
            Kind::Number if t.text.bytes().all(|b| b.is_ascii_digit()) => {
                t.text.parse::<i64>().ok().map(Value::Integer)
            }
            _ => None,
        };
        if let Some(v) = value {
            out.push((i, v));
        }
    }
    out
}

/// Binds the literals as `?`, the statement's own `?` parameters (plain
/// ones only: `?NNN` numbers would shift) keeping their order.
fn positional(
    st: &Statement,
    toks: &[Token<'_>],
    literals: &[(usize, Value)],
    own: &[Value],
) -> Option<Statement> {
    let own_params: Vec<&Token<'_>> = toks.iter().filter(|t| t.kind == Kind::Param).collect();
    if own_params.iter().any(|t| t.text != "?") || own_params.len() != own.len() {
        return None;
    }
    let mut own = own.iter();
    let mut lits = literals.iter().peekable();
    let mut values = Vec::with_capacity(own.len() + literals.len());
    let mut sql = String::with_capacity(st.sql.len());
    let mut copied = 0;
    for (i, t) in toks.iter().enumerate() {
        if t.kind == Kind::Param {
            values.push(own.next()?.clone());
        } else if let Some((_, v)) = lits.next_if(|(at, _)| *at == i) {
            sql.push_str(&st.sql[copied..t.start]);
            sql.push('?');
            copied = t.end;
            values.push(v.clone());
        }
    }
    sql.push_str(&st.sql[copied..]);
    Some(Statement {
        sql,
        params: Params::Positional(values),
    })
}

/// Binds the literals as named parameters beside the statement's own.
fn named(
    st: &Statement,
    toks: &[Token<'_>],
    literals: &[(usize, Value)],
    own: &[(String, Value)],
) -> Option<Statement> {
    // A value given for one of the names bound literals take would be
    // silently replaced (or ignored): such a statement runs as written.
    let taken = |name: &str| {
        name.get(1..)
            .is_some_and(|n| n.starts_with(&LITERAL_NAME[1..]))
    };
    if toks
        .iter()
        .any(|t| t.kind == Kind::Param && (t.text.starts_with('?') || taken(t.text)))
        || own.iter().any(|(name, _)| taken(name))
    {
        return None;
    }
    let mut values = own.to_vec();
    let mut sql = String::with_capacity(st.sql.len() + 16 * literals.len());
    let mut copied = 0;
    for (n, (at, v)) in literals.iter().enumerate() {
        let t = &toks[*at];
        let name = format!("{LITERAL_NAME}{n}");
        sql.push_str(&st.sql[copied..t.start]);
        sql.push_str(&name);
        copied = t.end;
        values.push((name, v.clone()));
    }
    sql.push_str(&st.sql[copied..]);
    Some(Statement {
        sql,
        params: Params::Named(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(sql: &str) -> Statement {
        Statement::new(sql)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn literals_of_the_where_become_positional_parameters() {
        let p = parameterized(&st(
            "SELECT id, state FROM machines WHERE app = 'app1' AND n IN (1, 2) AND m >= 3;",
        ))
        .unwrap();
        assert_eq!(
            p.sql,
            "SELECT id, state FROM machines WHERE app = ? AND n IN (?, ?) AND m >= ?;"
        );
        assert_eq!(
            p.params,
            Params::Positional(vec![
                text("app1"),
                Value::Integer(1),
                Value::Integer(2),
                Value::Integer(3)
            ])
        );
        // Another literal, the same text.
        let q = parameterized(&st(
            "SELECT id, state FROM machines WHERE app = 'it''s' AND n IN (7, 8) AND m >= 9;",
        ))
        .unwrap();
        assert_eq!(q.sql, p.sql);
        assert_eq!(
            q.params,
            Params::Positional(vec![
                text("it's"),
                Value::Integer(7),
                Value::Integer(8),
                Value::Integer(9)
            ])
        );
    }

    #[test]
    fn own_parameters_keep_their_order_among_the_literals() {
        let mut s = st("SELECT ? AS k, id FROM t WHERE a = ? AND b = 'x' AND c = ?");
        s.params = Params::Positional(vec![Value::Integer(0), text("a"), text("c")]);
        let p = parameterized(&s).unwrap();
        assert_eq!(
            p.sql,
            "SELECT ? AS k, id FROM t WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(
            p.params,
            Params::Positional(vec![Value::Integer(0), text("a"), text("x"), text("c")])
        );
        let mut n = st("SELECT id FROM t WHERE a = :a AND b = 'x'");
        n.params = Params::Named(vec![(":a".into(), Value::Integer(1))]);
        let p = parameterized(&n).unwrap();
        assert_eq!(
            p.sql,
            "SELECT id FROM t WHERE a = :a AND b = :__patina_lit_0"
        );
        assert_eq!(
            p.params,
            Params::Named(vec![
                (":a".into(), Value::Integer(1)),
                (":__patina_lit_0".into(), text("x"))
            ])
        );
    }

    #[test]
    fn literals_whose_meaning_a_parameter_would_change_stay() {
        for sql in [
            // No WHERE, or literals outside it.
            "SELECT id, 'x' FROM t",
            "SELECT id FROM t WHERE a = b ORDER BY 1 LIMIT 5",
            // A function's arguments (an expression index matches the text).
            "SELECT id FROM t WHERE json_extract(data, '$.app') = b",
            "SELECT id FROM t WHERE coalesce(a, 5) > b",
            // Blob, real, hexadecimal and overflowing integer literals.
            "SELECT id FROM t WHERE a = x'00ff'",
            "SELECT id FROM t WHERE a = 1.5",
            "SELECT id FROM t WHERE a = 0x10",
            "SELECT id FROM t WHERE a = -9223372036854775808",
            // More than one SELECT, or not a SELECT.
            "SELECT id FROM t WHERE a IN (SELECT a FROM u WHERE b = 1)",
            "WITH c AS (SELECT 1) SELECT id FROM t WHERE a = 1",
            // Broken SQL.
            "SELECT id FROM t WHERE a = 'open",
        ] {
            assert_eq!(parameterized(&st(sql)), None, "{sql}");
        }
        // Too many literals.
        let list: Vec<String> = (0..300).map(|i| i.to_string()).collect();
        let many = format!("SELECT id FROM t WHERE a IN ({})", list.join(", "));
        assert_eq!(parameterized(&st(&many)), None);
        // A value given for a name bound literals would take.
        let mut n = st("SELECT id FROM t WHERE a = :a AND b = 'x'");
        n.params = Params::Named(vec![
            (":a".into(), Value::Integer(1)),
            (":__patina_lit_0".into(), text("y")),
        ]);
        assert_eq!(parameterized(&n), None);
        // Numbered parameters would shift.
        let mut s = st("SELECT id FROM t WHERE a = ?1 AND b = 2");
        s.params = Params::Positional(vec![Value::Integer(1)]);
        assert_eq!(parameterized(&s), None);
        // A function call's literal stays, the comparison's is bound.
        let p = parameterized(&st(
            "SELECT id FROM t WHERE lower(a) = 'x' AND (b = 2 OR c LIKE 'y%')",
        ))
        .unwrap();
        assert_eq!(
            p.sql,
            "SELECT id FROM t WHERE lower(a) = ? AND (b = ? OR c LIKE ?)"
        );
    }
}
