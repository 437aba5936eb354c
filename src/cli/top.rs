//! `kv top`: a live view of one or more nodes in a terminal, the guide's Observer
//! for people on `ssh`.
//!
//! It is a client like any other: every interval it sends `STATS` to each node,
//! works out rates from the difference between two samples, and redraws the screen
//! with plain ANSI escapes. Sampling and drawing are separate: [`render`] turns
//! samples into text and is tested without sockets. This file must not reach into
//! server internals; STATS is its only source, and what STATS says is not trusted
//! with anything that allocates or indexes (a node may be old, new or wrong).
//!
//! Its own polls are not the node's load: a STATS request counts in the node's
//! `commands_total` like any other, so exactly one of top's polls lies between two
//! samples on one connection, and the commands/s shown leaves it out.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use kv::Client;

/// Watch nodes live: connections, commands per second, worker queues and restarts,
/// peers and subscribers, redrawn every interval.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "top",
    help_triggers("-h", "--help", "help"),
    note = "commands/s leaves out kv top's own STATS requests (one per node per interval)."
)]
pub(crate) struct TopArgs {
    /// a node to watch; repeat for several (default 127.0.0.1:4040)
    #[argh(option)]
    addr: Vec<String>,
    /// seconds between frames, more than 0 and at most 3600 (default 1)
    #[argh(option, default = "1.0")]
    interval: f64,
    /// print one frame (two samples one interval apart, for rates) and exit; exits 1
    /// if a node could not be reached
    #[argh(switch)]
    once: bool,
    /// a file holding the nodes' password (`kv serve --password-file`), sent with `AUTH`
    #[argh(option)]
    password_file: Option<std::path::PathBuf>,
}

/// Longest `--interval`, in seconds: an hour between frames is already not "live".
const MAX_INTERVAL_SECS: f64 = 3600.0;

/// Most workers shown per node. STATS says how many a node has; a wrong or hostile
/// number must not make top draw (or allocate) without bound.
const MAX_WORKERS_SHOWN: u64 = 1024;

/// STATS requests top itself sends per node between two samples: the later one is
/// counted after its reply is written, so one poll falls between two samples.
const OWN_POLLS_PER_SAMPLE: u64 = 1;

/// `kv top`: checks the flags, then draws until the output goes away.
pub(crate) fn main(args: TopArgs) -> ExitCode {
    let addrs = if args.addr.is_empty() { vec!["127.0.0.1:4040".to_string()] } else { args.addr };
    let Some(interval) = interval(args.interval) else {
        eprintln!("kv top: --interval must be more than 0 and at most {MAX_INTERVAL_SECS} seconds");
        return ExitCode::from(2);
    };
    let watch =
        Watch { addrs: &addrs, interval, once: args.once, password_file: args.password_file.as_deref() };
    match run(&watch, &mut io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("kv top: a node could not be reached");
            ExitCode::FAILURE
        }
        // The terminal went away (for example `kv top | head`): not an error.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv top: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--interval` as a duration, if it is more than 0 and at most [`MAX_INTERVAL_SECS`]:
/// the check and the message above state the same range.
fn interval(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds > 0.0 && seconds <= MAX_INTERVAL_SECS)
        .then(|| Duration::from_secs_f64(seconds))
}

/// One node's STATS at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When the reply arrived.
    pub(crate) at: Instant,
    /// The (name, value) pairs in the server's order.
    pub(crate) stats: Vec<(String, String)>,
}

impl Sample {
    /// The value of `name`, if reported.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.stats.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.get(name)?.parse().ok()
    }
}

/// What the view knows about one node: where it is, its last two samples (or why it
/// could not be reached), and its name from the last sample that said it.
#[derive(Debug)]
pub(crate) struct NodeView {
    /// The address given on the command line.
    pub(crate) addr: String,
    /// The newest sample, or the error that replaced it.
    pub(crate) latest: Result<Sample, String>,
    /// The sample before it, for rates.
    pub(crate) previous: Option<Sample>,
    /// The node's name (STATS `node`) as last reported: still shown when it is down.
    pub(crate) name: Option<String>,
}

impl NodeView {
    fn new(addr: &str) -> NodeView {
        NodeView { addr: addr.to_string(), latest: Err("not sampled yet".into()), previous: None, name: None }
    }

    /// Takes in a fresh sample or error; the sample it replaces becomes the previous
    /// one, and a name reported is remembered.
    fn update(&mut self, fresh: Result<Sample, String>) {
        if let Some(name) = fresh.as_ref().ok().and_then(|sample| sample.get("node")) {
            self.name = Some(name.to_string());
        }
        let old = std::mem::replace(&mut self.latest, fresh);
        self.previous = old.ok();
    }
}

