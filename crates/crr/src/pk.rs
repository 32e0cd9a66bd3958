//! Primary-key packing, byte for byte as cr-sqlite does it (crr-model.md 9).
//!
//! Byte 0 is the number of values; each value is a header byte
//! `(n << 3) | type` followed by its payload.

use rusqlite::types::ValueRef;

use crate::Value;

const T_INTEGER: u8 = 1;
const T_REAL: u8 = 2;
const T_TEXT: u8 = 3;
const T_BLOB: u8 = 4;
const T_NULL: u8 = 5;

/// Why a packed primary key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkError {
    #[error("packed pk is empty")]
    Empty,
    #[error("packed pk announces {announced} values but holds {found}")]
    Count { announced: usize, found: usize },
    #[error("packed pk is truncated at byte {at}")]
    Truncated { at: usize },
    #[error("packed pk has unknown type code {code} at byte {at}")]
    BadType { code: u8, at: usize },
    #[error("packed pk has an integer of {width} bytes at byte {at} (at most 8)")]
    BadWidth { width: usize, at: usize },
    #[error("packed pk has {extra} trailing bytes")]
    Trailing { extra: usize },
    #[error("packed pk text at byte {at} is not UTF-8")]
    NotUtf8 { at: usize },
    #[error("a primary key has at most 255 columns, got {0}")]
    TooManyColumns(usize),
}

/// Packs one primary key's values (in PRIMARY KEY order).
pub fn pack<'a>(values: impl ExactSizeIterator<Item = ValueRef<'a>>) -> Result<Vec<u8>, PkError> {
    let count = values.len();
    let count = u8::try_from(count).map_err(|_| PkError::TooManyColumns(count))?;
    let mut out = Vec::with_capacity(1 + 10 * count as usize);
    out.push(count);
    for v in values {
        // Unpacking requires UTF-8; packing what cannot be unpacked would
        // make the key unreadable later.
        if let ValueRef::Text(bytes) = v {
            std::str::from_utf8(bytes).map_err(|_| PkError::NotUtf8 { at: out.len() })?;
        }
        pack_value(&mut out, v);
    }
    Ok(out)
}

/// Packs owned values; convenience over [`pack`].
pub fn pack_values(values: &[Value]) -> Result<Vec<u8>, PkError> {
    pack(values.iter().map(Value::as_ref))
}

fn minimal_width(n: u64) -> usize {
    8 - (n.leading_zeros() as usize / 8)
}

fn pack_value(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Integer(i) if i >= 0 => {
            let n = minimal_width(i as u64);
            out.push(((n as u8) << 3) | T_INTEGER);
            out.extend_from_slice(&(i as u64).to_be_bytes()[8 - n..]);
        }
        ValueRef::Integer(i) => {
            out.push((8 << 3) | T_INTEGER);
            out.extend_from_slice(&i.to_be_bytes());
        }
        ValueRef::Real(f) => {
            out.push(T_REAL);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        ValueRef::Text(bytes) => pack_bytes(out, T_TEXT, bytes),
        ValueRef::Blob(bytes) => pack_bytes(out, T_BLOB, bytes),
        ValueRef::Null => out.push(T_NULL),
    }
}

fn pack_bytes(out: &mut Vec<u8>, code: u8, bytes: &[u8]) {
    let len = bytes.len() as u64;
    let n = minimal_width(len);
    out.push(((n as u8) << 3) | code);
    out.extend_from_slice(&len.to_be_bytes()[8 - n..]);
    out.extend_from_slice(bytes);
}

/// Unpacks a packed primary key into its values.
pub fn unpack(packed: &[u8]) -> Result<Vec<Value>, PkError> {
    let (&count, mut rest) = packed.split_first().ok_or(PkError::Empty)?;
    let mut at = 1;
    let mut values = Vec::with_capacity(count as usize);
    while values.len() < count as usize {
        let (&header, after) = rest.split_first().ok_or(PkError::Count {
            announced: count as usize,
            found: values.len(),
        })?;
        let (n, code) = ((header >> 3) as usize, header & 7);
        at += 1;
        rest = after;
        let mut take = |len: usize, at: &mut usize| -> Result<&[u8], PkError> {
            if rest.len() < len {
                return Err(PkError::Truncated { at: *at });
            }
            let (head, tail) = rest.split_at(len);
            rest = tail;
            *at += len;
            Ok(head)
        };
        let value = match code {
            T_INTEGER => {
                if n > 8 {
                    return Err(PkError::BadWidth { width: n, at });
                }
                let bytes = take(n, &mut at)?;
                let raw = be_uint(bytes);
                // Only 8-byte integers can be negative: smaller widths are
                // read unsigned (crr-model.md 9: 0x80 is 128, not -128).
                Value::Integer(raw as i64)
            }
            T_REAL => {
                let bytes = take(8, &mut at)?;
                Value::Real(f64::from_bits(be_uint(bytes)))
            }
            T_TEXT | T_BLOB => {
                if n > 8 {
                    return Err(PkError::BadWidth { width: n, at });
                }
                let len = be_uint(take(n, &mut at)?);
                let len = usize::try_from(len).map_err(|_| PkError::Truncated { at })?;
                let start = at;
                let bytes = take(len, &mut at)?;
                if code == T_TEXT {
                    let text =
                        std::str::from_utf8(bytes).map_err(|_| PkError::NotUtf8 { at: start })?;
                    Value::Text(text.to_owned())
                } else {
                    Value::Blob(bytes.to_vec())
                }
            }
            T_NULL => Value::Null,
            code => return Err(PkError::BadType { code, at: at - 1 }),
        };
        values.push(value);
    }
    if !rest.is_empty() {
        return Err(PkError::Trailing { extra: rest.len() });
    }
    Ok(values)
}

fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(values: &[Value]) -> String {
        hex::encode(pack_values(values).unwrap())
    }

    fn int(i: i64) -> String {
        packed(&[Value::Integer(i)])
    }

    fn h(s: &str) -> String {
        s.replace(' ', "").to_lowercase()
    }

    #[test]
    fn integers_match_cr_sqlite() {
        let cases: &[(i64, &str)] = &[
            (0, "01 01"),
            (1, "01 09 01"),
            (127, "01 09 7F"),
            (128, "01 09 80"),
            (255, "01 09 FF"),
            (256, "01 11 01 00"),
            (65535, "01 11 FF FF"),
            (65536, "01 19 01 00 00"),
            (16777216, "01 21 01 00 00 00"),
            (2147483648, "01 21 80 00 00 00"),
            (4294967296, "01 29 01 00 00 00 00"),
            (1 << 56, "01 41 01 00 00 00 00 00 00 00"),
            (i64::MAX, "01 41 7F FF FF FF FF FF FF FF"),
            (-1, "01 41 FF FF FF FF FF FF FF FF"),
            (-129, "01 41 FF FF FF FF FF FF FF 7F"),
            (i64::MIN, "01 41 80 00 00 00 00 00 00 00"),
        ];
        for (i, hex) in cases {
            assert_eq!(int(*i), h(hex), "packing {i}");
            let back = unpack(&hex::decode(h(hex)).unwrap()).unwrap();
            assert_eq!(back, vec![Value::Integer(*i)], "unpacking {hex}");
        }
    }

    #[test]
    fn other_types_match_cr_sqlite() {
        assert_eq!(
            packed(&[Value::Real(1.5)]),
            h("01 02 3F F8 00 00 00 00 00 00")
        );
        assert_eq!(packed(&[Value::Text(String::new())]), h("01 03"));
        assert_eq!(packed(&[Value::Text("abc".into())]), h("01 0B 03 61 62 63"));
        let long = packed(&[Value::Text("x".repeat(300))]);
        assert!(long.starts_with(&h("01 13 01 2C 78")));
        assert_eq!(long.len(), 2 * (1 + 1 + 2 + 300));
        assert_eq!(packed(&[Value::Blob(vec![])]), h("01 04"));
        assert_eq!(packed(&[Value::Blob(vec![0, 0xff])]), h("01 0C 02 00 FF"));
        assert_eq!(packed(&[Value::Null]), h("01 05"));
        assert_eq!(
            packed(&[Value::Text("a".into()), Value::Integer(2)]),
            h("02 0B 01 61 09 02")
        );
        assert_eq!(
            packed(&[
                Value::Integer(1),
                Value::Text("x".into()),
                Value::Blob(vec![1]),
                Value::Real(2.0),
                Value::Null
            ]),
            h("05 09 01 0B 01 78 0C 01 01 02 40 00 00 00 00 00 00 00 05")
        );
    }

    #[test]
    fn non_minimal_input_is_accepted() {
        let v = unpack(&hex::decode("011100ff").unwrap()).unwrap();
        assert_eq!(v, vec![Value::Integer(255)]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(unpack(&[]), Err(PkError::Empty));
        assert!(matches!(unpack(&[1]), Err(PkError::Count { .. })));
        assert!(matches!(
            unpack(&[1, 0x11, 0x01]),
            Err(PkError::Truncated { .. })
        ));
        assert!(matches!(unpack(&[1, 0x0b]), Err(PkError::Truncated { .. })));
        assert!(matches!(unpack(&[1, 0x07]), Err(PkError::BadType { .. })));
        assert!(matches!(unpack(&[1, 0x49]), Err(PkError::BadWidth { .. })));
        assert!(matches!(
            unpack(&[1, 0x05, 0x05]),
            Err(PkError::Trailing { .. })
        ));
        assert!(matches!(
            unpack(&[1, 0x0b, 0x01, 0xff]),
            Err(PkError::NotUtf8 { .. })
        ));
    }
}
