//! What a subscription's WHERE says about the rows it can hold: a
//! recognizer of top-level conjuncts `col = v`, `col IN (v, …)`,
//! `col < v` (and `<=`, `>`, `>=`, either side) and `col BETWEEN a AND b`
//! over the tokens of `patina_crr::sql_text`, `v` a bound parameter or a
//! text or number literal. A conjunct of another form is left out: the
//! recognized ones describe a superset of the rows the WHERE accepts, which
//! is all routing needs (a commit is routed to a subscription when a changed
//! row may satisfy them). A top-level `OR` or a `CASE` (whose `AND` is not a
//! conjunction) makes the whole WHERE unknown.

use std::cmp::Ordering;

use patina_crr::sql_text::{tokenize_complete, Kind, Token};
use patina_crr::Value;

use patina_node::Params;

/// What one conjunct requires of a column's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Constraint {
    /// Equal to one of these (`=` has one, `IN` its list).
    OneOf(Vec<Value>),
    /// Within bounds; `true` = inclusive.
    Range {
        low: Option<(Value, bool)>,
        high: Option<(Value, bool)>,
    },
}

/// A recognized conjunct: `column` (as written, unqualified) and what it
/// requires.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conjunct {
    pub column: String,
    pub constraint: Constraint,
}

/// The recognized top-level conjuncts of the WHERE of a one-table SELECT
/// (`FROM [schema.]table [[AS] alias]`); `None` when the statement is of
/// another shape or its WHERE holds a top-level `OR` or a `CASE`, and an
/// empty list when no conjunct is of a recognized form.
pub(crate) fn conjuncts(sql: &str, params: &Params) -> Option<Vec<Conjunct>> {
    // Broken SQL (an open literal or comment) routes nothing.
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
    if clause.iter().any(|t| word(t, "case")) {
        return None;
    }
    let values = Values::new(&toks, params);
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = wher + 1;
    // Inside `BETWEEN a AND b`, the next AND is the BETWEEN's.
    let mut between = false;
    for i in wher + 1..=end {
        let t = toks.get(i).filter(|_| i < end);
        match t {
            Some(t) if t.is_punct('(') => depth += 1,
            Some(t) if t.is_punct(')') => depth -= 1,
            Some(_) if depth != 0 => {}
            Some(t) if word(t, "or") => return None,
            Some(t) if word(t, "between") => between = true,
            Some(t) if word(t, "and") && between => between = false,
            Some(t) if !word(t, "and") => {}
            _ => {
                if let Some(c) = conjunct(&toks, start, i, &values) {
                    out.push(c);
                }
                start = i + 1;
            }
        }
    }
    Some(out)
}

/// Values of literals and parameters, parameters numbered the way SQLite
/// numbers them for the simple cases only: all `?`, all `?NNN`, or all
/// named.
struct Values<'t, 'a> {
    toks: &'t [Token<'a>],
    params: &'t Params,
    all: Vec<&'a str>,
}

impl<'t, 'a> Values<'t, 'a> {
    fn new(toks: &'t [Token<'a>], params: &'t Params) -> Self {
        let all = toks
            .iter()
            .filter(|t| t.kind == Kind::Param)
            .map(|t| t.text)
            .collect();
        Values { toks, params, all }
    }

    /// The value of the literal or parameter spanning `toks[range]` (one
    /// token, or `-` and a number).
    fn at(&self, range: std::ops::Range<usize>) -> Option<Value> {
        let toks = &self.toks[range.clone()];
        match toks {
            [minus, n] if minus.is_op("-") && n.kind == Kind::Number => match number(n.text)? {
                Value::Integer(i) => i.checked_neg().map(Value::Integer),
                Value::Real(f) => Some(Value::Real(-f)),
                _ => None,
            },
            [_] => self.one(range.start),
            _ => None,
        }
    }

    fn one(&self, at: usize) -> Option<Value> {
        let t = &self.toks[at];
        let p = t.text;
        match t.kind {
            Kind::Str => t.string_value().map(Value::Text),
            Kind::Number => number(p),
            Kind::Param => match self.params {
                Params::Positional(values) if p == "?" => {
                    if self.all.iter().any(|q| *q != "?") {
                        return None;
                    }
                    let ordinal = self.toks[..at]
                        .iter()
                        .filter(|t| t.kind == Kind::Param)
                        .count();
                    values.get(ordinal).cloned()
                }
                Params::Positional(values) if p.starts_with('?') => {
                    if self.all.iter().any(|q| !q.starts_with('?') || q.len() == 1) {
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
    }
}

/// A decimal number literal as SQLite reads it: an integer when it fits,
/// else a real. Hexadecimal and odd forms are not recognized.
fn number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Integer(i));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Real)
}

