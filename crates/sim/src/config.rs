//! What to simulate.

/// One run's parameters. Same parameters, same run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes at the start, spread evenly over the regions.
    pub nodes: usize,
    pub regions: usize,
    /// Global members per region (the first `k` nodes of each region).
    pub global_per_region: usize,
    /// Simulated seconds of workload (and faults); quiescence follows.
    pub seconds: u64,
    /// Probability that a datagram, or a packet of a stream frame, is lost.
    pub loss: f64,
    pub seed: u64,
    /// Crashes, restarts, partitions, asymmetric links, leaves and joins
    /// during the workload.
    pub faults: bool,
    /// Regional write transactions per region per second (Poisson).
    pub writes_per_region_s: f64,
    /// Machine rows per region (ids), and apps they belong to.
    pub machines_per_region: u32,
    pub apps: u16,
    /// How long quiescence may take before the run is declared
    /// non-convergent, simulated seconds.
    pub quiesce_max_s: u64,
    /// Keep every latency sample (for plots).
    pub keep_samples: bool,
    /// Faults at fixed times (the report's scenarios), besides `faults`.
    pub script: Vec<ScriptedFault>,
    /// Broadcast base fanout (the agent's is 3: direct pushes and the
    /// tree's relays; the gossip fanout is never below it): to see what
    /// another would do.
    pub fanout: usize,
    /// Beyond the two-hop tree, gossip pushes to ⌈ln N⌉ + this many peers
    /// (the agent's `BroadcastConfig::gossip_margin`, 5).
    pub gossip_margin: usize,
    /// 0: foca tuned for each cluster's actual size, as the agent does
    /// (`SwimTuning::adaptive`). Otherwise foca's own profile pinned at
    /// this size (`SwimTuning::fixed`; 16 is what the agent ran before).
    pub swim_cluster_size: u32,
}

/// A fault at a fixed simulated time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedFault {
    pub at_s: f64,
    pub kind: ScriptedKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedKind {
    /// Crash `count` plain nodes (spread over the regions) for good: until
    /// quiescence restarts them.
    Crash { count: usize },
    /// Cut region `region` off from every other region for `for_s`.
    PartitionRegion { region: usize, for_s: f64 },
    /// Split the global cluster in two halves (even and odd regions) for
    /// `for_s`.
    PartitionGlobal { for_s: f64 },
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            regions: 4,
            global_per_region: 3,
            seconds: 30,
            loss: 0.01,
            seed: 1,
            faults: false,
            writes_per_region_s: 1.0,
            machines_per_region: 200,
            apps: 24,
            quiesce_max_s: 60,
            keep_samples: false,
            script: Vec::new(),
            fanout: 3,
            gossip_margin: patina_proto::BroadcastConfig::default().gossip_margin,
            swim_cluster_size: 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--regions must be at least 1")]
    NoRegion,
    #[error("--regions is at most 65,535 (region numbers are 16 bits)")]
    TooManyRegions,
    #[error("{nodes} nodes cannot fill {regions} regions with {per} global members each: need at least {need}")]
    TooFewNodes {
        nodes: usize,
        regions: usize,
        per: usize,
        need: usize,
    },
    #[error("--global-per-region must be at least 1 (a region needs a leader for its rollups)")]
    NoGlobalMember,
    #[error("--loss must be in [0, 0.5], got {0}")]
    Loss(f64),
    #[error("--seconds must be at least 1")]
    NoTime,
    #[error("the workload needs at least one app and one machine per region")]
    EmptyWorkload,
    #[error("--fanout must be at least 1")]
    NoFanout,
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.regions == 0 {
            return Err(ConfigError::NoRegion);
        }
        if self.regions > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyRegions);
        }
        if self.global_per_region == 0 {
            return Err(ConfigError::NoGlobalMember);
        }
        let need = self.regions * self.global_per_region;
        if self.nodes < need {
            return Err(ConfigError::TooFewNodes {
                nodes: self.nodes,
                regions: self.regions,
                per: self.global_per_region,
                need,
            });
        }
        if !(0.0..=0.5).contains(&self.loss) || self.loss.is_nan() {
            return Err(ConfigError::Loss(self.loss));
        }
        if self.seconds == 0 {
            return Err(ConfigError::NoTime);
        }
        if self.apps == 0 || self.machines_per_region == 0 {
            return Err(ConfigError::EmptyWorkload);
        }
        if self.fanout == 0 {
            return Err(ConfigError::NoFanout);
        }
        Ok(())
    }

    /// The region of initial node `i`: round robin, so regions differ in
    /// size by at most one.
    pub fn region_of(&self, i: usize) -> usize {
        i % self.regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_run() {
        let ok = SimConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let few = SimConfig {
            nodes: 5,
            regions: 3,
            global_per_region: 2,
            ..ok.clone()
        };
        assert!(matches!(
            few.validate(),
            Err(ConfigError::TooFewNodes { need: 6, .. })
        ));
        let lossy = SimConfig { loss: 0.9, ..ok };
        assert_eq!(lossy.validate(), Err(ConfigError::Loss(0.9)));
    }
}
