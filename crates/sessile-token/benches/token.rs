//! Seal and open a session token. The budget is 6x one SHA-256 of 64 bytes each, measured in the
//! same run, which gives the figures a machine-independent scale.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sessile_token::{Claims, Hint, KeyRing, TokenCodec};
use sha2::Digest as _;

fn token(c: &mut Criterion) {
    let codec = TokenCodec::new(KeyRing::new(1, &[7; 32]).expect("ring"), "sid").expect("codec");
    let hint = Hint::new("node-1").expect("hint");
    let claims = Claims {
        session_id: [9; 16],
        issued_at: 1_800_000_000,
    };
    let sealed = codec.seal(&claims, &hint);
    c.bench_function("baseline/sha256_64_bytes", |b| {
        b.iter(|| sha2::Sha256::digest(black_box([0u8; 64])))
    });
    c.bench_function("token/seal", |b| {
        b.iter(|| codec.seal(black_box(&claims), &hint))
    });
    c.bench_function("token/open", |b| {
        b.iter(|| codec.open(black_box(&sealed)).expect("opens"))
    });
    let mut garbage = sealed.clone();
    garbage.replace_range(10..11, if &sealed[10..11] == "A" { "B" } else { "A" });
    c.bench_function("token/open_tampered", |b| {
        b.iter(|| codec.open(black_box(&garbage)).expect_err("rejected"))
    });
}

criterion_group!(benches, token);
criterion_main!(benches);
