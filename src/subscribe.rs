//! SUBSCRIBE: a connection that becomes a stream of one bucket's changes.
//!
//! The worker owning a bucket keeps its subscribers in [`Subscriptions`] and, for
//! every PUT or DELETE it applies there, hands each one the event line. A
//! subscription is registered by the worker itself, as one request of a batch, so it
//! takes effect exactly between two of the worker's requests: every change applied
//! after it is streamed, none before, none twice.
//!
//! Workers must never wait for a subscriber. Events go over an unbounded channel, and
//! the worker keeps count of the bytes the subscriber has not yet written to its
//! socket; once that passes the limit (8 MiB by default) the worker drops the
//! subscriber, whose connection thread then closes the connection. So a subscriber
//! that stops reading costs at most the limit in memory and never slows a write.
//!
//! The connection side ([`stream_events`]) writes events as they come, batching what
//! has queued up into one write, and notices a client that has gone away.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Default most bytes of events a subscriber may have unwritten before it is dropped.
///
/// 8 MiB holds over 100,000 typical events: room for a slow reader to catch up after
/// a burst, while a stuck one cannot pin more than that.
pub const DEFAULT_SUBSCRIBER_BACKLOG: usize = 8 * 1024 * 1024;

/// How often an idle subscriber's thread checks whether its client is still there.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Most event bytes gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// State both ends of a subscription see.
#[derive(Debug, Default)]
struct Backlog {
    /// Event bytes handed over and not yet written to the client.
    unsent: AtomicUsize,
    /// The worker dropped this subscriber (backlog over the limit).
    dropped: AtomicBool,
    /// The connection's end is gone (the client left): the worker may forget it.
    gone: AtomicBool,
}

/// The worker's end of one subscription.
#[derive(Debug)]
pub struct Subscriber {
    events: Sender<Arc<[u8]>>,
    backlog: Arc<Backlog>,
    limit: usize,
}

/// The connection's end of one subscription.
#[derive(Debug)]
pub struct Subscription {
    events: Receiver<Arc<[u8]>>,
    backlog: Arc<Backlog>,
}

/// A new subscription whose subscriber may fall at most `limit` bytes behind.
pub fn subscription(limit: usize) -> (Subscriber, Subscription) {
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let backlog = Arc::new(Backlog::default());
    (
        Subscriber { events: events_tx, backlog: backlog.clone(), limit },
        Subscription { events: events_rx, backlog },
    )
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.backlog.gone.store(true, Ordering::Release);
    }
}

impl Subscriber {
    fn is_gone(&self) -> bool {
        self.backlog.gone.load(Ordering::Acquire)
    }

    /// Hands `event` over; false if this subscriber is gone or too far behind and
    /// must be removed.
    fn offer(&self, event: &Arc<[u8]>) -> bool {
        let unsent = self.backlog.unsent.fetch_add(event.len(), Ordering::AcqRel) + event.len();
        if unsent > self.limit {
            self.backlog.dropped.store(true, Ordering::Release);
            return false;
        }
        self.events.send(event.clone()).is_ok()
    }
}

/// One worker's subscribers, by bucket.
#[derive(Debug, Default)]
pub struct Subscriptions {
    by_bucket: HashMap<Box<[u8]>, Vec<Subscriber>, ahash::RandomState>,
    count: usize,
    dropped_total: u64,
    /// Registrations since the last sweep for subscribers whose client left.
    adds_since_sweep: usize,
}

/// Registrations between two sweeps of the whole table for subscribers that left,
/// so that subscribers of buckets nobody writes to any more do not pile up.
const SWEEP_EVERY: usize = 64;

impl Subscriptions {
    /// Adds a subscriber to `bucket`'s changes.
    pub fn add(&mut self, bucket: &[u8], subscriber: Subscriber) {
        self.adds_since_sweep += 1;
        if self.adds_since_sweep >= SWEEP_EVERY {
            self.adds_since_sweep = 0;
            self.forget_gone();
        }
        let subscribers = self.by_bucket.entry(bucket.into()).or_default();
        let before = subscribers.len();
        subscribers.retain(|s| !s.is_gone());
        self.count -= before - subscribers.len();
        subscribers.push(subscriber);
        self.count += 1;
    }

    /// Removes every subscriber whose client has left.
    fn forget_gone(&mut self) {
        let mut removed = 0;
        self.by_bucket.retain(|_, subscribers| {
            let before = subscribers.len();
            subscribers.retain(|s| !s.is_gone());
            removed += before - subscribers.len();
            !subscribers.is_empty()
        });
        self.count -= removed;
    }

    /// True when nobody subscribes to anything: the worker's fast path.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Subscribers now registered.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Subscribers dropped for falling too far behind, since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Streams a change of `bucket` to its subscribers; `event` builds the line and is
    /// called only if there is someone to send it to. Subscribers that have gone
    /// away or fallen too far behind are removed.
    pub fn publish(&mut self, bucket: &[u8], event: impl FnOnce() -> Vec<u8>) {
        let Some(subscribers) = self.by_bucket.get_mut(bucket) else {
            return;
        };
        let event: Arc<[u8]> = event().into();
        let before = subscribers.len();
        let mut overflowed = 0;
        subscribers.retain(|subscriber| {
            let kept = subscriber.offer(&event);
            if !kept && subscriber.backlog.dropped.load(Ordering::Acquire) {
                overflowed += 1;
            }
            kept
        });
        let removed = before - subscribers.len();
        if subscribers.is_empty() {
            self.by_bucket.remove(bucket);
        }
        self.count -= removed;
        self.dropped_total += overflowed;
        if overflowed > 0 {
            log::warn!("dropped {overflowed} subscriber(s) more than their backlog limit behind");
        }
    }
}

