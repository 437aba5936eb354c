//! Where a request meets the partition: [`apply`] turns one [`Command`] into a change
//! of the [`Partition`], an [`Event`] for the bucket's subscribers, and a [`Reply`].
//!
//! Every mutation passes through here, whichever thread applies the batch (a worker,
//! or a connection applying inline), always under the partition's lock. With a data
//! directory, `batch.rs` has logged the records of a stretch of requests before they
//! reach here (`Batch::log_ahead`). No I/O, no threads.

use crate::protocol::{Command, ErrorKind, Event, Reply};
use crate::store::{NoSuchBucket, Partition, WriteError};
use crate::subscribe::{Subscriber, Subscriptions};

/// Applies one parsed command to `partition`, streams the change it made to
/// `subscriptions`, and says what to answer.
///
/// `subscriber` is the one a `SUBSCRIBE` brought along: registered (taken) if the
/// bucket exists. Commands that are not about a bucket never reach a worker; if one
/// does, it is answered `UNKNOWN COMMAND` rather than trusted.
pub fn apply<'p>(
    partition: &'p mut Partition,
    subscriptions: &mut Subscriptions,
    command: Command<'_>,
    subscriber: &mut Option<Subscriber>,
) -> Reply<'p> {
    let (result, event) = match command {
        Command::Get { bucket, key } => {
            return match partition.get(bucket, key) {
                Ok(value) => Reply::Value(value.unwrap_or(b"")),
                Err(NoSuchBucket) => Reply::NotFound,
            };
        }
        Command::Create { bucket } => {
            return match partition.create_within_limit(bucket) {
                Ok(()) => Reply::Ok,
                Err(error) => refused(error),
            };
        }
        Command::Put { bucket, key, value } => match partition.put_within_limit(bucket, key, value) {
            Ok(()) => (Ok(()), (bucket, Event::Set { key, value })),
            Err(error) => return refused(error),
        },
        Command::Delete { bucket, key } => (partition.delete(bucket, key), (bucket, Event::Deleted { key })),
        Command::Drop { bucket } => (partition.drop_bucket(bucket), (bucket, Event::Dropped)),
        Command::Subscribe { bucket } => return subscribe(partition, subscriptions, bucket, subscriber),
        // Fault injection (`kv serve --debug`): nothing has been changed yet, so the
        // partition stays exactly as it was.
        Command::DebugCrash { .. } => panic!("DEBUG CRASH requested"),
        Command::Ping
        | Command::Stats
        | Command::Quit
        | Command::Auth { .. }
        | Command::DebugCrashConnection
        | Command::DebugCrashAcceptor
        | Command::Unknown => return Reply::Unknown,
    };
    match result {
        Ok(()) => {
            if !subscriptions.is_empty() {
                subscriptions.publish(event.0, event.1);
            }
            Reply::Ok
        }
        Err(NoSuchBucket) => Reply::NotFound,
    }
}

/// The reply to a write the store did not apply.
fn refused<'p>(error: WriteError) -> Reply<'p> {
    match error {
        WriteError::NoSuchBucket => Reply::NotFound,
        WriteError::OutOfMemory => Reply::Error(ErrorKind::OutOfMemory),
    }
}

/// Registers a subscription to `bucket`: no reply if it exists (the stream starts),
/// [`Reply::NotFound`] if not.
fn subscribe<'p>(
    partition: &Partition,
    subscriptions: &mut Subscriptions,
    bucket: &[u8],
    subscriber: &mut Option<Subscriber>,
) -> Reply<'p> {
    if !partition.contains(bucket) {
        return Reply::NotFound;
    }
    match subscriber.take() {
        Some(subscriber) => {
            subscriptions.add(bucket, subscriber);
            Reply::Subscribed
        }
        // Only a connection that attached a subscriber sends SUBSCRIBE; anything
        // else is a bug, answered rather than trusted.
        None => Reply::Error(ErrorKind::SubscriptionNotSetUp),
    }
}