/// The conjunct `toks[start..end]`, if of a recognized form.
fn conjunct(
    toks: &[Token<'_>],
    start: usize,
    end: usize,
    values: &Values<'_, '_>,
) -> Option<Conjunct> {
    let piece = &toks[start..end];
    let is_name = |t: &Token<'_>| matches!(t.kind, Kind::Word | Kind::Quoted);
    // `col`, `q.col`: the length of the column reference at the start.
    let column_len = |r: &[Token<'_>]| -> Option<(usize, String)> {
        match r {
            [q, dot, c, ..] if is_name(q) && dot.is_punct('.') && is_name(c) => {
                Some((3, c.unquoted()))
            }
            [c, ..] if is_name(c) && !is_keyword(c) => Some((1, c.unquoted())),
            _ => None,
        }
    };
    let column_exact = |r: &[Token<'_>]| column_len(r).filter(|(n, _)| *n == r.len()).map(|x| x.1);
    let op_at = piece.iter().position(|t| {
        t.kind == Kind::Punct && matches!(t.text, "=" | "==" | "<" | "<=" | ">" | ">=")
    });
    if let Some(op) = op_at {
        let (left, right) = (&piece[..op], &piece[op + 1..]);
        let text = piece[op].text;
        let (column, value, text) = match (column_exact(left), column_exact(right)) {
            (Some(c), None) => (c, values.at(start + op + 1..end)?, text),
            (None, Some(c)) => (c, values.at(start..start + op)?, flip(text)),
            _ => return None,
        };
        let constraint = match text {
            "=" | "==" => Constraint::OneOf(vec![value]),
            "<" => Constraint::Range {
                low: None,
                high: Some((value, false)),
            },
            "<=" => Constraint::Range {
                low: None,
                high: Some((value, true)),
            },
            ">" => Constraint::Range {
                low: Some((value, false)),
                high: None,
            },
            _ => Constraint::Range {
                low: Some((value, true)),
                high: None,
            },
        };
        return Some(Conjunct { column, constraint });
    }
    let (n, column) = column_len(piece)?;
    let rest = &piece[n..];
    if rest.first().is_some_and(|t| t.is_word("in")) {
        // col IN (v, v, …)
        let list = &rest[1..];
        if !(list.len() >= 3 && list[0].is_punct('(') && list[list.len() - 1].is_punct(')')) {
            return None;
        }
        let inner_start = start + n + 2;
        let inner_end = end - 1;
        let mut items = Vec::new();
        let mut at = inner_start;
        for (i, t) in toks
            .iter()
            .enumerate()
            .take(inner_end + 1)
            .skip(inner_start)
        {
            if i == inner_end || t.is_punct(',') {
                items.push(values.at(at..i)?);
                at = i + 1;
            }
        }
        return Some(Conjunct {
            column,
            constraint: Constraint::OneOf(items),
        });
    }
    if rest.first().is_some_and(|t| t.is_word("between")) {
        // col BETWEEN a AND b
        let and = rest.iter().position(|t| t.is_word("and"))?;
        let low = values.at(start + n + 1..start + n + and)?;
        let high = values.at(start + n + and + 1..end)?;
        return Some(Conjunct {
            column,
            constraint: Constraint::Range {
                low: Some((low, true)),
                high: Some((high, true)),
            },
        });
    }
    None
}

/// Words that cannot be a bare column name in a conjunct (`NOT col = 1` is
/// not `col = 1`).
fn is_keyword(t: &Token<'_>) -> bool {
    t.kind == Kind::Word
        && ["not", "exists", "null", "true", "false"]
            .iter()
            .any(|k| t.text.eq_ignore_ascii_case(k))
}

fn flip(op: &str) -> &str {
    match op {
        "<" => ">",
        "<=" => ">=",
        ">" => "<",
        ">=" => "<=",
        other => other,
    }
}

/// How SQLite orders two values compared without affinity conversion and
/// with BINARY collation: NULL compares to nothing (`None`), numbers (exact
/// between integers and reals) before text (bytes) before blobs (bytes).
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    fn class(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    Some(match (a, b) {
        (Value::Null, _) | (_, Value::Null) => return None,
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Real(x), Value::Real(y)) => x.partial_cmp(y)?,
        (Value::Integer(i), Value::Real(r)) => int_real(*i, *r)?,
        (Value::Real(r), Value::Integer(i)) => int_real(*i, *r)?.reverse(),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    })
}

/// `i` against `r`, exactly (no rounding of `i` to a float).
fn int_real(i: i64, r: f64) -> Option<Ordering> {
    if r.is_nan() {
        return None;
    }
    // 2^63 as a float: every i64 is below it, and at least -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if r >= TWO_63 {
        return Some(Ordering::Less);
    }
    if r < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = r.trunc();
    Some(match i.cmp(&(whole as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(r - whole))?,
        other => other,
    })
}