/// The event line for a PUT.
pub fn set_event(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(key.len() + value.len() + 10);
    line.extend_from_slice(key);
    line.extend_from_slice(b" SET TO ");
    line.extend_from_slice(value);
    line.extend_from_slice(b"\r\n");
    line
}

/// The event line for a DELETE.
pub fn deleted_event(key: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(key.len() + 10);
    line.extend_from_slice(key);
    line.extend_from_slice(b" DELETED\r\n");
    line
}

/// Writes `subscription`'s events to `stream` until the client goes away, the worker
/// drops the subscription, or `stop` is set (shutdown). Input from the client is
/// read and ignored.
pub fn stream_events(stream: &TcpStream, subscription: Subscription, stop: &AtomicBool) -> io::Result<()> {
    // A client that stops reading must not pin this thread in write() forever: with
    // a timeout the loop can see that the worker has dropped it.
    stream.set_write_timeout(Some(CLIENT_CHECK_INTERVAL))?;
    let mut out: Vec<u8> = Vec::new();
    loop {
        match subscription.events.recv_timeout(CLIENT_CHECK_INTERVAL) {
            Ok(event) => {
                out.extend_from_slice(&event);
                while out.len() < WRITE_CHUNK {
                    match subscription.events.try_recv() {
                        Ok(event) => out.extend_from_slice(&event),
                        Err(_) => break,
                    }
                }
                let written = out.len();
                write_patiently(stream, &out, &subscription, stop)?;
                subscription.backlog.unsent.fetch_sub(written, Ordering::AcqRel);
                out.clear();
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::Relaxed) || client_gone(stream)? {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if subscription.backlog.dropped.load(Ordering::Acquire) {
            return Err(io::Error::other("subscriber dropped: too far behind"));
        }
    }
}

/// `write_all` that gives up once the subscription is dropped or the server stops.
fn write_patiently(
    stream: &TcpStream,
    mut bytes: &[u8],
    subscription: &Subscription,
    stop: &AtomicBool,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match (&*stream).write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if subscription.backlog.dropped.load(Ordering::Acquire) {
                    return Err(io::Error::other("subscriber dropped: too far behind"));
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("shutting down"));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Most bytes of ignored input one check reads, so that a client sending without
/// pause cannot keep its thread here instead of writing events.
const MAX_IGNORED_PER_CHECK: usize = 256 * 1024;

/// True if the client closed its end. Reads (and ignores) what it sent, up to
/// [`MAX_IGNORED_PER_CHECK`].
pub fn client_gone(stream: &TcpStream) -> io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut scratch = [0u8; 4096];
    let mut ignored = 0;
    let gone = loop {
        if ignored >= MAX_IGNORED_PER_CHECK {
            break false;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) => break true,
            Ok(n) => ignored += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false)?;
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_every_subscriber_of_the_bucket_only() {
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        let (b, b_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.add(b"y", b);
        subscriptions.publish(b"x", || set_event(b"k", b"1"));
        subscriptions.publish(b"x", || deleted_event(b"k"));
        subscriptions.publish(b"z", || unreachable!("nobody subscribes to z"));
        let got: Vec<Vec<u8>> = a_rx.events.try_iter().map(|e| e.to_vec()).collect();
        assert_eq!(got, [b"k SET TO 1\r\n".to_vec(), b"k DELETED\r\n".to_vec()]);
        assert!(b_rx.events.is_empty());
        assert_eq!(subscriptions.len(), 2);
    }

    #[test]
    fn a_subscriber_past_its_limit_is_dropped_and_counted() {
        let mut subscriptions = Subscriptions::default();
        let (slow, slow_rx) = subscription(30);
        subscriptions.add(b"x", slow);
        subscriptions.publish(b"x", || set_event(b"k", b"1234567890"));
        assert_eq!(subscriptions.len(), 1);
        subscriptions.publish(b"x", || set_event(b"k", b"1234567890"));
        assert_eq!(subscriptions.len(), 0);
        assert_eq!(subscriptions.dropped_total(), 1);
        assert!(slow_rx.backlog.dropped.load(Ordering::Acquire));
    }

    #[test]
    fn subscribers_that_left_a_quiet_bucket_are_forgotten_without_any_write() {
        let mut subscriptions = Subscriptions::default();
        for _ in 0..3 * SWEEP_EVERY {
            let (subscriber, subscription) = subscription(1024);
            subscriptions.add(b"quiet", subscriber);
            drop(subscription);
        }
        assert_eq!(subscriptions.len(), 1, "only the latest, whose client left after its add");
        for i in 0..2 * SWEEP_EVERY {
            let (subscriber, subscription) = subscription(1024);
            subscriptions.add(format!("other{i}").as_bytes(), subscriber);
            drop(subscription);
        }
        assert!(subscriptions.len() <= SWEEP_EVERY, "sweeps bound the table: {}", subscriptions.len());
        assert_eq!(subscriptions.dropped_total(), 0);
    }

    #[test]
    fn a_subscriber_that_went_away_is_removed_but_not_counted_as_dropped() {
        let mut subscriptions = Subscriptions::default();
        let (gone, gone_rx) = subscription(1024);
        subscriptions.add(b"x", gone);
        drop(gone_rx);
        subscriptions.publish(b"x", || deleted_event(b"k"));
        assert!(subscriptions.is_empty());
        assert_eq!(subscriptions.dropped_total(), 0);
    }
}
