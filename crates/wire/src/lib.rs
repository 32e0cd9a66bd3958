//! `patina-wire`: every byte layout Patina puts on the network. It must never
//! do I/O, and its decoders never panic: they return [`WireError`].
//!
//! Messages ([`Message`] in an [`Envelope`] that names the sender's cluster)
//! travel as length-prefixed stream frames; SWIM packets travel as
//! [`Datagram`]s tagged with the cluster name. Both carry [`WIRE_VERSION`].
//! [`chunk_changes`] cuts a transaction into chunks of at most
//! [`CHUNK_BYTES_TARGET`] bytes. Decoders return [`WireError`], never panic.
//!
//! ```
//! use patina_wire::*;
//! let cluster = ClusterName::new("ams")?;
//! let env = Envelope { cluster, from: ActorId::random(), message: Message::SummaryRequest };
//! let bytes = encode_frame(&env)?;
//! let len = frame_body_len(bytes[..4].try_into().unwrap())?;
//! assert_eq!(decode_frame_body(&bytes[4..4 + len])?, env);
//! # Ok::<(), WireError>(())
//! ```

mod chunk;
mod codec;
mod error;
mod limits;
mod message;

pub use chunk::{change_bytes_max, chunk_changes, chunk_changes_in, CHUNK_BYTES_TARGET};
pub use codec::{
    datagram_overhead, decode_datagram, decode_frame_body, decode_value, encode_datagram,
    encode_frame, encode_value, frame_body_len, Datagram,
};
pub use error::WireError;
pub use limits::{
    CLUSTER_NAME_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, ROW_BYTES_MAX, WIRE_VERSION,
};
pub use message::{
    ActorId, ActorSummary, ChangeChunk, ClusterName, CollectedFloors, DbKind, Envelope, Message,
    Need, NodeIdentity, PartialVersion, Span, Summary, WireChange,
};
pub use patina_value::Value;
