//! Criterion benchmark of the CPU one node handshake costs (issue 14): both sides of
//! the version-2 challenge-response, without sockets. Two fresh nonces from the
//! kernel, four HMAC-SHA256s (each side proves, each side checks), and the four lines
//! written and parsed. Results read as handshakes per second; the goal is under 50 us
//! each (BENCHMARKS.md has the figure).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kv::auth::{Role, Secret, Transcript, fresh_nonce};
use kv::protocol::{
    Hello, auth_hello_line, check_hello, parse_challenge, parse_proof, proof_line, write_challenge,
};

/// One whole handshake between node `a` (initiator) and `b` (responder); true if both
/// sides accepted.
fn handshake(secret: &Secret) -> bool {
    // a: hello with its nonce.
    let Ok(a_nonce) = fresh_nonce() else { return false };
    let hello = auth_hello_line("a", "b", &a_nonce);
    // b: read it, challenge with its own nonce and proof.
    let Hello::Authenticate { from, nonce, .. } = check_hello(&hello, "b") else { return false };
    let Ok(b_nonce) = fresh_nonce() else { return false };
    let at_b = Transcript { from: &from, to: b"b", initiator_nonce: &nonce, responder_nonce: &b_nonce };
    let mut challenge = Vec::new();
    write_challenge(&mut challenge, &b_nonce, &at_b.proof(secret, Role::Responder));
    // a: check b's proof, answer with its own.
    let Some((b_nonce_seen, b_proof)) = parse_challenge(&challenge) else { return false };
    let at_a = Transcript { from: b"a", to: b"b", initiator_nonce: &a_nonce, responder_nonce: &b_nonce_seen };
    if !at_a.verify(secret, Role::Responder, &b_proof) {
        return false;
    }
    let proof = proof_line(&at_a.proof(secret, Role::Initiator));
    // b: check a's proof.
    parse_proof(&proof).is_some_and(|proof| at_b.verify(secret, Role::Initiator, &proof))
}

fn bench_handshake(c: &mut Criterion) {
    let secret = Secret::new(b"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=");
    assert!(handshake(&secret), "the handshake succeeds");
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("v2_both_sides", |b| b.iter(|| handshake(black_box(&secret))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench_handshake
}
criterion_main!(benches);
