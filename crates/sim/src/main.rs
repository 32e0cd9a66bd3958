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
    /// Broadcast fanout (the agent's is 3), to try another.
    #[arg(long, default_value_t = 3)]
    fanout: usize,
    /// Run the report's scenarios at `--report-sizes` and write figures
    /// and report.md into this directory (uses --seconds and --seed).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 5000])]
    report_sizes: Vec<usize>,
    /// The cluster size foca's timings are tuned for (the agent's is 16).
    #[arg(long, default_value_t = patina_membership::EXPECTED_CLUSTER_SIZE)]
    swim_cluster_size: u32,
    /// Print one JSON object (one per line with --seeds).
    #[arg(long)]
    json: bool,
}

impl Args {
    fn config(&self, seed: u64) -> SimConfig {
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
            swim_cluster_size: self.swim_cluster_size,
            ..SimConfig::default()
        }
    }

    /// The command that replays `seed` alone.
    fn replay(&self, seed: u64) -> String {
        format!(
            "cargo run --release -p patina-sim -- --nodes {} --regions {} --global-per-region {} --seconds {} --loss {} --seed {}{} --writes-per-region-s {} --quiesce-max {} --fanout {} --swim-cluster-size {} --json",
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
