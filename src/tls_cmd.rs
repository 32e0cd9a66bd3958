//! `patina tls ca | cert`: the files of `[gossip.tls]`, made with
//! `patina_transport::CertAuthority` (the same code the test CAs use, so
//! what the tests trust is what operators get).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use patina_transport::{CertAuthority, NodeCertRequest};
use patina_wire::ClusterName;

use crate::cli::{TlsCaArgs, TlsCertArgs, TlsCommand};

pub fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Ca(args) => ca(args),
        TlsCommand::Cert(args) => cert(args),
    }
}

fn ca(args: TlsCaArgs) -> anyhow::Result<()> {
    let cert_path = args.out.join("ca.pem");
    let key_path = args.out.join("ca.key");
    refuse_overwrite(&[&cert_path, &key_path], args.force)?;
    let ca = CertAuthority::generate(&args.name, args.days)?;
    create_dir(&args.out)?;
    write_file(&key_path, ca.key_pem(), true)?;
    write_file(&cert_path, ca.cert_pem(), false)?;
    println!("wrote {} (ca_file of every node)", cert_path.display());
    println!(
        "wrote {} (keep it off the nodes: it signs their certificates)",
        key_path.display()
    );
    Ok(())
}

fn cert(args: TlsCertArgs) -> anyhow::Result<()> {
    let clusters = args
        .clusters
        .iter()
        .map(|c| {
            ClusterName::new(c.as_str()).map_err(|e| {
                anyhow::anyhow!("--cluster {c:?} cannot name a cluster ({e}): give a region, e.g. ams, or global")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ca_cert = args.ca.join("ca.pem");
    let ca_key = args.ca.join("ca.key");
    let read = |path: &Path| {
        fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}: --ca must be the folder where `patina tls ca` wrote ca.pem and ca.key",
                path.display()
            )
        })
    };
    let ca = CertAuthority::from_pem(&read(&ca_cert)?, &read(&ca_key)?)
        .with_context(|| format!("{} and {}", ca_cert.display(), ca_key.display()))?;
    let issued = ca.issue(&NodeCertRequest {
        node: args.node.clone(),
        clusters,
        actor: args.actor,
        days: args.days,
    })?;
    let cert_path = args.out.join(format!("{}.pem", args.node));
    let key_path = args.out.join(format!("{}.key", args.node));
    refuse_overwrite(&[&cert_path, &key_path], args.force)?;
    create_dir(&args.out)?;
    write_file(&key_path, &issued.key_pem, true)?;
    write_file(&cert_path, &issued.cert_pem, false)?;
    println!(
        "wrote {} (cert_file) and {} (key_file) for node {} in clusters {}",
        cert_path.display(),
        key_path.display(),
        args.node,
        args.clusters.join(", ")
    );
    Ok(())
}

fn refuse_overwrite(paths: &[&PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists: pass --force to replace it, or --out another folder",
            existing.display()
        );
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))
}

/// Writes `text`; a private key is readable by its owner only, from the
/// moment the file exists.
fn write_file(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
