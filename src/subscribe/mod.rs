//! SUBSCRIBE: a connection that becomes a stream of one bucket's changes.
//!
//! The worker owning a bucket keeps its subscribers in [`Subscriptions`] and writes
//! every PUT, DELETE or DROP it applies there, once, to the bucket's event log
//! (`event_log.rs`), which each subscriber's connection reads through a cursor of its own.
//! A subscription is registered by the worker itself, as one request of a batch, so
//! it takes effect exactly between two of the worker's requests: its cursor starts at
//! the log's head then, so every change applied after it is streamed, none before,
//! none twice. A DROP is the last event: the bucket's subscribers are then let go,
//! which ends their streams once they have read it.
//!
//! Workers must never wait for a subscriber, nor pay per subscriber for each event:
//! 100 subscribers that never read used to cut a pipelining writer from 4.6M to under
//! 40k PUTs/s, one channel send each per event. Now an event is one append to a
//! buffer the worker owns, and the batch's events reach the shared log with one lock
//! and at most one wake-up, of the subscribers actually waiting. A subscriber more
//! than its limit (8 MiB by default) behind the log's head is dropped, and its
//! connection thread then closes the connection; the log keeps only what the slowest
//! live subscriber has not read, so stuck subscribers of a bucket share one backlog's
//! worth of memory instead of holding one each.
//!
//! The connection side, for a local subscription and for one relayed from the node
//! that owns the bucket alike, is `stream.rs`; `mux.rs` follows several buckets on
//! one connection (the RESP door's `SUBSCRIBE a b`).

mod event_log;
mod mux;
mod stream;

pub use mux::{Asked, Held, MuxInput, Step, Streams};
pub use stream::{RelayedEvents, Render, client_gone};

use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::protocol::Event;

use self::event_log::{BucketLog, Cursor, Flushed};

/// The kernel send buffer a subscriber's socket gets, instead of the up to 4 MiB
/// (`net.ipv4.tcp_wmem`) Linux grows it to on its own. What a subscriber has not
/// taken is held once, in its bucket's log, and counted against its backlog there;
/// bytes in the kernel's buffer are not counted, and filling the 4 MiB of each of
/// 100 subscribers that never read cost the server 370 MiB of kernel memory and
/// about 400 MB of copying in the first second (benches/faults.py subscribers). This
/// size (doubled by Linux for its bookkeeping) still covers the bandwidth-delay
/// product of a LAN at several Gbit/s, so a subscriber that reads keeps up.
pub const SUBSCRIBER_SEND_BUFFER: usize = 128 * 1024;

/// Writes a local subscription's events to `client` until the client goes away, the
/// worker drops or ends the subscription, or `stop` is set (shutdown). The client's
/// socket gets a fixed [`SUBSCRIBER_SEND_BUFFER`] first.
pub fn stream_events(
    client: &TcpStream,
    subscription: Subscription,
    stop: &AtomicBool,
    render: &Render,
) -> io::Result<()> {
    cap_send_buffer(client);
    stream::stream_events(client, subscription, stop, render)
}

/// Relays a subscription's events from the owning node to `client` (see
/// [`stream::stream_relayed`]), with the client's socket's send buffer capped as for a
/// local subscription.
pub fn stream_relayed(
    client: &TcpStream,
    events: RelayedEvents,
    pending: &[u8],
    stop: &AtomicBool,
    render: &Render,
) -> io::Result<()> {
    cap_send_buffer(client);
    stream::stream_relayed(client, events, pending, stop, render)
}

/// Sets [`SUBSCRIBER_SEND_BUFFER`] on a subscriber's socket. A failure only costs
/// memory, so it is logged, not returned.
pub fn cap_send_buffer(client: &TcpStream) {
    if let Err(error) = crate::sys::set_send_buffer(client, SUBSCRIBER_SEND_BUFFER) {
        log::debug!("cannot cap a subscriber's send buffer: {error}");
    }
}

/// The worker's end of one subscription, until it registers it.
#[derive(Debug)]
pub struct Subscriber {
    cursor: Arc<Cursor>,
    limit: usize,
}

