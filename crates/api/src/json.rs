//! Statements and values as JSON (api.md "Statements and values").
//!
//! A statement is `"SQL"`, `["SQL", [params]]`, `["SQL", {":name": v}]` or
//! `{"query": "SQL", "params": [...] | "named_params": {...}}`.
//! Parameters map to SQLite values: null → NULL, true/false → 1/0, integer
//! → INTEGER (beyond i64: refused — Corrosion stores it as a REAL that
//! has lost digits; send it as a string or with a decimal point), float → REAL
//! (beyond a double's range, e.g. `1e999` / `-1e999`: ±inf), string
//! → TEXT, an array of integers 0–255 (or empty) → BLOB, any other array
//! or object → its JSON text, exactly as sent, as TEXT.

/// Names a parameter value no SQLite type can hold as sent: the body's
/// shape is right and its value wrong, which the body parser answers with
/// 400 rather than a shape error's 422.
pub(crate) const OUTSIDE_RANGE: &str = "outside SQLite's range";

use std::fmt;

use patina_node::{Params, Statement, Statements, Value};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::body::BodyShape;

const STATEMENT_FORMS: &str = r#"a statement: "SQL", ["SQL", [params]], ["SQL", {":name": value}], {"query": "SQL", "params": [...]} or {"query": "SQL", "named_params": {":name": value}}"#;

/// One statement in any of its JSON forms.
pub(crate) struct JsonStatement(pub Statement);

/// `POST /v1/transactions`'s body, packed as it is read: each statement's
/// own allocations live only until it is appended.
pub(crate) struct JsonStatements(pub Statements);

impl BodyShape for JsonStatement {
    const EXPECTED: &'static str = STATEMENT_FORMS;
}

impl BodyShape for JsonStatements {
    const EXPECTED: &'static str = r#"a JSON array of statements, each "SQL", ["SQL", [params]], ["SQL", {":name": value}] or {"query": "SQL", "params"/"named_params": ...}"#;
}

impl<'de> Deserialize<'de> for JsonStatements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStatements;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON array of statements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Statements::new();
                while let Some(JsonStatement(st)) = seq.next_element()? {
                    out.push(st);
                }
                out.shrink_to_fit();
                Ok(JsonStatements(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'de> Deserialize<'de> for JsonStatement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StatementVisitor).map(JsonStatement)
    }
}

struct StatementVisitor;

impl<'de> Visitor<'de> for StatementVisitor {
    type Value = Statement;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(STATEMENT_FORMS)
    }

    fn visit_str<E: de::Error>(self, sql: &str) -> Result<Statement, E> {
        Ok(Statement::new(sql))
    }

    fn visit_string<E: de::Error>(self, sql: String) -> Result<Statement, E> {
        Ok(Statement::new(sql))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Statement, A::Error> {
        let sql: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &"[\"SQL\", params]"))?;
        let JsonParams(params) = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &"[\"SQL\", params]"))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &"[\"SQL\", params]"));
        }
        Ok(Statement { sql, params })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Statement, A::Error> {
        let mut query: Option<String> = None;
        let mut params: Option<Vec<JsonValue>> = None;
        let mut named: Option<JsonNamed> = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "query" => query = Some(map.next_value()?),
                "params" => params = map.next_value()?,
                "named_params" => named = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let sql = query.ok_or_else(|| de::Error::missing_field("query"))?;
        let params = match (params, named) {
            (Some(_), Some(_)) => {
                return Err(de::Error::custom(
                    "a statement has \"params\" or \"named_params\", not both: keep one",
                ))
            }
            (Some(p), None) => Params::Positional(p.into_iter().map(|v| v.0).collect()),
            (None, Some(JsonNamed(n))) => Params::Named(n),
            (None, None) => Params::None,
        };
        Ok(Statement { sql, params })
    }
}

/// The second item of `["SQL", params]`: an array or an object.
struct JsonParams(Params);

