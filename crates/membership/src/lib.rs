//! `patina-membership`: SWIM membership of one cluster — foca driven by one
//! tokio task, its packets carried as transport datagrams. It never touches
//! databases or replication; it only says who is alive at which address.
//!
//! The task owns foca (no shared state): it feeds it datagrams and fired
//! timers, sends what foca asks through [`Transport::send_datagram`]
//! (spawned, so a slow dial never stalls the protocol), publishes the
//! member list on a watch channel, and persists it for restarts.
//!
//! Datagrams come from the transport's [`Inbound::Datagram`]s: the node's
//! cluster runtime forwards them to the channel handed to
//! [`Membership::spawn`], or lets [`route_datagrams`] split them off.

mod identity;
mod persist;
mod tuning;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, NoCustomBroadcast, OwnedNotification, Timer};
use patina_wire::NodeIdentity;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use patina_transport::{Inbound, Transport};

pub use identity::{CodecError, SwimId, WireCodec};
pub use persist::PERSISTED_MEMBERS_MAX;
pub use tuning::{
    SwimProfile, SwimTuning, LAN_PROBE_PERIOD, LAN_PROBE_RTT, LAN_SUSPICION_BASE,
    LAN_SUSPICION_PER_DOUBLING, MAX_PACKET_BYTES, TUNED_SIZE_MIN,
};

/// Datagram sends in flight at once; past this, foca's packets are
/// dropped (SWIM tolerates loss; the next probe round retries).
pub const SENDS_IN_FLIGHT_MAX: usize = 256;

/// The member file is written at most this often, when it changed.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// While no peer is known, announce to the bootstrap list and the
/// persisted members this often (they may start after us).
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

/// How long a leave waits for its last packets to go out.
pub const LEAVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Capacity of the channel [`route_datagrams`] fills; when full, datagrams
/// are dropped (SWIM tolerates loss).
pub const DATAGRAM_QUEUE_CAPACITY: usize = 1024;

/// A bootstrap host name that does not resolve within this is skipped
/// until the next retry.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    /// Missed probes; declared down unless it refutes in time.
    Suspect,
    /// Left or declared down; forgotten after foca's `remove_down_after`.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub identity: NodeIdentity,
    pub state: MemberState,
}

/// Of a member list, the alive peers (what broadcast and sync use).
pub fn alive(members: &[Member]) -> impl Iterator<Item = &NodeIdentity> {
    members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| &m.identity)
}

enum Command {
    Leave(oneshot::Sender<()>),
}

/// The handle of a running membership task. Dropping it leaves the
/// cluster too, without waiting.
#[derive(Debug)]
pub struct Membership {
    identity: NodeIdentity,
    /// Members of this cluster remembered from the last run (not this node).
    persisted_peers: usize,
    members: watch::Receiver<Vec<Member>>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leave")
    }
}

impl Membership {
    /// Starts membership for `identity` (its `addr` should be the
    /// transport's advertised address; its `generation` is raised past the
    /// one stored beside `members_file`, and stored). Announces to
    /// `bootstrap` (`HOST:PORT`, resolved now and on every retry) and to
    /// the members persisted in `members_file`. Must be called inside a
    /// tokio runtime.
    pub fn spawn(
        transport: Transport,
        identity: NodeIdentity,
        bootstrap: Vec<String>,
        members_file: PathBuf,
        datagrams: mpsc::Receiver<(SocketAddr, Bytes)>,
        profile: SwimProfile,
    ) -> Membership {
        let generation = persist::next_generation(&members_file, identity.generation);
        let identity = NodeIdentity {
            generation,
            ..identity
        };
        let persisted = persist::load_members(&members_file);
        let persisted_peers = persisted
            .iter()
            .filter(|m| m.actor != identity.actor && m.cluster == identity.cluster)
            .count();
        let tuning = SwimTuning::adaptive(profile);
        let foca = new_foca(identity.clone(), tuning.config());
        let (members_tx, members_rx) = watch::channel(Vec::new());
        let (commands_tx, commands_rx) = mpsc::channel(1);
        let swim = Swim {
            foca,
            tuning,
            transport,
            members_file,
            members_tx,
            effects: Effects::default(),
            sends: Arc::new(Semaphore::new(SENDS_IN_FLIGHT_MAX)),
            dirty: false,
        };
        let task = tokio::spawn(swim.run(bootstrap, persisted, commands_rx, datagrams));
        Membership {
            identity,
            persisted_peers,
            members: members_rx,
            commands: commands_tx,
            task,
        }
    }

