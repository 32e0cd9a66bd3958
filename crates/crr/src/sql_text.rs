//! Just enough SQL lexing to find keywords, split column lists, compare
//! definitions and read simple WHERE clauses without being fooled by
//! literals, quoted names or comments. Schema planning (this crate) and
//! subscription pinning (`patina-subs`) share it, so both read SQL the same
//! way.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A keyword or bare identifier.
    Word,
    Number,
    /// `"x"`, `` `x` `` or `[x]`.
    Quoted,
    /// `'x'`.
    Str,
    /// A bound parameter: `?`, `?NNN`, `:a`, `@a`, `$a`.
    Param,
    /// An operator (`==`, `<>`, `->>`, … as one token) or punctuation.
    Punct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
    /// Byte offsets into the tokenized text.
    pub start: usize,
    pub end: usize,
}

impl Token<'_> {
    /// Whether this is the bare word `keyword`, in any ASCII case.
    pub fn is_word(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    /// Whether this is exactly the punctuation `c` (not an operator that
    /// starts with it).
    pub fn is_punct(&self, c: char) -> bool {
        self.kind == Kind::Punct && self.text.len() == c.len_utf8() && self.text.starts_with(c)
    }

    /// Whether this is the operator `op`, e.g. `"=="`.
    pub fn is_op(&self, op: &str) -> bool {
        self.kind == Kind::Punct && self.text == op
    }

    /// The name this token spells, quotes removed (a word as written).
    pub fn unquoted(&self) -> String {
        if self.kind != Kind::Quoted {
            return self.text.to_owned();
        }
        let inner = self.text.get(1..).unwrap_or_default();
        match self.text.as_bytes().first() {
            Some(b'[') => inner.strip_suffix(']').unwrap_or(inner).to_owned(),
            Some(&q) => undouble(inner, q),
            None => String::new(),
        }
    }

    /// The value of a string literal (`'it''s'` is `it's`); `None` for
    /// other tokens.
    pub fn string_value(&self) -> Option<String> {
        if self.kind != Kind::Str {
            return None;
        }
        Some(undouble(self.text.get(1..).unwrap_or_default(), b'\''))
    }

    /// The form two definitions are compared in: SQLite ignores the
    /// ASCII case of keywords and names and how names are quoted.
    pub fn normalized(&self) -> String {
        match self.kind {
            Kind::Word | Kind::Number => self.text.to_ascii_lowercase(),
            Kind::Quoted => self.unquoted().to_ascii_lowercase(),
            Kind::Str | Kind::Param | Kind::Punct => self.text.to_owned(),
        }
    }
}

/// `inner` (after the opening quote `q`) without its closing quote, with
/// doubled quotes standing for one.
fn undouble(inner: &str, q: u8) -> String {
    let q = char::from(q).to_string();
    let inner = inner.strip_suffix(q.as_str()).unwrap_or(inner);
    inner.replace(&q.repeat(2), &q)
}

pub fn normalized(tokens: &[Token<'_>]) -> Vec<String> {
    tokens.iter().map(Token::normalized).collect()
}

/// The source text from the first to the last token.
pub fn span<'a>(sql: &'a str, tokens: &[Token<'_>]) -> &'a str {
    match (tokens.first(), tokens.last()) {
        (Some(a), Some(b)) => sql.get(a.start..b.end).unwrap_or_default(),
        _ => "",
    }
}

/// Unterminated literals and comments run to the end of the text; any
/// input tokenizes.
pub fn tokenize(sql: &str) -> Vec<Token<'_>> {
    lex(sql).0
}

/// Like [`tokenize`], but `None` when a literal, quoted name or block
/// comment is left open: for callers that must not guess at broken SQL.
pub fn tokenize_complete(sql: &str) -> Option<Vec<Token<'_>>> {
    match lex(sql) {
        (tokens, true) => Some(tokens),
        (_, false) => None,
    }
}

/// The tokens, and whether everything opened was closed.
fn lex(sql: &str) -> (Vec<Token<'_>>, bool) {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut complete = true;
    let mut i = 0;
    while i < bytes.len() {
        let (kind, end, closed) = match scan(bytes, i) {
            Scan::Skip(end, closed) => {
                complete &= closed;
                i = end;
                continue;
            }
            Scan::Token(kind, end, closed) => (kind, end, closed),
        };
        complete &= closed;
        // Token ends only fall on ASCII bytes or the end, so on char boundaries.
        let text = sql.get(i..end).unwrap_or_default();
        out.push(Token {
            kind,
            text,
            start: i,
            end,
        });
        i = end;
    }
    (out, complete)
}

/// What starts at a byte: something skipped or a token, where it ends, and
/// whether it was closed (literals, quoted names, block comments).
enum Scan {
    Skip(usize, bool),
    Token(Kind, usize, bool),
}

/// Operators of more than one character, longest first.
const OPERATORS: [&[u8]; 10] = [
    b"->>", b"==", b"!=", b"<>", b"<=", b">=", b"<<", b">>", b"||", b"->",
];

