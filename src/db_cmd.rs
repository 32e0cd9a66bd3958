//! `patina db …`: debug subcommands working directly on a CRR database
//! file, without a daemon. Output formats are documented in `cli.rs` (the
//! commands' help) and `jsonl.rs`.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use patina_crr::schema::quote_ident;
use patina_crr::{Change, CrrConn, CrrError, SiteId, Value};

use crate::cli::{ApplyArgs, ChangesArgs, DbCommand, DbExecArgs, DumpArgs};
use crate::jsonl;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// Longest stdin line `patina db apply` reads, in bytes (64 MiB, as the
/// client's NDJSON limit): one change with a large blob fits, while input
/// that is not line-separated at all fails instead of filling memory.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Runs one `patina db` subcommand; machine output goes to stdout, notes to
/// stderr.
pub fn run(cmd: DbCommand) -> Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match cmd {
        DbCommand::Exec(args) => exec(&args, &mut out)?,
        DbCommand::Changes(args) => changes(&args, &mut out)?,
        DbCommand::Apply(args) => {
            let summary = apply(&args, io::stdin().lock())?;
            eprintln!("{summary}");
        }
        DbCommand::Dump(args) => dump(&args, &mut out)?,
    }
    out.flush().context("cannot write to stdout")?;
    Ok(())
}

/// Opens (creating if needed) a database.
fn open(path: &Path, site_id: Option<SiteId>) -> Result<CrrConn> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database's directory {}", dir.display()))?;
        // A node's data dir (it has an actor id): take its lock for the rest
        // of this short process, as the agent does, so the two never write
        // it at once (they would hand out the same versions).
        if dir.join("actor_id").exists() {
            let lock = patina_node::lock_data_dir(dir).with_context(|| {
                format!(
                    "{} belongs to a running node: use its HTTP API (`patina exec`, `patina query`)",
                    path.display()
                )
            })?;
            std::mem::forget(lock);
        }
    }
    CrrConn::open_with_site_id(path, site_id)
        .with_context(|| format!("cannot open database {}", path.display()))
}

/// Opens a database that must exist: reading commands never create one.
fn open_existing(path: &Path) -> Result<CrrConn> {
    if !path.exists() {
        bail!(
            "database {} does not exist: check --db, or create it with \
             `patina db exec --db {} --schema FILE.sql`",
            path.display(),
            path.display()
        );
    }
    open(path, None)
}

fn exec(args: &DbExecArgs, out: &mut impl Write) -> Result<()> {
    // Read the schema first: a wrong path must not leave a new empty database.
    let schema = match &args.schema {
        Some(path) => Some((
            path,
            std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read schema file {}: check the --schema path",
                    path.display()
                )
            })?,
        )),
        None => None,
    };
    let mut conn = open(&args.db.path, args.site_id)?;
    if let Some((path, sql)) = schema {
        conn.apply_schema(&sql).with_context(|| {
            format!(
                "schema file {} was refused, nothing of it was applied",
                path.display()
            )
        })?;
    }
    let version = if args.sql.is_empty() {
        None
    } else {
        let mut tx = conn.transaction().context("cannot start a transaction")?;
        for (i, sql) in args.sql.iter().enumerate() {
            tx.execute_batch(sql).with_context(|| {
                format!(
                    "SQL argument {} failed, nothing of the transaction was written",
                    i + 1
                )
            })?;
        }
        tx.commit()
            .context("commit failed, nothing of the transaction was written")?
    };
    let version = version.map_or_else(|| "null".to_owned(), |v| v.to_string());
    writeln!(out, "{{\"version\":{version}}}")?;
    Ok(())
}

fn changes(args: &ChangesArgs, out: &mut impl Write) -> Result<()> {
    let conn = open_existing(&args.db.path)?;
    let changes = conn
        .changes_since(args.since, args.exclude_site)
        .context("cannot read changes")?;
    for change in &changes {
        writeln!(out, "{}", jsonl::change_line(change))?;
    }
    Ok(())
}

/// Reads change lines from `input` and merges them as one batch; returns
/// the one-line summary.
fn apply(args: &ApplyArgs, input: impl Read) -> Result<String> {
    let mut conn = open_existing(&args.db.path)?;
    let (batch, line_numbers) = read_changes(input, MAX_LINE_BYTES)?;
    let report = conn.apply_changes(&batch).map_err(|e| {
        let context = match &e {
            CrrError::BadChange { index, .. } => match line_numbers.get(*index) {
                Some(line) => format!("the change on stdin line {line} was refused"),
                None => "a change was refused".to_owned(),
            },
            _ => "applying the changes failed, nothing was applied".to_owned(),
        };
        anyhow::Error::new(e).context(context)
    })?;
    Ok(format!(
        "applied {} changes: {} won, {} lost, {} ignored",
        batch.len(),
        report.won.len(),
        report.lost,
        report.ignored
    ))
}

/// Parses every non-blank line; returns the changes and the (1-based) line
/// number of each. The first bad line fails the whole read.
fn read_changes(mut input: impl Read, max_line: usize) -> Result<(Vec<Change>, Vec<usize>)> {
    let mut batch = Vec::new();
    let mut line_numbers = Vec::new();
    let mut codec = LinesCodec::new_with_max_length(max_line);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut at_end = false;
    let mut number = 0;
    loop {
        let line = if at_end {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) if at_end => break,
            Ok(None) => {
                let n = loop {
                    match input.read(&mut chunk) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        read => break read,
                    }
                }
                .with_context(|| {
                    format!("cannot read stdin after line {number}, nothing was applied")
                })?;
                at_end = n == 0;
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(LinesCodecError::MaxLineLengthExceeded) => bail!(
                "stdin line {} is longer than {max_line} bytes, the most `patina db apply` reads: \
                 give one change per line (as `patina db changes` prints them); nothing was applied",
                number + 1,
            ),
            Err(LinesCodecError::Io(e)) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot read stdin line {} (is it UTF-8 text?), nothing was applied",
                    number + 1
                )))
            }
        };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let change = jsonl::parse_change(&line).with_context(|| {
            format!("stdin line {number} is not a valid change, nothing was applied")
        })?;
        batch.push(change);
        line_numbers.push(number);
    }
    Ok((batch, line_numbers))
}

fn dump(args: &DumpArgs, out: &mut impl Write) -> Result<()> {
    let conn = open_existing(&args.db.path)?;
    for table in conn.tables() {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let select = names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ");
        let order = table
            .pk_columns()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {select} FROM {}", quote_ident(&table.name));
        if !order.is_empty() {
            sql.push_str(" ORDER BY ");
            sql.push_str(&order);
        }
        let read_err = || anyhow!("cannot read table {:?}", table.name);
        let mut stmt = conn.connection().prepare(&sql).with_context(read_err)?;
        let mut rows = stmt.query([]).with_context(read_err)?;
        while let Some(row) = rows.next().with_context(read_err)? {
            let values = (0..names.len())
                .map(|i| row.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()
                .with_context(read_err)?;
            let line = jsonl::row_line(&table.name, names.iter().copied().zip(&values));
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_count_and_long_lines_are_refused() {
        let (batch, numbers) = read_changes(&b"\n  \n"[..], 16).unwrap();
        assert!(batch.is_empty() && numbers.is_empty());
        let e = read_changes(&b"\n{\"a\": \"0123456789abcdef\"}\n"[..], 16).unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.contains("stdin line 2 is longer than 16 bytes"),
            "{message}"
        );
        let e = read_changes(&b"\n\xff\n"[..], 16).unwrap_err();
        assert!(format!("{e:#}").contains("stdin line 2"), "{e:#}");
    }
}
