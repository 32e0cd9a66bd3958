//! Which primary key a subscription's WHERE pins to one value: a small
//! tokenizer and a recognizer of `pk = value AND …` at the top level. A
//! pinned subscription is re-run only for commits that change that key;
//! anything this does not understand pins nothing (routing by table then).

use std::collections::HashMap;

use patina_crr::Value;

use patina_node::Params;

use super::codec;

/// A token of SQL, as far as [`pinned_key`] needs to tell them apart.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    /// A bare word (keyword or name), lowercased.
    Word(String),
    /// A quoted name ("x", `x`, [x]).
    Name(String),
    Text(String),
    Number(String),
    /// `?`, `?NNN`, `:a`, `@a`, `$a`.
    Param(String),
    Open,
    Close,
    /// Any other operator or punctuation.
    Op(String),
}

/// Splits SQL into tokens; `None` for anything it does not understand
/// (then nothing is pinned).
pub(super) fn tokens(sql: &str) -> Option<Vec<Token>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += end + 4;
            }
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let mut text = Vec::new();
                i += 1;
                loop {
                    let &d = b.get(i)?;
                    i += 1;
                    if d == close {
                        if close != b']' && b.get(i) == Some(&close) {
                            text.push(d);
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    text.push(d);
                }
                let text = String::from_utf8(text).ok()?;
                out.push(if c == b'\'' {
                    Token::Text(text)
                } else {
                    Token::Name(text)
                });
            }
            b'?' | b':' | b'@' | b'$' => {
                i += 1;
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                out.push(Token::Param(sql[start..i].to_owned()));
            }
            b'(' => {
                i += 1;
                out.push(Token::Open);
            }
            b')' => {
                i += 1;
                out.push(Token::Close);
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && (word(b[i]) || b[i] == b'.') {
                    i += 1;
                }
                out.push(Token::Number(sql[start..i].to_owned()));
            }
            c if word(c) => {
                while i < b.len() && word(b[i]) {
                    i += 1;
                }
                out.push(Token::Word(sql[start..i].to_ascii_lowercase()));
            }
            _ => {
                i += 1;
                while i < b.len() && b"=<>!|-".contains(&b[i]) && b"=<>!|-".contains(&c) {
                    i += 1;
                }
                out.push(Token::Op(sql[start..i].to_owned()));
            }
        }
    }
    Some(out)
}