/// The connection's end of one subscription.
#[derive(Debug)]
pub struct Subscription {
    cursor: Arc<Cursor>,
}

/// A new subscription whose subscriber may fall at most `limit` bytes behind.
pub fn subscription(limit: usize) -> (Subscriber, Subscription) {
    let cursor = Arc::new(Cursor::default());
    (Subscriber { cursor: cursor.clone(), limit }, Subscription { cursor })
}

impl Drop for Subscriber {
    /// One never registered (its batch was lost) ends its stream, as a closed channel
    /// did.
    fn drop(&mut self) {
        self.cursor.abandon();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cursor.leave();
    }
}

/// One worker's subscribers, by bucket.
#[derive(Debug, Default)]
pub struct Subscriptions {
    by_bucket: HashMap<Box<[u8]>, BucketLog, ahash::RandomState>,
    /// The bucket the last event was for, with its log's staging buffer taken out:
    /// a batch's events are mostly for one bucket, and then each is staged with one
    /// comparison of names instead of a hash lookup, and the bucket stays hot from
    /// batch to batch without allocating its name again.
    hot: Option<Hot>,
    /// Buckets with events staged in their log since the last
    /// [`Subscriptions::flush`]: those that were hot, then cooled. May repeat a name.
    dirty: Vec<Box<[u8]>>,
    count: usize,
    dropped_total: u64,
    /// Registrations since the last sweep for subscribers whose client left.
    adds_since_sweep: usize,
    /// Notifications sent to waiting subscribers, since start.
    wakeups: u64,
    /// Passes over a bucket's subscribers one by one, since start.
    looks: u64,
}

/// A bucket whose log's staging buffer is checked out to [`Subscriptions::publish`].
/// While it is, the log's own buffer is empty and its events are in `staged`.
#[derive(Debug)]
struct Hot {
    bucket: Box<[u8]>,
    staged: Vec<u8>,
}

/// Registrations between two sweeps of the whole table for subscribers that left,
/// so that subscribers of buckets nobody writes to any more do not pile up.
const SWEEP_EVERY: usize = 64;

impl Subscriptions {
    /// Adds a subscriber to `bucket`'s changes, from the next event on.
    pub fn add(&mut self, bucket: &[u8], subscriber: Subscriber) {
        // The new cursor starts after every event staged so far, so they must be in
        // the log, and a sweep below must not remove the hot bucket's log.
        self.cool();
        self.adds_since_sweep += 1;
        if self.adds_since_sweep >= SWEEP_EVERY {
            self.adds_since_sweep = 0;
            self.forget_gone();
        }
        let log = self.by_bucket.entry(bucket.into()).or_default();
        self.count -= log.forget_gone();
        log.attach(subscriber.cursor.clone(), subscriber.limit);
        self.count += 1;
    }

