//! A network of Linux network namespaces for tests of real agents under
//! real-kernel faults (root only; see `tests/netns_faults.rs`).
//!
//! Layout of one lab, every piece inside namespaces of its own so that
//! nothing is added to the root namespace (no address, route or interface
//! there, hence no clash with other tests running at the same time, whatever
//! addresses they use):
//!
//! ```text
//!   <prefix>-sw:  bridge br0, ports port0..portN-1      (the data network)
//!   <prefix>-nI:  node I. `data` (10.77.0.1I/24) ── portI on br0
//!                         `mgmt` (10.78.I.2/30)  ── mgmtI in <prefix>-c
//!   <prefix>-c:   the test's clients: mgmt0..mgmtN-1 (10.78.I.1/30)
//! ```
//!
//! Agents gossip over the data network and serve their API on the
//! management link, so the test reaches every node whatever the data
//! network suffers: partitions cut `data` only, and clients write on both
//! sides of them, as Jepsen's do.
//!
//! Faults:
//! - both ways: [`NetLab::isolate`] takes the node's bridge port down
//!   (`ip link set portI down`): nothing crosses in either direction;
//! - one way: [`NetLab::drop_from_to`] gives the sender a permanent
//!   neighbour entry for the receiver's address with a MAC nobody has
//!   (`ip neigh replace … lladdr 02:… nud permanent`): its frames to the
//!   receiver are flooded by the bridge and accepted by no one, so they are
//!   lost on the wire, silently, while the receiver's packets still arrive.
//!   (This machine has neither iptables, nftables nor tc's netem/prio
//!   qdiscs; a neighbour entry needs only iproute2.)
//!
//! Namespaces are named `patina-t<pid>-<n>-<role>`: unique per test run and
//! per lab. [`Drop`] deletes them (also when a test panics), which destroys
//! their interfaces and the bridge; a lab left behind by a test process that
//! was killed is removed by the next lab made on the machine.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Namespace names start with this, then the pid of the test process.
const PREFIX: &str = "patina-t";
/// Set to 1 to make a missing namespace facility a test failure instead of
/// a skip (a CI that is meant to run these tests).
pub const REQUIRE_ENV: &str = "PATINA_REQUIRE_NETNS";

pub struct NetLab {
    prefix: String,
    nodes: usize,
    /// Namespaces created so far, deleted on drop.
    made: Vec<String>,
}

/// Runs `ip ARGS`; an error says which command failed and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Kills what still runs in `ns` and deletes it. The processes are those of
/// a lab whose test process is gone (or this lab's, already killed).
fn remove_namespace(ns: &str) {
    for pid in ip_output(&["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            if pid as u32 == std::process::id() {
                continue;
            }
            // SAFETY: kill(2) with a pid and a signal number has no memory
            // effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netlab: could not remove namespace {ns}: {e}");
    }
}

/// Removes the namespaces of labs whose test process no longer exists.
fn remove_stale_labs() {
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}

impl NetLab {
    /// A lab of `nodes` node namespaces, the switch and the client
    /// namespace, or why this machine cannot make one (not root, no `ip`,
    /// namespaces not permitted): the caller skips.
    pub fn new(nodes: usize) -> Result<NetLab, String> {
        assert!(nodes < 90, "addresses 10.77.0.1I hold up to 89 nodes");
        static LABS: AtomicUsize = AtomicUsize::new(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                    .into(),
            );
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("`ip` (iproute2) is not installed".into());
        }
        remove_stale_labs();
        let prefix = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = NetLab {
            prefix,
            nodes,
            made: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn add_namespace(&mut self, ns: String) -> Result<(), String> {
        ip(&["netns", "add", &ns])?;
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])
    }

    fn build(&mut self) -> Result<(), String> {
        let (sw, client) = (self.switch_ns(), self.client_ns());
        self.add_namespace(sw.clone())?;
        self.add_namespace(client.clone())?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.node_ns(i);
            self.add_namespace(ns.clone())?;
            let port = format!("port{i}");
            let mgmt = format!("mgmt{i}");
            // Each end is made directly in its namespace: names need be
            // unique there only.
            ip(&[
                "link", "add", &port, "netns", &sw, "type", "veth", "peer", "name", "data",
                "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let data = format!("{}/24", Self::data_ip(i));
            ip(&["-n", &ns, "addr", "add", &data, "dev", "data"])?;
            ip(&["-n", &ns, "link", "set", "data", "up"])?;
            ip(&[
                "link", "add", &mgmt, "netns", &client, "type", "veth", "peer", "name", "mgmt",
                "netns", &ns,
            ])?;
            let near = format!("10.78.{i}.1/30");
            ip(&["-n", &client, "addr", "add", &near, "dev", &mgmt])?;
            ip(&["-n", &client, "link", "set", &mgmt, "up"])?;
            let far = format!("{}/30", Self::mgmt_ip(i));
            ip(&["-n", &ns, "addr", "add", &far, "dev", "mgmt"])?;
            ip(&["-n", &ns, "link", "set", "mgmt", "up"])?;
        }
        Ok(())
    }

    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Node `i`'s address on the data network (gossip).
    pub fn data_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 10 + i as u8)
    }

    /// Node `i`'s address on its management link (API).
    pub fn mgmt_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, i as u8, 2)
    }

    /// Cuts node `i` off the data network, both ways.
    pub fn isolate(&self, i: usize) {
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("port{i}"),
            "down",
        ])
        .unwrap();
    }

    /// Puts node `i` back on the data network.
    pub fn reconnect(&self, i: usize) {
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("port{i}"),
            "up",
        ])
        .unwrap();
    }

    /// From now on, what node `from` sends to node `to` is lost (one way).
    pub fn drop_from_to(&self, from: usize, to: usize) {
        let nowhere = format!("02:00:00:00:{:02x}:{:02x}", from, to);
        ip(&[
            "-n",
            &self.node_ns(from),
            "neigh",
            "replace",
            &Self::data_ip(to).to_string(),
            "lladdr",
            &nowhere,
            "dev",
            "data",
            "nud",
            "permanent",
        ])
        .unwrap();
    }

    /// Undoes [`drop_from_to`](Self::drop_from_to): `from` resolves `to`
    /// again by ARP.
    pub fn pass_from_to(&self, from: usize, to: usize) {
        ip(&[
            "-n",
            &self.node_ns(from),
            "neigh",
            "del",
            &Self::data_ip(to).to_string(),
            "dev",
            "data",
        ])
        .unwrap();
    }

    /// Moves the calling thread into the client namespace: sockets it opens
    /// from now on are there (a thread's network namespace is its own;
    /// threads it spawns inherit it). For a tokio runtime's
    /// `on_thread_start`.
    pub fn enter_client(ns: &str) {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns with an open namespace fd; CLONE_NEWNET changes only
        // this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {ns}: {}", io::Error::last_os_error());
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// A lab, or `None` after printing why the test is skipped; with
/// `PATINA_REQUIRE_NETNS=1` a lab that cannot be made fails the test.
pub fn lab_or_skip(test: &str, nodes: usize) -> Option<NetLab> {
    match NetLab::new(nodes) {
        Ok(lab) => Some(lab),
        Err(why) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: cannot build the network namespaces ({why}) and {REQUIRE_ENV}=1");
            }
            println!(
                "SKIPPED {test}: cannot build network namespaces here: {why}. \
                 Run the tests as root on Linux with iproute2 to include it \
                 ({REQUIRE_ENV}=1 makes this a failure)."
            );
            None
        }
    }
}
