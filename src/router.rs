//! The static cluster description: which node owns a bucket, by the bucket's first byte.
//!
//! Every node reads the same plain-text file (see `docs/CLUSTER.md` and
//! `examples/cluster.conf`):
//!
//! ```text
//! # name  address          first bytes of the buckets it owns
//! foo     127.0.0.1:4040   a-m
//! bar     127.0.0.1:4041   n-z
//! ```
//!
//! Each line names a node, gives the `IP:PORT` it listens on, then a comma-separated list
//! of inclusive ranges `x-y` or single bytes; a byte is a printable ASCII character or
//! `0xNN`. `#` starts a comment that runs to the end of the line, so the bytes `#` and `,`
//! (which the syntax uses) are written `0x23` and `0x2C`. Bytes no node owns are allowed:
//! requests for such buckets are answered `ERROR no route for bucket <bucket>`.
//!
//! This file owns parsing that description, by hand (it is a few dozen lines of grammar,
//! not worth a dependency), and turning it into a [`RouteTable`]: 256 entries, one per
//! first byte, so that routing a request is one array index on the connection's hot path.
//! It does no I/O beyond reading the file and starts no threads; forwarding is
//! the forwarder's job (`forward.rs`).
//!
//! Parsing is strict on purpose: a cluster whose nodes disagree about ownership answers
//! errors (see `protocol/hello.rs`), so anything doubtful in the file (an overlap, a duplicate
//! name or address, a backwards range) stops the node at start-up with the file name, the
//! line and what is wrong, rather than being guessed at.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

/// One node of the cluster as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name: lowercase ASCII letters, digits and `_`, so it can appear in
    /// STATS names (`peer.<name>.state`) and error lines as one word.
    pub name: String,
    /// Where the node listens, and where its peers connect to reach it.
    pub addr: SocketAddr,
    /// The line of the file that describes it (1-based; 0 for the embedded default).
    pub line: usize,
}

/// A parsed, consistent cluster description.
///
/// Invariants the parser guarantees: at least one node; names and addresses unique;
/// every node owns at least one byte and no byte has two owners. Since every node owns a
/// byte, there are at most 256 nodes, so a node index fits a `u8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Where the description came from, for messages.
    file: String,
    nodes: Vec<Node>,
    /// The `secret-file PATH` line's path, relative to the cluster file's folder once
    /// loaded (docs/SECURITY.md).
    secret_file: Option<std::path::PathBuf>,
    /// First byte of a bucket name -> index into `nodes`.
    owners: [Option<u8>; 256],
}

/// Where one request goes, as seen from one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This node owns the bucket.
    Local,
    /// Another node owns it: an index into [`Cluster::peers_of`] for this node.
    Peer(u16),
    /// No node owns the bucket's first byte.
    Unrouted,
}

/// A node's view of the cluster: first byte of a bucket name -> [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: [Route; 256],
}

impl RouteTable {
    /// Every bucket is local: a node on its own.
    pub fn all_local() -> RouteTable {
        RouteTable { routes: [Route::Local; 256] }
    }

    /// Where a request for `bucket` goes. Bucket names are never empty (a word has at
    /// least one byte), but an empty one is routed like the byte 0 rather than trusted.
    #[inline]
    pub fn route(&self, bucket: &[u8]) -> Route {
        self.routes[bucket.first().copied().unwrap_or(0) as usize]
    }

    /// True if every bucket is served here, so no request is ever forwarded.
    pub fn is_all_local(&self) -> bool {
        self.routes.iter().all(|&route| route == Route::Local)
    }
}

