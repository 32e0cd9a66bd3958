//! The numbers every layout and its peers agree on.

/// The encoding version this build writes and reads. A peer sending any
/// other version is refused frame by frame (counted), not misread.
/// 2: SWIM identities carry the node's region and global-member flag.
pub const WIRE_VERSION: u8 = 2;

/// The largest stream frame, header excluded. Change chunks aim at
/// [`crate::CHUNK_BYTES_TARGET`] but one change travels whole, so this is
/// also the largest replicable cell value (a bit under 4 MiB); it bounds
/// what a peer can make us buffer per stream.
pub const FRAME_BYTES_MAX: usize = 4 << 20;

/// The largest row (so the largest value) a node's databases accept: a
/// change carries a row's key and one value, and must fit one frame with
/// room to spare for the rest of the chunk. Larger values were accepted
/// and then could never replicate.
pub const ROW_BYTES_MAX: usize = FRAME_BYTES_MAX - (64 << 10);

/// Stream frame header: the little-endian u32 length.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Cluster names are region names or `global`; short by configuration.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;