/// Renders one frame: a block per node.
pub(crate) fn render(nodes: &[NodeView]) -> String {
    let mut out = String::new();
    for node in nodes {
        let reported = node.latest.as_ref().ok().and_then(|sample| sample.get("node"));
        let name = reported.or(node.name.as_deref()).unwrap_or("?");
        match &node.latest {
            Ok(sample) => render_node(&mut out, name, node, sample),
            Err(error) => {
                let _ = writeln!(out, "node {name} at {}: unreachable ({error})", node.addr);
            }
        }
        out.push('\n');
    }
    out
}

/// Commands per second between the two samples, top's own polls left out.
fn command_rate(previous: &Sample, latest: &Sample) -> Option<f64> {
    let seconds = latest.at.checked_duration_since(previous.at)?.as_secs_f64();
    let delta = latest.number("commands_total")?.checked_sub(previous.number("commands_total")?)?;
    (seconds > 0.0).then(|| delta.saturating_sub(OWN_POLLS_PER_SAMPLE) as f64 / seconds)
}

/// One reachable node's block.
fn render_node(out: &mut String, name: &str, node: &NodeView, sample: &Sample) {
    let show = |stat: &str| sample.get(stat).unwrap_or("-").to_string();
    let rate = node
        .previous
        .as_ref()
        .and_then(|previous| command_rate(previous, sample))
        .map_or_else(|| "-".to_string(), |rate| format!("{rate:.0}"));
    let _ = writeln!(out, "node {name} at {}   up {}s", node.addr, show("uptime_s"));
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
    render_persistence(out, sample);
    render_workers(out, sample);
    render_peers(out, sample);
}

/// The persistence line, for a node with a data directory.
fn render_persistence(out: &mut String, sample: &Sample) {
    if sample.get("persistence") != Some("on") {
        return;
    }
    let show = |stat: &str| sample.get(stat).unwrap_or("-").to_string();
    let _ = writeln!(
        out,
        "  fsync {}   log bytes {}   last fsync {} ms ago   delayed {}   compactions {}   errors {}   loaded in {} ms",
        show("fsync"),
        show("log_bytes"),
        show("last_fsync_age_ms"),
        show("fsyncs_delayed"),
        show("compactions"),
        show("persistence_errors"),
        show("load_time_ms"),
    );
}

