//! The CI smoke of the simulator: 200 nodes in 4 regions, faults and
//! churn on, three seeds; every invariant must hold and the fleet must
//! converge. 20 simulated seconds per seed keep it to seconds in debug
//! builds (deeper runs: `--seeds 100`, docs/sim.md).

use patina_sim::{simulate, SimConfig};

#[test]
fn two_hundred_nodes_three_seeds_hold_every_invariant() {
    for seed in 1..=3 {
        let cfg = SimConfig {
            nodes: 200,
            regions: 4,
            global_per_region: 3,
            seconds: 20,
            loss: 0.01,
            seed,
            faults: true,
            ..SimConfig::default()
        };
        let (report, _) = simulate(cfg).expect("a valid configuration");
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}\nreplay: cargo run --release -p patina-sim -- --nodes 200 --regions 4 --global-per-region 3 --seconds 20 --loss 0.01 --seed {seed} --faults --json",
            report.violations
        );
        assert!(
            report.converged_after_ms.is_some(),
            "seed {seed} never converged"
        );
        assert!(report.regional_writes > 0 && report.rollup_versions > 0);
    }
}
