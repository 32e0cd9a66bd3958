//! The JSON-lines form of CRR values, changes and dumped rows, as the
//! `patina db` subcommands print and read them.
//!
//! A change is one line, keys in this order:
//! `{"table","pk","cid","val","col_version","db_version","site_id","cl","seq"}`
//! with `pk` and `site_id` as lowercase hex. A value (`val`, and each column
//! of a dumped row) is JSON `null`, an integer (INTEGER), a number with a `.`
//! or an exponent (REAL: `1.0`, never `1`), a string (TEXT) or
//! `{"blob":"<hex>"}` (BLOB). JSON has no infinities: ±inf are written
//! `1e999` / `-1e999`, which any JSON reader parses back as ±inf. SQLite
//! stores NaN as NULL, so a NaN (which cannot come out of SQLite) is
//! written `null`.
//!
//! Lines are written by hand, not through `serde_json::Map`, so that key
//! order is exactly the one above; `serde_json` escapes strings and formats
//! floats (shortest round-trip form, always with `.` or `e`). Reading keeps
//! each number's text (`RawValue`) so that `1` and `1.0` stay distinct and
//! `1e999` is not refused as out of range.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use patina_crr::{Change, SiteId, Value};
use serde_json::value::RawValue;

/// The keys of a change line, in the order they are written.
pub const CHANGE_KEYS: [&str; 9] = [
    "table",
    "pk",
    "cid",
    "val",
    "col_version",
    "db_version",
    "site_id",
    "cl",
    "seq",
];

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    // Display of a JSON value cannot fail; it escapes exactly as JSON needs.
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// Appends a REAL: shortest round-trip form with a `.` or exponent;
/// ±inf as `±1e999`; NaN as `null`.
fn push_real(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("null");
    } else if f == f64::INFINITY {
        out.push_str("1e999");
    } else if f == f64::NEG_INFINITY {
        out.push_str("-1e999");
    } else {
        // Finite: `from` gives a JSON number, printed by ryu ("1.0", "1e300").
        out.push_str(&serde_json::Value::from(f).to_string());
    }
}

/// Appends one value in its JSON form (see the module docs).
pub fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Real(f) => push_real(out, *f),
        Value::Text(t) => push_str(out, t),
        Value::Blob(b) => {
            out.push_str("{\"blob\":\"");
            out.push_str(&hex::encode(b));
            out.push_str("\"}");
        }
    }
}

/// One change as one JSON line (without the newline).
pub fn change_line(c: &Change) -> String {
    let mut out = String::with_capacity(160);
    out.push_str("{\"table\":");
    push_str(&mut out, &c.table);
    out.push_str(",\"pk\":\"");
    out.push_str(&hex::encode(&c.pk));
    out.push_str("\",\"cid\":");
    push_str(&mut out, &c.cid);
    out.push_str(",\"val\":");
    push_value(&mut out, &c.val);
    out.push_str(&format!(
        ",\"col_version\":{},\"db_version\":{},\"site_id\":\"{}\",\"cl\":{},\"seq\":{}}}",
        c.col_version,
        c.db_version,
        c.site_id.to_hex(),
        c.cl,
        c.seq
    ));
    out
}

/// One dumped row as one JSON line: `{"table":…,"row":{"<column>":<value>,…}}`
/// with the columns in the order given.
pub fn row_line<'a>(table: &str, row: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"table\":");
    push_str(&mut out, table);
    out.push_str(",\"row\":{");
    for (i, (column, value)) in row.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, column);
        out.push(':');
        push_value(&mut out, value);
    }
    out.push_str("}}");
    out
}