/// The form a value is looked up by for equality: a real holding a whole
/// number is the integer it equals (`5 = 5.0` holds in SQL).
pub(crate) fn normalized(v: &Value) -> Value {
    match v {
        Value::Real(r)
            if r.fract() == 0.0
                && *r >= -9.223_372_036_854_776e18
                && *r < 9.223_372_036_854_776e18 =>
        {
            Value::Integer(*r as i64)
        }
        other => other.clone(),
    }
}

impl Constraint {
    /// Whether a stored `value` satisfies this constraint (compared as
    /// [`compare`] does).
    pub fn holds(&self, value: &Value) -> bool {
        match self {
            Constraint::OneOf(list) => list
                .iter()
                .any(|v| compare(value, v) == Some(Ordering::Equal)),
            Constraint::Range { low, high } => {
                let above = low.as_ref().is_none_or(|(b, inclusive)| {
                    matches!(
                        (compare(value, b), inclusive),
                        (Some(Ordering::Greater), _) | (Some(Ordering::Equal), true)
                    )
                });
                let below = high.as_ref().is_none_or(|(b, inclusive)| {
                    matches!(
                        (compare(value, b), inclusive),
                        (Some(Ordering::Less), _) | (Some(Ordering::Equal), true)
                    )
                });
                above && below
            }
        }
    }

