//! The RESP door's command table: a Redis command's name and arguments to kv
//! [`Command`]s, or to an answer of the connection's own (`tooling.rs`).
//!
//! Each kv command is about one bucket, so a Redis command about several keys becomes
//! one kv command per key, each routed to its owner like any request, and the round
//! gathers their replies into Redis's one reply ([`Gather`]). Names match in any
//! case; the arity is checked here, before anything is sent.
//!
//! | Redis | kv |
//! | --- | --- |
//! | `HSET b f v [f v ...]` | one `HSet` per field, summed |
//! | `HGET`, `HEXISTS`, `HLEN`, `HGETALL`, `HKEYS`, `HVALS` | one command |
//! | `HMGET b f ...`, `HDEL b f ...` | one `HGet` / `HDel` per field |
//! | `EXISTS k ...`, `DEL k ...` | the bucket `k`, and the key `k` of the strings bucket |
//! | `TYPE k` | likewise: `hash`, `string` or `none` |
//! | `SET`, `GET`, `MSET`, `MGET` | keys of the strings bucket (`--resp-bucket`) |

use super::{Flow, RespConnection};
use crate::logcap::{Limiter, warn_limited};
use crate::protocol::{Args, Command, ErrorKind, Gather, Reply, write_error};
use crate::router::Route;
use crate::worker;

/// Longest command name looked up; anything longer is unknown.
const MAX_NAME: usize = 16;

/// Limits the warning logged for each connection closed as an HTTP request.
static HTTP_GUARD: Limiter = Limiter::new();

impl RespConnection<'_> {
    /// Decides who answers one command.
    pub(super) fn dispatch(&mut self, args: Args<'_>) -> Flow {
        let Some(raw) = args.get(0) else { return Flow::Next };
        let mut buffer = [0u8; MAX_NAME];
        let name = lowercase(raw, &mut buffer);
        let n = args.len() - 1;
        if matches!(name, b"post" | b"host:") {
            // A browser was made to talk to us (cross-protocol scripting): answer what
            // came before, run nothing after, as Redis and the text door do.
            warn_limited!(
                HTTP_GUARD,
                "closing RESP connection from {:?}: it sent an HTTP request (cross-protocol attack?)",
                self.client
            );
            return Flow::Close;
        }
        let Some(arity) = arity(name) else {
            let text = [&b"ERR unknown command '"[..], &shown(raw), b"'"].concat();
            self.push_error(&text);
            return Flow::Next;
        };
        if !arity.allows(n) {
            let text = [&b"ERR wrong number of arguments for '"[..], name, b"' command"].concat();
            self.push_error(&text);
            return Flow::Next;
        }
        if !self.password_allows(name) {
            self.round.push_local(Reply::Error(ErrorKind::AuthenticationRequired));
            return Flow::Next;
        }
        match name {
            b"hset" | b"hget" | b"hmget" | b"hdel" | b"hexists" | b"hlen" | b"hgetall" | b"hkeys"
            | b"hvals" => self.hash(name, args),
            b"exists" | b"del" | b"type" | b"set" | b"get" | b"mget" | b"mset" => self.keys(name, args),
            b"subscribe" => return self.subscribe(args),
            b"unsubscribe" => self.unsubscribe_outside(args),
            _ => return self.tooling(name, args),
        }
        Flow::Next
    }

    /// Before `AUTH` on a server with a password, only what authenticates or ends the
    /// connection runs.
    fn password_allows(&self, name: &[u8]) -> bool {
        self.password.is_authenticated() || matches!(name, b"auth" | b"hello" | b"quit")
    }

    /// The hash commands: a bucket and its keys.
    fn hash(&mut self, name: &[u8], args: Args<'_>) {
        let bucket = args.get(1).unwrap_or_default();
        let fields = || (2..args.len()).filter_map(|i| args.get(i));
        match name {
            b"hset" => {
                self.round.push_group((args.len() - 2) / 2, Gather::Sum);
                for i in (2..args.len()).step_by(2) {
                    let (key, value) = (args.get(i).unwrap_or_default(), args.get(i + 1).unwrap_or_default());
                    self.push_bucket(&Command::HSet { bucket, key, value });
                }
            }
            b"hmget" => {
                self.round.push_group(args.len() - 2, Gather::Array);
                fields().for_each(|key| self.push_bucket(&Command::HGet { bucket, key }));
            }
            b"hdel" => {
                self.round.push_group(args.len() - 2, Gather::Sum);
                fields().for_each(|key| self.push_bucket(&Command::HDel { bucket, key }));
            }
            _ => {
                let key = args.get(2).unwrap_or_default();
                let command = match name {
                    b"hget" => Command::HGet { bucket, key },
                    b"hexists" => Command::HExists { bucket, key },
                    b"hlen" => Command::HLen { bucket },
                    b"hgetall" => Command::HGetAll { bucket },
                    b"hkeys" => Command::HKeys { bucket },
                    _ => Command::HVals { bucket },
                };
                self.push_bucket(&command);
            }
        }
    }

    /// The key commands: a key is a bucket (a hash) or a key of the strings bucket.
    fn keys(&mut self, name: &[u8], args: Args<'_>) {
        let strings = self.state.config.resp_bucket.as_slice();
        let keys = || (1..args.len()).filter_map(|i| args.get(i));
        let count = args.len() - 1;
        match name {
            b"exists" | b"del" => {
                self.round.push_group(2 * count, Gather::Sum);
                for key in keys() {
                    let (as_hash, as_string) = if name == b"del" {
                        (Command::Del { bucket: key }, Command::HDel { bucket: strings, key })
                    } else {
                        (Command::Exists { bucket: key }, Command::HExists { bucket: strings, key })
                    };
                    self.push_bucket(&as_hash);
                    self.push_bucket(&as_string);
                }
            }
            b"type" => {
                let key = args.get(1).unwrap_or_default();
                self.round.push_group(2, Gather::Type);
                self.push_bucket(&Command::Type { bucket: key });
                self.push_bucket(&Command::HExists { bucket: strings, key });
            }
            // SET's options (EX, NX, ...) are not served: refused rather than ignored.
            b"set" if count > 2 => self.push_error(b"ERR syntax error (SET options are not supported)"),
            b"set" => {
                let (key, value) = (args.get(1).unwrap_or_default(), args.get(2).unwrap_or_default());
                self.push_bucket(&Command::SetString { bucket: strings, key, value });
            }
            b"get" => {
                self.push_bucket(&Command::HGet { bucket: strings, key: args.get(1).unwrap_or_default() })
            }
            b"mget" => {
                self.round.push_group(count, Gather::Array);
                keys().for_each(|key| self.push_bucket(&Command::HGet { bucket: strings, key }));
            }
            _ => {
                self.round.push_group(count / 2, Gather::AllOk);
                for i in (1..args.len()).step_by(2) {
                    let (key, value) = (args.get(i).unwrap_or_default(), args.get(i + 1).unwrap_or_default());
                    self.push_bucket(&Command::SetString { bucket: strings, key, value });
                }
            }
        }
    }

    /// A command about one bucket: to the worker that owns it here, or to the node
    /// that owns it.
    pub(super) fn push_bucket(&mut self, command: &Command<'_>) {
        let Some(bucket) = command.bucket() else {
            self.round.push_local(Reply::Unknown);
            return;
        };
        match self.state.routes.route(bucket) {
            Route::Local => {
                let w = worker::worker_for(bucket, self.round.worker_count());
                self.round.push_worker(w, command);
            }
            Route::Peer(p) => self.round.push_peer(usize::from(p), command),
            Route::Unrouted => self.round.push_local(Reply::Error(ErrorKind::NoRoute { bucket })),
        }
    }

    /// `UNSUBSCRIBE` while not subscribed: as Redis, one frame per bucket named, each
    /// with a count of 0, or one with a null bucket if none is, so a client matching
    /// replies to a pipeline stays in step.
    fn unsubscribe_outside(&mut self, args: Args<'_>) {
        let write = super::subscribe::write_unsubscribed;
        if args.len() == 1 {
            self.push_own(|out, proto| write(out, None, 0, proto));
        }
        for bucket in (1..args.len()).filter_map(|i| args.get(i)) {
            self.push_own(|out, proto| write(out, Some(bucket), 0, proto));
        }
    }
}

