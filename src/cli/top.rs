//! `kv top`: a live view of one or more nodes in a terminal, the guide's Observer
//! for people on `ssh`.
//!
//! It is a client like any other: every interval it sends `STATS` to each node,
//! works out rates from the difference between two samples, and redraws the screen
//! with plain ANSI escapes. Sampling and drawing are separate: [`render`] turns
//! samples into text and is tested without sockets. This file must not reach into
//! server internals; STATS is its only source.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::client::Client;

/// One node's STATS at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the reply arrived.
    pub at: Instant,
    /// The (name, value) pairs in the server's order.
    pub stats: Vec<(String, String)>,
}

impl Sample {
    /// The value of `name`, if reported.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.stats.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.get(name)?.parse().ok()
    }
}

/// What the view knows about one node: where it is, and its last two samples (or
/// why it could not be reached).
#[derive(Debug)]
pub struct NodeView {
    /// The address given on the command line.
    pub addr: String,
    /// The newest sample, or the error that replaced it.
    pub latest: Result<Sample, String>,
    /// The sample before it, for rates.
    pub previous: Option<Sample>,
}

/// Renders one frame: a block per node.
pub fn render(nodes: &[NodeView]) -> String {
    let mut out = String::new();
    for node in nodes {
        let sample = match &node.latest {
            Ok(sample) => sample,
            Err(error) => {
                let _ = writeln!(out, "node ? at {}: unreachable ({error})\n", node.addr);
                continue;
            }
        };
        let show = |name: &str| sample.get(name).unwrap_or("-").to_string();
        let rate = node
            .previous
            .as_ref()
            .and_then(|previous| {
                let seconds = sample.at.duration_since(previous.at).as_secs_f64();
                let delta =
                    sample.number("commands_total")?.checked_sub(previous.number("commands_total")?)?;
                (seconds > 0.0).then(|| format!("{:.0}", delta as f64 / seconds))
            })
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(out, "node {} at {}   up {}s", show("node"), node.addr, show("uptime_s"));
        let _ = writeln!(
            out,
            "  connections {} (total {}, rejected {})   commands/s {}   buckets {}   keys {}",
            show("connections"),
            show("connections_total"),
            show("rejected_connections"),
            rate,
            show("buckets"),
            show("keys"),
        );
        let _ = writeln!(
            out,
            "  worker restarts {}   forwarded {}   peer errors {}   subscribers {} (dropped {})",
            show("worker_restarts"),
            show("forwarded_total"),
            show("peer_errors_total"),
            show("subscribers"),
            show("subscribers_dropped"),
        );
        let workers: usize = sample.number("workers").unwrap_or(0) as usize;
        let _ = writeln!(
            out,
            "  {:<8} {:>8} {:>9} {:>10} {:>9}",
            "worker", "queue", "buckets", "keys", "restarts"
        );
        for i in 0..workers {
            let field = |what: &str| sample.get(&format!("worker.{i}.{what}")).unwrap_or("-").to_string();
            let _ = writeln!(
                out,
                "  {:<8} {:>8} {:>9} {:>10} {:>9}",
                i,
                field("queue"),
                field("buckets"),
                field("keys"),
                field("restarts")
            );
        }
        let peers: Vec<&str> = sample
            .stats
            .iter()
            .filter_map(|(name, _)| name.strip_prefix("peer.")?.strip_suffix(".state"))
            .collect();
        if !peers.is_empty() {
            let _ = writeln!(out, "  {:<16} {:>6} {:>10}", "peer", "state", "forwarded");
            for peer in peers {
                let field =
                    |what: &str| sample.get(&format!("peer.{peer}.{what}")).unwrap_or("-").to_string();
                let _ = writeln!(out, "  {:<16} {:>6} {:>10}", peer, field("state"), field("forwarded"));
            }
        }
        out.push('\n');
    }
    out
}

