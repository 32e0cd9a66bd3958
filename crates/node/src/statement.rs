//! A statement and its parameters, as the API's JSON forms carry them.

use patina_crr::Value;
use rusqlite::types::ValueRef;

#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    None,
    Positional(Vec<Value>),
    /// Names keep their sigil (`:a`, `@a`, `$a`).
    Named(Vec<(String, Value)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            params: Params::None,
        }
    }

    pub fn with_params(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Statement {
            sql: sql.into(),
            params: Params::Positional(params),
        }
    }
}

/// Runs `$call` with `$st`'s parameters bound the way rusqlite takes them:
/// `$call` is a closure-like macro body receiving `impl Params`. The
/// caller's crate must depend on rusqlite.
#[macro_export]
macro_rules! with_params {
    ($st:expr, |$p:ident| $body:expr) => {{
        match &$st.params {
            $crate::Params::None => {
                let $p =
                    rusqlite::params_from_iter(std::iter::empty::<&dyn rusqlite::types::ToSql>());
                $body
            }
            $crate::Params::Positional(values) => {
                let $p = rusqlite::params_from_iter(values.iter());
                $body
            }
            $crate::Params::Named(values) => {
                let named: Vec<(&str, &dyn rusqlite::types::ToSql)> = values
                    .iter()
                    .map(|(k, v)| (k.as_str(), v as &dyn rusqlite::types::ToSql))
                    .collect();
                let $p = named.as_slice();
                $body
            }
        }
    }};
}

/// A transaction's statements, packed: each distinct SQL text once (a
/// repeat of one of the last few texts is shared), every parameter in one
/// byte buffer. A 100,000-statement request held as `Statement`s was
/// ≈ 43 MiB — a `String` and a `Vec<Value>` per statement and an
/// allocation per text or blob value — from parsing until its commit, and
/// the writer's peak RSS was while it ran (issue 15); packed it is the
/// size of its SQL texts and values plus 24 bytes a statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statements {
    /// The distinct SQL texts, one after another.
    text: String,
    /// Where each distinct text is in `text`.
    sqls: Vec<(usize, usize)>,
    items: Vec<Packed>,
    /// Every statement's parameters, encoded (see `put_value`).
    params: Vec<u8>,
    /// Patina's own statements, which may write its replicated tables
    /// (`regions_table`); never set for a client's.
    pub(crate) internal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Packed {
    /// Index into `Statements::sqls`.
    sql: u32,
    /// How many parameters; their encoding starts at `at` in `params`.
    count: u32,
    at: usize,
    named: Option<bool>,
}

/// Texts compared with a new statement's for sharing: enough for the
/// statements of a row repeated row after row (an insert per table).
const RECENT_SQLS: usize = 8;

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

impl Statements {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends a statement.
    pub fn push(&mut self, st: Statement) {
        let sql = self.intern(&st.sql);
        let at = self.params.len();
        let (count, named) = match &st.params {
            Params::None => (0, None),
            Params::Positional(values) => {
                for v in values {
                    put_value(&mut self.params, v);
                }
                (values.len(), Some(false))
            }
            Params::Named(values) => {
                for (name, v) in values {
                    put_len(&mut self.params, name.len());
                    self.params.extend_from_slice(name.as_bytes());
                    put_value(&mut self.params, v);
                }
                (values.len(), Some(true))
            }
        };
        self.items.push(Packed {
            sql,
            // SQLite binds at most 32,766 parameters (SQLITE_MAX_VARIABLE_NUMBER):
            // a count beyond u32 fails at bind either way.
            count: u32::try_from(count).unwrap_or(u32::MAX),
            at,
            named,
        });
    }

