//! `patina exec`, `patina query`, `patina sub`, `patina reload` and
//! `patina members`: the
//! HTTP API from the command line, through `crates/client`.

use std::io::Write;

use anyhow::Context;
use patina_client::{Cell, Client, Statement, SubEvent, Subscription};
use serde_json::Value as Json;

use crate::cli::{ApiArgs, ExecArgs, HealthArgs, MembersArgs, QueryArgs, ReloadArgs, SubArgs};

fn connect(api: &ApiArgs) -> anyhow::Result<(Client, tokio::runtime::Runtime)> {
    let client = Client::new(&api.api)?.with_token(api.token.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok((client, runtime))
}

/// Runs the SQL arguments as one transaction; prints what it did.
pub fn exec(args: ExecArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    let statements: Vec<Statement> = args
        .sql
        .iter()
        .map(|s| Statement::from(s.as_str()))
        .collect();
    let out = runtime.block_on(client.transact(&statements))?;
    if args.json {
        let line = serde_json::json!({
            "rows_affected": out.rows_affected,
            "time": out.time,
            "version": out.version,
            "actor_id": out.actor_id,
        });
        println!("{line}");
    } else {
        let version = out
            .version
            .map_or("none (nothing replicated changed)".to_owned(), |v| {
                v.to_string()
            });
        println!(
            "ok: {} statement(s), rows affected {:?}, version {version}, {:.3} ms",
            out.rows_affected.len(),
            out.rows_affected,
            out.time * 1000.0
        );
    }
    Ok(())
}

/// Runs a read-only query; prints an aligned table, or JSON lines.
pub fn query(args: QueryArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    runtime.block_on(async {
        let mut rows = client.query(&Statement::from(args.sql.as_str())).await?;
        let mut out = std::io::stdout().lock();
        // Cells as the server wrote them: a REAL ±inf is `1e999` /
        // `-1e999`, which a JSON value cannot hold.
        if args.json {
            while let Some(row) = rows.next_cells().await? {
                writeln!(out, "{}", json_object(&rows.columns, &row))?;
            }
            return Ok(());
        }
        let mut table = Vec::new();
        while let Some(row) = rows.next_cells().await? {
            table.push(row.iter().map(raw_cell).collect::<Vec<_>>());
        }
        print_table(&mut out, &rows.columns, &table)?;
        Ok(())
    })
}

/// Subscribes (or re-attaches) and prints events until Ctrl-C.
pub fn sub(args: SubArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    runtime.block_on(async {
        let sub = match (&args.id, &args.sql) {
            (Some(id), _) => client.attach(id, args.from).await?,
            (None, Some(sql)) => {
                client
                    .subscribe_from(&Statement::from(sql.as_str()), args.from)
                    .await?
            }
            (None, None) => anyhow::bail!("give SQL or --id"),
        };
        if !args.json {
            eprintln!("subscription {} (hash {})", sub.id(), sub.hash());
        }
        tokio::select! {
            printed = print_events(sub, args.json) => printed,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

async fn print_events(mut sub: Subscription, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    while let Some((event, line)) = sub.next_line().await? {
        if json {
            writeln!(out, "{line}")?;
            out.flush()?;
            continue;
        }
        match event {
            SubEvent::Columns(c) => columns = c,
            SubEvent::Row { row_id, cells } => {
                let mut row = vec![row_id.to_string()];
                row.extend(cells.iter().map(cell));
                rows.push(row);
            }
            SubEvent::EndOfQuery { change_id } => {
                let mut header = vec!["row_id".to_owned()];
                header.append(&mut columns);
                print_table(&mut out, &header, &std::mem::take(&mut rows))?;
                writeln!(out, "-- at change #{change_id}; changes follow")?;
            }
            event @ SubEvent::Change { .. } => writeln!(out, "{}", change_text(&event))?,
        }
        out.flush()?;
    }
    Ok(())
}

/// `insert 3 ["m1","web"] #12`.
fn change_text(event: &SubEvent) -> String {
    match event {
        SubEvent::Change {
            kind,
            row_id,
            cells,
            change_id,
        } => format!(
            "{} {row_id} {} #{change_id}",
            kind.as_str(),
            Json::Array(cells.clone())
        ),
        other => format!("{other:?}"),
    }
}

/// Asks the node to reload its schema files; a refusal is an error.
/// Prints what a destructive reload dropped, a line each.
pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    let dropped = runtime
        .block_on(client.reload_with(args.allow_destructive))
        .context("schema reload refused")?;
    println!("schema reloaded");
    for d in dropped {
        match d.column {
            Some(column) => println!("dropped column {}.{column} ({}.db)", d.table, d.db),
            None => println!("dropped table {} ({}.db)", d.table, d.db),
        }
    }
    Ok(())
}

/// Prints the node's view of its clusters' members.
pub fn members(args: MembersArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    let members = runtime.block_on(client.members())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for m in &members {
            writeln!(out, "{m}")?;
        }
        return Ok(());
    }
    let columns = [
        "actor_id",
        "addr",
        "region",
        "cluster",
        "global_member",
        "state",
        "rtt_ms",
    ];
    let table: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            columns
                .iter()
                .map(|c| cell(m.get(*c).unwrap_or(&Json::Null)))
                .collect()
        })
        .collect();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    print_table(&mut out, &columns, &table)?;
    Ok(())
}

/// How often `patina health --wait` asks.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Checks the node's health against the thresholds given; with `--wait`,
/// until it passes. Exits non-zero (an error) when it does not.
pub fn health(args: HealthArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    let mut query = Vec::new();
    if let Some(n) = args.gaps {
        query.push(format!("gaps={n}"));
    }
    if let Some(s) = args.p99_lag {
        anyhow::ensure!(
            s.is_finite() && s >= 0.0,
            "--p99-lag {s} is not a number of seconds ≥ 0"
        );
        query.push(format!("p99_lag={s}"));
    }
    if let Some(n) = args.max_queue {
        query.push(format!("max_queue={n}"));
    }
    if args.require_rollups {
        query.push("require_rollups=1".to_owned());
    }
    if args.require_leader {
        query.push("require_leader=1".to_owned());
    }
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout >= 0.0,
        "--timeout {} is not a number of seconds ≥ 0",
        args.timeout
    );
    let query = query.join("&");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(args.timeout);
    runtime.block_on(async {
        loop {
            let why = match client.health_check(&query).await {
                Ok((200, report)) => {
                    print_health(&report, args.json);
                    return Ok(());
                }
                Ok((status, report)) => {
                    let reason = report
                        .get("reason")
                        .and_then(Json::as_str)
                        .unwrap_or("no reason given")
                        .to_owned();
                    // A stale node stays unhealthy until an operator
                    // re-seeds it: waiting for it would only hide that.
                    let stale = report.get("stale").and_then(Json::as_bool) == Some(true);
                    if !args.wait || stale {
                        print_health(&report, args.json);
                    }
                    if stale {
                        anyhow::bail!(
                            "not healthy (HTTP {status}), and waiting cannot help: {reason}"
                        );
                    }
                    format!("not healthy (HTTP {status}): {reason}")
                }
                // A node restarting is not healthy yet.
                Err(e) if args.wait && e.is_transient() => format!("{e}"),
                Err(e) => return Err(anyhow::Error::new(e)),
            };
            if !args.wait || std::time::Instant::now() >= deadline {
                let waited = if args.wait {
                    format!(" after waiting {}s", args.timeout)
                } else {
                    String::new()
                };
                anyhow::bail!("{why}{waited}");
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    })
}

fn print_health(report: &Json, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    let field = |k: &str| cell(report.get(k).unwrap_or(&Json::Null));
    let flag = |k: &str| report.get(k).and_then(Json::as_bool) == Some(true);
    let status = if flag("stale") {
        "not healthy (stale: re-seed it, see the reason)"
    } else if flag("returning") {
        "not healthy (returning: checking with its peers)"
    } else if report.get("reason").is_some_and(|r| !r.is_null()) {
        "not healthy"
    } else {
        "healthy"
    };
    println!(
        "{status}: region {} leader {} gaps {} p99_lag {}s queue {} global_lag {}",
        field("region"),
        field("leader"),
        field("gaps"),
        field("p99_lag"),
        field("queue_size"),
        field("global_lag"),
    );
}

/// Prints the regions the node knows.
pub fn regions(args: MembersArgs) -> anyhow::Result<()> {
    let (client, runtime) = connect(&args.api)?;
    let regions = runtime.block_on(client.regions())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &regions {
            writeln!(out, "{r}")?;
        }
        return Ok(());
    }
    let columns: Vec<String> = [
        "region",
        "leader",
        "global_members",
        "last_rollup",
        "global_p99_lag",
        "rollups",
        "updated",
        "rollup_error",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let table: Vec<Vec<String>> = regions
        .iter()
        .map(|r| {
            let members = r
                .get("global_members")
                .and_then(Json::as_array)
                .map_or(0, Vec::len);
            let rollups = r
                .get("rollups")
                .and_then(Json::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                cell(r.get("region").unwrap_or(&Json::Null)),
                cell(r.get("leader").unwrap_or(&Json::Null)),
                members.to_string(),
                ago(r.get("last_rollup")),
                r.get("global_p99_lag")
                    .and_then(Json::as_f64)
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.0}ms", s * 1000.0)),
                rollups,
                ago(r.get("updated")),
                r.get("rollup_error")
                    .and_then(Json::as_str)
                    .map_or_else(|| "-".to_owned(), |e| clip_cell(e, 60)),
            ]
        })
        .collect();
    print_table(&mut out, &columns, &table)?;
    Ok(())
}

/// The first `max` characters of `text` on one line, `…` if cut.
fn clip_cell(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out: String = one_line.chars().take(max).collect();
    if out.len() < one_line.len() {
        out.push('…');
    }
    out
}

/// A Unix time in seconds as its age (`12s ago`), `-` when absent.
fn ago(unix_secs: Option<&Json>) -> String {
    let Some(at) = unix_secs.and_then(Json::as_f64) else {
        return "-".to_owned();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let age = (now - at).max(0.0);
    if age < 120.0 {
        format!("{age:.1}s ago")
    } else if age < 7200.0 {
        format!("{:.0}m ago", age / 60.0)
    } else {
        format!("{:.1}h ago", age / 3600.0)
    }
}

/// `{"column": cell, …}`, written by hand so each cell keeps its text.
fn json_object(columns: &[String], cells: &[Cell]) -> String {
    let fields: Vec<String> = columns
        .iter()
        .zip(cells)
        .map(|(c, v)| format!("{}:{}", Json::from(c.as_str()), v.raw()))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A cell for the table: strings bare, NULL as `NULL`, the rest as JSON
/// text (±inf as `1e999` / `-1e999`).
fn raw_cell(v: &Cell) -> String {
    match v.to_json() {
        Some(json) => cell(&json),
        None => v.raw().to_owned(),
    }
}

fn cell(v: &Json) -> String {
    match v {
        Json::Null => "NULL".to_owned(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(
    out: &mut impl std::io::Write,
    columns: &[String],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .chain([columns[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        padded.join(" | ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(columns))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(
        out,
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_print_on_one_line() {
        let event = SubEvent::Change {
            kind: patina_client::ChangeKind::Insert,
            row_id: 3,
            cells: vec!["m1".into(), "web".into()],
            change_id: 12,
        };
        assert_eq!(change_text(&event), r#"insert 3 ["m1","web"] #12"#);
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        let columns = vec!["id".to_owned(), "app".to_owned()];
        let rows = vec![
            vec!["m1".to_owned(), "web".to_owned()],
            vec!["machine-2".to_owned(), "NULL".to_owned()],
        ];
        print_table(&mut out, &columns, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id        | app\n----------+-----\nm1        | web\nmachine-2 | NULL\n(2 rows)\n"
        );
    }
}
