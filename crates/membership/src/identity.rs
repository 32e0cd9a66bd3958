//! foca's view of a node: [`SwimId`], and the codec that puts foca's
//! headers and member updates on the wire.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use foca::{Header, Member};
use patina_wire::{ActorId, ClusterName, NodeIdentity};
use serde::{Deserialize, Serialize};

/// The actor id of an identity we do not know yet: bootstrap peers are
/// named by address only. Real actor ids are random UUIDv4 bytes, which
/// are never all zero.
pub(crate) const UNKNOWN_ACTOR: ActorId = patina_wire::ActorId([0; 16]);

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
            region: cluster.clone(),
            cluster,
            global_member: false,
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
    Wire(#[from] patina_wire::WireError),
    #[error("no room for {0} more bytes in the packet")]
    NoSpace(usize),
    #[error("identity of cluster {0:?} in a packet of ours; dropped")]
    WrongCluster(String),
}

/// Encodes foca's headers and members with `patina_wire::encode_value` (bincode),
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
        Self::put(&patina_wire::encode_value(header)?, buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<SwimId>, CodecError> {
        let (mut header, used): (Header<SwimId>, usize) = patina_wire::decode_value(buf.chunk())?;
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
        Self::put(&patina_wire::encode_value(member)?, buf)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<SwimId>, CodecError> {
        let (member, used): (Member<SwimId>, usize) = patina_wire::decode_value(buf.chunk())?;
        buf.advance(used);
        self.check(member.id())?;
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use foca::Codec;

    use super::*;

    fn identity(cluster: &str, port: u16) -> SwimId {
        SwimId(NodeIdentity {
            actor: ActorId::random(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            cluster: ClusterName::new(cluster).unwrap(),
            region: ClusterName::new("ams").unwrap(),
            global_member: true,
            generation: 3,
        })
    }

    fn header(cluster: &str) -> Header<SwimId> {
        Header {
            src: identity(cluster, 1),
            src_incarnation: 7,
            dst: identity(cluster, 2),
            message: foca::Message::Ping(9),
        }
    }

    fn codec() -> WireCodec {
        WireCodec::new(ClusterName::new("ams").unwrap(), ActorId::random())
    }

    fn encoded(h: &Header<SwimId>) -> Vec<u8> {
        let mut buf = Vec::new();
        codec().encode_header(h, &mut buf).unwrap();
        buf
    }

    #[test]
    fn headers_and_members_round_trip() {
        let h = header("ams");
        let bytes = encoded(&h);
        let mut buf = &bytes[..];
        assert_eq!(codec().decode_header(&mut buf).unwrap(), h);
        assert!(buf.is_empty(), "the decoder consumed the whole header");

        let member = Member::alive(identity("ams", 4));
        let mut bytes = Vec::new();
        codec().encode_member(&member, &mut bytes).unwrap();
        assert_eq!(codec().decode_member(&bytes[..]).unwrap(), member);
    }

    #[test]
    fn every_truncation_of_a_header_is_an_error() {
        let bytes = encoded(&header("ams"));
        for len in 0..bytes.len() {
            assert!(
                codec().decode_header(&bytes[..len]).is_err(),
                "a header cut to {len} of {} bytes decoded",
                bytes.len()
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        let valid = encoded(&header("ams"));
        for round in 0..2000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..round % 300).map(|_| byte()).collect()
            } else {
                // A valid header with a few bytes flipped.
                let mut b = valid.clone();
                for _ in 0..1 + round % 4 {
                    let i = byte() as usize % b.len();
                    b[i] ^= byte() | 1;
                }
                b
            };
            let _ = codec().decode_header(&bytes[..]);
            let _ = codec().decode_member(&bytes[..]);
        }
    }

    #[test]
    fn identities_of_another_cluster_are_refused() {
        let bytes = encoded(&header("fra"));
        assert!(matches!(
            codec().decode_header(&bytes[..]),
            Err(CodecError::WrongCluster(c)) if c == "fra"
        ));
        let mut bytes = Vec::new();
        codec()
            .encode_member(&Member::alive(identity("fra", 4)), &mut bytes)
            .unwrap();
        assert!(matches!(
            codec().decode_member(&bytes[..]),
            Err(CodecError::WrongCluster(_))
        ));
    }

    #[test]
    fn no_room_leaves_the_buffer_untouched() {
        let mut space = [0xaau8; 8];
        let err = codec()
            .encode_header(&header("ams"), &mut space[..])
            .unwrap_err();
        assert!(matches!(err, CodecError::NoSpace(_)));
        assert_eq!(space, [0xaa; 8]);
    }

    #[test]
    fn an_announce_to_a_bootstrap_address_is_addressed_to_us() {
        let mut codec = codec();
        let h = Header {
            src: identity("ams", 1),
            src_incarnation: 0,
            dst: SwimId::unknown_at(
                SocketAddr::from(([127, 0, 0, 1], 2)),
                ClusterName::new("ams").unwrap(),
            ),
            message: foca::Message::Announce,
        };
        let bytes = encoded(&h);
        let decoded = codec.decode_header(&bytes[..]).unwrap();
        assert_eq!(decoded.dst.0.actor, codec.actor);
    }
}
