//! Byte layouts. Two shapes travel:
//!
//! - **stream frames**: `len: u32 LE | version: u8 | bincode(Envelope)`,
//!   `len` counting what follows it, at most [`FRAME_BYTES_MAX`];
//! - **datagrams** (SWIM packets): `version: u8 | cluster_len: u8 | cluster
//!   | payload`.
//!
//! Decoders return errors, never panic, and never allocate more than the
//! frame they were given.

use bincode::config::{Configuration, LittleEndian, Varint};

use crate::error::WireError;
use crate::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, WIRE_VERSION};
use crate::message::{ClusterName, Envelope};

fn config() -> Configuration<LittleEndian, Varint, bincode::config::Limit<FRAME_BYTES_MAX>> {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Encodes one stream frame, header included.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; FRAME_HEADER_BYTES];
    out.push(WIRE_VERSION);
    bincode::serde::encode_into_std_write(envelope, &mut out, config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let body = out.len() - FRAME_HEADER_BYTES;
    if body > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge(body));
    }
    out[..FRAME_HEADER_BYTES].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(out)
}

/// Reads a frame header: how many bytes of body follow. Refuses a length
/// over [`FRAME_BYTES_MAX`] before anything is read or allocated.
pub fn frame_body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge(len));
    }
    if len == 0 {
        return Err(WireError::Truncated);
    }
    Ok(len)
}

/// Decodes a frame body (what follows the header).
pub fn decode_frame_body(body: &[u8]) -> Result<Envelope, WireError> {
    let (&version, rest) = body.split_first().ok_or(WireError::Truncated)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (envelope, used): (Envelope, usize) =
        bincode::serde::decode_from_slice(rest, config()).map_err(decode_error)?;
    if used != rest.len() {
        return Err(WireError::TrailingBytes(rest.len() - used));
    }
    if let crate::message::Message::Changes(chunk) = &envelope.message {
        chunk.validate()?;
    }
    Ok(envelope)
}

fn decode_error(e: bincode::error::DecodeError) -> WireError {
    match e {
        bincode::error::DecodeError::UnexpectedEnd { .. } => WireError::Truncated,
        bincode::error::DecodeError::LimitExceeded => WireError::FrameTooLarge(FRAME_BYTES_MAX + 1),
        other => WireError::Malformed(other.to_string()),
    }
}

/// A SWIM packet and the cluster it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub cluster: ClusterName,
    pub payload: &'a [u8],
}

/// Bytes a datagram adds to its payload, at most.
pub fn datagram_overhead(cluster: &ClusterName) -> usize {
    2 + cluster.as_str().len()
}

pub fn encode_datagram(cluster: &ClusterName, payload: &[u8]) -> Vec<u8> {
    let name = cluster.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + name.len() + payload.len());
    out.push(WIRE_VERSION);
    // ClusterName guarantees <= CLUSTER_NAME_BYTES_MAX (64) bytes.
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

pub fn decode_datagram(bytes: &[u8]) -> Result<Datagram<'_>, WireError> {
    let [version, name_len, rest @ ..] = bytes else {
        return Err(WireError::Truncated);
    };
    if *version != WIRE_VERSION {
        return Err(WireError::Version(*version));
    }
    let name_len = *name_len as usize;
    if rest.len() < name_len {
        return Err(WireError::Truncated);
    }
    let (name, payload) = rest.split_at(name_len);
    let name = std::str::from_utf8(name)
        .map_err(|_| WireError::Malformed("cluster name is not UTF-8".into()))?;
    Ok(Datagram {
        cluster: ClusterName::new(name)?,
        payload,
    })
}

/// Encodes any serde value with the wire's bincode configuration (used for
/// foca's identities and persisted membership).
pub fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a value written by [`encode_value`] from the front of `bytes`;
/// returns it and the bytes it used.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), WireError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(decode_error)
}