/// Parses one value from its JSON text (see the module docs).
pub fn parse_value(raw: &str) -> Result<Value> {
    let raw = raw.trim();
    if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return parse_number(raw);
    }
    let json: serde_json::Value = serde_json::from_str(raw).with_context(|| {
        format!(
            "{raw:?} is not JSON; a value is null, a number, a string or {{\"blob\":\"<hex>\"}}"
        )
    })?;
    match json {
        serde_json::Value::Null => Ok(Value::Null),
        serde_json::Value::String(s) => Ok(Value::Text(s)),
        serde_json::Value::Object(map) => match (map.len(), map.get("blob")) {
            (1, Some(serde_json::Value::String(hex))) => {
                hex::decode(hex).map(Value::Blob).map_err(|_| {
                    anyhow!("blob {hex:?} is not hex: write an even number of hex digits")
                })
            }
            _ => {
                bail!("object {raw} is not a value: the only object form is {{\"blob\":\"<hex>\"}}")
            }
        },
        other => bail!(
            "{other} is not a value: write null, a number, a string or {{\"blob\":\"<hex>\"}}"
        ),
    }
}

/// A JSON number token: with `.` or an exponent it is a REAL (overflow
/// gives ±inf, as `1e999` is meant to), otherwise an INTEGER that must fit
/// in 64 bits.
fn parse_number(raw: &str) -> Result<Value> {
    if raw.contains(['.', 'e', 'E']) {
        raw.parse::<f64>()
            .map(Value::Real)
            .map_err(|_| anyhow!("{raw:?} is not a JSON number"))
    } else {
        raw.parse::<i64>().map(Value::Integer).map_err(|_| {
            anyhow!(
                "integer {raw} does not fit in a 64-bit SQLite INTEGER \
                 (write it with a '.' if it is meant as a REAL)"
            )
        })
    }
}

