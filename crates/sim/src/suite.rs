//! The report: a fixed set of scenarios run at several fleet sizes, drawn
//! as SVG figures and summarized in `report.md` (`patina-sim --report DIR`).
//!
//! Per size (≈ 125 nodes a region, at least 4 regions, 3 global members
//! each), one write per region per second unless said:
//! - `steady`: 1 % loss, no fault;
//! - `lossy`: the same at 5 % loss;
//! - `idle`: 1 % loss, no writes (idle bandwidth, false downs);
//! - `crash`: 1 % loss, a few plain nodes crashed two thirds in, for good
//!   (detection times, and what an undetected dead peer costs);
//! - `region_partition`: region 0 cut off from the others for the middle
//!   third of the run;
//! - `global_partition`: the global cluster split (even / odd regions)
//!   for the middle third.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::charts::{cdf_points, line_chart, ChartError, Series};
use crate::config::{ScriptedFault, ScriptedKind, SimConfig};
use crate::report::{Report, Samples, TrafficRates};
use crate::world::simulate;

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Chart(#[from] ChartError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub const SCENARIOS: [&str; 6] = [
    "steady",
    "lossy",
    "idle",
    "crash",
    "region_partition",
    "global_partition",
];

/// Regions for a fleet of `nodes`: about 125 nodes each, 4 to 40 (with
/// fewer, cutting one region off would be the global split).
pub fn regions_for(nodes: usize) -> usize {
    (nodes / 125).clamp(4, 40)
}

pub fn scenario(name: &str, nodes: usize, seconds: u64, seed: u64) -> SimConfig {
    let regions = regions_for(nodes);
    let third = seconds as f64 / 3.0;
    let mut cfg = SimConfig {
        nodes,
        regions,
        global_per_region: 3,
        seconds,
        loss: 0.01,
        seed,
        keep_samples: true,
        ..SimConfig::default()
    };
    let crash = ScriptedFault {
        at_s: 2.0 * third,
        kind: ScriptedKind::Crash {
            count: regions.max(4),
        },
    };
    match name {
        "steady" => {}
        "lossy" => cfg.loss = 0.05,
        "idle" => cfg.writes_per_region_s = 0.0,
        "crash" => cfg.script = vec![crash],
        "region_partition" => {
            cfg.script = vec![ScriptedFault {
                at_s: third,
                kind: ScriptedKind::PartitionRegion {
                    region: 0,
                    for_s: third,
                },
            }]
        }
        _ => {
            cfg.script = vec![ScriptedFault {
                at_s: third,
                kind: ScriptedKind::PartitionGlobal { for_s: third },
            }]
        }
    }
    cfg
}

pub struct Run {
    pub scenario: &'static str,
    pub nodes: usize,
    pub report: Report,
    pub samples: Samples,
}

/// Runs every scenario at every size (calling `progress` after each run)
/// and writes the figures and `report.md` into `dir`.
pub fn run_suite(
    dir: &Path,
    sizes: &[usize],
    seconds: u64,
    seed: u64,
    mut progress: impl FnMut(&Run),
) -> Result<Vec<Run>, SuiteError> {
    std::fs::create_dir_all(dir).map_err(|source| SuiteError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut runs = Vec::new();
    for &nodes in sizes {
        for name in SCENARIOS {
            let (report, samples) = simulate(scenario(name, nodes, seconds, seed))?;
            let run = Run {
                scenario: name,
                nodes,
                report,
                samples,
            };
            progress(&run);
            runs.push(run);
        }
    }
    draw(dir, &runs)?;
    let md = summary(&runs, seconds, seed, sizes);
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|source| SuiteError::Io { path, source })?;
    Ok(runs)
}

fn find<'r>(runs: &'r [Run], scenario: &str, nodes: usize) -> Option<&'r Run> {
    runs.iter()
        .find(|r| r.scenario == scenario && r.nodes == nodes)
}

fn sizes_of(runs: &[Run]) -> Vec<usize> {
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.nodes).collect();
    sizes.dedup();
    sizes
}