    /// Removes every subscriber whose client has left.
    fn forget_gone(&mut self) {
        let mut removed = 0;
        self.by_bucket.retain(|_, log| {
            removed += log.forget_gone();
            log.readers() > 0
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

    /// Stages a change of `bucket` for its subscribers, if it has any; it reaches them
    /// at the next [`Subscriptions::flush`]. After [`Event::Dropped`], which reaches
    /// them at once, they are all let go: the bucket is gone, and so are their streams.
    #[inline]
    pub fn publish(&mut self, bucket: &[u8], event: Event<'_>) {
        match &mut self.hot {
            Some(hot) if *hot.bucket == *bucket => event.write_frame(&mut hot.staged),
            _ => {
                if !self.heat(bucket) {
                    return;
                }
                if let Some(hot) = &mut self.hot {
                    event.write_frame(&mut hot.staged);
                }
            }
        }
        if event == Event::Dropped {
            self.cool();
            if let Some(mut log) = self.by_bucket.remove(bucket) {
                let flushed = log.flush(true);
                self.account(&flushed);
            }
        }
    }

    /// Makes `bucket` the hot one, if it has subscribers; false if it has none.
    fn heat(&mut self, bucket: &[u8]) -> bool {
        self.cool();
        let Some(log) = self.by_bucket.get_mut(bucket) else {
            return false;
        };
        // Events staged earlier in this batch, if it was hot before, stay first.
        self.hot = Some(Hot { bucket: bucket.into(), staged: std::mem::take(log.staged()) });
        true
    }

    /// Gives the hot bucket's staged events back to its log, to be flushed with the
    /// other buckets written to; no bucket is hot after.
    fn cool(&mut self) {
        let Some(mut hot) = self.hot.take() else {
            return;
        };
        if let Some(log) = self.by_bucket.get_mut(&hot.bucket) {
            std::mem::swap(log.staged(), &mut hot.staged);
            if !log.staged().is_empty() {
                self.dirty.push(hot.bucket);
            }
        }
    }

    /// Hands the events staged since the last flush to the subscribers: one lock and
    /// at most one wake-up per bucket written to. The worker calls it after each
    /// batch, before the batch's replies go out. The hot bucket stays hot.
    pub fn flush(&mut self) {
        self.flush_hot();
        let mut dirty = std::mem::take(&mut self.dirty);
        for bucket in dirty.drain(..) {
            let Some(log) = self.by_bucket.get_mut(&bucket) else {
                continue;
            };
            let flushed = log.flush(false);
            if log.readers() == 0 {
                self.by_bucket.remove(&bucket);
                if self.hot.as_ref().is_some_and(|hot| hot.bucket == bucket) {
                    self.hot = None;
                }
            }
            self.account(&flushed);
        }
        self.dirty = dirty;
    }

    /// Flushes the hot bucket's staged events, lending its buffer to the log for it.
    fn flush_hot(&mut self) {
        let Some(hot) = self.hot.as_mut().filter(|hot| !hot.staged.is_empty()) else {
            return;
        };
        let Some(log) = self.by_bucket.get_mut(&hot.bucket) else {
            self.hot = None;
            return;
        };
        std::mem::swap(log.staged(), &mut hot.staged);
        let flushed = log.flush(false);
        // The log emptied the buffer (and let go of it if it had grown large).
        std::mem::swap(log.staged(), &mut hot.staged);
        let unread = log.readers() == 0;
        if unread && let Some(hot) = self.hot.take() {
            self.by_bucket.remove(&hot.bucket);
        }
        self.account(&flushed);
    }

    fn account(&mut self, flushed: &Flushed) {
        self.count -= flushed.removed;
        self.dropped_total += flushed.dropped as u64;
        self.wakeups += u64::from(flushed.woke);
        self.looks += u64::from(flushed.looked);
        if flushed.dropped > 0 {
            log::warn!("dropped {} subscriber(s) more than their backlog limit behind", flushed.dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::event_log::{CHECK_EVERY, Take};
    use super::*;

    /// Everything the subscription can take now, without waiting: the log's frames.
    fn taken_frames(subscription: &Subscription) -> (Vec<u8>, Take) {
        let mut out = Vec::new();
        let mut last = subscription.cursor.take(&mut out, usize::MAX, Duration::ZERO);
        while last == Take::Got {
            last = subscription.cursor.take(&mut out, usize::MAX, Duration::ZERO);
        }
        (out, last)
    }

    /// [`taken_frames`], as the text door's lines.
    fn taken(subscription: &Subscription) -> (Vec<u8>, Take) {
        let (frames, last) = taken_frames(subscription);
        let mut text = Vec::new();
        let mut at = 0;
        while let crate::protocol::EventFrame::Event(event, used) = Event::read_frame(&frames[at..]) {
            event.write_text(&mut text);
            at += used;
        }
        assert_eq!(at, frames.len(), "whole frames only");
        (text, last)
    }

    /// The bytes an event takes in the log.
    fn frame_len(event: Event<'_>) -> usize {
        let mut frame = Vec::new();
        event.write_frame(&mut frame);
        frame.len()
    }

    fn set(value: &[u8]) -> Event<'_> {
        Event::Set { key: b"k", value }
    }

    #[test]
    fn events_reach_every_subscriber_of_the_bucket_only() {
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        let (b, b_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.add(b"y", b);
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.publish(b"x", Event::Deleted { key: b"k" });
        subscriptions.publish(b"z", Event::Dropped);
        assert_eq!(taken(&a_rx).0, b"", "nothing before the flush");
        subscriptions.flush();
        assert_eq!(taken(&a_rx), (b"k SET TO 1\r\nk DELETED\r\n".to_vec(), Take::Nothing));
        assert_eq!(taken(&b_rx).0, b"");
        assert_eq!(subscriptions.len(), 2);
    }

    #[test]
    fn events_for_buckets_written_in_turn_keep_their_order_across_batches() {
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        let (b, b_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.add(b"y", b);
        for round in [b"1", b"2"] {
            subscriptions.publish(b"x", set(round));
            subscriptions.publish(b"y", set(round));
            subscriptions.publish(b"z", set(round));
            subscriptions.publish(b"x", Event::Deleted { key: round });
            subscriptions.publish(b"y", Event::Deleted { key: round });
            subscriptions.publish(b"y", set(b"last"));
            subscriptions.flush();
        }
        subscriptions.publish(b"x", set(b"3"));
        subscriptions.publish(b"x", Event::Dropped);
        subscriptions.publish(b"x", set(b"after the drop"));
        subscriptions.flush();
        let x = b"k SET TO 1\r\n1 DELETED\r\nk SET TO 2\r\n2 DELETED\r\nk SET TO 3\r\nDROPPED\r\n";
        assert_eq!(taken(&a_rx), (x.to_vec(), Take::Ended));
        let y = b"k SET TO 1\r\n1 DELETED\r\nk SET TO last\r\nk SET TO 2\r\n2 DELETED\r\nk SET TO last\r\n";
        assert_eq!(taken(&b_rx), (y.to_vec(), Take::Nothing));
        assert_eq!(subscriptions.len(), 1);
    }

    #[test]
    fn an_armed_reader_is_rung_once_at_the_next_append_and_let_go_when_it_leaves() {
        let bell = Arc::new(crate::sys::Bell::new().unwrap());
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.flush();
        assert!(!a_rx.cursor.arm(&bell), "events wait: nothing to arm for");
        assert_eq!(taken(&a_rx).0, b"k SET TO 1\r\n");
        assert!(a_rx.cursor.arm(&bell));
        assert!(a_rx.cursor.arm(&bell), "arming twice is one ring");
        assert!(!bell.is_rung());
        subscriptions.publish(b"x", set(b"2"));
        assert!(!bell.is_rung(), "rung at the flush, not at the event");
        subscriptions.flush();
        assert!(bell.is_rung());
        bell.clear();
        subscriptions.publish(b"x", set(b"3"));
        subscriptions.flush();
        assert!(!bell.is_rung(), "once per arming");
        assert_eq!(taken(&a_rx).0, b"k SET TO 2\r\nk SET TO 3\r\n");
        assert!(a_rx.cursor.arm(&bell));
        drop(a_rx);
        assert_eq!(Arc::strong_count(&bell), 1, "the log let go of the bell with its reader");
    }

    #[test]
    fn a_subscriber_registered_mid_batch_sees_the_events_after_it_only() {
        let mut subscriptions = Subscriptions::default();
        let (early, early_rx) = subscription(1024);
        let (late, late_rx) = subscription(1024);
        subscriptions.add(b"x", early);
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.add(b"x", late);
        subscriptions.publish(b"x", set(b"2"));
        subscriptions.flush();
        subscriptions.publish(b"x", set(b"3"));
        subscriptions.flush();
        assert_eq!(taken(&early_rx).0, b"k SET TO 1\r\nk SET TO 2\r\nk SET TO 3\r\n");
        assert_eq!(taken(&late_rx).0, b"k SET TO 2\r\nk SET TO 3\r\n");
    }

    #[test]
    fn a_drop_is_the_last_event_and_lets_every_subscriber_go() {
        let mut subscriptions = Subscriptions::default();
        let (a, a_rx) = subscription(1024);
        let (b, b_rx) = subscription(1024);
        subscriptions.add(b"x", a);
        subscriptions.add(b"x", b);
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.publish(b"x", Event::Dropped);
        assert!(subscriptions.is_empty());
        assert_eq!(subscriptions.dropped_total(), 0, "let go, not dropped for falling behind");
        for rx in [a_rx, b_rx] {
            assert_eq!(taken(&rx), (b"k SET TO 1\r\nDROPPED\r\n".to_vec(), Take::Ended));
        }
    }

    #[test]
    fn a_subscriber_past_its_limit_is_dropped_and_counted() {
        let mut subscriptions = Subscriptions::default();
        let event_len = frame_len(set(b"1234567890"));
        let (slow, slow_rx) = subscription(2 * event_len - 1);
        subscriptions.add(b"x", slow);
        subscriptions.publish(b"x", set(b"1234567890"));
        subscriptions.flush();
        assert_eq!(subscriptions.len(), 1);
        subscriptions.publish(b"x", set(b"1234567890"));
        subscriptions.flush();
        assert_eq!(subscriptions.len(), 0);
        assert_eq!(subscriptions.dropped_total(), 1);
        assert!(slow_rx.cursor.dropped.load(std::sync::atomic::Ordering::Acquire));
    }

    #[test]
    fn what_was_written_to_the_client_counts_not_what_was_read_from_the_log() {
        let mut subscriptions = Subscriptions::default();
        let event_len = frame_len(set(b"1"));
        let (subscriber, rx) = subscription(2 * event_len);
        subscriptions.add(b"x", subscriber);
        for _ in 0..2 {
            subscriptions.publish(b"x", set(b"1"));
        }
        subscriptions.flush();
        assert_eq!(taken_frames(&rx).0.len(), 2 * event_len, "read, never written");
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.flush();
        assert_eq!(subscriptions.dropped_total(), 1);
    }

    /// Regression: with 100 subscribers that never read, every event was one channel
    /// send, one `Arc` clone and one atomic add per subscriber, and a pipelining
    /// writer fell from 4.6M to 18k-40k PUTs/s (issue 13, item 3). Now an event is
    /// appended once; the subscribers are looked at once per [`CHECK_EVERY`] bytes of
    /// events, and none that is not waiting is woken.
    #[test]
    fn stuck_subscribers_cost_the_writer_nothing_per_event_and_share_one_log() {
        let mut subscriptions = Subscriptions::default();
        let limit = 1 << 20;
        let stuck: Vec<Subscription> = (0..100)
            .map(|_| {
                let (subscriber, subscription) = subscription(limit);
                subscriptions.add(b"x", subscriber);
                subscription
            })
            .collect();
        let event_len = frame_len(set(b"1"));
        let events = 4 * CHECK_EVERY as usize / event_len;
        for i in 0..events {
            subscriptions.publish(b"x", set(b"1"));
            if i % 100 == 99 {
                subscriptions.flush();
            }
        }
        subscriptions.flush();
        assert_eq!(subscriptions.wakeups, 0, "nobody waits, nobody is woken");
        assert!(
            subscriptions.looks <= 5,
            "{} looks at the subscribers for {events} events",
            subscriptions.looks
        );
        let (held, _) = subscriptions.by_bucket[&b"x"[..]].held();
        assert_eq!(held, events * event_len, "each event held once, not once per subscriber");
        assert_eq!(subscriptions.len(), stuck.len());
    }

    #[test]
    fn the_log_lets_go_of_what_every_subscriber_read_and_of_everything_once_they_are_dropped() {
        let mut subscriptions = Subscriptions::default();
        let (reader, reader_rx) = subscription(1 << 20);
        let (stuck, _stuck_rx) = subscription(4 * CHECK_EVERY as usize);
        subscriptions.add(b"x", reader);
        subscriptions.add(b"x", stuck);
        let value = [b'v'; 1000];
        for _ in 0..8 * CHECK_EVERY / 1000 {
            subscriptions.publish(b"x", set(&value));
            subscriptions.flush();
            let (read, _) = taken_frames(&reader_rx);
            reader_rx.cursor.written.fetch_add(read.len() as u64, std::sync::atomic::Ordering::AcqRel);
        }
        assert_eq!(subscriptions.dropped_total(), 1, "the stuck one");
        let (held, capacity) = subscriptions.by_bucket[&b"x"[..]].held();
        assert!(held < 2 * CHECK_EVERY as usize, "{held} bytes held");
        assert!(capacity <= 4 * CHECK_EVERY as usize, "{capacity} bytes of capacity");
    }

    /// Regression: the log kept 221 MiB of events after 100 stuck subscribers closed
    /// their connections, until the bucket's next write.
    #[test]
    fn the_log_lets_go_of_its_bytes_when_the_last_subscriber_leaves_without_any_write() {
        let mut subscriptions = Subscriptions::default();
        let (first, first_rx) = subscription(1 << 20);
        let (second, second_rx) = subscription(1 << 20);
        subscriptions.add(b"x", first);
        subscriptions.add(b"x", second);
        for _ in 0..1000 {
            subscriptions.publish(b"x", set(b"1"));
        }
        subscriptions.flush();
        drop(first_rx);
        assert_eq!(subscriptions.by_bucket[&b"x"[..]].held().0, 1000 * frame_len(set(b"1")));
        drop(second_rx);
        assert_eq!(subscriptions.by_bucket[&b"x"[..]].held(), (0, 0));
    }

    /// The reader is woken by the one event published while it waits. (This test once
    /// published in a loop until a wake-up was counted: when the reader's thread started
    /// late, the events passed its backlog, it was dropped, and both threads spun for
    /// ever; now it publishes one event, once the reader waits.)
    #[test]
    fn only_subscribers_waiting_for_events_are_woken() {
        let mut subscriptions = Subscriptions::default();
        let (subscriber, rx) = subscription(1024);
        subscriptions.add(b"x", subscriber);
        let waiter = std::thread::spawn(move || {
            let mut out = Vec::new();
            rx.cursor.take(&mut out, usize::MAX, Duration::from_secs(20));
            out
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscriptions.by_bucket[&b"x"[..]].waiting() == 0 {
            assert!(Instant::now() < deadline, "the reader never waited");
            std::thread::yield_now();
        }
        subscriptions.publish(b"x", set(b"1"));
        subscriptions.flush();
        assert_eq!(subscriptions.wakeups, 1, "the waiting reader is woken, once");
        let mut first = Vec::new();
        set(b"1").write_frame(&mut first);
        assert_eq!(waiter.join().expect("the waiter ends"), first);
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
    fn a_subscription_never_registered_ends_instead_of_waiting_forever() {
        let (subscriber, subscription) = subscription(1024);
        drop(subscriber);
        assert_eq!(taken(&subscription), (Vec::new(), Take::Ended));
    }

    #[test]
    fn a_subscriber_that_went_away_is_removed_at_the_next_write_but_not_counted_as_dropped() {
        let mut subscriptions = Subscriptions::default();
        let (gone, gone_rx) = subscription(1024);
        subscriptions.add(b"x", gone);
        drop(gone_rx);
        subscriptions.publish(b"x", Event::Deleted { key: b"k" });
        subscriptions.flush();
        assert!(subscriptions.is_empty());
        assert_eq!(subscriptions.dropped_total(), 0);
    }

    /// Polls `value` until it is above 0 and two readings 200 ms apart agree (at most
    /// about 20 s).
    fn settled(value: impl Fn() -> u64) -> u64 {
        let mut last = value();
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            let now = value();
            if now == last && now > 0 {
                return now;
            }
            last = now;
        }
        last
    }

    #[test]
    fn a_stuck_subscriber_filled_4_mib_of_kernel_send_buffer_now_at_most_its_capped_size() {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Never reads: what the server writes piles up in the two sockets' buffers.
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut subscriptions = Subscriptions::default();
        let (subscriber, stream) = subscription(64 << 20);
        let cursor = stream.cursor.clone();
        subscriptions.add(b"x", subscriber);
        let value = vec![b'v'; 1000];
        for _ in 0..8 * 1024 {
            subscriptions.publish(b"x", set(&value));
        }
        subscriptions.flush();
        let stop = AtomicBool::new(false);
        let written = std::thread::scope(|scope| {
            let streaming = scope.spawn(|| stream_events(&server_side, stream, &stop, &Render::Text));
            // Wait for the socket to fill: the bytes written stop growing.
            let written = settled(|| cursor.written.load(Ordering::Acquire));
            stop.store(true, Ordering::Relaxed);
            streaming.join().unwrap().unwrap();
            written
        });
        let buffer = crate::sys::send_buffer(&server_side).unwrap();
        assert!(buffer <= 2 * SUBSCRIBER_SEND_BUFFER, "the send buffer is {buffer} bytes");
        // The client's receive buffer (128 KiB by default, not growing while it does
        // not read) plus the capped send buffer; uncapped, 4 MiB more.
        assert!(written > 64 * 1024, "events were streamed: {written} bytes");
        assert!(written < 1024 * 1024, "{written} bytes went into the kernel's buffers");
        drop(client);
    }

    /// A local subscription as the stream loop's source, counting the loop's turns
    /// (it asks whether the client is too far behind once per turn).
    struct CountingTurns<'a> {
        inner: Subscription,
        turns: &'a std::sync::atomic::AtomicUsize,
    }

    impl stream::Source for CountingTurns<'_> {
        fn fill(&mut self, out: &mut Vec<u8>, wait: Duration) -> io::Result<stream::Fill> {
            self.inner.fill(out, wait)
        }
        fn written(&mut self, n: usize) {
            self.inner.written(n)
        }
        fn too_far_behind(&self, pending: usize) -> bool {
            self.turns.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.inner.too_far_behind(pending)
        }
        fn write_wait(&self) -> Duration {
            self.inner.write_wait()
        }
        fn holds_backlog(&self) -> bool {
            self.inner.holds_backlog()
        }
    }

    /// Regression: with events rendered from frames, a stuck client's loop took another
    /// chunk from the log every half second and counted it as written, so it held ever
    /// more events itself (128 KiB a second) and its worker never found it behind. What
    /// is counted as written may pass what the kernel took by at most what one turn
    /// holds: a chunk waiting, and the chunk taken while it was under one.
    #[test]
    fn a_stuck_subscriber_takes_nothing_more_from_the_log_once_a_chunk_waits() {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut subscriptions = Subscriptions::default();
        let (subscriber, stream) = subscription(256 << 20);
        let cursor = stream.cursor.clone();
        subscriptions.add(b"x", subscriber);
        let value = vec![b'v'; 1000];
        for _ in 0..32 * 1024 {
            subscriptions.publish(b"x", set(&value));
        }
        subscriptions.flush();
        let stop = AtomicBool::new(false);
        let turns = AtomicUsize::new(0);
        let mut source = CountingTurns { inner: stream, turns: &turns };
        let counted = std::thread::scope(|scope| {
            let streaming = scope.spawn(|| stream::stream(&server_side, &mut source, &stop, &Render::Text));
            // Once the client's socket is full, four turns of the stuck loop (one each
            // half second), each of which could have taken more from the log, must
            // leave the count where it was.
            let written = || cursor.written.load(Ordering::Acquire);
            let mut since = (turns.load(Ordering::Acquire), written());
            let mut still = false;
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(50));
                let now = (turns.load(Ordering::Acquire), written());
                if now.1 != since.1 {
                    since = now;
                } else if now.0 >= since.0 + 4 {
                    still = true;
                    break;
                }
            }
            let counted = written();
            stop.store(true, Ordering::Relaxed);
            streaming.join().unwrap().unwrap();
            assert!(still, "the stuck loop kept taking from the log: {counted} bytes counted");
            counted
        });
        // What reached the kernel: waiting at the client, and not yet sent.
        client.set_nonblocking(true).unwrap();
        let mut scratch = vec![0u8; 64 << 20];
        let at_client = client.peek(&mut scratch).unwrap_or(0);
        let unsent = crate::sys::unsent_bytes(&server_side).unwrap();
        let in_kernel = (at_client + unsent) as u64;
        // A frame of a 1000-byte value is 1,010 bytes, its text line 1,012.
        assert!(
            counted <= in_kernel + 2 * 64 * 1024 + 4 * 1024,
            "counted {counted}, in the kernel {in_kernel}"
        );
    }
}
