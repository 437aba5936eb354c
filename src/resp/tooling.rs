//! The RESP door's answers of its own: the connection and tooling commands Redis
//! clients and tools send before (or instead of) asking for data. `HELLO` switches
//! RESP versions; `AUTH` uses the server's `--password-file`; `CLIENT`, `COMMAND` and
//! `CONFIG GET` answer enough for client libraries and redis-cli to start; `INFO` and
//! `DBSIZE` report kv's STATS in Redis's form. A cold path: it may allocate.

use std::sync::atomic::Ordering;

use super::commands::write_syntax_error;
use super::{Flow, RespConnection};
use crate::protocol::{
    Args, Dialect, ErrorKind, Reply, Resp, write_array_len, write_bulk, write_integer, write_map_len,
    write_nil, write_verbatim,
};
use crate::stats;

/// The version `HELLO` reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

impl RespConnection<'_> {
    /// The commands that are not about data.
    pub(super) fn tooling(&mut self, name: &[u8], args: Args<'_>) -> Flow {
        match name {
            b"ping" => match args.get(1) {
                Some(message) => self.push_own(|out, _| write_bulk(out, message)),
                None => self.round.push_local(Reply::Pong),
            },
            b"echo" => self.push_own(|out, _| write_bulk(out, args.get(1).unwrap_or_default())),
            b"quit" => {
                self.round.push_local(Reply::Ok);
                return Flow::Close;
            }
            b"select" if args.get(1) == Some(b"0") => self.round.push_local(Reply::Ok),
            b"select" => self.push_error(b"ERR DB index is out of range (kv has one database, 0)"),
            b"auth" => return self.auth(args.get(args.len() - 1).unwrap_or_default()),
            b"hello" => return self.hello(args),
            b"client" => self.client(args),
            b"command" => self.command(args),
            b"config" => self.config(args),
            b"info" => self.info(),
            _ => self.dbsize(),
        }
        Flow::Next
    }

    /// `AUTH [user] password`: the user name is ignored (kv has one password).
    fn auth(&mut self, password: &[u8]) -> Flow {
        let (reply, close) = self.password.attempt(self.state, self.client, password);
        self.round.push_local(reply);
        if close { Flow::Close } else { Flow::Next }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches to RESP3 or back,
    /// and answers the server's map in the version now spoken.
    fn hello(&mut self, args: Args<'_>) -> Flow {
        let proto = match args.get(1) {
            None => self.proto,
            Some(b"2") => Resp::V2,
            Some(b"3") => Resp::V3,
            Some(version) if version.iter().all(u8::is_ascii_digit) => {
                self.push_error(b"NOPROTO unsupported protocol version");
                return Flow::Next;
            }
            Some(_) => {
                self.push_error(b"ERR Protocol version is not an integer or out of range");
                return Flow::Next;
            }
        };
        // Both taken only once every option parsed: a HELLO with a bad option changes
        // nothing, neither signing in nor the name; one not signed in, not the name.
        let (mut password, mut name) = (None, None);
        let mut i = 2;
        while i < args.len() {
            let option = args.get(i).unwrap_or_default().to_ascii_lowercase();
            match (option.as_slice(), args.get(i + 1), args.get(i + 2)) {
                (b"auth", Some(_user), Some(given)) => {
                    password = Some(given);
                    i += 3;
                }
                (b"setname", Some(given), _) => {
                    name = Some(given);
                    i += 2;
                }
                _ => {
                    self.push_own(|out, _| write_syntax_error(out));
                    return Flow::Next;
                }
            }
        }
        if let Some(password) = password {
            let (reply, close) = self.password.attempt(self.state, self.client, password);
            if reply != Reply::Ok {
                self.round.push_local(reply);
                return if close { Flow::Close } else { Flow::Next };
            }
        }
        if !self.password.is_authenticated() {
            self.round.push_local(Reply::Error(ErrorKind::AuthenticationRequired));
            return Flow::Next;
        }
        if let Some(name) = name {
            self.name = Some(name.to_vec());
        }
        self.proto = proto;
        self.round.set_dialect(if proto == Resp::V3 { Dialect::Resp3 } else { Dialect::Resp2 });
        let id = self.id as i64;
        self.push_own(|out, proto| {
            write_map_len(out, 7, proto);
            for (key, value) in [("server", "kv"), ("version", VERSION)] {
                write_bulk(out, key.as_bytes());
                write_bulk(out, value.as_bytes());
            }
            write_bulk(out, b"proto");
            write_integer(out, if proto == Resp::V3 { 3 } else { 2 });
            write_bulk(out, b"id");
            write_integer(out, id);
            for (key, value) in [("mode", "standalone"), ("role", "master")] {
                write_bulk(out, key.as_bytes());
                write_bulk(out, value.as_bytes());
            }
            write_bulk(out, b"modules");
            write_array_len(out, 0);
        });
        Flow::Next
    }

    /// `CLIENT SETNAME | GETNAME | SETINFO | ID`: what client libraries send on
    /// connecting.
    fn client(&mut self, args: Args<'_>) {
        let sub = args.get(1).unwrap_or_default().to_ascii_lowercase();
        match (sub.as_slice(), args.len()) {
            (b"setname", 3) => {
                self.name = args.get(2).map(<[u8]>::to_vec);
                self.round.push_local(Reply::Ok);
            }
            (b"getname", 2) => {
                let name = self.name.clone();
                self.push_own(|out, proto| match &name {
                    Some(name) => write_bulk(out, name),
                    None => write_nil(out, proto),
                });
            }
            (b"setinfo", 4) => self.round.push_local(Reply::Ok),
            (b"id", 2) => {
                let id = self.id as i64;
                self.push_own(|out, _| write_integer(out, id));
            }
            _ => {
                let text = [&b"ERR unknown or unsupported CLIENT subcommand '"[..], &sub, b"'"].concat();
                self.push_error(&text);
            }
        }
    }

    /// `COMMAND [DOCS | COUNT | INFO ...]`: redis-cli asks on start; kv describes
    /// nothing (an empty answer), which clients take as "no hints".
    fn command(&mut self, args: Args<'_>) {
        let sub = args.get(1).map(<[u8]>::to_ascii_lowercase);
        match sub.as_deref() {
            Some(b"count") => self.push_own(|out, _| write_integer(out, 0)),
            Some(b"docs") => self.push_own(|out, proto| write_map_len(out, 0, proto)),
            _ => self.push_own(|out, _| write_array_len(out, 0)),
        }
    }

    /// `CONFIG GET parameter [parameter ...]`: the few Redis parameters tools ask
    /// about, answered with what kv does (redis-benchmark warns "Could not fetch server
    /// CONFIG" unless it gets `save` and `appendonly`); any other name is left out of
    /// the answer, as Redis leaves out names it does not know. kv is configured by its
    /// flags, so nothing can be set.
    fn config(&mut self, args: Args<'_>) {
        let sub = args.get(1).unwrap_or_default().to_ascii_lowercase();
        if sub != b"get" {
            self.push_error(b"ERR kv is configured by its command-line flags; only CONFIG GET is served");
            return;
        }
        if args.len() < 3 {
            self.push_error(b"ERR wrong number of arguments for 'config|get' command");
            return;
        }
        let persistent = self.state.config.data_dir.is_some();
        let mut known: Vec<(&[u8], &[u8])> = Vec::new();
        for index in 2..args.len() {
            let asked = args.get(index).unwrap_or_default().to_ascii_lowercase();
            let answer = config_value(&asked, persistent);
            if let Some(pair) = answer.filter(|(name, _)| !known.iter().any(|(seen, _)| seen == name)) {
                known.push(pair);
            }
        }
        self.push_own(|out, proto| {
            write_map_len(out, known.len(), proto);
            for (name, value) in &known {
                write_bulk(out, name);
                write_bulk(out, value);
            }
        });
    }

    /// `INFO`: STATS, in Redis's `# Section` and `key:value` lines. After the replies
    /// before it, which it reflects.
    fn info(&mut self) {
        self.round.flush();
        self.publish_command_count();
        let stats = stats::collect(self.state);
        let mut text = format!("# Server\r\nkv_version:{VERSION}\r\nredis_mode:standalone\r\n# kv\r\n");
        for (name, value) in stats.iter() {
            text.push_str(&format!("{name}:{value}\r\n"));
        }
        let keys = stats.get("keys").unwrap_or("0");
        text.push_str(&format!("# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"));
        self.push_own(|out, proto| write_verbatim(out, b"txt", text.as_bytes(), proto));
    }

    /// `DBSIZE`: the keys this node holds, over all buckets.
    fn dbsize(&mut self) {
        self.round.flush();
        let keys = stats::collect(self.state).get("keys").and_then(|k| k.parse().ok()).unwrap_or(0);
        self.push_own(|out, _| write_integer(out, keys));
    }

    /// Adds the commands counted since the last call to the shared total.
    pub(super) fn publish_command_count(&mut self) {
        if self.commands > 0 {
            self.state.counters.commands_total.fetch_add(self.commands, Ordering::Relaxed);
            self.commands = 0;
        }
    }
}

/// A Redis configuration parameter kv can answer truthfully, by its lower-case name:
/// `save` (kv takes no RDB-style point-in-time dumps on a timer: empty, as Redis with
/// `--save ''`) and `appendonly` (`yes` when writes go to the log in `--data-dir`).
fn config_value(name: &[u8], persistent: bool) -> Option<(&'static [u8], &'static [u8])> {
    match name {
        b"save" => Some((b"save", b"")),
        b"appendonly" => Some((b"appendonly", if persistent { b"yes" } else { b"no" })),
        _ => None,
    }
}
