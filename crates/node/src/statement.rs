//! A statement and its parameters, as the API's JSON forms carry them.

use patina_crr::Value;

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