fn draw(dir: &Path, runs: &[Run]) -> Result<(), SuiteError> {
    let sizes = sizes_of(runs);
    let cdf = |pick: fn(&Samples) -> &Vec<u64>, scenarios: &[(&str, &str)]| -> Vec<Series> {
        let mut out = Vec::new();
        for &n in &sizes {
            for &(s, label) in scenarios {
                if let Some(r) = find(runs, s, n) {
                    out.push(Series {
                        label: format!("{n} nodes, {label}"),
                        points: cdf_points(pick(&r.samples)),
                    });
                }
            }
        }
        out
    };
    let both = [("steady", "1% loss"), ("lossy", "5% loss")];
    line_chart(
        &dir.join("delivery_cdf.svg"),
        "Regional write → every node of its region",
        "ms (log)",
        "fraction of writes",
        &cdf(|s| &s.regional_write, &both),
        true,
    )?;
    line_chart(
        &dir.join("delivery_node_cdf.svg"),
        "Regional write → one node of its region",
        "ms (log)",
        "fraction of (write, node)",
        &cdf(|s| &s.regional_node, &both),
        true,
    )?;
    line_chart(
        &dir.join("rollup_cdf.svg"),
        "Rollup change → app_regions of every node of every region",
        "ms (log)",
        "fraction of changes",
        &cdf(|s| &s.rollup, &both),
        true,
    )?;
    line_chart(
        &dir.join("crash_detect_cdf.svg"),
        "Crashed node → declared down by a peer of its region",
        "ms (log)",
        "fraction of (crash, peer)",
        &cdf(|s| &s.crash_detect, &[("crash", "1% loss")]),
        true,
    )?;
    line_chart(
        &dir.join("delivery_crash_cdf.svg"),
        "Regional write → whole region, with dead peers not yet detected",
        "ms (log)",
        "fraction of writes",
        &cdf(
            |s| &s.regional_write,
            &[("steady", "no crash"), ("crash", "crashes at 2/3")],
        ),
        true,
    )?;
    for (file, title, global) in [
        (
            "bandwidth_plain.svg",
            "Bytes per plain node per second (steady, 1% loss)",
            false,
        ),
        (
            "bandwidth_global.svg",
            "Bytes per global member per second (steady, 1% loss)",
            true,
        ),
    ] {
        let mut series = Vec::new();
        let kinds: [(&str, RateOf); 5] = [
            ("membership", |t| t.membership),
            ("broadcast", |t| t.broadcast),
            ("sync", |t| t.sync),
            ("relay", |t| t.relay),
            ("total", |t| t.total),
        ];
        for (kind, get) in kinds {
            let points = sizes
                .iter()
                .filter_map(|&n| find(runs, "steady", n))
                .map(|r| {
                    let rates = if global {
                        &r.report.bytes_per_global_member_s
                    } else {
                        &r.report.bytes_per_plain_node_s
                    };
                    ((r.nodes as f64).log10(), get(rates))
                })
                .collect();
            series.push(Series {
                label: kind.to_string(),
                points,
            });
        }
        let idle = sizes
            .iter()
            .filter_map(|&n| find(runs, "idle", n))
            .map(|r| {
                let rates = if global {
                    &r.report.bytes_per_global_member_s
                } else {
                    &r.report.bytes_per_plain_node_s
                };
                ((r.nodes as f64).log10(), rates.total)
            })
            .collect();
        series.push(Series {
            label: "total, idle".to_string(),
            points: idle,
        });
        line_chart(
            &dir.join(file),
            title,
            "log10(nodes)",
            "bytes/s",
            &series,
            false,
        )?;
    }
    for (scenario, file, title) in [
        (
            "region_partition",
            "region_partition.svg",
            "Region 0 cut off for the middle third",
        ),
        (
            "global_partition",
            "global_partition.svg",
            "Global cluster split for the middle third",
        ),
    ] {
        let mut series = Vec::new();
        for &n in &sizes {
            let Some(r) = find(runs, scenario, n) else {
                continue;
            };
            let frac = |v: &[(f64, usize)]| -> Vec<(f64, f64)> {
                v.iter().map(|&(t, c)| (t, c as f64 / n as f64)).collect()
            };
            series.push(Series {
                label: format!("{n} nodes: stale app_regions"),
                points: frac(&r.samples.stale_rollup_nodes),
            });
            series.push(Series {
                label: format!("{n} nodes: lacking a regional write"),
                points: frac(&r.samples.lagging_nodes),
            });
        }
        line_chart(
            &dir.join(file),
            title,
            "simulated s",
            "fraction of nodes",
            &series,
            false,
        )?;
    }
    Ok(())
}

