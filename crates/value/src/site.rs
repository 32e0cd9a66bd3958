//! Site ids: the 16-byte name of one replica.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The 16-byte id of one replica (cr-sqlite's "site id", Patina's "actor id").
///
/// Ordered bytewise, unsigned: that order breaks merge ties (crr-model.md 7).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SiteId(pub [u8; 16]);

impl SiteId {
    /// A fresh random id (UUIDv4 layout, like cr-sqlite's).
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        fill_random(&mut bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        SiteId(bytes)
    }

    /// Parses a site id from raw bytes, as found in a change or a blob column.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(SiteId)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// 32 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({})", self.to_hex())
    }
}

/// Why a string is not a site id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a site id is 32 hex characters (16 bytes), got {0:?}")]
pub struct ParseSiteIdError(pub String);

impl FromStr for SiteId {
    type Err = ParseSiteIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| ParseSiteIdError(s.to_owned()))?;
        SiteId::from_slice(&bytes).ok_or_else(|| ParseSiteIdError(s.to_owned()))
    }
}

/// Random bytes from the operating system.
fn fill_random(out: &mut [u8]) {
    // Without OS entropy no node can get a unique id; there is nothing to
    // fall back to, so this is the one place start-up may abort.
    getrandom::fill(out).expect("the operating system provides random bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = SiteId::random();
        assert_eq!(id.to_hex().parse::<SiteId>().unwrap(), id);
        assert_eq!(id.to_hex().len(), 32);
        assert_eq!(id.0[6] >> 4, 4, "uuid v4 version nibble");
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!("zz".parse::<SiteId>().is_err());
        assert!("00".parse::<SiteId>().is_err());
        assert!("0".repeat(34).parse::<SiteId>().is_err());
    }
}
