//! [`WireError`]: why bytes are not a message.

use crate::limits::{CLUSTER_NAME_BYTES_MAX, FRAME_BYTES_MAX, WIRE_VERSION};

/// Why bytes could not be encoded or decoded. None of these changes any
/// state; the receiver drops the frame (or stream) and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("wire version {0} is not supported (this build speaks {WIRE_VERSION}); upgrade the older node")]
    Version(u8),
    #[error("frame of {0} bytes exceeds the {FRAME_BYTES_MAX}-byte limit")]
    FrameTooLarge(usize),
    #[error("message ends early")]
    Truncated,
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("cluster names are 1 to {CLUSTER_NAME_BYTES_MAX} bytes, got {0}")]
    ClusterName(usize),
    #[error("cannot encode: {0}")]
    Encode(String),
}