fn scan(bytes: &[u8], i: usize) -> Scan {
    let next = bytes.get(i + 1).copied();
    let token = |kind, end| Scan::Token(kind, end, true);
    match bytes[i] {
        b if b.is_ascii_whitespace() => Scan::Skip(i + 1, true),
        // A byte order mark, e.g. at the start of a concatenated file.
        0xEF if bytes[i..].starts_with(&[0xEF, 0xBB, 0xBF]) => Scan::Skip(i + 3, true),
        // A line comment may end the text.
        b'-' if next == Some(b'-') => Scan::Skip(find(bytes, i + 2, b"\n").0, true),
        b'/' if next == Some(b'*') => {
            let (end, closed) = find(bytes, i + 2, b"*/");
            Scan::Skip(end, closed)
        }
        b'\'' => {
            let (end, closed) = quoted_end(bytes, i, b'\'');
            Scan::Token(Kind::Str, end, closed)
        }
        q @ (b'"' | b'`') => {
            let (end, closed) = quoted_end(bytes, i, q);
            Scan::Token(Kind::Quoted, end, closed)
        }
        b'[' => {
            let (end, closed) = find(bytes, i + 1, b"]");
            Scan::Token(Kind::Quoted, end, closed)
        }
        b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
            token(Kind::Number, number_end(bytes, i))
        }
        b if b.is_ascii_digit() => token(Kind::Number, number_end(bytes, i)),
        b'?' => {
            let len = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            token(Kind::Param, i + 1 + len)
        }
        b':' | b'@' | b'$' => token(Kind::Param, word_end(bytes, i + 1)),
        b if is_word_byte(b) => token(Kind::Word, word_end(bytes, i)),
        _ => {
            let len = OPERATORS
                .iter()
                .find(|op| bytes[i..].starts_with(op))
                .map_or(1, |op| op.len());
            token(Kind::Punct, i + len)
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn word_end(bytes: &[u8], from: usize) -> usize {
    from + bytes[from..]
        .iter()
        .take_while(|&&b| is_word_byte(b))
        .count()
}

/// The index just past the first `pat` at or after `from`, or the end
/// (then `false`: not found).
fn find(bytes: &[u8], from: usize, pat: &[u8]) -> (usize, bool) {
    (from..bytes.len())
        .find(|&j| bytes[j..].starts_with(pat))
        .map_or((bytes.len(), false), |j| (j + pat.len(), true))
}

/// A doubled quote inside the literal stands for one quote.
fn quoted_end(bytes: &[u8], start: usize, quote: u8) -> (usize, bool) {
    let mut j = start + 1;
    while j < bytes.len() {
        if bytes[j] == quote {
            if bytes.get(j + 1) != Some(&quote) {
                return (j + 1, true);
            }
            j += 1;
        }
        j += 1;
    }
    (bytes.len(), false)
}

fn number_end(bytes: &[u8], start: usize) -> usize {
    let mut j = start;
    while j < bytes.len() {
        let b = bytes[j];
        let exponent_sign = matches!(b, b'+' | b'-')
            && matches!(bytes.get(j.wrapping_sub(1)), Some(b'e' | b'E'))
            && !bytes[start..].starts_with(b"0x")
            && !bytes[start..].starts_with(b"0X");
        if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || exponent_sign) {
            break;
        }
        j += 1;
    }
    j
}

/// The top-level items of the first parenthesized list, split at commas:
/// for a CREATE TABLE, its column definitions and table constraints.
/// Also returns the tokens after the list (table options).
pub fn paren_items<'t, 'a>(tokens: &'t [Token<'a>]) -> (Vec<&'t [Token<'a>]>, &'t [Token<'a>]) {
    let Some(open) = tokens.iter().position(|t| t.is_punct('(')) else {
        return (Vec::new(), &[]);
    };
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = open + 1;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                items.push(&tokens[start..i]);
                return (items, &tokens[i + 1..]);
            }
        } else if t.is_punct(',') && depth == 1 {
            items.push(&tokens[start..i]);
            start = i + 1;
        }
    }
    (items, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexer_handles_literals_comments_and_nesting() {
        let sql = "x('a,''b', \"c\"\"d\", [e,f], `g`, (1, 2), -- z,\n 1.5e-3 /* , */ , é)";
        let tokens = tokenize(sql);
        let (items, rest) = paren_items(&tokens);
        assert!(rest.is_empty());
        let texts: Vec<_> = items.iter().map(|i| span(sql, i)).collect();
        assert_eq!(
            texts,
            [
                "'a,''b'",
                "\"c\"\"d\"",
                "[e,f]",
                "`g`",
                "(1, 2)",
                "1.5e-3",
                "é"
            ]
        );
        assert_eq!(items[0][0].string_value().as_deref(), Some("a,'b"));
        assert_eq!(items[1][0].unquoted(), "c\"d");
        assert_eq!(items[2][0].unquoted(), "e,f");
        assert_eq!(items[5][0].kind, Kind::Number);
        assert!(tokenize("'unterminated").len() == 1);
        assert!(tokenize("/* open").is_empty());
        assert!(tokenize_complete("'unterminated").is_none());
        assert!(tokenize_complete("SELECT 1 /* open").is_none());
        assert!(tokenize_complete("SELECT [x").is_none());
        assert!(tokenize_complete("SELECT 1 -- to the end").is_some());
    }

    #[test]
    fn parameters_and_operators() {
        let kinds = |sql: &str| -> Vec<(Kind, String)> {
            tokenize(sql)
                .iter()
                .map(|t| (t.kind, t.text.to_owned()))
                .collect()
        };
        assert_eq!(
            kinds("a==?1 AND b<>:x OR c->>'$.k' = @y||$z"),
            [
                (Kind::Word, "a".into()),
                (Kind::Punct, "==".into()),
                (Kind::Param, "?1".into()),
                (Kind::Word, "AND".into()),
                (Kind::Word, "b".into()),
                (Kind::Punct, "<>".into()),
                (Kind::Param, ":x".into()),
                (Kind::Word, "OR".into()),
                (Kind::Word, "c".into()),
                (Kind::Punct, "->>".into()),
                (Kind::Str, "'$.k'".into()),
                (Kind::Punct, "=".into()),
                (Kind::Param, "@y".into()),
                (Kind::Punct, "||".into()),
                (Kind::Param, "$z".into()),
            ]
        );
        assert!(tokenize("a=-1")[1].is_punct('='));
        assert!(!tokenize("a->b")[1].is_punct('-'));
    }
}