impl Cluster {
    /// Reads and parses the cluster file at `path`.
    pub fn load(path: &Path) -> Result<Cluster, ClusterError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut cluster = Cluster::parse(&file, &text)?;
                if let (Some(secret), Some(folder)) = (&cluster.secret_file, path.parent()) {
                    cluster.secret_file = Some(folder.join(secret));
                }
                Ok(cluster)
            }
            Err(error) => Err(ClusterError { file, line: None, problem: Problem::Read(error) }),
        }
    }

    /// Parses a cluster description; `file` names it in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Cluster, ClusterError> {
        let mut cluster =
            Cluster { file: file.to_string(), nodes: Vec::new(), secret_file: None, owners: [None; 256] };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |problem| ClusterError { file: file.to_string(), line: Some(line), problem };
            let content = match raw.find('#') {
                Some(comment) => &raw[..comment],
                None => raw,
            };
            let (name, rest) = take_word(content);
            if name.is_empty() {
                continue; // blank or comment-only line
            }
            if name == SECRET_FILE_WORD {
                cluster.secret_file =
                    Some(parse_secret_file(rest, cluster.secret_file.is_some()).map_err(fail)?);
                continue;
            }
            check_name(name).map_err(fail)?;
            let (address, ranges) = take_word(rest);
            let addr = parse_address(address, name).map_err(fail)?;
            let ranges = parse_ranges(ranges.trim(), name).map_err(fail)?;
            if let Some(first) = cluster.nodes.iter().find(|node| node.name == name) {
                return Err(fail(Problem::DuplicateName { name: name.to_string(), first_line: first.line }));
            }
            if let Some(first) = cluster.nodes.iter().find(|node| node.addr == addr) {
                return Err(fail(Problem::DuplicateAddress {
                    addr,
                    first: first.name.clone(),
                    first_line: first.line,
                }));
            }
            // At most 256 nodes get this far: each owns a byte and bytes do not overlap
            // (checked below), so the 257th would have hit an overlap already.
            let Ok(node_index) = u8::try_from(cluster.nodes.len()) else {
                return Err(fail(Problem::Syntax("more than 256 nodes".to_string())));
            };
            for &(low, high) in &ranges {
                for byte in low..=high {
                    if let Some(owner) = cluster.owners[byte as usize] {
                        let owner = &cluster.nodes[owner as usize];
                        return Err(fail(Problem::Overlap {
                            byte,
                            node: name.to_string(),
                            owner: owner.name.clone(),
                            owner_line: owner.line,
                        }));
                    }
                }
                for byte in low..=high {
                    cluster.owners[byte as usize] = Some(node_index);
                }
            }
            cluster.nodes.push(Node { name: name.to_string(), addr, line });
        }
        if cluster.nodes.is_empty() {
            return Err(ClusterError { file: file.to_string(), line: None, problem: Problem::NoNodes });
        }
        Ok(cluster)
    }

    /// The embedded default: one node, `name` at `addr`, owning every byte. This is what
    /// a node started without `--cluster` runs with.
    pub fn standalone(name: &str, addr: SocketAddr) -> Cluster {
        Cluster {
            file: "(built-in single-node cluster)".to_string(),
            nodes: vec![Node { name: name.to_string(), addr, line: 0 }],
            secret_file: None,
            owners: [Some(0); 256],
        }
    }

    /// The file holding the cluster secret, if the description names one.
    pub fn secret_file(&self) -> Option<&Path> {
        self.secret_file.as_deref()
    }

    /// Where the description came from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Every node, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Index of the node that owns buckets beginning with `first_byte`, if any.
    pub fn owner(&self, first_byte: u8) -> Option<usize> {
        self.owners[first_byte as usize].map(usize::from)
    }

    /// Index of the node called `name`; the error is the one `kv serve --node` reports.
    pub fn node_index(&self, name: &str) -> Result<usize, ClusterError> {
        self.nodes.iter().position(|node| node.name == name).ok_or_else(|| ClusterError {
            file: self.file.clone(),
            line: None,
            problem: Problem::UnknownNode {
                name: name.to_string(),
                known: self.nodes.iter().map(|node| node.name.clone()).collect(),
            },
        })
    }

    /// The nodes other than `this`, in file order: [`Route::Peer`] indexes this list.
    pub fn peers_of(&self, this: usize) -> impl Iterator<Item = &Node> {
        self.nodes.iter().enumerate().filter(move |&(index, _)| index != this).map(|(_, node)| node)
    }

    /// The routes as node `this` sees them.
    pub fn routes_for(&self, this: usize) -> RouteTable {
        let mut routes = [Route::Unrouted; 256];
        for (byte, owner) in self.owners.iter().enumerate() {
            routes[byte] = match *owner {
                None => Route::Unrouted,
                Some(owner) if owner as usize == this => Route::Local,
                // Peers are the nodes without `this`, so indexes after it shift down
                // by one. Fewer than 256 peers, so the index fits.
                Some(owner) if (owner as usize) < this => Route::Peer(u16::from(owner)),
                Some(owner) => Route::Peer(u16::from(owner) - 1),
            };
        }
        RouteTable { routes }
    }
}