/// How many arguments (after the name) a command takes.
#[derive(Clone, Copy)]
pub(super) enum Arity {
    Exactly(usize),
    AtLeast(usize),
    Between(usize, usize),
    /// Pairs after `n` leading arguments: `HSET b f v ...`, `MSET k v ...`.
    Pairs(usize),
}

impl Arity {
    fn allows(self, n: usize) -> bool {
        match self {
            Arity::Exactly(m) => n == m,
            Arity::AtLeast(m) => n >= m,
            Arity::Between(low, high) => (low..=high).contains(&n),
            Arity::Pairs(lead) => n > lead && (n - lead).is_multiple_of(2),
        }
    }
}

/// The arity of each command served; `None` for an unknown one.
fn arity(name: &[u8]) -> Option<Arity> {
    use Arity::*;
    Some(match name {
        b"hset" => Pairs(1),
        b"hget" | b"hexists" => Exactly(2),
        b"hmget" | b"hdel" => AtLeast(2),
        b"hlen" | b"hgetall" | b"hkeys" | b"hvals" | b"type" | b"get" | b"echo" | b"select" => Exactly(1),
        b"exists" | b"del" | b"mget" | b"subscribe" | b"client" | b"config" => AtLeast(1),
        b"set" => AtLeast(2),
        b"mset" => Pairs(0),
        b"ping" => Between(0, 1),
        b"auth" => Between(1, 2),
        b"dbsize" => Exactly(0),
        b"quit" | b"hello" | b"command" | b"info" | b"unsubscribe" => AtLeast(0),
        _ => return None,
    })
}

/// `name` in lowercase ASCII, in `buffer`; a name too long to be known stays as it is.
fn lowercase<'a>(name: &'a [u8], buffer: &'a mut [u8; MAX_NAME]) -> &'a [u8] {
    if name.len() > MAX_NAME {
        return name;
    }
    let lower = &mut buffer[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    lower
}

/// A client's word for an error line: cut short, line ends made spaces (write_error
/// does that too), so a hostile name cannot make a long reply.
fn shown(word: &[u8]) -> Vec<u8> {
    let mut shown = word[..word.len().min(128)].to_vec();
    if word.len() > 128 {
        shown.extend_from_slice(b"...");
    }
    shown
}

/// The reply to a bad argument of the connection's own commands.
pub(super) fn write_syntax_error(out: &mut Vec<u8>) {
    write_error(out, b"ERR syntax error");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arities() {
        assert!(arity(b"hset").is_some_and(|a| a.allows(3) && a.allows(5) && !a.allows(4) && !a.allows(1)));
        assert!(arity(b"mset").is_some_and(|a| a.allows(2) && !a.allows(0) && !a.allows(3)));
        assert!(arity(b"ping").is_some_and(|a| a.allows(0) && a.allows(1) && !a.allows(2)));
        assert!(arity(b"nosuch").is_none());
        let mut buffer = [0; MAX_NAME];
        assert_eq!(lowercase(b"HGetAll", &mut buffer), b"hgetall");
    }
}