    /// This node's identity (with the generation actually used).
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// How many members of this cluster (this node aside) the members file
    /// remembered at start: a restarted node has peers to learn from even
    /// without a bootstrap list.
    pub fn persisted_peers(&self) -> usize {
        self.persisted_peers
    }

    /// Every known member but this node, with its state; updated on each
    /// change. See [`alive`] for the peers to talk to.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// Leaves the cluster gracefully: peers are told at once (instead of
    /// suspecting this node for seconds), the member list is persisted,
    /// and the task stops. The transport stays open; close it after.
    pub async fn leave(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let _ = self.task.await;
    }
}

/// Splits the transport's inbound channel: datagrams go to the returned
/// membership channel (capacity [`DATAGRAM_QUEUE_CAPACITY`], dropped when
/// full), everything else to the returned inbound channel (same capacity
/// as the transport's, waiting when full, as the transport does).
pub fn route_datagrams(
    mut inbound: mpsc::Receiver<Inbound>,
) -> (mpsc::Receiver<(SocketAddr, Bytes)>, mpsc::Receiver<Inbound>) {
    let (dg_tx, dg_rx) = mpsc::channel(DATAGRAM_QUEUE_CAPACITY);
    let (rest_tx, rest_rx) = mpsc::channel(patina_transport::INBOUND_QUEUE_CAPACITY);
    tokio::spawn(async move {
        while let Some(item) = inbound.recv().await {
            match item {
                Inbound::Datagram { from, payload } => {
                    let _ = dg_tx.try_send((from, payload));
                }
                other => {
                    if rest_tx.send(other).await.is_err() && dg_tx.is_closed() {
                        return;
                    }
                }
            }
        }
    });
    (dg_rx, rest_rx)
}

/// What foca asked for during one call: collected, then acted on by the
/// task (foca's `Runtime` is synchronous; sends are async).
#[derive(Default)]
struct Effects {
    /// Pending timers by deadline; the sequence number keeps equal
    /// deadlines apart. Bounded by foca: a few per member at most.
    timers: BTreeMap<(Instant, u64), Timer<SwimId>>,
    timer_seq: u64,
    outbox: Vec<(SocketAddr, Bytes)>,
    notes: Vec<OwnedNotification<SwimId>>,
}

impl foca::Runtime<SwimId> for Effects {
    fn notify(&mut self, notification: foca::Notification<'_, SwimId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        self.outbox.push((to.0.addr, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<SwimId>, after: Duration) {
        self.timer_seq += 1;
        self.timers
            .insert((Instant::now() + after, self.timer_seq), event);
    }
}

impl Effects {
    fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer<SwimId>> {
        let key = *self.timers.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.timers.remove(&key)
    }
}

type SwimFoca = Foca<SwimId, WireCodec, StdRng, NoCustomBroadcast>;

/// A foca for `identity` with `config` (from the [`SwimTuning`]).
fn new_foca(identity: NodeIdentity, config: foca::Config) -> SwimFoca {
    let codec = WireCodec::new(identity.cluster.clone(), identity.actor);
    Foca::new(
        SwimId(identity.clone()),
        config,
        StdRng::from_rng(&mut rand::rng()),
        codec,
    )
}

struct Swim {
    foca: SwimFoca,
    /// foca's settings for the cluster's size, re-tuned after every call.
    tuning: SwimTuning,
    transport: Transport,
    members_file: PathBuf,
    members_tx: watch::Sender<Vec<Member>>,
    effects: Effects,
    sends: Arc<Semaphore>,
    /// The member list changed since it was last persisted.
    dirty: bool,
}