/// The first word of the line naming the cluster secret's file. Not a node name (node
/// names have no `-`), so the two cannot be confused.
const SECRET_FILE_WORD: &str = "secret-file";

/// The path of a `secret-file PATH` line (`rest` is what follows the word).
fn parse_secret_file(rest: &str, seen: bool) -> Result<std::path::PathBuf, Problem> {
    let (path, extra) = take_word(rest);
    if seen {
        return Err(Problem::Syntax("a second secret-file line".to_string()));
    }
    if path.is_empty() || !extra.trim().is_empty() {
        return Err(Problem::Syntax("expected `secret-file PATH` (one path, no spaces)".to_string()));
    }
    Ok(std::path::PathBuf::from(path))
}

/// Splits off the first whitespace-separated word of `text`: `(word, rest)`. The word is
/// empty if `text` is blank.
fn take_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    text.split_at(end)
}

fn check_name(name: &str) -> Result<(), Problem> {
    let valid = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Problem::Syntax(format!(
            "bad node name {name:?}: use lowercase ASCII letters, digits and '_' \
             (the name appears in STATS as peer.<name>.state)"
        )))
    }
}

fn parse_address(address: &str, name: &str) -> Result<SocketAddr, Problem> {
    if address.is_empty() {
        return Err(Problem::Syntax(format!(
            "node {name} has no address: expected `{name} IP:PORT RANGES`, e.g. `{name} 127.0.0.1:4040 a-m`"
        )));
    }
    match address.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            Err(Problem::Syntax(format!("bad address {address:?} for node {name}: port 0 cannot be reached")))
        }
        Ok(addr) => Ok(addr),
        Err(_) => Err(Problem::Syntax(format!(
            "bad address {address:?} for node {name}: expected IP:PORT such as 127.0.0.1:4040 or [::1]:4040"
        ))),
    }
}

/// Parses `a-m,0x80-0xFF,_` into inclusive `(low, high)` pairs, rejecting overlaps
/// between the pairs themselves.
fn parse_ranges(text: &str, name: &str) -> Result<Vec<(u8, u8)>, Problem> {
    if text.is_empty() {
        return Err(Problem::Syntax(format!(
            "node {name} owns no bytes: give ranges such as `a-m` or `a-c,x,0x80-0xFF` after its address"
        )));
    }
    let mut ranges: Vec<(u8, u8)> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(Problem::Syntax(format!(
                "empty range in {text:?} (two commas in a row, or one at an end?)"
            )));
        }
        if item.contains(char::is_whitespace) {
            return Err(Problem::Syntax(format!("bad range {item:?}: separate ranges with commas")));
        }
        let (low, high) = parse_range(item)?;
        if let Some(&(other_low, other_high)) =
            ranges.iter().find(|&&(other_low, other_high)| low <= other_high && other_low <= high)
        {
            return Err(Problem::Syntax(format!(
                "range {item} overlaps {} given earlier for node {name}",
                show_range(other_low, other_high)
            )));
        }
        ranges.push((low, high));
    }
    Ok(ranges)
}

