//! `patina-client`: a Rust client of Patina's HTTP API (Corrosion's v1
//! shapes): transactions, queries streamed row by row,
//! resumable subscriptions ([`Subscription`]), schema reload, health.
//! The CLI and the tests use it; so can edge proxies. It depends on nothing
//! of the daemon (it must never: edge proxies link it): values are plain JSON.

mod client;
mod error;
mod lines;
mod subscription;

pub use client::{Cell, Client, Dropped, Rows, Statement, TxResponse};
pub use error::ClientError;
pub use lines::MAX_LINE_BYTES;
pub use subscription::{parse_sub_line, ChangeKind, Reconnect, SubEvent, SubLine, Subscription};
