//! The binary's side of kv: the tools people run, on top of the library.
//!
//! The library (`src/lib.rs`) is the data path and leaves the process alone; what only
//! a command-line process does lives here, one file or folder per subcommand:
//! - `serve.rs`: `kv serve` (the default): flags to a `Config`, signals, exit statuses;
//! - `client.rs`: `kv cli`, commands and replies, and following a SUBSCRIBE stream;
//! - `top.rs`: `kv top`, a live view of nodes from their STATS;
//! - `bench/`: `kv bench`, the load generator for kv, Redis and memcached.
//!
//! This file decides only which subcommand runs when none is named. Nothing here is
//! imported by the library, and the subcommands do not import one another.

pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod serve;
pub(crate) mod top;

/// The subcommand names, and the words that ask for help or the version: an argument
/// list starting with anything else is `serve`'s.
const NOT_SERVE_FLAGS: &[&str] = &["serve", "cli", "top", "bench", "help", "-h", "--help", "--version", "-V"];

/// The arguments with `serve` put first when no subcommand is named, so that `kv`
/// and `kv --port 4043` mean `kv serve` and `kv serve --port 4043` (argh has no
/// default subcommand).
pub(crate) fn with_default_command(args: &[String]) -> Vec<String> {
    match args.first() {
        Some(first) if NOT_SERVE_FLAGS.contains(&first.as_str()) => args.to_vec(),
        _ => std::iter::once("serve".to_string()).chain(args.iter().cloned()).collect(),
    }
}

/// True if the arguments ask for the version (`kv --version`, `kv -V`).
pub(crate) fn asks_for_version(args: &[String]) -> bool {
    matches!(args.first().map(String::as_str), Some("--version" | "-V"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn serve_is_the_default_command() {
        assert_eq!(with_default_command(&[]), words("serve"));
        assert_eq!(with_default_command(&words("--port 4043")), words("serve --port 4043"));
        assert_eq!(with_default_command(&words("serve --port 1")), words("serve --port 1"));
        assert_eq!(with_default_command(&words("cli PING")), words("cli PING"));
        assert_eq!(with_default_command(&words("--help")), words("--help"));
        assert_eq!(with_default_command(&words("bogus")), words("serve bogus"));
    }

    #[test]
    fn version_flags() {
        assert!(asks_for_version(&words("--version")));
        assert!(asks_for_version(&words("-V")));
        assert!(!asks_for_version(&words("serve --version")));
    }
}