/// Parses one change line. Every key of [`CHANGE_KEYS`] is required, no
/// other key is allowed; key order does not matter (a repeated key is not
/// detected: the last one counts).
pub fn parse_change(line: &str) -> Result<Change> {
    let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(line)
        .map_err(|e| anyhow!("not a JSON object of the form {{\"table\":…,\"pk\":…,…}}: {e}"))?;
    if let Some(unknown) = fields.keys().find(|k| !CHANGE_KEYS.contains(&k.as_str())) {
        bail!(
            "unknown key {unknown:?}: a change has exactly the keys {}",
            CHANGE_KEYS.join(", ")
        );
    }
    let get = |key: &str| -> Result<&str> {
        fields.get(key).map(|raw| raw.get()).ok_or_else(|| {
            anyhow!(
                "missing key {key:?}: a change has exactly the keys {}",
                CHANGE_KEYS.join(", ")
            )
        })
    };
    let string = |key: &str| -> Result<String> {
        let raw = get(key)?;
        serde_json::from_str::<String>(raw)
            .map_err(|_| anyhow!("{key} must be a string, got {raw}"))
    };
    let hex = |key: &str| -> Result<Vec<u8>> {
        let s = string(key)?;
        hex::decode(&s)
            .map_err(|_| anyhow!("{key} {s:?} is not hex: write an even number of hex digits"))
    };
    let int = |key: &str| -> Result<i64> {
        let raw = get(key)?;
        match parse_value(raw) {
            Ok(Value::Integer(i)) => Ok(i),
            _ => bail!("{key} must be an integer (no '.', fits in 64 bits), got {raw}"),
        }
    };
    let site_hex = string("site_id")?;
    let site_id: SiteId = site_hex.parse().map_err(|_| {
        anyhow!("site_id {site_hex:?} is not a site id: write 32 hex characters (16 bytes)")
    })?;
    Ok(Change {
        table: string("table")?,
        pk: hex("pk")?,
        cid: string("cid")?,
        val: parse_value(get("val")?).context("val")?,
        col_version: int("col_version")?,
        db_version: int("db_version")?,
        site_id,
        cl: int("cl")?,
        seq: int("seq")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_json(v: &Value) -> String {
        let mut out = String::new();
        push_value(&mut out, v);
        out
    }

    fn round_trip(v: Value) -> Value {
        let json = value_json(&v);
        // Every line we write must also be valid JSON for other readers
        // (±1e999 included: serde_json refuses it as out of range, so skip).
        if !matches!(v, Value::Real(f) if f.is_infinite()) {
            assert!(
                serde_json::from_str::<serde_json::Value>(&json).is_ok(),
                "{json}"
            );
        }
        parse_value(&json).unwrap_or_else(|e| panic!("{json}: {e:#}"))
    }

    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    #[test]
    fn every_value_type_round_trips() {
        let values = [
            Value::Null,
            Value::Integer(0),
            Value::Integer(1),
            Value::Integer(-1),
            Value::Integer(i64::MAX),
            Value::Integer(i64::MIN),
            Value::Real(1.0),
            Value::Real(-0.0),
            Value::Real(0.0),
            Value::Real(1.5),
            Value::Real(0.1),
            Value::Real(1e300),
            Value::Real(-1e-300),
            Value::Real(5e-324),
            Value::Real(f64::MAX),
            Value::Real(f64::MIN),
            Value::Real(9007199254740993.0),
            Value::Real(1e21),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Text(String::new()),
            Value::Text("x".into()),
            Value::Text("héllo wörld — 日本語 🦀".into()),
            Value::Text("quote \" backslash \\ newline \n tab \t nul \0 del \u{7f}".into()),
            Value::Text("1.0".into()),
            Value::Text("null".into()),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 1, 0x7f, 0x80, 0xff]),
        ];
        for v in values {
            let back = round_trip(v.clone());
            assert!(same(&v, &back), "{v:?} came back as {back:?}");
        }
    }

    #[test]
    fn reals_always_look_like_reals() {
        assert_eq!(value_json(&Value::Real(1.0)), "1.0");
        assert_eq!(value_json(&Value::Integer(1)), "1");
        assert_eq!(value_json(&Value::Real(-0.0)), "-0.0");
        assert_eq!(value_json(&Value::Real(f64::INFINITY)), "1e999");
        assert_eq!(value_json(&Value::Real(f64::NEG_INFINITY)), "-1e999");
        assert_eq!(value_json(&Value::Real(f64::NAN)), "null");
        // Why 1e999 is read from the raw text: serde_json refuses it.
        assert!(serde_json::from_str::<serde_json::Value>("1e999").is_err());
        assert!(matches!(parse_value("1e999").unwrap(), Value::Real(f) if f == f64::INFINITY));
        assert!(matches!(parse_value("-1e999").unwrap(), Value::Real(f) if f == f64::NEG_INFINITY));
        for f in [1e21, 1e-7, 123456789.0, 1e15, 1e16, 2f64.powi(70), f64::MAX] {
            let s = value_json(&Value::Real(f));
            assert!(s.contains(['.', 'e', 'E']), "{f} written as {s}");
        }
        assert!(matches!(parse_value("1").unwrap(), Value::Integer(1)));
        assert!(matches!(parse_value("1.0").unwrap(), Value::Real(f) if f == 1.0));
        assert!(matches!(parse_value("1E2").unwrap(), Value::Real(f) if f == 100.0));
        assert!(matches!(parse_value("-0").unwrap(), Value::Integer(0)));
        assert!(matches!(parse_value("-0.0").unwrap(), Value::Real(f) if f.is_sign_negative()));
    }

    #[test]
    fn blobs_and_text_are_distinct() {
        assert_eq!(
            value_json(&Value::Blob(vec![0xab, 0x01])),
            r#"{"blob":"ab01"}"#
        );
        assert_eq!(
            parse_value(r#"{"blob":"AB01"}"#).unwrap(),
            Value::Blob(vec![0xab, 1])
        );
        assert_eq!(
            parse_value(r#""ab01""#).unwrap(),
            Value::Text("ab01".into())
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for (bad, why) in [
            ("9223372036854775808", "64-bit"),
            ("-9223372036854775809", "64-bit"),
            ("true", "not a value"),
            ("[1]", "not a value"),
            (r#"{"blob":"abc"}"#, "not hex"),
            (r#"{"blob":"zz"}"#, "not hex"),
            (r#"{"blob":1}"#, "only object form"),
            (r#"{"blob":"00","x":1}"#, "only object form"),
            (r#"{"text":"a"}"#, "only object form"),
            ("nul", "not JSON"),
            ("\"unterminated", "not JSON"),
        ] {
            let err = format!("{:#}", parse_value(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    fn sample() -> Change {
        Change {
            table: "t".into(),
            pk: vec![1, 9, 1],
            cid: "a".into(),
            val: Value::Text("x".into()),
            col_version: 1,
            db_version: 1,
            site_id: SiteId([0x11; 16]),
            cl: 1,
            seq: 0,
        }
    }

    #[test]
    fn change_line_is_exact() {
        assert_eq!(
            change_line(&sample()),
            r#"{"table":"t","pk":"010901","cid":"a","val":"x","col_version":1,"db_version":1,"site_id":"11111111111111111111111111111111","cl":1,"seq":0}"#
        );
    }

    #[test]
    fn changes_round_trip() {
        for val in [
            Value::Null,
            Value::Integer(-7),
            Value::Real(2.0),
            Value::Real(f64::INFINITY),
            Value::Text("ünï \"q\"".into()),
            Value::Blob(vec![0, 255]),
        ] {
            let c = Change {
                val,
                table: "weird \"table\" 名".into(),
                cid: "-1".into(),
                col_version: i64::MAX,
                db_version: 42,
                cl: 2,
                seq: 3,
                ..sample()
            };
            let line = change_line(&c);
            let back = parse_change(&line).unwrap_or_else(|e| panic!("{line}: {e:#}"));
            assert_eq!(back, c, "{line}");
        }
        // Key order does not matter on input.
        let reordered = r#"{"seq":0,"cl":1,"site_id":"11111111111111111111111111111111","db_version":1,"col_version":1,"val":"x","cid":"a","pk":"010901","table":"t"}"#;
        assert_eq!(parse_change(reordered).unwrap(), sample());
    }

    #[test]
    fn malformed_changes_are_refused() {
        let good = change_line(&sample());
        let with = |from: &str, to: &str| {
            assert!(good.contains(from), "{from}");
            good.replacen(from, to, 1)
        };
        let cases = [
            ("not json".to_owned(), "not a JSON object"),
            ("[1,2]".to_owned(), "not a JSON object"),
            (format!("{good} trailing"), "not a JSON object"),
            (good[..good.len() - 1].to_owned(), "not a JSON object"),
            (
                with(r#""seq":0"#, r#""seq":0,"extra":1"#),
                "unknown key \"extra\"",
            ),
            (with(r#","seq":0"#, ""), "missing key \"seq\""),
            (
                with(r#""pk":"010901""#, r#""pk":"01090""#),
                "pk \"01090\" is not hex",
            ),
            (
                with(r#""pk":"010901""#, r#""pk":10901"#),
                "pk must be a string",
            ),
            (
                with(r#""table":"t""#, r#""table":null"#),
                "table must be a string",
            ),
            (with(r#""cl":1"#, r#""cl":1.0"#), "cl must be an integer"),
            (with(r#""cl":1"#, r#""cl":"1""#), "cl must be an integer"),
            (
                with(r#""db_version":1"#, r#""db_version":99999999999999999999"#),
                "db_version must be an integer",
            ),
            (
                with("1111111111111111111111111111111\"", "11\""),
                "not a site id",
            ),
            (with(r#""val":"x""#, r#""val":true"#), "val"),
            (with(r#""val":"x""#, r#""val":{"blob":"x"}"#), "not hex"),
        ];
        for (line, why) in cases {
            let err = format!("{:#}", parse_change(&line).unwrap_err());
            assert!(
                err.contains(why),
                "{line}\n  gave: {err}\n  expected: {why}"
            );
        }
    }

    #[test]
    fn row_line_keeps_column_order() {
        let vals = [Value::Integer(2), Value::Real(1.0), Value::Null];
        let line = row_line("t", [("z", &vals[0]), ("a", &vals[1]), ("m", &vals[2])]);
        assert_eq!(line, r#"{"table":"t","row":{"z":2,"a":1.0,"m":null}}"#);
    }
}
