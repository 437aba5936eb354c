//! STATS: the figures a running server reports, gathered from the shared state.
//!
//! Read with relaxed atomics, so a reply is a snapshot of counters each exact on its
//! own, not a consistent cut across them. The names are part of the protocol
//! (docs/PROTOCOL.md); `kv top` and the tests read them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::Stats;
use crate::state::State;

/// Every STATS figure of this node, in the order the reply lists them.
pub(crate) fn collect(state: &State) -> Stats {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let workers = &state.workers;
    let counters = &state.counters;
    let mut stats = Stats::default();
    stats.push("node", &state.config.node);
    stats.push("uptime_s", state.started.elapsed().as_secs());
    stats.push("connections", counters.connections.load(Ordering::Relaxed));
    stats.push("connections_total", load(&counters.connections_total));
    stats.push("rejected_connections", load(&counters.rejected_connections));
    stats.push("commands_total", load(&counters.commands_total));
    stats.push("buckets", workers.iter().map(|w| w.stats.buckets.load(Ordering::Relaxed)).sum::<usize>());
    stats.push("keys", workers.iter().map(|w| w.stats.keys.load(Ordering::Relaxed)).sum::<usize>());
    stats.push("workers", workers.len());
    stats.push("worker_restarts", workers.iter().map(|w| load(&w.stats.restarts)).sum::<u64>());
    stats.push("subscribers", counters.subscribers.load(Ordering::Relaxed));
    stats.push("streaming_connections", counters.streaming.load(Ordering::Relaxed));
    let dropped_by_workers = workers.iter().map(|w| load(&w.stats.subscribers_dropped)).sum::<u64>();
    stats.push("subscribers_dropped", dropped_by_workers + load(&counters.subscribers_dropped));
    add_persistence(state, &mut stats);
    let memory_used: usize = workers.iter().map(|w| w.stats.memory.load(Ordering::Relaxed)).sum();
    stats.push("memory_used", memory_used);
    stats.push("memory_limit", state.config.max_memory.unwrap_or(0));
    state.peers.add_stats(&mut stats);
    stats.push("auth_failures", load(&counters.auth_failures));
    stats.push("peer_auth_failures", load(&counters.peer_auth_failures) + state.peers.auth_failures());
    stats.push("protected_mode_rejections", load(&counters.protected_mode_rejections));
    stats.push("peer_connections", counters.peer_connections.load(Ordering::Relaxed));
    let inboxes = state.inboxes.lock();
    for (i, worker) in workers.iter().enumerate() {
        let queue = inboxes.as_ref().map_or(0, |inboxes| inboxes[i].len());
        stats.push(format!("worker.{i}.queue"), queue);
        stats.push(format!("worker.{i}.buckets"), worker.stats.buckets.load(Ordering::Relaxed));
        stats.push(format!("worker.{i}.keys"), worker.stats.keys.load(Ordering::Relaxed));
        stats.push(format!("worker.{i}.restarts"), load(&worker.stats.restarts));
    }
    stats
}

/// The persistence figures: on or off, the policy, and how the logs are doing.
fn add_persistence(state: &State, stats: &mut Stats) {
    let Some(data) = &state.data else {
        stats.push("persistence", "off");
        return;
    };
    let workers = &state.workers;
    let sum = |counter: fn(&crate::worker::WorkerStats) -> &AtomicU64| {
        workers.iter().map(|w| counter(&w.stats).load(Ordering::Relaxed)).sum::<u64>()
    };
    let syncs = || workers.iter().filter_map(|w| w.sync.as_ref().map(|(sync, _)| sync));
    stats.push("persistence", "on");
    stats.push("fsync", state.config.fsync);
    stats.push("log_bytes", sum(|s| &s.log_bytes));
    stats.push("last_fsync_age_ms", syncs().map(|sync| sync.last_sync_age_ms()).max().unwrap_or(0));
    stats.push("fsyncs_delayed", syncs().map(|sync| sync.delayed.load(Ordering::Relaxed)).sum::<u64>());
    stats.push("compactions", sum(|s| &s.compactions));
    stats.push("persistence_errors", sum(|s| &s.persistence_errors));
    stats.push("load_time_ms", data.load_time.as_millis());
}
