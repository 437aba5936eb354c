//! SUBSCRIBE: a connection that becomes a stream of one bucket's changes.
//!
//! The worker owning a bucket keeps its subscribers in [`Subscriptions`] and, for
//! every PUT, DELETE or DROP it applies there, hands each one the event line. A
//! subscription is registered by the worker itself, as one request of a batch, so it
//! takes effect exactly between two of the worker's requests: every change applied
//! after it is streamed, none before, none twice. A DROP is the last event: the
//! bucket's subscribers are then let go, which ends their streams.
//!
//! Workers must never wait for a subscriber. Events go over an unbounded channel, and
//! the worker keeps count of what the subscriber holds: the bytes not yet written to
//! its socket plus [`QUEUED_EVENT_OVERHEAD`] for each event still queued. Once that
//! passes the limit (8 MiB by default) the worker drops the subscriber, whose
//! connection thread then closes the connection. So a subscriber that stops reading
//! costs at most the limit in memory and never slows a write.
//!
//! The connection side, for a local subscription and for one relayed from the node
//! that owns the bucket alike, is `stream.rs`.

mod stream;

pub use stream::{RelayedEvents, client_gone, stream_events, stream_relayed};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::protocol::Event;

/// What one queued event costs beyond its bytes, charged to the subscriber's backlog
/// when the worker hands it over and given back when the connection takes it off the
/// channel: its channel slot (an `Arc<[u8]>` and a state word, 24 bytes, in blocks of
/// 31), and the event's shared allocation (two counts and malloc's header and
/// rounding, charged in full to every subscriber, so the count errs high).
///
/// Counting only the bytes let 8 MiB of 11-byte events cost 18-21 MiB a subscriber.
pub const QUEUED_EVENT_OVERHEAD: usize = 64;

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

impl Subscription {
    /// `events` events were taken off the channel: their slots and shares are freed;
    /// their bytes stay counted until written.
    fn took(&self, events: usize) {
        self.backlog.unsent.fetch_sub(events * QUEUED_EVENT_OVERHEAD, Ordering::AcqRel);
    }
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
        let cost = event.len() + QUEUED_EVENT_OVERHEAD;
        let unsent = self.backlog.unsent.fetch_add(cost, Ordering::AcqRel) + cost;
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

    /// Streams a change of `bucket` to its subscribers; the line is built only if
    /// there is someone to send it to. Subscribers that have gone away or fallen too far
    /// behind are removed, and after [`Event::Dropped`] all of them are: the bucket is
    /// gone, and so are their streams.
    pub fn publish(&mut self, bucket: &[u8], event: Event<'_>) {
        let Some(subscribers) = self.by_bucket.get_mut(bucket) else {
            return;
        };
        let ends = event == Event::Dropped;
        let event: Arc<[u8]> = event.to_text().into();
        let before = subscribers.len();
        let mut overflowed = 0;
        subscribers.retain(|subscriber| {
            let kept = subscriber.offer(&event);
            if !kept && subscriber.backlog.dropped.load(Ordering::Acquire) {
                overflowed += 1;
            }
            kept
        });
        if ends {
            // Dropping the senders ends each stream after what it has queued.
            subscribers.clear();
        }
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
        subscriptions.publish(b"x", Event::Set { key: b"k", value: b"1" });
        subscriptions.publish(b"x", Event::Deleted { key: b"k" });
        subscriptions.publish(b"z", Event::Dropped);
        let got: Vec<Vec<u8>> = a_rx.events.try_iter().map(|e| e.to_vec()).collect();
        assert_eq!(got, [b"k SET TO 1\r\n".to_vec(), b"k DELETED\r\n".to_vec()]);
        assert!(b_rx.events.is_empty());
        assert_eq!(subscriptions.len(), 2);
    }

    #[test]
    fn a_drop_is_the_last_event_and_lets_every_subscriber_go() {
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        let (b, b_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.add(b"x", b);
        subscriptions.publish(b"x", Event::Dropped);
        assert!(subscriptions.is_empty());
        assert_eq!(subscriptions.dropped_total(), 0, "let go, not dropped for falling behind");
        for rx in [a_rx, b_rx] {
            assert_eq!(rx.events.try_recv().map(|e| e.to_vec()), Ok(b"DROPPED\r\n".to_vec()));
            assert!(rx.events.recv().is_err(), "the stream ends after DROPPED");
        }
    }

    #[test]
    fn a_subscriber_past_its_limit_is_dropped_and_counted() {
        let mut subscriptions = Subscriptions::default();
        let (slow, slow_rx) = subscription(2 * (14 + QUEUED_EVENT_OVERHEAD) - 1);
        subscriptions.add(b"x", slow);
        subscriptions.publish(b"x", Event::Set { key: b"k", value: b"1234567890" });
        assert_eq!(subscriptions.len(), 1);
        subscriptions.publish(b"x", Event::Set { key: b"k", value: b"1234567890" });
        assert_eq!(subscriptions.len(), 0);
        assert_eq!(subscriptions.dropped_total(), 1);
        assert!(slow_rx.backlog.dropped.load(Ordering::Acquire));
    }

    #[test]
    fn the_backlog_counts_each_queued_event_and_gives_its_slot_back_when_taken() {
        let mut subscriptions = Subscriptions::default();
        let (subscriber, subscription) = subscription(1 << 20);
        subscriptions.add(b"x", subscriber);
        for _ in 0..10 {
            subscriptions.publish(b"x", Event::Set { key: b"k", value: b"1" });
        }
        let event_len = b"k SET TO 1\r\n".len();
        assert_eq!(
            subscription.backlog.unsent.load(Ordering::Acquire),
            10 * (event_len + QUEUED_EVENT_OVERHEAD)
        );
        let taken = subscription.events.try_iter().count();
        subscription.took(taken);
        assert_eq!(subscription.backlog.unsent.load(Ordering::Acquire), 10 * event_len);
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
        subscriptions.publish(b"x", Event::Deleted { key: b"k" });
        assert!(subscriptions.is_empty());
        assert_eq!(subscriptions.dropped_total(), 0);
    }
}
