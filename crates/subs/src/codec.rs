//! Rows as bytes: how a subscription stores cells and compares keys. A tag
//! byte per value, then its payload; lengths as u32 little-endian. Decoding
//! returns `None` on bad bytes, never panics.

use patina_crr::Value;

const NULL: u8 = 0;
const INTEGER: u8 = 1;
const REAL: u8 = 2;
const TEXT: u8 = 3;
const BLOB: u8 = 4;

pub(crate) fn encode(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for v in values {
        push(&mut out, v);
    }
    out
}

/// Encodes the values at `columns` of `row` (for keys).
pub(crate) fn encode_columns(row: &[Value], columns: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(columns.len() * 9);
    for &c in columns {
        if let Some(v) = row.get(c) {
            push(&mut out, v);
        }
    }
    out
}

fn push(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Integer(i) => {
            out.push(INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Real(f) => {
            out.push(REAL);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Text(t) => {
            out.push(TEXT);
            push_bytes(out, t.as_bytes());
        }
        Value::Blob(b) => {
            out.push(BLOB);
            push_bytes(out, b);
        }
    }
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn decode(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let v = match tag {
            NULL => Value::Null,
            INTEGER => Value::Integer(i64::from_le_bytes(take::<8>(&mut bytes)?)),
            REAL => Value::Real(f64::from_bits(u64::from_le_bytes(take::<8>(&mut bytes)?))),
            TEXT => Value::Text(String::from_utf8(take_bytes(&mut bytes)?.to_vec()).ok()?),
            BLOB => Value::Blob(take_bytes(&mut bytes)?.to_vec()),
            _ => return None,
        };
        out.push(v);
    }
    Some(out)
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_at_checked(N)?;
    *bytes = rest;
    head.try_into().ok()
}

fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(take::<4>(bytes)?) as usize;
    let (head, rest) = bytes.split_at_checked(len)?;
    *bytes = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_bytes() {
        let row = vec![
            Value::Null,
            Value::Integer(-7),
            Value::Real(1.5),
            Value::Text("é".into()),
            Value::Blob(vec![0, 255]),
        ];
        assert_eq!(decode(&encode(&row)), Some(row.clone()));
        assert_eq!(decode(&[]), Some(vec![]));
        let bytes = encode(&row);
        for cut in 1..bytes.len() {
            // Truncations decode to something else or fail; never panic.
            let _ = decode(&bytes[..cut]);
        }
        assert_eq!(decode(&[9]), None);
        assert_ne!(encode(&[Value::Integer(1)]), encode(&[Value::Real(1.0)]));
    }
}
