//! Who may talk to kv (issue 14): the cluster secret and the node handshake's proofs,
//! client passwords, protected mode, and the per-address throttle of failed
//! handshakes. docs/SECURITY.md is the story for users.
//!
//! Pure values and arithmetic plus one read of the kernel's random source: no
//! sockets, no threads. The handshake's bytes are `protocol/hello.rs`'s; the receiving
//! side drives it from `connection.rs`, the sending side from `peer/handshake.rs`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::sys;

/// Bytes of each side's fresh nonce: 128 bits, so a nonce never repeats by chance.
pub const NONCE_LEN: usize = 16;

/// Bytes of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;

/// Fewest bytes a cluster secret may have. 16 bytes of `/dev/urandom` are 128 bits;
/// `head -c 32 /dev/urandom | base64` (docs/SECURITY.md) gives 44.
pub const MIN_SECRET_LEN: usize = 16;

/// Failed `AUTH` attempts after which a connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// The wait after a connection's first failed `AUTH`; doubled after each further one
/// up to [`MAX_AUTH_DELAY`]. A person mistyping barely notices 10 ms; a guesser on one
/// connection is held to a few attempts a second, and closed after ten.
pub const FIRST_AUTH_DELAY: Duration = Duration::from_millis(10);

/// The longest wait between two `AUTH` attempts on one connection.
pub const MAX_AUTH_DELAY: Duration = Duration::from_millis(640);

/// Failed node handshakes one source address may make in a burst before it is
/// throttled ...
pub const HANDSHAKE_BURST: f64 = 5.0;

/// ... and the rate, per second, at which it earns attempts back. A node with the
/// wrong secret retries with backoff (at most a few a second); a guesser is held to
/// this many proofs checked per second per address.
pub const HANDSHAKE_RATE: f64 = 5.0;

/// Failed `AUTH`s one source address may make in a burst, over all its connections,
/// before its `AUTH`s are refused without a look at the password ...
pub const AUTH_BURST: f64 = 20.0;

/// ... and the rate, per second, at which it earns attempts back. A client that
/// mistypes, or an application reconnecting with a stale password, stays well under
/// it; a guesser opening many connections gets one guess a second per address.
pub const AUTH_RATE: f64 = 1.0;

/// Most source addresses the throttle remembers; beyond it, the ones back at a full
/// allowance are forgotten first, so memory stays bounded under a spray of addresses.
const THROTTLE_ADDRESSES: usize = 4096;

/// A shared secret: the cluster's, or the client password. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A secret read from a file, and whether the file's permissions let others read it.
#[derive(Debug)]
pub struct SecretFile {
    pub secret: Secret,
    /// Group or others may read the file (kv warns).
    pub readable_by_others: bool,
}

impl Secret {
    /// The secret `bytes`, with surrounding whitespace (a trailing newline) removed.
    ///
    /// ```
    /// let secret = kv::auth::Secret::new(b"  s3cret\n");
    /// assert!(secret.matches(b"s3cret"));
    /// ```
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.trim_ascii().to_vec())
    }

    /// Reads a secret from the file at `path`.
    pub fn read_file(path: &Path) -> io::Result<SecretFile> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = std::fs::read(path)?;
        let mode = std::fs::metadata(path)?.permissions().mode();
        Ok(SecretFile { secret: Secret::new(&bytes), readable_by_others: mode & 0o044 != 0 })
    }

    /// The secret itself, for a client to send in `AUTH`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes in the secret.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret, which is refused.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if `attempt` is this secret, compared in constant time.
    pub fn matches(&self, attempt: &[u8]) -> bool {
        constant_time_eq(&self.0, attempt)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

/// True if `a == b`, in time that depends on neither content nor length: both are
/// hashed, and the digests compared without an early exit.
///
/// ```
/// use kv::auth::constant_time_eq;
/// assert!(constant_time_eq(b"hunter2", b"hunter2"));
/// assert!(!constant_time_eq(b"hunter2", b"hunter3"));
/// assert!(!constant_time_eq(b"hunter2", b"hunter22"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let difference = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A fresh nonce from the kernel's random source.
pub fn fresh_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    sys::fill_random(&mut nonce)?;
    Ok(nonce)
}