/// Picks one kind of traffic out of a report's rates.
type RateOf = fn(&TrafficRates) -> f64;

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.0}"))
}

fn summary(runs: &[Run], seconds: u64, seed: u64, sizes: &[usize]) -> String {
    let mut md = String::new();
    let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(
        md,
        "# Simulator report\n\nGenerated by `cargo run --release -p patina-sim -- --report docs/sim --report-sizes {} --seconds {seconds} --seed {seed}`; \
         scenarios in `crates/sim/src/suite.rs`, figures beside this file. Times in ms, bandwidth in bytes per node per simulated second.\n",
        list.join(",")
    );
    let _ = writeln!(
        md,
        "| nodes | regions | scenario | write→region p50 / p99 | write→node p99 | rollup p50 / p99 | plain B/s | global B/s | false downs (per node-h) | crash detect p50 / p99 | converged after | violations | events | wall s | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let p = &r.report;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} | {} / {} | {:.0} | {:.0} | {} ({:.2}) | {} / {} | {} | {} | {} | {:.1} | {} |",
            p.nodes,
            p.regions,
            r.scenario,
            ms(p.regional_delivery_p50_ms),
            ms(p.regional_delivery_p99_ms),
            ms(p.regional_node_p99_ms),
            ms(p.rollup_p50_ms),
            ms(p.rollup_p99_ms),
            p.bytes_per_plain_node_s.total,
            p.bytes_per_global_member_s.total,
            p.false_down,
            p.false_down_per_node_hour,
            ms(p.crash_detect_p50_ms),
            ms(p.crash_detect_p99_ms),
            p.converged_after_ms.map_or("never".to_string(), |v| format!("{v:.0} ms")),
            p.violations.len(),
            p.events,
            p.wall_s,
            p.peak_rss_mib.map_or("–".to_string(), |v| format!("{v:.0}")),
        );
    }
    let _ = writeln!(
        md,
        "\n## Bandwidth by kind (steady, bytes per node per second)\n"
    );
    let _ = writeln!(md, "| nodes | who | membership | broadcast | sync | relay | total | idle total |\n|---|---|---|---|---|---|---|---|");
    for &n in sizes {
        let (Some(s), idle) = (find(runs, "steady", n), find(runs, "idle", n)) else {
            continue;
        };
        for (who, rates, idle_total) in [
            (
                "plain",
                &s.report.bytes_per_plain_node_s,
                idle.map(|i| i.report.bytes_per_plain_node_s.total),
            ),
            (
                "global member",
                &s.report.bytes_per_global_member_s,
                idle.map(|i| i.report.bytes_per_global_member_s.total),
            ),
        ] {
            let _ = writeln!(
                md,
                "| {n} | {who} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                rates.membership,
                rates.broadcast,
                rates.sync,
                rates.relay,
                rates.total,
                idle_total.map_or("–".to_string(), |v| format!("{v:.0}"))
            );
        }
    }
    let _ = writeln!(md, "\n## Partitions\n");
    for scenario in ["region_partition", "global_partition"] {
        for &n in sizes {
            let Some(r) = find(runs, scenario, n) else {
                continue;
            };
            let peak = |v: &[(f64, usize)]| v.iter().map(|p| p.1).max().unwrap_or(0);
            let third = seconds as f64 / 3.0;
            let healed_at = 2.0 * third;
            let clear_after = |v: &[(f64, usize)]| {
                v.iter()
                    .filter(|p| p.0 >= healed_at)
                    .find(|p| p.1 == 0)
                    .map(|p| format!("{:.0} s", p.0 - healed_at))
                    .unwrap_or_else(|| "not within the run".to_string())
            };
            let _ = writeln!(
                md,
                "- {scenario}, {n} nodes: at most {} nodes with stale `app_regions` and {} lacking a regional write during the cut; stale rows gone {} after the heal; {} violations.",
                peak(&r.samples.stale_rollup_nodes),
                peak(&r.samples.lagging_nodes),
                clear_after(&r.samples.stale_rollup_nodes),
                r.report.violations.len()
            );
        }
    }
    md
}
