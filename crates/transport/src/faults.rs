//! A UDP socket that loses, delays and partitions packets on purpose, for
//! tests: hand it to [`super::Transport::bind`] and steer it at run time
//! through its [`FaultHandle`]. Faults are injected at this seam, never by
//! test-only branches in the transport itself.
//!
//! Outgoing packets: dropped with probability `loss`, dropped if their
//! destination is in the `to` partition, otherwise sent after `delay` plus
//! a uniform random jitter (which may reorder them, as real networks do).
//! Incoming packets: dropped if their source is in the `from` partition.
//! Randomness comes from one RNG seeded by the test, so a failing run can
//! be replayed with its seed (timing still varies).

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

use crate::screen::poll_recv_kept;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Delayed packets held at once; past this, further delayed packets are
/// dropped (counted as lost) rather than buffered without bound.
pub const DELAYED_PACKETS_MAX: usize = 4096;

#[derive(Debug)]
struct Faults {
    rng: StdRng,
    loss: f64,
    delay: Duration,
    jitter: Duration,
    drop_to: HashSet<SocketAddr>,
    drop_from: HashSet<SocketAddr>,
}

#[derive(Debug)]
struct State {
    faults: Mutex<Faults>,
    dropped: AtomicU64,
    delayed_in_flight: AtomicUsize,
}

impl State {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // Poisoning needs a panic while holding the lock, and nothing in
        // the critical sections can panic; the state stays usable anyway.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Changes a [`FaultySocket`]'s faults while it runs. Clonable.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    state: Arc<State>,
}

impl FaultHandle {
    /// Probability in `0.0..=1.0` that an outgoing packet is lost.
    pub fn set_loss(&self, probability: f64) {
        self.state.faults().loss = probability.clamp(0.0, 1.0);
    }

    /// Every outgoing packet waits `fixed` plus a uniform `0..=jitter`.
    pub fn set_delay(&self, fixed: Duration, jitter: Duration) {
        let mut f = self.state.faults();
        f.delay = fixed;
        f.jitter = jitter;
    }

    /// Drop every packet we send to `addr` (one-way partition).
    pub fn partition_to(&self, addr: SocketAddr) {
        self.state.faults().drop_to.insert(addr);
    }

    /// Drop every packet we receive from `addr` (one-way partition).
    pub fn partition_from(&self, addr: SocketAddr) {
        self.state.faults().drop_from.insert(addr);
    }

    /// Removes all partitions (loss and delay stay as set).
    pub fn heal(&self) {
        let mut f = self.state.faults();
        f.drop_to.clear();
        f.drop_from.clear();
    }

    /// Packets dropped so far (loss, partitions, delay buffer full).
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Relaxed)
    }
}

/// See the module docs.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    state: Arc<State>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Binds a UDP socket on `addr` with no faults yet. Must be called
    /// inside a tokio runtime.
    pub fn bind(addr: SocketAddr, seed: u64) -> io::Result<(Arc<FaultySocket>, FaultHandle)> {
        let udp = std::net::UdpSocket::bind(addr)?;
        // tokio requires non-blocking sockets.
        udp.set_nonblocking(true)?;
        let inner = quinn::TokioRuntime.wrap_udp_socket(udp)?;
        let state = Arc::new(State {
            faults: Mutex::new(Faults {
                rng: StdRng::seed_from_u64(seed),
                loss: 0.0,
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                drop_to: HashSet::new(),
                drop_from: HashSet::new(),
            }),
            dropped: AtomicU64::new(0),
            delayed_in_flight: AtomicUsize::new(0),
        });
        let socket = Arc::new(FaultySocket {
            inner,
            state: state.clone(),
        });
        Ok((socket, FaultHandle { state }))
    }

    fn drop_packet(&self) -> io::Result<()> {
        self.state.dropped.fetch_add(1, Relaxed);
        // UDP send "succeeds" and the packet vanishes: what loss looks like.
        Ok(())
    }

    fn send_later(&self, transmit: &Transmit<'_>, wait: Duration) -> io::Result<()> {
        let in_flight = self.state.delayed_in_flight.fetch_add(1, Relaxed);
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (in_flight < DELAYED_PACKETS_MAX, runtime) else {
            self.state.delayed_in_flight.fetch_sub(1, Relaxed);
            return self.drop_packet();
        };
        let inner = self.inner.clone();
        let state = self.state.clone();
        let destination = transmit.destination;
        let ecn = transmit.ecn;
        let contents = transmit.contents.to_vec();
        let segment_size = transmit.segment_size;
        let src_ip = transmit.src_ip;
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            let transmit = Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            };
            // A full socket buffer now is just one more lost packet.
            if inner.try_send(&transmit).is_err() {
                state.dropped.fetch_add(1, Relaxed);
            }
            state.delayed_in_flight.fetch_sub(1, Relaxed);
        });
        Ok(())
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let wait = {
            let mut guard = self.state.faults();
            let f = &mut *guard;
            let partitioned = f.drop_to.contains(&transmit.destination);
            if partitioned || (f.loss > 0.0 && f.rng.random_bool(f.loss)) {
                None
            } else {
                let jitter_us = f.jitter.as_micros() as u64;
                let jitter = match jitter_us {
                    0 => 0,
                    n => f.rng.random_range(0..=n),
                };
                Some(f.delay + Duration::from_micros(jitter))
            }
        };
        match wait {
            None => self.drop_packet(),
            Some(wait) if wait.is_zero() => self.inner.try_send(transmit),
            Some(wait) => self.send_later(transmit, wait),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        poll_recv_kept(&*self.inner, cx, bufs, meta, |m, _| {
            let keep = !self.state.faults().drop_from.contains(&m.addr);
            if !keep {
                self.state.dropped.fetch_add(1, Relaxed);
            }
            keep
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    // One datagram per transmit, so loss and delay apply per packet.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