    /// Gives back the room that growth left unused (up to half of each
    /// buffer): the statements are held until their transaction commits.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.sqls.shrink_to_fit();
        self.items.shrink_to_fit();
        self.params.shrink_to_fit();
    }

    fn intern(&mut self, sql: &str) -> u32 {
        let text = &self.text;
        let recent = self.sqls.iter().enumerate().rev().take(RECENT_SQLS);
        for (i, &(start, len)) in recent {
            if text[start..start + len] == *sql {
                return i as u32;
            }
        }
        self.sqls.push((self.text.len(), sql.len()));
        self.text.push_str(sql);
        // Distinct texts are at most the statements, which a request body
        // bounds far below u32::MAX.
        (self.sqls.len() - 1) as u32
    }

    fn sql(&self, index: u32) -> &str {
        let (start, len) = self.sqls[index as usize];
        &self.text[start..start + len]
    }

    /// The statements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = StatementRef<'_>> + '_ {
        self.items.iter().map(move |p| StatementRef {
            sql: self.sql(p.sql),
            params: match p.named {
                None => PackedParams::None,
                Some(named) => PackedParams::Some {
                    named,
                    count: p.count,
                    bytes: &self.params[p.at..],
                },
            },
        })
    }

    /// Each distinct SQL text once (a text not shared may repeat).
    pub fn sql_texts(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.sqls.len() as u32).map(move |i| self.sql(i))
    }

    /// The statements unpacked (for tests and diagnostics).
    pub fn to_vec(&self) -> Vec<Statement> {
        self.iter().map(|st| st.to_statement()).collect()
    }
}

impl From<Vec<Statement>> for Statements {
    fn from(statements: Vec<Statement>) -> Self {
        let mut out = Statements::new();
        for st in statements {
            out.push(st);
        }
        out.shrink_to_fit();
        out
    }
}

impl From<Statement> for Statements {
    fn from(statement: Statement) -> Self {
        Statements::from(vec![statement])
    }
}

/// One statement of [`Statements`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct StatementRef<'a> {
    pub sql: &'a str,
    pub params: PackedParams<'a>,
}

/// A packed statement's parameters.
#[derive(Debug, Clone, Copy)]
pub enum PackedParams<'a> {
    None,
    /// `count` parameters at the start of `bytes`, each with its name
    /// (sigil included) if `named`.
    Some {
        named: bool,
        count: u32,
        bytes: &'a [u8],
    },
}

impl<'a> StatementRef<'a> {
    /// The positional parameters, or `None` if they are named.
    pub fn positional(&self) -> Option<impl Iterator<Item = ValueRef<'a>> + 'a> {
        match self.params {
            PackedParams::None => Some(Decoder {
                bytes: &[],
                left: 0,
            }),
            PackedParams::Some { named: true, .. } => None,
            PackedParams::Some { count, bytes, .. } => Some(Decoder { bytes, left: count }),
        }
    }

    /// The named parameters, or `None` if they are positional (or none).
    pub fn named(&self) -> Option<impl Iterator<Item = (&'a str, ValueRef<'a>)> + 'a> {
        match self.params {
            PackedParams::Some {
                named: true,
                count,
                bytes,
            } => Some(NamedDecoder(Decoder { bytes, left: count })),
            _ => None,
        }
    }

    pub fn to_statement(&self) -> Statement {
        let params = match (self.positional(), self.named()) {
            (_, Some(named)) => Params::Named(
                named
                    .map(|(name, v)| (name.to_owned(), Value::from_ref(v)))
                    .collect(),
            ),
            (Some(values), _) if matches!(self.params, PackedParams::Some { .. }) => {
                Params::Positional(values.map(Value::from_ref).collect())
            }
            _ => Params::None,
        };
        Statement {
            sql: self.sql.to_owned(),
            params,
        }
    }
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(TAG_NULL),
        Value::Integer(i) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Real(f) => {
            out.push(TAG_REAL);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Text(t) => {
            out.push(TAG_TEXT);
            put_len(out, t.len());
            out.extend_from_slice(t.as_bytes());
        }
        Value::Blob(b) => {
            out.push(TAG_BLOB);
            put_len(out, b.len());
            out.extend_from_slice(b);
        }
    }
}

/// Reads back what `put_value` wrote. The buffer is only ever written by
/// `Statements::push`, so its layout is known good: a short read is a bug
/// here, and panics.
struct Decoder<'a> {
    bytes: &'a [u8],
    left: u32,
}

