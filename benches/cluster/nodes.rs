//! The region under test: starting the agents and waiting until they see
//! each other, summing their counters, and pinning processes to cores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::{alive_members, http_client, metric, CLUSTER};
use crate::support::{setup, setup_peer, Agent};

/// Bound on forming a cluster and on any catch-up after a phase.
pub(crate) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The nodes of one region and the temp dirs holding their data.
pub(crate) struct Cluster {
    pub(crate) agents: Vec<Agent>,
    pub(crate) http: reqwest::Client,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Node 0, then the others (started in parallel) bootstrapping to it;
    /// returns once every node sees `n` alive members.
    pub(crate) async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_, _| {}).await
    }

    /// As [`start`](Self::start); `prepare(dir, config)` runs on each node's
    /// directory after its schema and config are written and before its
    /// agent starts (another schema, more config keys).
    pub(crate) async fn start_with(n: usize, prepare: impl Fn(&Path, &Path) + Sync) -> Cluster {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let config = setup(dirs[0].path());
        prepare(dirs[0].path(), &config);
        let first = Agent::start(&config);
        assert!(!first.gossip.is_empty(), "node 0 logs its gossip address");
        let boot = first.gossip.clone();
        let prepare = &prepare;
        let rest: Vec<Agent> = std::thread::scope(|s| {
            let handles: Vec<_> = dirs[1..]
                .iter()
                .map(|d| {
                    let boot = boot.clone();
                    s.spawn(move || {
                        let config = setup_peer(d.path(), &[&boot]);
                        prepare(d.path(), &config);
                        Agent::start(&config)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut agents = vec![first];
        agents.extend(rest);
        let cluster = Cluster {
            agents,
            http: http_client(),
            _dirs: dirs,
        };
        let started = Instant::now();
        loop {
            let mut complete = true;
            for a in &cluster.agents {
                complete &= alive_members(&cluster.http, &a.addr).await == n;
            }
            if complete {
                break;
            }
            assert!(
                started.elapsed() < CONVERGE_TIMEOUT,
                "{n} nodes did not all see each other alive within {CONVERGE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{n} nodes formed a region in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    pub(crate) fn len(&self) -> usize {
        self.agents.len()
    }

    /// Node `i`'s data dir (where its `regional.db` is; benches/soak.rs).
    #[allow(dead_code)]
    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self._dirs[i].path().join("data")
    }

    /// Panics if an agent exited (crashed) during the runs.
    pub(crate) fn assert_running(&mut self) {
        for (i, a) in self.agents.iter_mut().enumerate() {
            if let Some(status) = a.child.try_wait().unwrap() {
                panic!("node {i} exited during the bench: {status}");
            }
        }
    }
}

/// Sums a counter of the region's cluster over every node's `/metrics`.
pub(crate) async fn sum_metric(cluster: &Cluster, name: &str) -> u64 {
    let key = format!("{name}{{cluster=\"{CLUSTER}\"}}");
    let mut sum = 0;
    for a in &cluster.agents {
        sum += metric(&cluster.http, &a.addr, &key).await;
    }
    sum
}

/// Cores online (not the ones this process may use: it pins itself).
pub(crate) fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

pub(crate) fn pinning_possible() -> bool {
    cores() >= 2
        && std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Restricts every thread of `pid` (and threads it starts later) to `cpus`.
pub(crate) fn pin(pid: u32, cpus: &str) {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .expect("run taskset");
    assert!(
        out.status.success(),
        "taskset -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