/// Parses one range item: `x`, `x-y`, where each end is a printable ASCII character
/// or `0xNN`. A lone `-` is the byte `-`; `--/` is the range from `-` to `/`.
fn parse_range(item: &str) -> Result<(u8, u8), Problem> {
    let bad = || {
        Problem::Syntax(format!(
            "bad range {item:?}: expected a byte or an inclusive range x-y, where a byte is a \
             printable ASCII character or 0xNN"
        ))
    };
    let (low, rest) = parse_byte(item).ok_or_else(bad)?;
    if rest.is_empty() {
        return Ok((low, low));
    }
    let rest = rest.strip_prefix('-').ok_or_else(bad)?;
    let (high, rest) = parse_byte(rest).ok_or_else(bad)?;
    if !rest.is_empty() {
        return Err(bad());
    }
    if high < low {
        return Err(Problem::Syntax(format!(
            "range {item} runs backwards: write it low to high, {}",
            show_range(high, low)
        )));
    }
    Ok((low, high))
}

/// One byte at the start of `text`: `0xNN` (two hex digits) or one printable ASCII
/// character. Returns the byte and the rest of `text`.
fn parse_byte(text: &str) -> Option<(u8, &str)> {
    let bytes = text.as_bytes();
    // Checked byte by byte before slicing, so a multi-byte character after `0x` is never
    // cut in the middle.
    if let [b'0', b'x' | b'X', high, low, ..] = *bytes
        && high.is_ascii_hexdigit()
        && low.is_ascii_hexdigit()
    {
        return u8::from_str_radix(&text[2..4], 16).ok().map(|byte| (byte, &text[4..]));
    }
    match bytes.first() {
        Some(&byte) if byte.is_ascii_graphic() => Some((byte, &text[1..])),
        _ => None,
    }
}

/// A byte as the file would write it: the character if it is printable, else `0xNN`.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() && byte != b'#' && byte != b',' {
        (byte as char).to_string()
    } else {
        format!("0x{byte:02X}")
    }
}

fn show_range(low: u8, high: u8) -> String {
    if low == high { show_byte(low) } else { format!("{}-{}", show_byte(low), show_byte(high)) }
}

/// Why a cluster description was refused: the file, the line when there is one, and
/// what is wrong. Its `Display` is the message `kv serve` prints before exiting.
#[derive(Debug)]
pub struct ClusterError {
    file: String,
    line: Option<usize>,
    problem: Problem,
}

/// What is wrong with a cluster description.
#[derive(Debug)]
#[non_exhaustive]
pub enum Problem {
    /// The file could not be read.
    Read(io::Error),
    /// A line does not follow the grammar; the text says how.
    Syntax(String),
    /// A byte is claimed by two nodes (or twice by one).
    Overlap { byte: u8, node: String, owner: String, owner_line: usize },
    /// Two lines use the same node name.
    DuplicateName { name: String, first_line: usize },
    /// Two nodes share an address.
    DuplicateAddress { addr: SocketAddr, first: String, first_line: usize },
    /// The file describes no node at all.
    NoNodes,
    /// `--node` names a node the file does not describe.
    UnknownNode { name: String, known: Vec<String> },
}

