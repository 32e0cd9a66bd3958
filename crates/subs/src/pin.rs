//! Which primary key a subscription's WHERE pins to one value: a
//! recognizer of `pk = value AND …` at the top level, over the tokens of
//! `patina_crr::sql_text`. A pinned subscription is re-run only for commits
//! that change that key; anything this does not understand pins nothing
//! (routing by table then).

use std::collections::HashMap;

use patina_crr::sql_text::{tokenize_complete, Kind, Token};
use patina_crr::Value;

use patina_node::Params;

use super::codec;

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
    // Broken SQL (an open literal or comment) pins nothing.
    let mut toks = tokenize_complete(sql)?;
    while toks.last().is_some_and(|t| t.is_punct(';')) {
        toks.pop();
    }
    let word = |t: &Token<'_>, w: &str| t.is_word(w);
    // Top-level FROM and WHERE, and where the WHERE clause ends.
    let mut depth = 0i32;
    let (mut from, mut wher, mut end) = (None, None, toks.len());
    for (i, t) in toks.iter().enumerate() {
        match t {
            t if t.is_punct('(') => depth += 1,
            t if t.is_punct(')') => depth -= 1,
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
    let is_name = |t: &Token<'_>| matches!(t.kind, Kind::Word | Kind::Quoted);
    if source.len() >= 3 && source[1].is_punct('.') {
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
    let all: Vec<&str> = toks
        .iter()
        .filter(|t| t.kind == Kind::Param)
        .map(|t| t.text)
        .collect();
    let value_of = |at: usize| -> Option<Value> {
        let t = &toks[at];
        let p = t.text;
        match t.kind {
            Kind::Str => t.string_value().map(Value::Text),
            Kind::Number => p.parse::<i64>().ok().map(Value::Integer),
            Kind::Param => match params {
                Params::Positional(values) if p == "?" => {
                    if all.iter().any(|q| *q != "?") {
                        return None;
                    }
                    let ordinal = toks[..at].iter().filter(|t| t.kind == Kind::Param).count();
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
    let column_at = |range: &[Token<'_>]| -> Option<String> {
        let name = match range {
            [c] => c,
            [_, dot, c] if dot.is_punct('.') => c,
            _ => return None,
        };
        is_name(name).then(|| name.unquoted())
    };
    let mut pins: HashMap<String, Value> = HashMap::new();
    let mut depth = 0i32;
    let mut start = wher + 1;
    for i in wher + 1..=end {
        let t = toks.get(i).filter(|_| i < end);
        match t {
            Some(t) if t.is_punct('(') => depth += 1,
            Some(t) if t.is_punct(')') => depth -= 1,
            Some(t) if depth == 0 && word(t, "or") => return None,
            Some(t) if !(depth == 0 && word(t, "and")) => {}
            _ => {
                // A conjunct: toks[start..i].
                let piece = &toks[start..i];
                let eq = piece.iter().position(|t| t.is_op("=") || t.is_op("=="));
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
