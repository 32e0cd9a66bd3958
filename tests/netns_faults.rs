//! Real-kernel faults: three real agents, each in its own Linux network
//! namespace, gossiping over a bridge (`tests/support/netlab.rs` draws the
//! layout). Clients reach every node through a management link that
//! partitions do not cut, and insert unique ids on every node — on both
//! sides of a partition — while the data network is cut one way or both
//! ways and nodes are SIGKILLed and restarted. After each heal the test
//! waits until every node holds every acknowledged id (a Jepsen-style set:
//! lost 0, and nothing that was never attempted), and prints how long that
//! took after the heal.
//!
//! Root only: where network namespaces cannot be made (not root, no
//! iproute2, a sandbox that forbids them) each test prints `SKIPPED` and
//! why, and passes; `PATINA_REQUIRE_NETNS=1` turns that into a failure.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patina_client::{Client, Statement};
use patina_testkit::{eventually, eventually_blocking};
use support::netlab::{lab_or_skip, NetLab};
use support::{setup_node, Agent};
use tempfile::TempDir;

const NODES: usize = 3;
const CLIENTS_PER_NODE: usize = 2;
/// Fixed ports: each node has its namespace to itself, and a restarted node
/// comes back where its peers and clients knew it.
const API_PORT: u16 = 8080;
const GOSSIP_PORT: u16 = 7878;
/// A client's pause between two inserts (load shaping: keeps six clients
/// from saturating two cores, not a synchronization).
const WRITE_PAUSE: Duration = Duration::from_millis(3);
/// A fault lasts until every node it concerns acknowledged this many
/// inserts since it began: writes on both sides of every partition.
const ACKED_PER_NODE: usize = 60;
/// An insert not answered within this is in doubt.
const INSERT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on membership, on a fault's writes and on convergence after heal.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// HTTP 200 with a version: must be on every node in the end.
    Acked,
    /// Failed or unanswered: may or may not be present.
    Unknown,
}

/// Three agents in a lab, the clients' runtime (its threads live in the
/// lab's client namespace) and every insert's outcome so far.
struct Cluster {
    // Drop order matters: agents are killed before the lab's namespaces go,
    // and the namespaces before the data dirs.
    agents: Vec<Option<Agent>>,
    lab: NetLab,
    dirs: Vec<TempDir>,
    rt: tokio::runtime::Runtime,
    outcomes: BTreeMap<String, Outcome>,
    phases: usize,
}

fn api_addr(i: usize) -> String {
    format!("{}:{API_PORT}", NetLab::mgmt_ip(i))
}

fn gossip_addr(i: usize) -> String {
    format!("{}:{GOSSIP_PORT}", NetLab::data_ip(i))
}

async fn alive_count(api: String) -> Option<usize> {
    let members = Client::new(&api).ok()?.members().await.ok()?;
    Some(
        members
            .iter()
            .filter(|m| m["cluster"] == "test" && m["state"] == "alive")
            .count(),
    )
}

/// Whether node `observer` holds node `subject` as down (or no longer
/// lists it).
async fn sees_down(observer: usize, subject: usize) -> Option<bool> {
    let members = Client::new(&api_addr(observer))
        .ok()?
        .members()
        .await
        .ok()?;
    let subject = gossip_addr(subject);
    Some(!members.iter().any(|m| {
        m["cluster"] == "test" && m["state"] != "down" && m["addr"].as_str() == Some(&subject)
    }))
}

async fn ids(api: &str) -> Option<BTreeSet<String>> {
    support::machine_ids(&Client::new(api).ok()?).await
}

/// Inserts `{phase}-n{node}-c{c}-{n}` on `node` until `stop`; counts
/// acknowledgements in `acked[node]`.
async fn client_loop(
    name: String,
    node: usize,
    acked: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
) -> Vec<(String, Outcome)> {
    let client = Client::new(&api_addr(node)).unwrap();
    let mut outcomes = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{name}-{n}");
        n += 1;
        let st = Statement::Positional(
            "INSERT INTO machines VALUES (?, 'set', ?)".into(),
            vec![id.clone().into(), (node as i64).into()],
        );
        let outcome = match tokio::time::timeout(INSERT_TIMEOUT, client.transact(&[st])).await {
            Ok(Ok(resp)) if resp.version.is_some() => Outcome::Acked,
            Ok(Ok(resp)) => panic!("{id}: HTTP 200 without a version: {resp:?}"),
            Ok(Err(e)) if !e.is_transient() => panic!("{id}: refused: {e}"),
            _ => Outcome::Unknown,
        };
        if outcome == Outcome::Acked {
            acked[node].fetch_add(1, Ordering::Relaxed);
        }
        outcomes.push((id, outcome));
        tokio::time::sleep(WRITE_PAUSE).await;
    }
    outcomes
}