impl ClusterError {
    /// The 1-based line the problem is on, when it is about one line.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// What is wrong.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {line}: {}", self.file, self.problem),
            None => write!(f, "{}: {}", self.file, self.problem),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Read(error) => write!(f, "cannot read the cluster file: {error}"),
            Problem::Syntax(text) => f.write_str(text),
            Problem::Overlap { byte, node, owner, owner_line } if node == owner => {
                write!(f, "node {node} claims byte {} twice (also on line {owner_line})", show_byte(*byte))
            }
            Problem::Overlap { byte, node, owner, owner_line } => write!(
                f,
                "overlapping ranges: byte {} is claimed by node {node} but already owned by node \
                 {owner} (line {owner_line})",
                show_byte(*byte)
            ),
            Problem::DuplicateName { name, first_line } => {
                write!(f, "duplicate node name {name} (first used on line {first_line})")
            }
            Problem::DuplicateAddress { addr, first, first_line } => {
                write!(f, "duplicate address {addr}: node {first} (line {first_line}) already listens there")
            }
            Problem::NoNodes => f.write_str("the cluster file describes no node"),
            Problem::UnknownNode { name, known } => {
                write!(f, "--node {name:?} is not in the cluster file; it names {}", known.join(", "))
            }
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Read(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUIDE: &str = "# name  address          first bytes of the buckets it owns\n\
                         foo     127.0.0.1:4040   a-m\n\
                         bar     127.0.0.1:4041   n-z\n";

    fn parse(text: &str) -> Result<Cluster, ClusterError> {
        Cluster::parse("test.conf", text)
    }

    /// The error message for `text`, which must be refused.
    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(cluster) => panic!("accepted {text:?} as {cluster:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_guides_two_node_split() {
        let cluster = parse(GUIDE).unwrap();
        let names: Vec<&str> = cluster.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["foo", "bar"]);
        assert_eq!(cluster.nodes()[0].addr, "127.0.0.1:4040".parse().unwrap());
        assert_eq!(cluster.nodes()[1].line, 3);
        assert_eq!(cluster.owner(b'a'), Some(0));
        assert_eq!(cluster.owner(b'm'), Some(0));
        assert_eq!(cluster.owner(b'n'), Some(1));
        assert_eq!(cluster.owner(b'z'), Some(1));
        // Unowned bytes are allowed.
        assert_eq!(cluster.owner(b'A'), None);
        assert_eq!(cluster.owner(b'{'), None);
        assert_eq!(cluster.owner(0), None);
    }

    #[test]
    fn routes_as_each_node_sees_them() {
        let cluster = parse(GUIDE).unwrap();
        let foo = cluster.routes_for(cluster.node_index("foo").unwrap());
        let bar = cluster.routes_for(cluster.node_index("bar").unwrap());
        assert_eq!(foo.route(b"apple"), Route::Local);
        assert_eq!(foo.route(b"nuts"), Route::Peer(0));
        assert_eq!(bar.route(b"apple"), Route::Peer(0));
        assert_eq!(bar.route(b"nuts"), Route::Local);
        assert_eq!(foo.route(b"Apple"), Route::Unrouted);
        assert_eq!(bar.route(b"\xff"), Route::Unrouted);
        assert_eq!(foo.route(b""), Route::Unrouted);
        assert!(!foo.is_all_local());
        let peers: Vec<&str> = cluster.peers_of(1).map(|n| n.name.as_str()).collect();
        assert_eq!(peers, ["foo"]);
    }

    #[test]
    fn peer_indexes_skip_this_node() {
        let cluster = parse("a 127.0.0.1:1 a\nb 127.0.0.1:2 b\nc 127.0.0.1:3 c\n").unwrap();
        let routes = cluster.routes_for(1);
        let peers: Vec<&str> = cluster.peers_of(1).map(|n| n.name.as_str()).collect();
        assert_eq!(peers, ["a", "c"]);
        assert_eq!(routes.route(b"a"), Route::Peer(0));
        assert_eq!(routes.route(b"b"), Route::Local);
        assert_eq!(routes.route(b"c"), Route::Peer(1));
    }

