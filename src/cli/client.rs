//! `kv cli`: send commands to a server and print the replies, for people and scripts.
//!
//! One command from the words on the command line, or one per line of standard input.
//! Replies are read by their shape with the library's [`Client`] and printed as they
//! came, with `\n` line ends. A reply that is an error (`ReplyLine::is_error`) makes
//! the exit status 1, after every line of input has been sent, so a script can tell.
//! A SUBSCRIBE turns the connection into a stream: its events are printed as they
//! arrive until the server ends the stream; status 0 only if the stream ended because
//! the bucket was dropped.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use kv::Client;
use kv::client::Error;
use kv::protocol::{Command, Event, ReplyLine, ReplyShape, parse, trim_line_end};

/// Send commands to a server and print the replies: the words given as one command,
/// or else one command per line of standard input. Exits 1 if a reply was an error
/// (after all of stdin), or if a SUBSCRIBE stream ended other than by a DROP.
#[derive(FromArgs)]
#[argh(subcommand, name = "cli", help_triggers("-h", "--help", "help"))]
pub(crate) struct CliArgs {
    /// server address (default 127.0.0.1:4040)
    #[argh(option, default = "String::from(\"127.0.0.1:4040\")")]
    addr: String,
    /// a file holding the server's password (`kv serve --password-file`): sent with
    /// `AUTH` before anything else
    #[argh(option)]
    password_file: Option<PathBuf>,
    /// the command to send, e.g. `PUT shopping eggs 3`; none: read commands from stdin
    #[argh(positional, greedy)]
    words: Vec<String>,
}

/// Connects to `addr` and, with a password file, authenticates; the error in words.
pub(crate) fn connect(addr: &str, password_file: Option<&Path>) -> std::result::Result<Client, String> {
    let mut client = Client::connect(addr).map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    if let Some(path) = password_file {
        let file = kv::auth::Secret::read_file(path)
            .map_err(|error| format!("--password-file {}: {error}", path.display()))?;
        client.auth(file.secret.as_bytes()).map_err(|error| format!("AUTH to {addr}: {error}"))?;
    }
    Ok(client)
}

/// How long to wait for the server to close a stream after `DROPPED`, which it does
/// at once: only a server that does not would make this wait matter.
const CLOSE_AFTER_DROPPED: Duration = Duration::from_secs(10);

/// Why a session stopped early.
enum Stop {
    /// Something failed; the message for stderr.
    Failed(String),
    /// Standard output went away (`kv cli SUBSCRIBE b | head`): nothing to say.
    OutputGone,
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop::Failed(error.to_string())
    }
}

impl From<io::Error> for Stop {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            Stop::OutputGone
        } else {
            Stop::Failed(format!("writing the reply: {error}"))
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A reply was printed; `true` if it was an error.
    Replied(bool),
    /// The connection is done (QUIT, or a stream that ended); `true` if cleanly.
    Ended(bool),
}

/// `kv cli`.
pub(crate) fn main(args: CliArgs) -> ExitCode {
    let mut client = match connect(&args.addr, args.password_file.as_deref()) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("kv cli: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = io::stdout().lock();
    let ran = if args.words.is_empty() {
        from_stdin(&mut client, &mut io::stdin().lock(), &mut out)
    } else {
        request(&mut client, args.words.join(" ").as_bytes(), &mut out)
            .map(|step| matches!(step, Step::Replied(false) | Step::Ended(true)))
    };
    match ran {
        Ok(true) | Err(Stop::OutputGone) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Stop::Failed(text)) => {
            eprintln!("kv cli: {text}");
            ExitCode::FAILURE
        }
    }
}

/// Sends each line of `input` and prints its reply; true if no reply was an error.
fn from_stdin(client: &mut Client, input: &mut impl BufRead, out: &mut impl Write) -> Result<bool, Stop> {
    let mut all_ok = true;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(|e| Stop::Failed(format!("reading stdin: {e}")))? == 0 {
            return Ok(all_ok);
        }
        match request(client, trim_line_end(&line), out)? {
            Step::Replied(error) => all_ok &= !error,
            Step::Ended(clean) => return Ok(all_ok && clean),
        }
    }
}

/// Sends one request line and prints what comes back.
fn request(client: &mut Client, line: &[u8], out: &mut impl Write) -> Result<Step, Stop> {
    let command = parse(line);
    client.send_raw(&[line, b"\r\n"].concat())?;
    if let Command::Subscribe { .. } = command {
        return subscription(client, out);
    }
    let mut reply = Vec::new();
    client.read_reply(ReplyShape::of(&command), &mut reply)?;
    print(out, &reply)?;
    let error = ReplyLine::of(first_line(&reply)).is_error();
    Ok(if command == Command::Quit { Step::Ended(!error) } else { Step::Replied(error) })
}

/// After a SUBSCRIBE: either its error reply, or its stream, printed as it comes
/// until the server closes it.
fn subscription(client: &mut Client, out: &mut impl Write) -> Result<Step, Stop> {
    let mut line = Vec::new();
    client.read_line(&mut line)?;
    print(out, &line)?;
    if ReplyLine::of(&line).is_error() && Event::from_text(&line).is_none() {
        // The bucket does not exist, say: the connection stays an ordinary one.
        return Ok(Step::Replied(true));
    }
    let dropped = Event::Dropped.to_text();
    let mut ended_by_drop = line == dropped;
    loop {
        if ended_by_drop {
            client.set_timeout(Some(CLOSE_AFTER_DROPPED))?;
        }
        line.clear();
        match client.read_line(&mut line) {
            Ok(()) => {}
            Err(Error::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                if !ended_by_drop {
                    eprintln!("kv cli: the server ended the stream before the bucket was dropped");
                }
                return Ok(Step::Ended(ended_by_drop));
            }
            Err(error) => return Err(error.into()),
        }
        print(out, &line)?;
        ended_by_drop = line == dropped;
    }
}

/// The first line of a reply, with its line end.
fn first_line(reply: &[u8]) -> &[u8] {
    reply.split_inclusive(|&b| b == b'\n').next().unwrap_or(reply)
}

/// Prints raw reply bytes with `\n` line ends, as a terminal expects, and flushes, so
/// a stream's events show as they arrive.
fn print(out: &mut impl Write, reply: &[u8]) -> io::Result<()> {
    for line in reply.split_inclusive(|&b| b == b'\n') {
        out.write_all(trim_line_end(line))?;
        if line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_print_with_newline_line_ends() {
        let mut out = Vec::new();
        print(&mut out, b"3\r\nOK\r\n").unwrap();
        print(&mut out, b"\r\nOK\n").unwrap();
        assert_eq!(out, b"3\nOK\n\nOK\n");
    }

    #[test]
    fn events_about_a_key_named_error_are_not_errors() {
        // Events about a key named like the error word read as error lines.
        let word = b"ERROR";
        let set = Event::Set { key: word, value: b"3" }.to_text();
        let deleted = Event::Deleted { key: word }.to_text();
        assert!(ReplyLine::of(&set).is_error() && ReplyLine::of(&deleted).is_error());
        assert!(Event::from_text(&set).is_some() && Event::from_text(&deleted).is_some());
        let mut not_found = Vec::new();
        kv::protocol::Reply::NotFound.write_text(&mut not_found);
        assert!(Event::from_text(&not_found).is_none());
        assert_eq!(Event::from_text(&Event::Dropped.to_text()), Some(Event::Dropped));
    }
}
