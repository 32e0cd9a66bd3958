//! `patina backup` (through the API: the agent writes the files) and
//! `patina restore` (offline: prepares the data dir of a new node from a
//! backup; docs/operations.md).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use patina_node::{BackupManifest, MANIFEST_FILE};
use serde_json::Value as Json;

use crate::cli::{BackupArgs, RestoreArgs};

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let client = patina_client::Client::new(&args.api.api)?.with_token(args.api.token.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let to = std::path::absolute(&args.to)
        .with_context(|| format!("cannot make {} an absolute path", args.to.display()))?;
    let Some(to) = to.to_str() else {
        bail!(
            "{} is not UTF-8: the API takes the path as a JSON string; choose another",
            to.display()
        );
    };
    let answer = runtime
        .block_on(client.backup(to))
        .context("backup refused")?;
    if args.json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    let manifest = &answer["manifest"];
    writeln!(
        out,
        "backup of actor {} written to {} in {:.2} s",
        manifest["actor_id"].as_str().unwrap_or("?"),
        answer["dir"].as_str().unwrap_or(to),
        answer["time"].as_f64().unwrap_or(0.0)
    )?;
    for db in manifest["databases"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {}: {}, own version {}, {} actor(s)",
            db["file"].as_str().unwrap_or("?"),
            mib(&db["bytes"]),
            db["own_version"],
            db["actors"].as_array().map_or(0, Vec::len)
        )?;
    }
    Ok(())
}

fn mib(bytes: &Json) -> String {
    format!(
        "{:.1} MiB",
        bytes.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
    )
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let manifest = read_manifest(&args.from)?;
    let restored = patina_node::restore(&args.from, &manifest, &args.data_dir)?;
    writeln!(
        out,
        "restored the backup of actor {} (taken {}) into {} in {:.2} s",
        restored.old_actor,
        utc(manifest.taken_unix_ms),
        args.data_dir.display(),
        restored.took.as_secs_f64()
    )?;
    writeln!(out, "new actor id: {}", restored.new_actor)?;
    for db in &restored.databases {
        let versions = match db.old_version {
            0 => format!("no versions of {} to record", restored.old_actor),
            n => format!(
                "versions 1..={n} of {} recorded as applied",
                restored.old_actor
            ),
        };
        writeln!(
            out,
            "  {}.db: {versions}, {} row clocks re-attributed to it, {} actor(s) known",
            db.db.name(),
            db.clocks_rewritten,
            db.actors
        )?;
    }
    writeln!(
        out,
        "start the agent with node.data_dir = {:?}: it joins as a new node and fetches only what is newer than the backup. \
         Under mutual TLS with actor-pinned certificates, issue its certificate with `patina tls cert --actor {}`.",
        // Absolute: the agent does not run from this shell's directory.
        std::path::absolute(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone()),
        restored.new_actor
    )?;
    Ok(())
}

/// Unix milliseconds as a UTC date and time, `2026-12-04 17:05:31 UTC`.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn read_manifest(dir: &Path) -> anyhow::Result<BackupManifest> {
    if !dir.exists() {
        bail!(
            "{} does not exist: give the directory `patina backup --to` wrote",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!(
            "{} is not a directory: give the directory `patina backup --to` wrote",
            dir.display()
        );
    }
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} holds no {MANIFEST_FILE}: it is not a Patina backup, or a backup that did not finish \
             (the manifest is written last); take a new one with `patina backup`",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a backup manifest (was it edited?); take a new backup",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn backup_times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_401_685_568), "2026-12-04 16:28:05 UTC");
    }
}
