//! The merge's order and equality of SQLite values.

use std::cmp::Ordering;

use rusqlite::types::ValueRef;

fn class_rank(v: &ValueRef<'_>) -> u8 {
    // crr-model.md 7.1: INTEGER > REAL > TEXT > BLOB > NULL, class first.
    match v {
        ValueRef::Null => 0,
        ValueRef::Blob(_) => 1,
        ValueRef::Text(_) => 2,
        ValueRef::Real(_) => 3,
        ValueRef::Integer(_) => 4,
    }
}

/// The merge's value order (crr-model.md 7.1): storage class first, then
/// numerically (INTEGER, REAL) or bytewise (TEXT, BLOB). No collation.
pub fn merge_order(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    match (a, b) {
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        (ValueRef::Real(x), ValueRef::Real(y)) => x.total_cmp(&y),
        (ValueRef::Text(x), ValueRef::Text(y)) => x.cmp(y),
        (ValueRef::Blob(x), ValueRef::Blob(y)) => x.cmp(y),
        (a, b) => class_rank(&a).cmp(&class_rank(&b)),
    }
}

/// Type-aware equality used to decide whether an UPDATE changed a column:
/// different storage classes always differ, NULL equals NULL.
pub fn same_value(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        #[allow(clippy::float_cmp)]
        (ValueRef::Real(x), ValueRef::Real(y)) => x == y,
        (ValueRef::Text(x), ValueRef::Text(y)) => x == y,
        (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;
    use Ordering::*;

    fn cmp(a: Value, b: Value) -> Ordering {
        merge_order(a.as_ref(), b.as_ref())
    }

    #[test]
    fn class_beats_value() {
        assert_eq!(cmp(Value::Integer(1), Value::Real(1e300)), Greater);
        assert_eq!(cmp(Value::Integer(-5), Value::Real(99.5)), Greater);
        assert_eq!(cmp(Value::Integer(1), Value::Real(1.0)), Greater);
        assert_eq!(cmp(Value::Real(0.5), Value::Text("zz".into())), Greater);
        assert_eq!(
            cmp(Value::Text("".into()), Value::Blob(vec![0xff])),
            Greater
        );
        assert_eq!(cmp(Value::Blob(vec![]), Value::Null), Greater);
        assert_eq!(cmp(Value::Null, Value::Null), Equal);
    }

    #[test]
    fn text_is_bytewise() {
        assert_eq!(cmp(Value::Text("B".into()), Value::Text("a".into())), Less);
        assert_eq!(
            cmp(Value::Text("é".into()), Value::Text("z".into())),
            Greater
        );
        assert_eq!(
            cmp(Value::Text("ab".into()), Value::Text("abc".into())),
            Less
        );
    }

    #[test]
    fn same_value_is_type_aware() {
        assert!(!same_value(ValueRef::Integer(1), ValueRef::Real(1.0)));
        assert!(!same_value(ValueRef::Integer(1), ValueRef::Text(b"1")));
        assert!(same_value(ValueRef::Null, ValueRef::Null));
        assert!(same_value(ValueRef::Text(b"x"), ValueRef::Text(b"x")));
    }
}
