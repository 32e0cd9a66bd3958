//! Column affinity (SQLite's type coercion on store), needed where the merge
//! compares an incoming value with a stored one: `5` sent for a TEXT column
//! is compared as the text `'5'` it would become (crr-model.md 7.1).

use rusqlite::Connection;

use crate::error::Result;
use crate::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Affinity {
    Text,
    Numeric,
    Integer,
    Real,
    Blob,
}

/// SQLite's rules for a declared type's affinity (datatype3.html 3.1).
pub(crate) fn of_decl_type(decl: &str) -> Affinity {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        Affinity::Integer
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Affinity::Text
    } else if d.contains("BLOB") || d.trim().is_empty() {
        Affinity::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// The value SQLite would store for `value` in a column of `affinity`.
pub(crate) fn apply(conn: &Connection, affinity: Affinity, value: &Value) -> Result<Value> {
    let column = match (affinity, value) {
        (Affinity::Blob, _) | (_, Value::Null | Value::Blob(_)) => return Ok(value.clone()),
        (Affinity::Text, Value::Text(_)) => return Ok(value.clone()),
        (Affinity::Real, Value::Real(_)) => return Ok(value.clone()),
        (Affinity::Real, Value::Integer(i)) => return Ok(Value::Real(*i as f64)),
        (Affinity::Integer | Affinity::Numeric, Value::Integer(_)) => return Ok(value.clone()),
        (Affinity::Text, _) => "t",
        (Affinity::Real, _) => "r",
        (Affinity::Integer | Affinity::Numeric, _) => "n",
    };
    // The remaining cases (number ↔ text, integral reals) follow SQLite's
    // own parsing and formatting rules, so SQLite does them.
    conn.execute_batch("CREATE TEMP TABLE IF NOT EXISTS crr_affinity(t TEXT, n NUMERIC, r REAL)")?;
    conn.prepare_cached(&format!(
        "INSERT INTO temp.crr_affinity({column}) VALUES (?1)"
    ))?
    .execute([value])?;
    let rowid = conn.last_insert_rowid();
    let stored: Value = conn
        .prepare_cached(&format!(
            "SELECT {column} FROM temp.crr_affinity WHERE rowid = ?1"
        ))?
        .query_row([rowid], |r| r.get(0))?;
    conn.prepare_cached("DELETE FROM temp.crr_affinity")?
        .execute([])?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decl_types() {
        assert_eq!(of_decl_type("INTEGER"), Affinity::Integer);
        assert_eq!(of_decl_type("varchar(10)"), Affinity::Text);
        assert_eq!(of_decl_type(""), Affinity::Blob);
        assert_eq!(of_decl_type("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(of_decl_type("DECIMAL(10,2)"), Affinity::Numeric);
    }

    #[test]
    fn conversions_match_sqlite() {
        let conn = Connection::open_in_memory().unwrap();
        let t = |a, v: Value| apply(&conn, a, &v).unwrap();
        assert_eq!(
            t(Affinity::Text, Value::Integer(5)),
            Value::Text("5".into())
        );
        assert_eq!(
            t(Affinity::Text, Value::Real(1.0)),
            Value::Text("1.0".into())
        );
        assert_eq!(
            t(Affinity::Integer, Value::Text("12".into())),
            Value::Integer(12)
        );
        assert_eq!(
            t(Affinity::Integer, Value::Text("12x".into())),
            Value::Text("12x".into())
        );
        assert_eq!(t(Affinity::Integer, Value::Real(3.0)), Value::Integer(3));
        assert_eq!(t(Affinity::Integer, Value::Real(3.5)), Value::Real(3.5));
        assert_eq!(t(Affinity::Real, Value::Integer(2)), Value::Real(2.0));
        assert_eq!(t(Affinity::Real, Value::Text("2".into())), Value::Real(2.0));
        assert_eq!(
            t(Affinity::Blob, Value::Text("2".into())),
            Value::Text("2".into())
        );
    }
}