/// Takes one sample from `client`, reconnecting first if needed.
fn sample(addr: &str, client: &mut Option<Client>) -> Result<Sample, String> {
    if client.is_none() {
        let fresh = Client::connect(addr).map_err(|e| e.to_string())?;
        fresh.set_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        *client = Some(fresh);
    }
    let Some(connected) = client.as_mut() else {
        return Err("not connected".to_string());
    };
    match connected.stats() {
        Ok(stats) => Ok(Sample { at: Instant::now(), stats }),
        Err(error) => {
            *client = None;
            Err(error.to_string())
        }
    }
}

/// Runs the view: redraws every `interval` until the output goes away, or, with
/// `once`, samples twice (one interval apart, for rates) and prints one frame.
pub fn run(addrs: &[String], interval: Duration, once: bool, out: &mut impl Write) -> io::Result<()> {
    let mut clients: Vec<Option<Client>> = addrs.iter().map(|_| None).collect();
    let mut views: Vec<NodeView> = addrs
        .iter()
        .map(|addr| NodeView { addr: addr.clone(), latest: Err("not sampled yet".into()), previous: None })
        .collect();
    let mut take_samples = |views: &mut Vec<NodeView>| {
        for ((view, client), addr) in views.iter_mut().zip(clients.iter_mut()).zip(addrs) {
            let fresh = sample(addr, client);
            let old = std::mem::replace(&mut view.latest, fresh);
            view.previous = old.ok();
        }
    };
    take_samples(&mut views);
    if once {
        std::thread::sleep(interval);
        take_samples(&mut views);
        out.write_all(render(&views).as_bytes())?;
        return out.flush();
    }
    loop {
        std::thread::sleep(interval);
        take_samples(&mut views);
        // Home the cursor and clear the screen, then draw.
        out.write_all(b"\x1b[H\x1b[2J")?;
        out.write_all(render(&views).as_bytes())?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_of(pairs: &[(&str, &str)], at: Instant) -> Sample {
        Sample { at, stats: pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn renders_every_field_and_a_rate() {
        let t0 = Instant::now();
        let base = [
            ("node", "foo"),
            ("uptime_s", "12"),
            ("connections", "3"),
            ("connections_total", "9"),
            ("rejected_connections", "0"),
            ("commands_total", "100"),
            ("buckets", "2"),
            ("keys", "40"),
            ("workers", "2"),
            ("worker_restarts", "1"),
            ("forwarded_total", "5"),
            ("peer_errors_total", "0"),
            ("subscribers", "1"),
            ("subscribers_dropped", "0"),
            ("worker.0.queue", "0"),
            ("worker.0.buckets", "1"),
            ("worker.0.keys", "30"),
            ("worker.0.restarts", "1"),
            ("worker.1.queue", "4"),
            ("worker.1.buckets", "1"),
            ("worker.1.keys", "10"),
            ("worker.1.restarts", "0"),
            ("peer.bar.state", "down"),
            ("peer.bar.forwarded", "5"),
        ];
        let mut later = base;
        later[5] = ("commands_total", "300");
        let view = NodeView {
            addr: "127.0.0.1:4040".into(),
            previous: Some(sample_of(&base, t0)),
            latest: Ok(sample_of(&later, t0 + Duration::from_secs(2))),
        };
        let frame = render(&[view]);
        assert!(frame.contains("node foo at 127.0.0.1:4040   up 12s"), "{frame}");
        assert!(frame.contains("commands/s 100"), "{frame}");
        assert!(frame.contains("subscribers 1 (dropped 0)"), "{frame}");
        assert!(frame.contains("bar"), "{frame}");
        assert!(frame.contains("down"), "{frame}");
        let worker_lines: Vec<&str> =
            frame.lines().filter(|l| l.trim_start().starts_with(['0', '1'])).collect();
        assert_eq!(worker_lines.len(), 2, "{frame}");
        assert!(worker_lines[1].split_whitespace().eq(["1", "4", "1", "10", "0"]), "{frame}");
    }

    #[test]
    fn an_unreachable_node_is_said_so() {
        let view = NodeView { addr: "127.0.0.1:1".into(), latest: Err("refused".into()), previous: None };
        assert!(render(&[view]).contains("127.0.0.1:1: unreachable (refused)"));
    }
}