impl Swim {
    async fn run(
        mut self,
        bootstrap: Vec<String>,
        persisted: Vec<NodeIdentity>,
        mut commands: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<(SocketAddr, Bytes)>,
    ) {
        self.announce(&bootstrap, &persisted).await;
        let mut persist_tick = tokio::time::interval(PERSIST_INTERVAL);
        let mut announce_tick =
            tokio::time::interval_at(Instant::now() + ANNOUNCE_RETRY, ANNOUNCE_RETRY);
        let mut datagrams_open = true;
        loop {
            let next_timer = self.effects.next_deadline();
            tokio::select! {
                command = commands.recv() => {
                    let done = command.map(|Command::Leave(done)| done);
                    self.leave().await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                datagram = datagrams.recv(), if datagrams_open => match datagram {
                    Some((from, payload)) => {
                        if let Err(e) = self.foca.handle_data(&payload, &mut self.effects) {
                            tracing::debug!(peer = %from, error = %e, "SWIM packet dropped");
                        }
                    }
                    None => datagrams_open = false,
                },
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    let now = Instant::now();
                    while let Some(timer) = self.effects.pop_due(now) {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.effects) {
                            tracing::debug!(error = %e, "SWIM timer failed");
                        }
                    }
                }
                _ = persist_tick.tick() => {
                    if self.dirty {
                        self.persist().await;
                    }
                }
                _ = announce_tick.tick() => {
                    if self.foca.iter_members().next().is_none() {
                        let persisted = persist::load_members(&self.members_file);
                        self.announce(&bootstrap, &persisted).await;
                    }
                }
            }
            self.after_call();
        }
    }

    /// Starts a fresh foca as `id` and announces to every member the old one
    /// knew. foca's own rejoin keeps the member list but invalidates every
    /// pending timer, so a member that was suspect at that moment stays
    /// suspect forever (seen after a partition healed); a fresh foca has no
    /// such state and relearns the cluster from the announces.
    fn restart_as(&mut self, id: SwimId) {
        let known: Vec<SwimId> = self
            .foca
            .iter_members()
            .map(|m| m.id().clone())
            .filter(|m| m.0.actor != id.0.actor)
            .collect();
        self.foca = new_foca(id.0, self.tuning.config());
        // Timers of the old foca must not reach the new one.
        self.effects.timers.clear();
        for member in known {
            if let Err(e) = self.foca.announce(member, &mut self.effects) {
                tracing::debug!(error = %e, "announce after rejoin failed");
            }
        }
    }

    /// Announces to every bootstrap address and persisted member but us.
    async fn announce(&mut self, bootstrap: &[String], persisted: &[NodeIdentity]) {
        let me = self.foca.identity().0.clone();
        let mut targets: Vec<SwimId> = persisted
            .iter()
            .filter(|m| m.actor != me.actor && m.cluster == me.cluster)
            .cloned()
            .map(SwimId)
            .collect();
        for addr in resolve(bootstrap).await {
            let known = targets.iter().any(|t| t.0.addr == addr);
            if addr != me.addr && !known {
                targets.push(SwimId::unknown_at(addr, me.cluster.clone()));
            }
        }
        for target in targets {
            if let Err(e) = self.foca.announce(target, &mut self.effects) {
                tracing::debug!(error = %e, "announce failed");
            }
        }
        self.after_call();
    }

    /// Acts on what foca asked for: notifications, member list, sends.
    fn after_call(&mut self) {
        let mut changed = false;
        let mut rejoined = None;
        for note in std::mem::take(&mut self.effects.notes) {
            match note {
                OwnedNotification::Rename(old, new) => {
                    // A new incarnation (a restart): the connection to the
                    // old one is dead even where it looks live.
                    if old.0.generation != new.0.generation {
                        self.transport.forget(old.0.addr);
                    }
                    changed = true;
                }
                OwnedNotification::MemberUp(_) | OwnedNotification::MemberDown(_) => changed = true,
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        generation = id.0.generation,
                        "declared down by the cluster; rejoined as a new generation"
                    );
                    persist::store_generation(&self.members_file, id.0.generation);
                    rejoined = Some(id);
                }
                OwnedNotification::Defunct => {
                    tracing::warn!("declared down by the cluster and cannot rejoin");
                }
                OwnedNotification::Active | OwnedNotification::Idle => {}
            }
        }
        if let Some(id) = rejoined {
            self.restart_as(id);
            changed = true;
        }
        if changed {
            self.dirty = true;
        }
        self.retune();
        // Alive/suspect transitions do not notify: publish compares.
        self.publish();
        self.flush_sends();
    }

    /// Hands foca the settings for the cluster's current size when it
    /// moved to another power of two (see [`SwimTuning`]).
    fn retune(&mut self) {
        let members = self.foca.num_members() + 1;
        if let Some(config) = self.tuning.observe(members) {
            match self.foca.set_config(config) {
                Ok(()) => tracing::debug!(
                    members,
                    tuned_for = self.tuning.tuned_for(),
                    "SWIM re-tuned for the cluster's size"
                ),
                Err(e) => tracing::warn!(error = %e, "SWIM re-tuning refused"),
            }
        }
    }

    fn publish(&mut self) {
        let me = self.foca.identity().0.actor;
        let mut members: Vec<Member> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().0.actor != me)
            .map(|m| Member {
                identity: m.id().0.clone(),
                state: match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
            })
            .collect();
        // foca reorders its members every probe cycle (it shuffles whom to
        // probe next); watchers care about who and in what state, so the
        // list is published in one order and only when that changes.
        members.sort_by_key(|m| m.identity.actor);
        self.members_tx.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
    }

    fn flush_sends(&mut self) {
        for (to, data) in self.effects.outbox.drain(..) {
            let Ok(permit) = self.sends.clone().try_acquire_owned() else {
                tracing::debug!(peer = %to, "too many SWIM sends in flight; packet dropped");
                continue;
            };
            let transport = self.transport.clone();
            tokio::spawn(async move {
                if let Err(e) = transport.send_datagram(to, &data).await {
                    tracing::debug!(peer = %to, error = %e, "SWIM packet not sent");
                }
                drop(permit);
            });
        }
    }

    async fn persist(&mut self) {
        self.dirty = false;
        let members: Vec<NodeIdentity> =
            self.foca.iter_members().map(|m| m.id().0.clone()).collect();
        let path = self.members_file.clone();
        let written =
            tokio::task::spawn_blocking(move || persist::store_members(&path, &members)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(path = %self.members_file.display(), error = %e, "cannot persist members; a restart will need the bootstrap list")
            }
            Err(e) => tracing::warn!(error = %e, "persisting members failed"),
        }
    }

    async fn leave(&mut self) {
        // Persist the live members first: leaving forgets nothing, but
        // this is the list a restart announces to.
        self.persist().await;
        if let Err(e) = self.foca.leave_cluster(&mut self.effects) {
            tracing::debug!(error = %e, "leave failed");
        }
        let outbox = std::mem::take(&mut self.effects.outbox);
        let transport = self.transport.clone();
        let flushed = tokio::time::timeout(LEAVE_FLUSH_TIMEOUT, async move {
            for (to, data) in outbox {
                let _ = transport.send_datagram(to, &data).await;
            }
            transport.flush_datagrams(LEAVE_FLUSH_TIMEOUT).await;
        })
        .await;
        if flushed.is_err() {
            tracing::debug!("leave: not every peer was told in time; they will notice by probing");
        }
    }
}

/// Resolves `HOST:PORT` entries; entries that fail are logged and skipped.
async fn resolve(bootstrap: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for entry in bootstrap {
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(entry.as_str())).await {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(e)) => tracing::warn!(%entry, error = %e, "bootstrap entry does not resolve"),
            Err(_) => tracing::warn!(%entry, "bootstrap entry did not resolve in time"),
        }
    }
    out
}
