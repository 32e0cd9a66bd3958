//! `patina-sim`: runs the fleet simulator and prints what it measured.

use anyhow::{bail, Context};
use clap::Parser;
use patina_sim::{simulate, Report, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "patina-sim",
    about = "Patina's fleet simulator: the real protocol over a simulated network, from a seed"
)]
struct Args {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    regions: usize,
    #[arg(long, default_value_t = 3)]
    global_per_region: usize,
    /// Simulated seconds of workload (quiescence follows).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Loss probability of a datagram, or of a stream frame's packet.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run seeds `seed`, `seed + 1`, … `seed + N - 1` and summarize.
    #[arg(long)]
    seeds: Option<u64>,
    /// Crashes, restarts, partitions, asymmetric links, leaves and joins.
    #[arg(long)]
    faults: bool,
    /// Regional write transactions per region per second.
    #[arg(long, default_value_t = 1.0)]
    writes_per_region_s: f64,
    /// Longest quiescence before declaring the run non-convergent, s.
    #[arg(long, default_value_t = 60)]
    quiesce_max: u64,
    /// Broadcast base fanout (the agent's is 3: direct pushes and the
    /// two-hop tree's relays), to try another.
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Beyond the two-hop tree, gossip pushes to ⌈ln N⌉ + this many peers
    /// (the agent's is 5).
    #[arg(long, default_value_t = patina_proto::BroadcastConfig::default().gossip_margin)]
    gossip_margin: usize,
    /// Run the report's scenarios at `--report-sizes` and write figures
    /// and report.md into this directory (uses --seconds and --seed).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 5000])]
    report_sizes: Vec<usize>,
    /// 0: foca tuned for each cluster's actual size, as the agent does.
    /// Otherwise foca's own profile pinned at this size (16 is what the
    /// agent ran before it adapted).
    #[arg(long, default_value_t = 0)]
    swim_cluster_size: u32,
    /// Run one of the report's scenarios (steady, lossy, idle, crash,
    /// region_partition, global_partition) at `--nodes`, with --seconds
    /// and --seed, as `--report` would, and print its result.
    #[arg(long)]
    scenario: Option<String>,
    /// Print one JSON object (one per line with --seeds).
    #[arg(long)]
    json: bool,
}

impl Args {
    fn config(&self, seed: u64) -> SimConfig {
        if let Some(name) = &self.scenario {
            return SimConfig {
                fanout: self.fanout,
                gossip_margin: self.gossip_margin,
                swim_cluster_size: self.swim_cluster_size,
                keep_samples: false,
                ..patina_sim::suite::scenario(name, self.nodes, self.seconds, seed)
            };
        }
        SimConfig {
            nodes: self.nodes,
            regions: self.regions,
            global_per_region: self.global_per_region,
            seconds: self.seconds,
            loss: self.loss,
            seed,
            faults: self.faults,
            writes_per_region_s: self.writes_per_region_s,
            quiesce_max_s: self.quiesce_max,
            fanout: self.fanout,
            gossip_margin: self.gossip_margin,
            swim_cluster_size: self.swim_cluster_size,
            ..SimConfig::default()
        }
    }

    /// The command that replays `seed` alone.
    fn replay(&self, seed: u64) -> String {
        if let Some(name) = &self.scenario {
            return format!(
                "cargo run --release -p patina-sim -- --scenario {name} --nodes {} --seconds {} --seed {seed} --fanout {} --gossip-margin {} --swim-cluster-size {} --json",
                self.nodes, self.seconds, self.fanout, self.gossip_margin, self.swim_cluster_size,
            );
        }
        format!(
            "cargo run --release -p patina-sim -- --nodes {} --regions {} --global-per-region {} --seconds {} --loss {} --seed {}{} --writes-per-region-s {} --quiesce-max {} --fanout {} --gossip-margin {} --swim-cluster-size {} --json",
            self.nodes,
            self.regions,
            self.global_per_region,
            self.seconds,
            self.loss,
            seed,
            if self.faults { " --faults" } else { "" },
            self.writes_per_region_s,
            self.quiesce_max,
            self.fanout,
            self.gossip_margin,
            self.swim_cluster_size,
        )
    }
}

fn print_text(r: &Report) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    println!(
        "seed {}: {} nodes, {} regions, {} events in {:.1} s ({:.0} events/s), {:.1} simulated s",
        r.seed, r.nodes, r.regions, r.events, r.wall_s, r.events_per_s, r.simulated_s
    );
    println!(
        "  regional write → whole region: p50 {}, p99 {}; rollup → every node: p99 {}",
        ms(r.regional_delivery_p50_ms),
        ms(r.regional_delivery_p99_ms),
        ms(r.rollup_p99_ms)
    );
    println!(
        "  bytes/s per plain node {:.0}, per global member {:.0}; false downs {}; crash detect p99 {}",
        r.bytes_per_plain_node_s.total,
        r.bytes_per_global_member_s.total,
        r.false_down,
        ms(r.crash_detect_p99_ms)
    );
    for v in &r.violations {
        println!("  VIOLATION {v}");
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.report {
        patina_sim::suite::run_suite(dir, &args.report_sizes, args.seconds, args.seed, |run| {
            eprintln!(
                "{} at {} nodes: {} events in {:.1} s, {} violations",
                run.scenario,
                run.nodes,
                run.report.events,
                run.report.wall_s,
                run.report.violations.len()
            );
        })
        .context("the report")?;
        return Ok(());
    }
    if let Some(name) = &args.scenario {
        if !patina_sim::suite::SCENARIOS.contains(&name.as_str()) {
            bail!(
                "--scenario {name}: not one of {}",
                patina_sim::suite::SCENARIOS.join(", ")
            );
        }
    }
    let count = args.seeds.unwrap_or(1);
    let mut failed = Vec::new();
    for seed in args.seed..args.seed + count {
        let (report, _) = simulate(args.config(seed)).context("invalid simulation")?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_text(&report);
        }
        if !report.violations.is_empty() {
            eprintln!(
                "seed {seed} violated an invariant; replay with:\n  {}",
                args.replay(seed)
            );
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {count} seeds violated invariants: {failed:?}",
            failed.len()
        );
    }
    Ok(())
}
