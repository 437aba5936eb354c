//! Where a request meets the partition: [`apply`] turns one [`Command`] into a change
//! of the [`Partition`], an [`Event`] for the bucket's subscribers, and a [`Reply`].
//!
//! Every mutation passes through here, whichever thread applies the batch (a worker,
//! or a connection applying inline), always under the partition's lock. With a data
//! directory, `batch.rs` has logged the records of a stretch of requests before they
//! reach here (`Batch::log_ahead`). No I/O, no threads.

use crate::protocol::{Command, ErrorKind, Event, Fields, Part, Reply};
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
                // A missing key's answer is the empty line: an empty value (stored
                // through the RESP door) would read the same, so it is refused.
                Ok(Some(b"")) => Reply::Error(ErrorKind::NotRepresentable),
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
        Command::HSet { bucket, key, value } | Command::SetString { bucket, key, value } => {
            match partition.upsert_within_limit(bucket, key, value) {
                Ok(new) => {
                    if !subscriptions.is_empty() {
                        subscriptions.publish(bucket, Event::Set { key, value });
                    }
                    return match command {
                        Command::SetString { .. } => Reply::Ok,
                        _ => Reply::Integer(i64::from(new)),
                    };
                }
                Err(error) => return refused(error),
            }
        }
        Command::HDel { bucket, key } => {
            let removed = partition.remove(bucket, key).unwrap_or(false);
            if removed && !subscriptions.is_empty() {
                subscriptions.publish(bucket, Event::Deleted { key });
            }
            return Reply::Integer(i64::from(removed));
        }
        Command::Del { bucket } => match partition.drop_bucket(bucket) {
            Ok(()) => (Ok(()), (bucket, Event::Dropped)),
            Err(NoSuchBucket) => return Reply::Integer(0),
        },
        Command::HGet { .. }
        | Command::HExists { .. }
        | Command::HLen { .. }
        | Command::HGetAll { .. }
        | Command::HKeys { .. }
        | Command::HVals { .. }
        | Command::Exists { .. }
        | Command::Type { .. } => return read(partition, command),
        // Fault injection (`kv serve --debug`): nothing has been changed yet, so the
        // partition stays exactly as it was.
        Command::DebugCrash { .. } => panic!("DEBUG CRASH requested"),
        Command::Ping
        | Command::Stats
        | Command::Quit
        | Command::Auth { .. }
        | Command::DebugCrashConnection
        | Command::DebugCrashAcceptor
        | Command::DebugFailSync
        | Command::Unknown => return Reply::Unknown,
    };
    match result {
        Ok(()) => {
            if !subscriptions.is_empty() {
                subscriptions.publish(event.0, event.1);
            }
            match command {
                Command::Del { .. } => Reply::Integer(1),
                _ => Reply::Ok,
            }
        }
        Err(NoSuchBucket) => Reply::NotFound,
    }
}

/// The RESP door's reads: a missing bucket reads as an empty one, as a missing key
/// does in Redis.
fn read<'p>(partition: &'p Partition, command: Command<'_>) -> Reply<'p> {
    let fields =
        |bucket: &[u8], part| Reply::Fields(partition.bucket(bucket).map(|b| b as &dyn Fields), part);
    match command {
        Command::HGet { bucket, key } => match partition.get(bucket, key) {
            Ok(Some(value)) => Reply::Bulk(value),
            _ => Reply::Nil,
        },
        Command::HExists { bucket, key } => {
            Reply::Integer(i64::from(matches!(partition.get(bucket, key), Ok(Some(_)))))
        }
        Command::HLen { bucket } => Reply::Integer(partition.bucket(bucket).map_or(0, |b| b.len() as i64)),
        Command::HGetAll { bucket } => fields(bucket, Part::Pairs),
        Command::HKeys { bucket } => fields(bucket, Part::Keys),
        Command::HVals { bucket } => fields(bucket, Part::Values),
        Command::Exists { bucket } => Reply::Integer(i64::from(partition.contains(bucket))),
        Command::Type { bucket } => Reply::Status(if partition.contains(bucket) { "hash" } else { "none" }),
        _ => Reply::Unknown,
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