impl<'a> Decoder<'a> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self
            .bytes
            .split_first()
            .expect("packed parameters end early");
        self.bytes = rest;
        *b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }

    fn len(&mut self) -> usize {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let b = self.byte();
            n |= ((b & 0x7f) as usize) << shift;
            if b & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }

    fn eight(&mut self) -> [u8; 8] {
        self.take(8).try_into().expect("took 8 bytes")
    }

    fn value(&mut self) -> ValueRef<'a> {
        match self.byte() {
            TAG_NULL => ValueRef::Null,
            TAG_INTEGER => ValueRef::Integer(i64::from_le_bytes(self.eight())),
            TAG_REAL => ValueRef::Real(f64::from_bits(u64::from_le_bytes(self.eight()))),
            TAG_TEXT => {
                let n = self.len();
                ValueRef::Text(self.take(n))
            }
            TAG_BLOB => {
                let n = self.len();
                ValueRef::Blob(self.take(n))
            }
            tag => unreachable!("packed parameter tag {tag}"),
        }
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.value())
    }
}

struct NamedDecoder<'a>(Decoder<'a>);

impl<'a> Iterator for NamedDecoder<'a> {
    type Item = (&'a str, ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let d = &mut self.0;
        if d.left == 0 {
            return None;
        }
        d.left -= 1;
        let n = d.len();
        // Written from a `String` by `push`.
        let name = std::str::from_utf8(d.take(n)).expect("a packed name is UTF-8");
        Some((name, d.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_statements_read_back_as_sent() {
        let values = vec![
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(-1),
            Value::Real(f64::INFINITY),
            Value::Real(-0.0),
            Value::Text(String::new()),
            Value::Text("é".repeat(200)),
            Value::Blob(Vec::new()),
            Value::Blob((0..=255).collect()),
        ];
        let sent = vec![
            Statement::new("SELECT 1"),
            Statement::with_params("INSERT INTO t VALUES (?)", values.clone()),
            Statement {
                sql: "UPDATE t SET a = :a WHERE b = @b".into(),
                params: Params::Named(vec![
                    (":a".into(), Value::Text("x".into())),
                    ("@b".into(), Value::Blob(vec![1, 2])),
                ]),
            },
            Statement::with_params("INSERT INTO t VALUES (?)", vec![]),
            Statement::with_params("INSERT INTO t VALUES (?)", vec![Value::Integer(7)]),
            Statement::new("SELECT 1"),
        ];
        let packed = Statements::from(sent.clone());
        assert_eq!(packed.len(), sent.len());
        let back = packed.to_vec();
        // An empty positional list binds like none at all.
        let mut want = sent.clone();
        want[3].params = Params::Positional(vec![]);
        assert_eq!(back, want);
        assert_eq!(
            packed.sql_texts().collect::<Vec<_>>(),
            vec![
                "SELECT 1",
                "INSERT INTO t VALUES (?)",
                "UPDATE t SET a = :a WHERE b = @b"
            ],
            "repeated texts are stored once"
        );
        let refs: Vec<_> = packed.iter().collect();
        assert!(refs[1].named().is_none());
        assert!(refs[2].positional().is_none());
        assert_eq!(
            refs[1].positional().unwrap().collect::<Vec<_>>(),
            values.iter().map(Value::as_ref).collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_recent_texts_are_shared() {
        let pack = |cycle: usize| {
            let sqls: Vec<String> = (0..cycle).map(|i| format!("SELECT {i}")).collect();
            let mut packed = Statements::new();
            for sql in sqls.iter().chain(sqls.iter()) {
                packed.push(Statement::new(sql.clone()));
            }
            let back: Vec<String> = packed.to_vec().into_iter().map(|s| s.sql).collect();
            assert_eq!(back, [sqls.clone(), sqls].concat());
            packed.sql_texts().count()
        };
        assert_eq!(
            pack(RECENT_SQLS),
            RECENT_SQLS,
            "a cycle in the window is shared"
        );
        assert_eq!(
            pack(RECENT_SQLS + 1),
            2 * (RECENT_SQLS + 1),
            "each text fell out of the window before it came again"
        );
    }
}