/// Which side of a handshake a proof comes from: part of what it proves, so a
/// responder's proof reflected back at it is not an initiator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node that opened the connection (`KV-PEER-HELLO`, then `KV-PEER-PROOF`).
    Initiator,
    /// The node that accepted it (`KV-PEER-CHALLENGE`).
    Responder,
}

/// What a proof is over: both names, both nonces. The direction is the [`Role`].
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The initiator's node name.
    pub from: &'a [u8],
    /// The responder's node name.
    pub to: &'a [u8],
    pub initiator_nonce: &'a [u8; NONCE_LEN],
    pub responder_nonce: &'a [u8; NONCE_LEN],
}

impl Transcript<'_> {
    fn mac(&self, secret: &Secret, role: Role) -> Hmac<Sha256> {
        let mut mac = secret.mac();
        mac.update(b"kv-peer-auth 2\0");
        mac.update(match role {
            Role::Initiator => b"initiator\0",
            Role::Responder => b"responder\0",
        });
        for name in [self.from, self.to] {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            mac.update(&(name.len() as u32).to_be_bytes());
            mac.update(name);
        }
        mac.update(self.initiator_nonce);
        mac.update(self.responder_nonce);
        mac
    }

    /// The proof `role` sends: HMAC-SHA256 keyed by the secret.
    pub fn proof(&self, secret: &Secret, role: Role) -> [u8; PROOF_LEN] {
        self.mac(secret, role).finalize().into_bytes().into()
    }

    /// True if `proof` is what `role` must send, checked in constant time.
    pub fn verify(&self, secret: &Secret, role: Role, proof: &[u8]) -> bool {
        self.mac(secret, role).verify_slice(proof).is_ok()
    }
}

/// The wait before answering a connection's `failures`-th failed `AUTH` (from 1).
///
/// ```
/// use std::time::Duration;
/// use kv::auth::auth_delay;
/// assert_eq!(auth_delay(1), Duration::from_millis(10));
/// assert_eq!(auth_delay(3), Duration::from_millis(40));
/// assert_eq!(auth_delay(30), Duration::from_millis(640));
/// ```
pub fn auth_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_AUTH_DELAY.saturating_mul(1 << doublings).min(MAX_AUTH_DELAY)
}

/// True for a loopback address, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Protected mode's decision, as Redis makes it: refuse `client` when protected mode
/// is on, the server listens on `bind`, not a loopback address, without a password,
/// and the client is not on loopback.
///
/// ```
/// use kv::auth::protected_mode_refuses;
/// let (any, lo, remote) = ("0.0.0.0".parse().unwrap(), "127.0.0.1".parse().unwrap(), "10.0.0.7".parse().unwrap());
/// assert!(protected_mode_refuses(remote, any, false, true));
/// assert!(!protected_mode_refuses(lo, any, false, true));
/// assert!(!protected_mode_refuses(remote, any, true, true));
/// assert!(!protected_mode_refuses(remote, any, false, false));
/// ```
pub fn protected_mode_refuses(client: IpAddr, bind: IpAddr, password_set: bool, enabled: bool) -> bool {
    enabled && !password_set && !is_loopback(bind) && !is_loopback(client)
}

