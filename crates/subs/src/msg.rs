//! What the subscription workers are sent.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use patina_node::Statement;
use tokio::sync::oneshot;

use crate::plan::{Table, Touched};
use crate::store::Stored;
use crate::stream::{Attach, SubError, SubStream};

pub(crate) type Reply = oneshot::Sender<Result<SubStream, SubError>>;

/// Whether a subscription that does not exist yet is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    No,
    Yes,
    /// The node holds its maximum: the statement is checked (an invalid
    /// one is told so, 400) and then refused for want of room.
    Full(usize),
}

pub(crate) enum Msg {
    /// Primary keys a commit changed, for the tables some subscription reads.
    Commit(Arc<Touched>),
    /// Tables a commit changed too much to list its keys: every
    /// subscription reading one re-runs in full.
    Tables(Arc<BTreeSet<Table>>),
    Subscribe {
        statement: Statement,
        key: String,
        create: Create,
        attach: Attach,
        reply: Reply,
    },
    Attach {
        id: String,
        attach: Attach,
        reply: Reply,
    },
    /// A subscription found on disk at start: rebuilt by a full re-run.
    /// With a path, it was read from that file of the old layout and is
    /// moved into the worker's store (then the file is removed).
    Restore(Box<Stored>, Option<PathBuf>),
    /// Removes subscription `id` (its store rows too); attached streams end.
    Remove {
        id: String,
        reply: oneshot::Sender<Result<(), SubError>>,
    },
    Stop,
}