    #[test]
    fn hex_bytes_singles_lists_and_spacing() {
        let cluster = parse(
            "\n   \n# comment\n  one 127.0.0.1:4040 0x00-0x1F, A ,0x7f-0xFF # trailing comment\n\
             two\t[::1]:4040\t--/,0x23,0X2c\nthree 127.0.0.2:4040 _\n",
        )
        .unwrap();
        for byte in 0x00..=0x1F {
            assert_eq!(cluster.owner(byte), Some(0), "byte {byte:#x}");
        }
        assert_eq!(cluster.owner(b'A'), Some(0));
        assert_eq!(cluster.owner(b'B'), None);
        assert_eq!(cluster.owner(0x7f), Some(0));
        assert_eq!(cluster.owner(0xff), Some(0));
        assert_eq!(cluster.owner(b'-'), Some(1));
        assert_eq!(cluster.owner(b'.'), Some(1));
        assert_eq!(cluster.owner(b'/'), Some(1));
        assert_eq!(cluster.owner(b'#'), Some(1));
        assert_eq!(cluster.owner(b','), Some(1));
        assert_eq!(cluster.nodes()[1].addr, "[::1]:4040".parse().unwrap());
        assert_eq!(cluster.nodes()[1].line, 5);
        assert_eq!(cluster.owner(b'_'), Some(2));
        // The same port on another IP is another address.
        assert_eq!(cluster.nodes()[2].addr, "127.0.0.2:4040".parse().unwrap());
        // A lone `-` is the byte itself.
        assert_eq!(parse("n 127.0.0.1:1 -\n").unwrap().owner(b'-'), Some(0));
    }

    #[test]
    fn a_lone_zero_is_the_character_zero() {
        let message = refused("n 127.0.0.1:1 0-9,0x\n");
        // "0x" alone is not a hex byte and not one character.
        assert!(message.contains("line 1: bad range \"0x\""), "{message}");
        // Nor is "0x1" followed by a multi-byte character, which must not panic.
        assert!(refused("n 127.0.0.1:1 0x1é\n").contains("bad range"));
        let cluster = parse("n 127.0.0.1:1 0-9,x\n").unwrap();
        assert_eq!(cluster.owner(b'0'), Some(0));
        assert_eq!(cluster.owner(b'9'), Some(0));
        assert_eq!(cluster.owner(b'x'), Some(0));
    }

    #[test]
    fn standalone_owns_every_byte() {
        let cluster = Cluster::standalone("kv", "127.0.0.1:4040".parse().unwrap());
        assert!((0..=255).all(|byte| cluster.owner(byte) == Some(0)));
        let routes = cluster.routes_for(0);
        assert!(routes.is_all_local());
        assert_eq!(routes, RouteTable::all_local());
        assert_eq!(cluster.peers_of(0).count(), 0);
    }

    #[test]
    fn overlapping_ranges_name_both_nodes_and_lines() {
        let message = refused("foo 127.0.0.1:4040 a-m\n\nbar 127.0.0.1:4041 m-z\n");
        assert_eq!(
            message,
            "test.conf: line 3: overlapping ranges: byte m is claimed by node bar but already \
             owned by node foo (line 1)"
        );
        let message = refused("foo 127.0.0.1:4040 0x00-0x10\nbar 127.0.0.1:4041 0x10\n");
        assert!(message.contains("line 2: overlapping ranges: byte 0x10"), "{message}");
    }

    #[test]
    fn a_node_overlapping_itself_is_refused() {
        let message = refused("foo 127.0.0.1:4040 a-m,c-d\n");
        assert_eq!(message, "test.conf: line 1: range c-d overlaps a-m given earlier for node foo");
    }

    #[test]
    fn duplicate_names_and_addresses() {
        assert_eq!(
            refused("foo 127.0.0.1:4040 a\nfoo 127.0.0.1:4041 b\n"),
            "test.conf: line 2: duplicate node name foo (first used on line 1)"
        );
        assert_eq!(
            refused("foo 127.0.0.1:4040 a\n# x\nbar 127.0.0.1:4040 b\n"),
            "test.conf: line 3: duplicate address 127.0.0.1:4040: node foo (line 1) already listens there"
        );
    }