/// Failures per source address: a token bucket of `burst` attempts refilled at `rate`
/// a second ([`HANDSHAKE_BURST`] and [`HANDSHAKE_RATE`] for node handshakes,
/// [`AUTH_BURST`] and [`AUTH_RATE`] for client `AUTH`). Only failures keep a token
/// (a success gives back the one it took), so a client or node with the right secret
/// is never held back by its own tries.
#[derive(Debug)]
pub struct Throttle {
    burst: f64,
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Throttle {
    /// A throttle allowing `burst` failures at once, earned back at `rate` a second.
    pub fn new(burst: f64, rate: f64) -> Self {
        Throttle { burst, rate, buckets: Mutex::default() }
    }

    /// The throttle of failed node handshakes.
    pub fn handshakes() -> Self {
        Throttle::new(HANDSHAKE_BURST, HANDSHAKE_RATE)
    }

    /// The throttle of failed client `AUTH`s.
    pub fn auths() -> Self {
        Throttle::new(AUTH_BURST, AUTH_RATE)
    }

    /// True if an attempt from `ip` may be checked now.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        self.buckets.lock().get(&source(ip)).is_none_or(|&(tokens, at)| self.refill(tokens, at, now) >= 1.0)
    }

    /// Takes a token from `ip` for a failed attempt.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock();
        let entry = self.entry(&mut buckets, ip, now);
        *entry = ((self.refill(entry.0, entry.1, now) - 1.0).max(0.0), now);
    }

    /// Takes a token from `ip` before an attempt is checked, in one step, so that many
    /// connections arriving together cannot all be checked on the last token; false
    /// (nothing taken) when none is left. [`Throttle::refund`] gives it back if the
    /// attempt succeeds.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let entry = self.entry(&mut buckets, ip, now);
        let tokens = self.refill(entry.0, entry.1, now);
        *entry = (if tokens >= 1.0 { tokens - 1.0 } else { tokens }, now);
        tokens >= 1.0
    }

    /// Gives back the token [`Throttle::try_take`] took for an attempt that succeeded.
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        if let Some(entry) = self.buckets.lock().get_mut(&source(ip)) {
            *entry = ((self.refill(entry.0, entry.1, now) + 1.0).min(self.burst), now);
        }
    }

    /// `ip`'s bucket, made full if new. Past [`THROTTLE_ADDRESSES`] sources, the ones
    /// back at a full allowance are forgotten, then, if that is not enough, all.
    fn entry<'m>(
        &self,
        buckets: &'m mut HashMap<IpAddr, (f64, Instant)>,
        ip: IpAddr,
        now: Instant,
    ) -> &'m mut (f64, Instant) {
        if buckets.len() >= THROTTLE_ADDRESSES {
            buckets.retain(|_, &mut (tokens, at)| self.refill(tokens, at, now) < self.burst);
            if buckets.len() >= THROTTLE_ADDRESSES {
                buckets.clear();
            }
        }
        buckets.entry(source(ip)).or_insert((self.burst, now))
    }

    /// The tokens a bucket holding `tokens` at `at` holds at `now`.
    fn refill(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst)
    }
}