impl<'de> Deserialize<'de> for JsonParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonParams;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("parameters: an array [v, …] or an object {\":name\": v, …}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonParams, A::Error> {
                let mut values = Vec::new();
                while let Some(JsonValue(v)) = seq.next_element()? {
                    values.push(v);
                }
                Ok(JsonParams(Params::Positional(values)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JsonParams, A::Error> {
                named_from_map(map).map(|n| JsonParams(Params::Named(n)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `{":name": value, …}`; every key carries its sigil.
struct JsonNamed(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for JsonNamed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonNamed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("named parameters: an object {\":name\": value, …}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<JsonNamed, A::Error> {
                named_from_map(map).map(JsonNamed)
            }
        }
        d.deserialize_map(V)
    }
}

fn named_from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Vec<(String, Value)>, A::Error> {
    let mut out = Vec::new();
    while let Some(name) = map.next_key::<String>()? {
        let sigil_ok = name.len() > 1 && matches!(name.as_bytes()[0], b':' | b'@' | b'$');
        if !sigil_ok {
            return Err(de::Error::custom(format!(
                "named parameter {name:?} lacks its sigil: write \":{name}\" (or \"@{name}\", \"${name}\") as in the SQL"
            )));
        }
        let JsonValue(value) = map.next_value()?;
        out.push((name, value));
    }
    Ok(out)
}

/// One parameter. Read as raw JSON text first, so an array or object that
/// is not a blob is stored exactly as it was sent.
pub(crate) struct JsonValue(pub Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        value_from_raw(raw.get())
            .map(JsonValue)
            .map_err(de::Error::custom)
    }
}

fn value_from_raw(text: &str) -> Result<Value, String> {
    let value = match text.as_bytes().first() {
        Some(b'n') => Value::Null,
        Some(b't') => Value::Integer(1),
        Some(b'f') => Value::Integer(0),
        Some(b'"') => Value::Text(serde_json::from_str(text).map_err(|e| e.to_string())?),
        Some(b'[') => match serde_json::from_str::<Vec<u8>>(text) {
            Ok(bytes) => Value::Blob(bytes),
            Err(_) => Value::Text(text.to_owned()),
        },
        Some(b'{') => Value::Text(text.to_owned()),
        // A float literal too large for a double: `1e999` / `-1e999` are
        // ±inf (the encoding cells use), as is any that overflows.
        _ if text.contains(['.', 'e', 'E']) && overflows(text) => {
            Value::Real(if text.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        _ => {
            let n: serde_json::Number = serde_json::from_str(text)
                .map_err(|e| format!("parameter {text} is not a number SQLite can store: {e}"))?;
            let integer_literal = !text.contains(['.', 'e', 'E']);
            match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::Integer(i),
                // Silently storing it as the nearest REAL would lose digits.
                (None, _) if integer_literal => {
                    return Err(format!(
                        "parameter {text} is an integer {OUTSIDE_RANGE} ({} to {}): send it as a string, or as a number with a decimal point to store it as REAL",
                        i64::MIN,
                        i64::MAX
                    ))
                }
                (None, Some(f)) => Value::Real(f),
                (None, None) => return Err(format!("parameter {text} is out of range")),
            }
        }
    };
    Ok(value)
}

/// Whether the JSON number `text` is beyond a double's range (serde_json
/// refuses it as out of range; Rust's parser gives ±inf).
fn overflows(text: &str) -> bool {
    text.parse::<f64>().is_ok_and(f64::is_infinite)
}

/// A result cell: NULL → null, INTEGER/REAL → number, TEXT → string, BLOB
/// → array of byte values. JSON has no infinities: ±inf is written
/// `1e999` / `-1e999` (as in `patina db`'s JSON lines), which JSON readers
/// parse back as ±inf (Python, JavaScript) or refuse as out of range —
/// never `null`, which would read as SQL NULL. A NaN cannot come out of
/// SQLite (it stores NULL instead); were one to, it would be `null`.
/// Serialize cells with `serde_json`'s writer (`to_vec`): its value
/// conversion (`to_value`, `json!`) refuses `1e999`.
pub(crate) struct Cell<'a>(pub &'a Value);

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) if f.is_infinite() => {
                let text = if *f > 0.0 { "1e999" } else { "-1e999" };
                // Valid JSON by construction.
                let raw =
                    RawValue::from_string(text.to_owned()).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
            Value::Real(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => {
                let mut seq = s.serialize_seq(Some(b.len()))?;
                for byte in b {
                    seq.serialize_element(byte)?;
                }
                seq.end()
            }
        }
    }
}

/// A row's cells.
pub(crate) struct Cells<'a>(pub &'a [Value]);