    /// The values it compares against.
    pub fn values(&self) -> Vec<&Value> {
        match self {
            Constraint::OneOf(list) => list.iter().collect(),
            Constraint::Range { low, high } => {
                low.iter().chain(high.iter()).map(|(v, _)| v).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Constraint::*;

    fn parse(sql: &str, params: Params) -> Option<Vec<(String, Constraint)>> {
        conjuncts(sql, &params).map(|v| v.into_iter().map(|c| (c.column, c.constraint)).collect())
    }

    fn pos(v: &[Value]) -> Params {
        Params::Positional(v.to_vec())
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    const I: fn(i64) -> Value = Value::Integer;

    #[test]
    fn recognized_conjuncts() {
        assert_eq!(
            parse("SELECT id, a FROM bench WHERE id = ?", pos(&[I(5)])),
            Some(vec![("id".into(), OneOf(vec![I(5)]))])
        );
        assert_eq!(
            parse(
                "select * from main.bench b where a > -1 and b.\"id\" == 'x''y' and 3 >= c;",
                Params::None
            ),
            Some(vec![
                (
                    "a".into(),
                    Range {
                        low: Some((I(-1), false)),
                        high: None
                    }
                ),
                ("id".into(), OneOf(vec![t("x'y")])),
                (
                    "c".into(),
                    Range {
                        low: None,
                        high: Some((I(3), true))
                    }
                ),
            ])
        );
        assert_eq!(
            parse(
                "SELECT * FROM t WHERE app IN ('a', ?, 'c') AND n BETWEEN 1.5 AND ? ORDER BY n",
                pos(&[t("b"), I(9)])
            ),
            Some(vec![
                ("app".into(), OneOf(vec![t("a"), t("b"), t("c")])),
                (
                    "n".into(),
                    Range {
                        low: Some((Value::Real(1.5), true)),
                        high: Some((I(9), true))
                    }
                )
            ])
        );
        assert_eq!(
            parse(
                "SELECT * FROM t WHERE app IN ('a', ?) AND n = ?2",
                pos(&[t("b"), I(9)])
            ),
            Some(vec![]),
            "`?` and `?2` mixed: no parameter is read"
        );
        assert_eq!(
            parse(
                "SELECT * FROM t WHERE n BETWEEN 1.5 AND 9 AND NOT a = 1 AND b <> 2 AND f(c) = 1 AND d = e",
                Params::None
            ),
            Some(vec![(
                "n".into(),
                Range { low: Some((Value::Real(1.5), true)), high: Some((I(9), true)) }
            )]),
            "the others are left out"
        );
        assert_eq!(
            parse(
                "SELECT * FROM t WHERE (a = 1) AND :k = k2",
                Params::Named(vec![(":k".into(), t("b"))])
            ),
            Some(vec![("k2".into(), OneOf(vec![t("b")]))]),
            "a parenthesized conjunct is left out"
        );
    }

    #[test]
    fn unknown_shapes() {
        for sql in [
            "SELECT * FROM t WHERE id = ? OR a = 1",
            "SELECT * FROM t WHERE CASE WHEN a THEN 1 ELSE 0 END AND id = ?",
            "SELECT * FROM t, u WHERE t.id = ?",
            "SELECT * FROM t JOIN u ON u.x = t.id WHERE t.id = ?",
            "SELECT * FROM t",
            "SELECT * FROM t WHERE id = 'open",
        ] {
            assert_eq!(parse(sql, pos(&[I(1)])), None, "{sql}");
        }
    }

    #[test]
    fn comparisons_follow_sqlite() {
        use Ordering::*;
        assert_eq!(compare(&I(1), &Value::Real(1.5)), Some(Less));
        assert_eq!(compare(&I(2), &Value::Real(2.0)), Some(Equal));
        assert_eq!(compare(&I(i64::MAX), &Value::Real(9.3e18)), Some(Less));
        assert_eq!(compare(&Value::Real(-0.5), &I(0)), Some(Less));
        assert_eq!(compare(&t("a"), &I(100)), Some(Greater));
        assert_eq!(compare(&Value::Blob(vec![]), &t("z")), Some(Greater));
        assert_eq!(compare(&Value::Null, &I(1)), None);
        assert_eq!(normalized(&Value::Real(3.0)), I(3));
        assert_eq!(normalized(&Value::Real(3.5)), Value::Real(3.5));
        let r = Range {
            low: Some((I(2), true)),
            high: Some((t("m"), false)),
        };
        assert!(r.holds(&I(2)) && r.holds(&t("a")) && !r.holds(&t("m")) && !r.holds(&I(1)));
        assert!(!r.holds(&Value::Null));
    }
}