/// The source a throttle counts `ip` under: the address itself for IPv4 (IPv4-mapped
/// IPv6 included), its /64 for IPv6, since one host commonly holds a whole /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_equal_and_unequal_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"correct horse", b"correct horse"));
        assert!(!constant_time_eq(b"correct horse", b"correct horsf"));
        assert!(!constant_time_eq(b"correct horse", b"correct hors"));
        assert!(!constant_time_eq(b"correct horse", b"correct horse battery"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    fn transcript<'a>(ni: &'a [u8; NONCE_LEN], nr: &'a [u8; NONCE_LEN]) -> Transcript<'a> {
        Transcript { from: b"a", to: b"b", initiator_nonce: ni, responder_nonce: nr }
    }

    #[test]
    fn proofs_bind_direction_names_nonces_and_secret() {
        let secret = Secret::new(b"0123456789abcdef");
        let (ni, nr) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let t = transcript(&ni, &nr);
        let initiator = t.proof(&secret, Role::Initiator);
        assert!(t.verify(&secret, Role::Initiator, &initiator));
        assert!(!t.verify(&secret, Role::Responder, &initiator), "a reflected proof is refused");
        let swapped = Transcript { from: b"b", to: b"a", ..t };
        assert!(!swapped.verify(&secret, Role::Initiator, &initiator));
        let other_nonce = [3u8; NONCE_LEN];
        assert!(!transcript(&ni, &other_nonce).verify(&secret, Role::Initiator, &initiator), "replay");
        assert!(!t.verify(&Secret::new(b"0123456789abcdeX"), Role::Initiator, &initiator));
        assert!(!t.verify(&secret, Role::Initiator, &initiator[..31]));
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }

    #[test]
    fn protected_mode_decision_ipv4_and_ipv6() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let cases = [
            // client, bind, password set, refused
            ("203.0.113.9", "0.0.0.0", false, true),
            ("203.0.113.9", "0.0.0.0", true, false),
            ("127.0.0.1", "0.0.0.0", false, false),
            ("127.0.0.5", "192.0.2.1", false, false),
            ("203.0.113.9", "127.0.0.1", false, false),
            ("2001:db8::1", "::", false, true),
            ("2001:db8::1", "::", true, false),
            ("::1", "::", false, false),
            ("::ffff:127.0.0.1", "::", false, false),
            ("::ffff:203.0.113.9", "::", false, true),
            ("2001:db8::1", "::1", false, false),
        ];
        for (client, bind, password, refused) in cases {
            assert_eq!(
                protected_mode_refuses(ip(client), ip(bind), password, true),
                refused,
                "{client} {bind}"
            );
            assert!(!protected_mode_refuses(ip(client), ip(bind), password, false));
        }
    }

    #[test]
    fn the_throttle_holds_an_address_after_a_burst_and_refills() {
        let throttle = Throttle::handshakes();
        let (ip, other) = ("127.0.0.9".parse().unwrap(), "127.0.0.10".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..HANDSHAKE_BURST as usize {
            assert!(throttle.allows(ip, t0));
            throttle.failed(ip, t0);
        }
        assert!(!throttle.allows(ip, t0));
        assert!(throttle.allows(other, t0), "per address");
        assert!(throttle.allows(ip, t0 + Duration::from_millis(250)), "one attempt back after 1/rate s");
    }

    #[test]
    fn the_auth_throttle_allows_its_own_burst_and_rate() {
        let throttle = Throttle::auths();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t0 = Instant::now();
        for _ in 0..AUTH_BURST as usize {
            assert!(throttle.allows(ip, t0));
            throttle.failed(ip, t0);
        }
        assert!(!throttle.allows(ip, t0));
        let almost = Duration::from_secs_f64(0.9 / AUTH_RATE);
        assert!(!throttle.allows(ip, t0 + almost), "not before one attempt is earned back");
        assert!(throttle.allows(ip, t0 + Duration::from_secs_f64(1.0 / AUTH_RATE)));
    }

    #[test]
    fn take_and_refund_are_one_step_each_and_an_ipv6_64_is_one_source() {
        let throttle = Throttle::new(2.0, 1.0);
        let t0 = Instant::now();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(throttle.try_take(ip, t0));
        assert!(throttle.try_take(same_64, t0));
        assert!(!throttle.try_take(ip, t0), "the /64 has used its burst");
        assert!(throttle.try_take(other_64, t0), "another /64 has its own");
        throttle.refund(same_64, t0);
        assert!(throttle.try_take(ip, t0), "a refund gives one attempt back");
        assert!(!throttle.try_take(ip, t0));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        throttle.failed(IpAddr::from([10, 0, 0, 1]), t0);
        throttle.failed(IpAddr::from([10, 0, 0, 1]), t0);
        assert!(!throttle.allows(mapped, t0), "IPv4-mapped IPv6 is the IPv4 address");
        assert!(throttle.allows(IpAddr::from([10, 0, 0, 2]), t0), "IPv4 addresses are not grouped");
    }

    #[test]
    fn auth_delays_double_up_to_the_cap() {
        let delays: Vec<u64> = (1..=9).map(|n| auth_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 640, 640]);
    }
}
