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
    stats
        .push("subscribers_dropped", workers.iter().map(|w| load(&w.stats.subscribers_dropped)).sum::<u64>());
    let memory_used: usize = workers.iter().map(|w| w.stats.memory.load(Ordering::Relaxed)).sum();
    stats.push("memory_used", memory_used);
    stats.push("memory_limit", state.config.max_memory.unwrap_or(0));
    state.peers.add_stats(&mut stats);
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
