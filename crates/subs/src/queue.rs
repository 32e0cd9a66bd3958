//! A bounded queue that takes memory only for what it holds. A worker's
//! queue must absorb bursts of thousands of commits, but std's
//! `sync_channel(4096)` allocates and initialises all 4096 slots up front:
//! 512 KiB per worker, 2 MiB of an idle node's 21 MiB RSS (issue 16). This
//! is std's unbounded channel (which allocates in small blocks as messages
//! arrive) with the bound kept by a counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;

pub(crate) fn bounded<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::channel();
    let len = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            len: Arc::clone(&len),
            capacity,
        },
        QueueReceiver { rx, len },
    )
}

pub(crate) struct QueueSender<T> {
    tx: mpsc::Sender<T>,
    len: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            len: Arc::clone(&self.len),
            capacity: self.capacity,
        }
    }
}

impl<T> QueueSender<T> {
    /// Queues `msg` whatever the queue holds: for messages that must not
    /// be lost and come in bounded numbers (restoring stored
    /// subscriptions at start, stopping).
    pub fn send(&self, msg: T) -> Result<(), mpsc::SendError<T>> {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.tx.send(msg).inspect_err(|_| {
            self.len.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Queues `msg` unless `capacity` messages wait already.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(msg));
        }
        self.tx.send(msg).map_err(|e| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(e.0)
        })
    }
}

pub(crate) struct QueueReceiver<T> {
    rx: mpsc::Receiver<T>,
    len: Arc<AtomicUsize>,
}

impl<T> QueueReceiver<T> {
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<T, RecvTimeoutError> {
        let msg = self.rx.recv_timeout(timeout)?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(msg)
    }

    /// How many messages wait, readable from the receiving thread while
    /// it works (a hint: senders may add more at any time).
    pub fn waiting(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.len)
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let msg = self.rx.try_recv()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_at_capacity_and_room_again_after_a_receive() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.clone().try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.recv_timeout(std::time::Duration::ZERO), Ok(1));
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(rx);
        assert!(matches!(tx.try_send(4), Err(TrySendError::Disconnected(4))));
        // A refused send leaves the count as it was.
        let (tx, rx) = bounded(1);
        drop(rx);
        assert!(tx.try_send(1).is_err());
        assert!(tx.try_send(2).is_err());
        assert_eq!(tx.len.load(Ordering::Acquire), 0);
    }
}
