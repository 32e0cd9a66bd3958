//! The member list and the generation on disk, so a restarted node
//! rejoins without its bootstrap list and as a newer incarnation.
//!
//! `members_file`: one version byte, then `patina_wire::encode_value` of the
//! member identities. `<members_file>.generation`: the last generation
//! used, in decimal. Both are replaced atomically (temp file + rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use patina_wire::NodeIdentity;

const MEMBERS_FILE_VERSION: u8 = 1;

/// Members persisted at most; past this the list is cut (any live member
/// is enough to rejoin).
pub const PERSISTED_MEMBERS_MAX: usize = 1024;

pub(crate) fn generation_path(members_file: &Path) -> PathBuf {
    let mut name = members_file.as_os_str().to_owned();
    name.push(".generation");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` through a temp file and a rename, so a crash
/// leaves the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the last generation, bumps it past both it and `at_least`, and
/// stores the result. An unreadable file counts as no file (logged): the
/// worst case is a generation peers see as older, which they resolve once
/// the node renews itself.
pub(crate) fn next_generation(members_file: &Path, at_least: u64) -> u64 {
    let path = generation_path(members_file);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "generation file unreadable; starting over");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the generation file");
            None
        }
    };
    let next = stored.map_or(at_least, |g| g.saturating_add(1).max(at_least));
    store_generation(members_file, next);
    next
}

pub(crate) fn store_generation(members_file: &Path, generation: u64) {
    let path = generation_path(members_file);
    if let Err(e) = write_atomic(&path, generation.to_string().as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "cannot store the generation; a restart may not be recognized as newer");
    }
}

pub(crate) fn load_members(members_file: &Path) -> Vec<NodeIdentity> {
    let bytes = match std::fs::read(members_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %members_file.display(), error = %e, "cannot read the members file; relying on bootstrap");
            return Vec::new();
        }
    };
    let decoded = match bytes.split_first() {
        Some((&MEMBERS_FILE_VERSION, rest)) => {
            patina_wire::decode_value::<Vec<NodeIdentity>>(rest).map(|(members, _)| members)
        }
        _ => Err(patina_wire::WireError::Malformed(
            "unknown members file version".into(),
        )),
    };
    match decoded {
        Ok(mut members) => {
            members.truncate(PERSISTED_MEMBERS_MAX);
            members
        }
        Err(e) => {
            tracing::warn!(path = %members_file.display(), error = %e, "members file unreadable; relying on bootstrap");
            Vec::new()
        }
    }
}

pub(crate) fn store_members(members_file: &Path, members: &[NodeIdentity]) -> Result<(), String> {
    let members = &members[..members.len().min(PERSISTED_MEMBERS_MAX)];
    let mut bytes = vec![MEMBERS_FILE_VERSION];
    bytes.extend(patina_wire::encode_value(&members).map_err(|e| e.to_string())?);
    write_atomic(members_file, &bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use patina_wire::{ActorId, ClusterName};

    use super::*;

    fn members(n: u16) -> Vec<NodeIdentity> {
        (0..n)
            .map(|i| NodeIdentity {
                actor: ActorId::random(),
                addr: SocketAddr::from(([127, 0, 0, 1], 4000 + i)),
                cluster: ClusterName::new("ams").unwrap(),
                region: ClusterName::new("ams").unwrap(),
                global_member: i % 2 == 0,
                generation: u64::from(i),
            })
            .collect()
    }

    #[test]
    fn members_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members-ams");
        assert!(load_members(&file).is_empty(), "no file: no members");
        let stored = members(5);
        store_members(&file, &stored).unwrap();
        assert_eq!(load_members(&file), stored);
        store_members(&file, &[]).unwrap();
        assert!(load_members(&file).is_empty());
    }

    #[test]
    fn a_corrupt_members_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members-ams");
        store_members(&file, &members(3)).unwrap();
        let good = std::fs::read(&file).unwrap();
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![MEMBERS_FILE_VERSION],
            vec![MEMBERS_FILE_VERSION + 1],
            b"not a members file at all".to_vec(),
            vec![0xff; 4096],
        ];
        bad.extend((1..good.len()).map(|len| good[..len].to_vec()));
        let mut other_version = good.clone();
        other_version[0] = 9;
        bad.push(other_version);
        for bytes in bad {
            std::fs::write(&file, &bytes).unwrap();
            assert!(
                load_members(&file).is_empty(),
                "{} bytes of a corrupt file gave members",
                bytes.len()
            );
        }
        // A directory where the file should be: unreadable, still no crash.
        let dir_file = dir.path().join("members-dir");
        std::fs::create_dir(&dir_file).unwrap();
        assert!(load_members(&dir_file).is_empty());
    }

    #[test]
    fn members_past_the_limit_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members-ams");
        let many = members(PERSISTED_MEMBERS_MAX as u16 + 10);
        store_members(&file, &many).unwrap();
        assert_eq!(load_members(&file), many[..PERSISTED_MEMBERS_MAX]);
    }

    #[test]
    fn generations_increase_and_survive_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members-ams");
        assert_eq!(next_generation(&file, 0), 0);
        assert_eq!(next_generation(&file, 0), 1);
        assert_eq!(next_generation(&file, 10), 10, "at_least wins");
        assert_eq!(next_generation(&file, 0), 11);
        std::fs::write(generation_path(&file), "eleven").unwrap();
        assert_eq!(
            next_generation(&file, 4),
            4,
            "a corrupt file counts as none"
        );
        assert_eq!(next_generation(&file, 0), 5, "and is replaced");
        std::fs::write(generation_path(&file), u64::MAX.to_string()).unwrap();
        assert_eq!(next_generation(&file, 0), u64::MAX, "saturates");
    }
}