/// Clients writing while a fault lasts.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Vec<AtomicUsize>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, Outcome)>>>,
}

impl Cluster {
    fn start(lab: NetLab) -> Cluster {
        let client_ns = lab.client_ns();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(move || NetLab::enter_client(&client_ns))
            .enable_all()
            .build()
            .unwrap();
        let mut cluster = Cluster {
            agents: Vec::new(),
            lab,
            dirs: (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect(),
            rt,
            outcomes: BTreeMap::new(),
            phases: 0,
        };
        for i in 0..NODES {
            let agent = cluster.start_agent(i);
            cluster.agents.push(Some(agent));
        }
        cluster.wait_members();
        cluster
    }

    /// Starts node `i` in its namespace on its data dir (also a restart).
    fn start_agent(&self, i: usize) -> Agent {
        let others: Vec<String> = (0..NODES).filter(|&j| j != i).map(gossip_addr).collect();
        let config = setup_node(self.dirs[i].path(), &api_addr(i), &gossip_addr(i), &others);
        Agent::start_in(&self.lab.node_ns(i), &config)
    }

    fn kill(&mut self, i: usize) {
        self.agents[i].take().expect("node is running").kill9();
    }

    fn restart(&mut self, i: usize) {
        assert!(self.agents[i].is_none(), "node {i} is running");
        self.agents[i] = Some(self.start_agent(i));
    }

    /// Runs `f` on the clients' runtime: its sockets are in the client
    /// namespace (a `block_on` future would run on this thread, which is
    /// not).
    fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.rt.block_on(self.rt.spawn(f)) {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Waits until every node sees all three members alive.
    fn wait_members(&self) {
        self.run(eventually(
            "every node to see all three members alive",
            TIMEOUT,
            || async {
                for i in 0..NODES {
                    if alive_count(api_addr(i)).await != Some(NODES) {
                        return false;
                    }
                }
                true
            },
        ));
    }

    /// Waits until each `(observer, subject)` pair holds the subject as
    /// down: the fault reached membership (SWIM suspected the node, then
    /// declared it down), so the heal must undo that too.
    fn wait_noticed(&self, fault: &str, pairs: &[(usize, usize)]) {
        let pairs = pairs.to_vec();
        let shown = pairs.clone();
        let started = Instant::now();
        self.run(eventually(
            "the fault to reach membership",
            TIMEOUT,
            move || {
                let pairs = pairs.clone();
                async move {
                    for (observer, subject) in pairs {
                        if sees_down(observer, subject).await != Some(true) {
                            return false;
                        }
                    }
                    true
                }
            },
        ));
        println!(
            "{fault}: held as down by {shown:?} (observer, subject) after {} ms",
            started.elapsed().as_millis()
        );
    }

    fn start_load(&mut self) -> Load {
        let phase = self.phases;
        self.phases += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicUsize>> =
            Arc::new((0..NODES).map(|_| AtomicUsize::new(0)).collect());
        let mut tasks = Vec::new();
        for node in 0..NODES {
            for c in 0..CLIENTS_PER_NODE {
                tasks.push(self.rt.spawn(client_loop(
                    format!("p{phase}-n{node}-c{c}"),
                    node,
                    acked.clone(),
                    stop.clone(),
                )));
            }
        }
        Load { stop, acked, tasks }
    }

    /// Waits until each of `nodes` acknowledged `ACKED_PER_NODE` more
    /// inserts of `load`.
    fn wait_writes(&self, load: &Load, nodes: &[usize]) {
        let from: Vec<usize> = load
            .acked
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        eventually_blocking(
            &format!("nodes {nodes:?} to acknowledge {ACKED_PER_NODE} inserts each"),
            TIMEOUT,
            || {
                nodes
                    .iter()
                    .all(|&i| load.acked[i].load(Ordering::Relaxed) >= from[i] + ACKED_PER_NODE)
            },
        );
    }

    fn stop_load(&mut self, load: Load) {
        load.stop.store(true, Ordering::Relaxed);
        for task in load.tasks {
            for (id, outcome) in self.run(async move { task.await.expect("a client panicked") }) {
                assert!(
                    self.outcomes.insert(id, outcome).is_none(),
                    "ids are unique"
                );
            }
        }
    }

    /// Waits until every node holds the same ids, every acknowledged one
    /// among them and none never attempted; returns the time since `healed`.
    fn converge(&self, what: &str, healed: Instant) -> Duration {
        let acked: Arc<BTreeSet<String>> = Arc::new(
            self.outcomes
                .iter()
                .filter(|(_, o)| **o == Outcome::Acked)
                .map(|(id, _)| id.clone())
                .collect(),
        );
        let last = Arc::new(Mutex::new(Vec::new()));
        let (acked2, last2) = (acked.clone(), last.clone());
        self.run(async move {
            eventually("every node to hold every acknowledged id", TIMEOUT, || {
                let (acked, last) = (acked2.clone(), last2.clone());
                async move {
                    let mut sets = Vec::new();
                    for i in 0..NODES {
                        match ids(&api_addr(i)).await {
                            Some(set) => sets.push(set),
                            None => return false,
                        }
                    }
                    let done = sets.iter().all(|s| acked.is_subset(s))
                        && sets.windows(2).all(|w| w[0] == w[1]);
                    *last.lock().unwrap() = sets;
                    done
                }
            })
            .await
        });
        let took = healed.elapsed();
        let sets = last.lock().unwrap();
        let present = &sets[0];
        let lost = acked.difference(present).count();
        let unexpected: Vec<&String> = present
            .iter()
            .filter(|id| !self.outcomes.contains_key(*id))
            .collect();
        let unknown = self
            .outcomes
            .values()
            .filter(|o| **o == Outcome::Unknown)
            .count();
        println!(
            "{what}: healed → every node holds all {} acknowledged ids in {} ms \
             (attempted {}, unknown {unknown}, present {}; lost {lost}, unexpected {})",
            acked.len(),
            took.as_millis(),
            self.outcomes.len(),
            present.len(),
            unexpected.len()
        );
        assert_eq!(lost, 0, "{what}: acknowledged ids lost");
        assert!(
            unexpected.is_empty(),
            "{what}: ids never attempted are present: {unexpected:?}"
        );
        took
    }
}

#[test]
fn one_way_partitions_heal_with_every_acknowledged_write_on_every_node() {
    let test = "one_way_partitions";
    let Some(lab) = lab_or_skip(test, NODES) else {
        return;
    };
    let mut cluster = Cluster::start(lab);

    // Node 0 hears everyone, nobody hears node 0: its acks, summaries and
    // broadcasts are lost, so the others suspect it and lack its writes.
    let load = cluster.start_load();
    cluster.lab.drop_from_to(0, 1);
    cluster.lab.drop_from_to(0, 2);
    cluster.wait_writes(&load, &[0, 1, 2]);
    cluster.wait_noticed("one way, node 0 → {1, 2} lost", &[(1, 0), (2, 0)]);
    cluster.stop_load(load);
    cluster.lab.pass_from_to(0, 1);
    cluster.lab.pass_from_to(0, 2);
    cluster.converge("one way, node 0 → {1, 2} lost", Instant::now());
    cluster.wait_members();

    // One link, one direction: 1 → 2 lost, 2 → 1 and everything else pass.
    let load = cluster.start_load();
    cluster.lab.drop_from_to(1, 2);
    cluster.wait_writes(&load, &[0, 1, 2]);
    cluster.stop_load(load);
    cluster.lab.pass_from_to(1, 2);
    cluster.converge("one way, node 1 → 2 lost", Instant::now());
    cluster.wait_members();
}

#[test]
fn two_way_partition_with_kills_heals_with_every_acknowledged_write_on_every_node() {
    let test = "two_way_partition_with_kills";
    let Some(lab) = lab_or_skip(test, NODES) else {
        return;
    };
    let mut cluster = Cluster::start(lab);

    // Node 2 alone on one side, 0 and 1 on the other, writes on both.
    let load = cluster.start_load();
    cluster.lab.isolate(2);
    cluster.wait_writes(&load, &[0, 1, 2]);
    cluster.wait_noticed(
        "both ways, node 2 | nodes 0 1",
        &[(0, 2), (1, 2), (2, 0), (2, 1)],
    );
    // SIGKILL a node on each side: node 2's acknowledged writes are on its
    // disk only; both restart while the partition lasts.
    cluster.kill(2);
    cluster.kill(0);
    cluster.restart(2);
    cluster.restart(0);
    cluster.wait_writes(&load, &[0, 1, 2]);
    cluster.stop_load(load);
    cluster.lab.reconnect(2);
    cluster.converge(
        "both ways, node 2 | nodes 0 1, nodes 0 and 2 SIGKILLed and restarted",
        Instant::now(),
    );
    cluster.wait_members();
}