impl Serialize for Cells<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Cell))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> Statement {
        serde_json::from_str::<JsonStatement>(json).unwrap().0
    }

    fn param(json: &str) -> Value {
        serde_json::from_str::<JsonValue>(json).unwrap().0
    }

    #[test]
    fn the_four_forms() {
        assert_eq!(one(r#""SELECT 1""#), Statement::new("SELECT 1"));
        assert_eq!(
            one(r#"["SELECT ?", [1]]"#),
            Statement::with_params("SELECT ?", vec![Value::Integer(1)])
        );
        assert_eq!(
            one(r#"["SELECT :a", {":a": "x"}]"#).params,
            Params::Named(vec![(":a".into(), Value::Text("x".into()))])
        );
        assert_eq!(
            one(r#"{"query": "SELECT ?", "params": [2.5]}"#),
            Statement::with_params("SELECT ?", vec![Value::Real(2.5)])
        );
        assert_eq!(
            one(r#"{"query": "SELECT @a", "named_params": {"@a": null}, "params": null}"#).params,
            Params::Named(vec![("@a".into(), Value::Null)])
        );
        assert_eq!(
            one(r#"{"query": "SELECT 1", "extra": 1}"#),
            Statement::new("SELECT 1")
        );
    }

    #[test]
    fn wrong_shapes_are_data_errors() {
        for bad in [
            "1",
            "[]",
            r#"["SELECT 1"]"#,
            r#"["SELECT ?", [1], 2]"#,
            r#"["SELECT ?", 1]"#,
            r#"{"params": []}"#,
            r#"{"query": "SELECT ?", "params": [1], "named_params": {":a": 1}}"#,
            r#"["SELECT :a", {"a": 1}]"#,
        ] {
            let e = serde_json::from_str::<JsonStatement>(bad).err().expect(bad);
            assert!(
                e.classify() == serde_json::error::Category::Data
                    || e.classify() == serde_json::error::Category::Syntax,
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parameter_mapping() {
        assert_eq!(param("null"), Value::Null);
        assert_eq!(param("true"), Value::Integer(1));
        assert_eq!(param("false"), Value::Integer(0));
        assert_eq!(param("-7"), Value::Integer(-7));
        assert_eq!(param("9223372036854775807"), Value::Integer(i64::MAX));
        assert_eq!(param("-9223372036854775808"), Value::Integer(i64::MIN));
        for big in [
            "18446744073709551615",
            "99999999999999999999999",
            "-9223372036854775809",
        ] {
            let err = serde_json::from_str::<JsonValue>(big)
                .err()
                .expect(big)
                .to_string();
            assert!(err.contains(big) && err.contains("outside"), "{err}");
        }
        assert_eq!(param("1e23"), Value::Real(1e23));
        assert_eq!(param("1e999"), Value::Real(f64::INFINITY));
        assert_eq!(param("-1e999"), Value::Real(f64::NEG_INFINITY));
        assert_eq!(param("-2.5E400"), Value::Real(f64::NEG_INFINITY));
        assert_eq!(param("1.5"), Value::Real(1.5));
        assert_eq!(param(r#""a\"b""#), Value::Text("a\"b".into()));
        assert_eq!(param("[0, 1, 255]"), Value::Blob(vec![0, 1, 255]));
        assert_eq!(param("[]"), Value::Blob(vec![]));
        assert_eq!(param("[1, 256]"), Value::Text("[1, 256]".into()));
        assert_eq!(param("[1, -1]"), Value::Text("[1, -1]".into()));
        assert_eq!(param("[1.0]"), Value::Text("[1.0]".into()));
        assert_eq!(param(r#"[1,"a"]"#), Value::Text(r#"[1,"a"]"#.into()));
        assert_eq!(
            param(r#"{"b": 1, "a": [2]}"#),
            Value::Text(r#"{"b": 1, "a": [2]}"#.into())
        );
    }

    #[test]
    fn cells() {
        let row = [
            Value::Null,
            Value::Integer(3),
            Value::Real(0.5),
            Value::Text("x".into()),
            Value::Blob(vec![1, 2]),
        ];
        assert_eq!(
            serde_json::to_string(&Cells(&row)).unwrap(),
            r#"[null,3,0.5,"x",[1,2]]"#
        );
        let inf = [Value::Real(f64::INFINITY), Value::Real(f64::NEG_INFINITY)];
        assert_eq!(
            serde_json::to_string(&Cells(&inf)).unwrap(),
            "[1e999,-1e999]"
        );
    }
}