/// The encoded primary key the statement's WHERE pins, in `pk` order: a
/// top-level conjunct `col = value` (or `value = col`, `==` too) for every
/// pk column, `value` a bound parameter or a text or integer literal, and
/// `exact(col, value)` true. `None` whenever the SQL is of another shape:
/// only one source table with an optional alias, no OR at the top level,
/// no BETWEEN or CASE (their AND is not a conjunction).
pub(super) fn pinned_key(
    sql: &str,
    params: &Params,
    pk: &[String],
    exact: impl Fn(&str, &Value) -> bool,
) -> Option<Vec<u8>> {
    let mut toks = tokens(sql)?;
    while toks.last() == Some(&Token::Op(";".into())) {
        toks.pop();
    }
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x == w);
    // Top-level FROM and WHERE, and where the WHERE clause ends.
    let mut depth = 0i32;
    let (mut from, mut wher, mut end) = (None, None, toks.len());
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Open => depth += 1,
            Token::Close => depth -= 1,
            _ if depth != 0 => {}
            // A second FROM or WHERE at the top level: not the one shape.
            t if word(t, "from") && from.replace(i).is_some() => return None,
            t if word(t, "where") && wher.replace(i).is_some() => return None,
            t if word(t, "order") && wher.is_some() => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (from, wher) = (from?, wher?);
    if from > wher {
        return None;
    }
    // FROM [schema.]table [[AS] alias]: one table, nothing joined.
    let mut source = &toks[from + 1..wher];
    let is_name = |t: &Token| matches!(t, Token::Word(_) | Token::Name(_));
    if source.len() >= 3 && source[1] == Token::Op(".".into()) {
        source = &source[2..];
    }
    let one_table = match source {
        [t] => is_name(t),
        [t, a] => is_name(t) && is_name(a) && !word(a, "join") && !word(a, "natural"),
        [t, as_, a] => is_name(t) && word(as_, "as") && is_name(a),
        _ => false,
    };
    if !one_table {
        return None;
    }
    let clause = &toks[wher + 1..end];
    if clause.iter().any(|t| word(t, "between") || word(t, "case")) {
        return None;
    }
    // Parameters numbered the way SQLite numbers them, for the simple
    // cases only: all `?`, all `?NNN`, or all named.
    let all: Vec<&String> = toks
        .iter()
        .filter_map(|t| match t {
            Token::Param(p) => Some(p),
            _ => None,
        })
        .collect();
    let value_of = |at: usize| -> Option<Value> {
        match &toks[at] {
            Token::Text(t) => Some(Value::Text(t.clone())),
            Token::Number(n) => n.parse::<i64>().ok().map(Value::Integer),
            Token::Param(p) => match params {
                Params::Positional(values) if p == "?" => {
                    if all.iter().any(|q| *q != "?") {
                        return None;
                    }
                    let ordinal = toks[..at]
                        .iter()
                        .filter(|t| matches!(t, Token::Param(_)))
                        .count();
                    values.get(ordinal).cloned()
                }
                Params::Positional(values) if p.starts_with('?') => {
                    if all.iter().any(|q| !q.starts_with('?') || q.len() == 1) {
                        return None;
                    }
                    let n: usize = p[1..].parse().ok()?;
                    values.get(n.checked_sub(1)?).cloned()
                }
                Params::Named(values) if !p.starts_with('?') => {
                    values.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone())
                }
                _ => None,
            },
            _ => None,
        }
    };
    let column_at = |range: &[Token]| -> Option<String> {
        let name = match range {
            [c] => c,
            [_, dot, c] if *dot == Token::Op(".".into()) => c,
            _ => return None,
        };
        match name {
            Token::Word(c) | Token::Name(c) => Some(c.clone()),
            _ => None,
        }
    };
    let mut pins: HashMap<String, Value> = HashMap::new();
    let mut depth = 0i32;
    let mut start = wher + 1;
    for i in wher + 1..=end {
        let t = toks.get(i).filter(|_| i < end);
        match t {
            Some(Token::Open) => depth += 1,
            Some(Token::Close) => depth -= 1,
            Some(t) if depth == 0 && word(t, "or") => return None,
            Some(t) if !(depth == 0 && word(t, "and")) => {}
            _ => {
                // A conjunct: toks[start..i].
                let piece = &toks[start..i];
                let eq = piece
                    .iter()
                    .position(|t| matches!(t, Token::Op(o) if o == "=" || o == "=="));
                if let Some(eq) = eq {
                    let (left, right) = (&piece[..eq], &piece[eq + 1..]);
                    let pin = match (column_at(left), column_at(right)) {
                        (Some(c), None) if right.len() == 1 => {
                            value_of(start + eq + 1).map(|v| (c, v))
                        }
                        (None, Some(c)) if left.len() == 1 => value_of(start).map(|v| (c, v)),
                        _ => None,
                    };
                    if let Some((column, value)) = pin {
                        if let Some(pk_col) = pk.iter().find(|p| p.eq_ignore_ascii_case(&column)) {
                            pins.entry(pk_col.clone()).or_insert(value);
                        }
                    }
                }
                start = i + 1;
            }
        }
    }
    let mut key = Vec::with_capacity(pk.len());
    for c in pk {
        let v = pins.remove(c)?;
        if !exact(c, &v) {
            return None;
        }
        key.push(v);
    }
    Some(codec::encode(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(sql: &str, params: Params, pk: &[&str]) -> Option<Vec<Value>> {
        let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
        pinned_key(sql, &params, &pk, |_, v| !matches!(v, Value::Null))
            .map(|k| codec::decode(&k).unwrap())
    }

    fn pos(v: &[Value]) -> Params {
        Params::Positional(v.to_vec())
    }

    #[test]
    fn pinned_keys_of_simple_filters() {
        let t = |s: &str| Value::Text(s.into());
        let five = [Value::Integer(5)];
        assert_eq!(
            pin("SELECT id, a FROM bench WHERE id = ?", pos(&five), &["id"]),
            Some(five.to_vec())
        );
        assert_eq!(
            pin(
                "select * from main.bench b where a > 1 and b.\"id\" == 'x''y';",
                Params::None,
                &["id"]
            ),
            Some(vec![t("x'y")])
        );
        assert_eq!(
            pin(
                "SELECT * FROM t AS x WHERE (a = 1) AND :k = k2 AND k1 = ?2 ORDER BY a",
                Params::Named(vec![(":k".into(), t("b"))]),
                &["k1", "k2"]
            ),
            None,
            "named and numbered parameters mixed"
        );
        assert_eq!(
            pin(
                "SELECT * FROM t WHERE ?2 = k2 AND k1 = ?1",
                pos(&[t("a"), t("b")]),
                &["k1", "k2"]
            ),
            Some(vec![t("a"), t("b")])
        );
        assert_eq!(
            pin(
                "SELECT * FROM t WHERE a = ? AND id = ?",
                pos(&[t("a"), t("b")]),
                &["id"]
            ),
            Some(vec![t("b")]),
            "plain ? are numbered in order"
        );
    }

    #[test]
    fn no_pin_unless_every_pk_column_is_pinned_by_a_top_level_conjunct() {
        let one = [Value::Integer(1)];
        for sql in [
            "SELECT * FROM t WHERE id = ? OR a = 1",
            "SELECT * FROM t WHERE a = 1 OR id = ?",
            "SELECT * FROM t WHERE (id = ? OR a = 2)",
            "SELECT * FROM t WHERE NOT id = ?",
            "SELECT * FROM t WHERE id = ? + 1",
            "SELECT * FROM t WHERE id = ? COLLATE nocase",
            "SELECT * FROM t WHERE id != ?",
            "SELECT * FROM t WHERE id IS ?",
            "SELECT * FROM t WHERE a BETWEEN 0 AND id = ?",
            "SELECT * FROM t WHERE CASE WHEN a THEN 1 ELSE 0 END AND id = ?",
            "SELECT * FROM t, u WHERE t.id = ?",
            "SELECT * FROM t JOIN u ON u.x = t.id WHERE t.id = ?",
            "SELECT * FROM t",
            "SELECT * FROM t WHERE a = ?",
            "SELECT * FROM t WHERE id = a",
            "SELECT * FROM t WHERE id = ?1 AND a = ?",
            "SELECT * FROM t WHERE id = 1.5",
        ] {
            assert_eq!(pin(sql, pos(&one), &["id"]), None, "{sql}");
        }
        assert_eq!(
            pin("SELECT * FROM t WHERE k1 = ?", pos(&one), &["k1", "k2"]),
            None,
            "part of a composite key"
        );
        assert_eq!(
            pin("SELECT * FROM t WHERE id = ?", pos(&[]), &["id"]),
            None,
            "unbound"
        );
    }
}