/// The per-worker table, at most [`MAX_WORKERS_SHOWN`] rows whatever STATS claims.
fn render_workers(out: &mut String, sample: &Sample) {
    let reported = sample.number("workers").unwrap_or(0);
    let shown = reported.min(MAX_WORKERS_SHOWN);
    let _ =
        writeln!(out, "  {:<8} {:>8} {:>9} {:>10} {:>9}", "worker", "queue", "buckets", "keys", "restarts");
    for i in 0..shown {
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
    if reported > shown {
        let _ = writeln!(out, "  ... {} more workers not shown", reported - shown);
    }
}

/// The peer table, for nodes of a cluster.
fn render_peers(out: &mut String, sample: &Sample) {
    let peers: Vec<&str> = sample
        .stats
        .iter()
        .filter_map(|(name, _)| name.strip_prefix("peer.")?.strip_suffix(".state"))
        .collect();
    if peers.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {:<16} {:>6} {:>10}", "peer", "state", "forwarded");
    for peer in peers {
        let field = |what: &str| sample.get(&format!("peer.{peer}.{what}")).unwrap_or("-").to_string();
        let _ = writeln!(out, "  {:<16} {:>6} {:>10}", peer, field("state"), field("forwarded"));
    }
}

/// Takes one sample from `client`, reconnecting (and authenticating) first if needed.
fn sample(
    addr: &str,
    client: &mut Option<Client>,
    password_file: Option<&std::path::Path>,
) -> Result<Sample, String> {
    if client.is_none() {
        let fresh = super::client::connect(addr, password_file)?;
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

/// What `kv top` watches, and how.
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub addrs: &'a [String],
    pub interval: Duration,
    pub once: bool,
    pub password_file: Option<&'a std::path::Path>,
}

/// Runs the view: redraws every `interval` until the output goes away, or, with
/// `once`, samples twice (one interval apart, for rates) and prints one frame.
/// Returns whether every node answered the last sample.
pub(crate) fn run(watch: &Watch<'_>, out: &mut impl Write) -> io::Result<bool> {
    let Watch { addrs, interval, once, password_file } = *watch;
    let mut clients: Vec<Option<Client>> = addrs.iter().map(|_| None).collect();
    let mut views: Vec<NodeView> = addrs.iter().map(|addr| NodeView::new(addr)).collect();
    let mut take_samples = |views: &mut Vec<NodeView>| {
        for ((view, client), addr) in views.iter_mut().zip(clients.iter_mut()).zip(addrs) {
            view.update(sample(addr, client, password_file));
        }
    };
    take_samples(&mut views);
    if once {
        std::thread::sleep(interval);
        take_samples(&mut views);
        out.write_all(render(&views).as_bytes())?;
        out.flush()?;
        return Ok(views.iter().all(|view| view.latest.is_ok()));
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
    fn persistence_figures_show_only_with_a_data_directory() {
        let at = Instant::now();
        let on = [
            ("node", "foo"),
            ("persistence", "on"),
            ("fsync", "always"),
            ("log_bytes", "4096"),
            ("last_fsync_age_ms", "12"),
            ("fsyncs_delayed", "0"),
            ("compactions", "2"),
            ("persistence_errors", "1"),
            ("load_time_ms", "35"),
        ];
        let view = |pairs: &[(&str, &str)]| NodeView {
            addr: "a".into(),
            previous: None,
            latest: Ok(sample_of(pairs, at)),
            name: None,
        };
        let frame = render(&[view(&on)]);
        assert!(
            frame.contains("fsync always   log bytes 4096   last fsync 12 ms ago   delayed 0   compactions 2   errors 1   loaded in 35 ms"),
            "{frame}"
        );
        assert!(!render(&[view(&[("node", "foo"), ("persistence", "off")])]).contains("fsync"));
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
        // 201 commands in 2 s, one of them top's own STATS: 100 per second.
        later[5] = ("commands_total", "301");
        let view = NodeView {
            addr: "127.0.0.1:4040".into(),
            previous: Some(sample_of(&base, t0)),
            latest: Ok(sample_of(&later, t0 + Duration::from_secs(2))),
            name: None,
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
        let view = NodeView { latest: Err("refused".into()), ..NodeView::new("127.0.0.1:1") };
        assert!(render(&[view]).contains("node ? at 127.0.0.1:1: unreachable (refused)"));
    }

    #[test]
    fn top_remembers_a_node_name_after_it_goes_down() {
        let mut view = NodeView::new("127.0.0.1:4040");
        view.update(Ok(sample_of(&[("node", "n1"), ("commands_total", "5")], Instant::now())));
        view.update(Err("connection refused".into()));
        let frame = render(&[view]);
        assert!(frame.contains("node n1 at 127.0.0.1:4040: unreachable (connection refused)"), "{frame}");
    }

    #[test]
    fn top_does_not_count_its_own_polls() {
        let t0 = Instant::now();
        let before = sample_of(&[("commands_total", "41")], t0);
        let idle = sample_of(&[("commands_total", "42")], t0 + Duration::from_secs(1));
        assert_eq!(command_rate(&before, &idle), Some(0.0));
        let busy = sample_of(&[("commands_total", "52")], t0 + Duration::from_secs(1));
        assert_eq!(command_rate(&before, &busy), Some(10.0));
        // A restarted node's counter went backwards: no rate rather than a wrong one.
        assert_eq!(command_rate(&busy, &sample_of(&[("commands_total", "1")], t0)), None);
    }

    #[test]
    fn top_does_not_trust_the_worker_count_a_node_reports() {
        let huge = u64::MAX.to_string();
        let view = NodeView {
            latest: Ok(sample_of(&[("node", "n1"), ("workers", &huge)], Instant::now())),
            ..NodeView::new("127.0.0.1:4040")
        };
        let frame = render(&[view]);
        let rows =
            frame.lines().filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit())).count();
        assert_eq!(rows as u64, MAX_WORKERS_SHOWN, "{}", &frame[..200]);
        assert!(frame.contains(&format!("{} more workers not shown", u64::MAX - MAX_WORKERS_SHOWN)));
    }

    #[test]
    fn the_interval_check_accepts_what_its_message_says() {
        // "more than 0 and at most 3600 seconds"
        assert_eq!(interval(0.0), None);
        assert_eq!(interval(-1.0), None);
        assert_eq!(interval(f64::NAN), None);
        assert_eq!(interval(f64::INFINITY), None);
        assert_eq!(interval(3600.5), None);
        assert_eq!(interval(0.001), Some(Duration::from_millis(1)));
        assert_eq!(interval(3600.0), Some(Duration::from_secs(3600)));
    }
}