    #[test]
    fn bad_syntax_names_the_line_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("foo\n", "line 1: node foo has no address"),
            ("foo 127.0.0.1:4040\n", "line 1: node foo owns no bytes"),
            ("foo localhost:4040 a\n", "line 1: bad address \"localhost:4040\""),
            ("foo 127.0.0.1 a\n", "line 1: bad address \"127.0.0.1\""),
            ("foo 127.0.0.1:0 a\n", "line 1: bad address \"127.0.0.1:0\" for node foo: port 0"),
            ("Foo 127.0.0.1:1 a\n", "line 1: bad node name \"Foo\""),
            ("f.o 127.0.0.1:1 a\n", "line 1: bad node name \"f.o\""),
            ("\nfoo 127.0.0.1:1 z-a\n", "line 2: range z-a runs backwards: write it low to high, a-z"),
            ("foo 127.0.0.1:1 a-\n", "line 1: bad range \"a-\""),
            ("foo 127.0.0.1:1 ab\n", "line 1: bad range \"ab\""),
            ("foo 127.0.0.1:1 a-b-c\n", "line 1: bad range \"a-b-c\""),
            ("foo 127.0.0.1:1 0xG0\n", "line 1: bad range \"0xG0\""),
            ("foo 127.0.0.1:1 a,,b\n", "line 1: empty range in \"a,,b\""),
            ("foo 127.0.0.1:1 a,\n", "line 1: empty range"),
            ("foo 127.0.0.1:1 a-c x-z\n", "line 1: bad range \"a-c x-z\": separate ranges with commas"),
            ("foo 127.0.0.1:1 é\n", "line 1: bad range \"é\""),
            ("", "test.conf: the cluster file describes no node"),
            ("# only comments\n\n", "the cluster file describes no node"),
        ];
        for (text, expected) in cases {
            let message = refused(text);
            assert!(message.contains(expected), "{text:?}: got {message:?}, expected {expected:?}");
            assert!(message.starts_with("test.conf: "), "{message}");
        }
    }

    #[test]
    fn the_line_number_is_reported() {
        let error = parse("a 127.0.0.1:1 a\n\n\n\nbad\n").unwrap_err();
        assert_eq!(error.line(), Some(5));
        assert!(matches!(error.problem(), Problem::Syntax(_)));
    }

    #[test]
    fn unknown_node_lists_the_known_ones() {
        let cluster = parse(GUIDE).unwrap();
        let error = cluster.node_index("baz").unwrap_err();
        assert_eq!(error.line(), None);
        assert_eq!(
            error.to_string(),
            "test.conf: --node \"baz\" is not in the cluster file; it names foo, bar"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join("kv-router-test-no-such-file.conf");
        let error = Cluster::load(&path).unwrap_err();
        assert!(matches!(error.problem(), Problem::Read(_)));
        assert!(error.to_string().starts_with(&path.display().to_string()), "{error}");
    }

    #[test]
    fn the_whole_byte_range_can_be_split() {
        let cluster = parse("lo 127.0.0.1:1 0x00-0x7F\nhi 127.0.0.1:2 0x80-0xFF\n").unwrap();
        assert!((0..=0x7f).all(|b| cluster.owner(b) == Some(0)));
        assert!((0x80..=0xff).all(|b| cluster.owner(b) == Some(1)));
    }

    #[test]
    fn bytes_show_as_the_file_writes_them() {
        assert_eq!(show_byte(b'a'), "a");
        assert_eq!(show_byte(b'#'), "0x23");
        assert_eq!(show_byte(b','), "0x2C");
        assert_eq!(show_byte(b' '), "0x20");
        assert_eq!(show_byte(0xff), "0xFF");
        assert_eq!(show_range(b'a', b'a'), "a");
    }

    #[test]
    fn a_secret_file_line_names_the_secret_and_is_not_a_node() {
        let cluster = parse("secret-file keys/secret  # the cluster secret\na 127.0.0.1:1 a-z\n").unwrap();
        assert_eq!(cluster.secret_file(), Some(Path::new("keys/secret")));
        assert_eq!(cluster.nodes().len(), 1);
        assert!(parse("secret-file\na 127.0.0.1:1 a-z\n").is_err());
        assert!(parse("secret-file a b\na 127.0.0.1:1 a-z\n").is_err());
        assert!(parse("secret-file a\nsecret-file b\na 127.0.0.1:1 a-z\n").is_err());
    }
}
