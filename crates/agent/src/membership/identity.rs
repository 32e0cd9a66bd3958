//! foca's view of a node: [`SwimId`], and the codec that puts foca's
//! headers and member updates on the wire.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use foca::{Header, Member};
use serde::{Deserialize, Serialize};
use wire::{ActorId, ClusterName, NodeIdentity};

/// The actor id of an identity we do not know yet: bootstrap peers are
/// named by address only. Real actor ids are random UUIDv4 bytes, which
/// are never all zero.
pub(crate) const UNKNOWN_ACTOR: ActorId = crr::SiteId([0; 16]);

/// A [`NodeIdentity`] as foca's identity.
///
/// foca's `Addr` (what makes two identities "the same node") is the actor
/// id, not the socket address: a node restarted on another port or host
/// with its actor id and a higher `generation` replaces its old
/// incarnation at once (foca's `Rename`) instead of being a second member
/// while the old one is slowly declared down.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SwimId(pub NodeIdentity);

impl SwimId {
    /// A stand-in for the node listening at `addr`, whose actor we do not
    /// know: only used as the destination of an announce.
    pub(crate) fn unknown_at(addr: SocketAddr, cluster: ClusterName) -> SwimId {
        SwimId(NodeIdentity {
            actor: UNKNOWN_ACTOR,
            addr,
            cluster,
            generation: 0,
        })
    }
}

impl foca::Identity for SwimId {
    type Addr = ActorId;

    /// After being declared down, rejoin as the next generation.
    fn renew(&self) -> Option<Self> {
        let mut next = self.0.clone();
        next.generation = next.generation.saturating_add(1);
        Some(SwimId(next))
    }

    fn addr(&self) -> ActorId {
        self.0.actor
    }

    /// The newer generation wins; equal generations (two processes with
    /// one actor id, a misconfiguration) are ordered by address so every
    /// node picks the same winner.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.0.generation, self.0.addr) > (adversary.0.generation, adversary.0.addr)
    }
}

/// Why a SWIM packet was not encoded or decoded; foca drops the packet.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("no room for {0} more bytes in the packet")]
    NoSpace(usize),
    #[error("identity of cluster {0:?} in a packet of ours; dropped")]
    WrongCluster(String),
}

/// Encodes foca's headers and members with `wire::encode_value` (bincode),
/// so that `wire` stays the one place defining byte layouts and foca's own
/// optional postcard codec (another serializer) is not needed.
///
/// It also enforces isolation a second time (the transport already drops
/// datagrams tagged with another cluster): any identity of another cluster
/// fails decoding, so foca never learns of it.
#[derive(Debug)]
pub struct WireCodec {
    cluster: ClusterName,
    actor: ActorId,
}

impl WireCodec {
    pub fn new(cluster: ClusterName, actor: ActorId) -> WireCodec {
        WireCodec { cluster, actor }
    }

    fn check(&self, id: &SwimId) -> Result<(), CodecError> {
        if id.0.cluster != self.cluster {
            return Err(CodecError::WrongCluster(id.0.cluster.to_string()));
        }
        Ok(())
    }

    fn put(bytes: &[u8], mut buf: impl BufMut) -> Result<(), CodecError> {
        // foca requires an encoder to leave the buffer untouched on failure.
        if buf.remaining_mut() < bytes.len() {
            return Err(CodecError::NoSpace(bytes.len()));
        }
        buf.put_slice(bytes);
        Ok(())
    }
}

impl foca::Codec<SwimId> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(&wire::encode_value(header)?, buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<SwimId>, CodecError> {
        let (mut header, used): (Header<SwimId>, usize) = wire::decode_value(buf.chunk())?;
        buf.advance(used);
        self.check(&header.src)?;
        self.check(&header.dst)?;
        // An announce to a bootstrap address names no actor; foca accepts
        // announces addressed to any identity with our `Addr` (actor).
        if header.message == foca::Message::Announce && header.dst.0.actor == UNKNOWN_ACTOR {
            header.dst.0.actor = self.actor;
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<SwimId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(&wire::encode_value(member)?, buf)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<SwimId>, CodecError> {
        let (member, used): (Member<SwimId>, usize) = wire::decode_value(buf.chunk())?;
        buf.advance(used);
        self.check(member.id())?;
        Ok(member)
    }
}
