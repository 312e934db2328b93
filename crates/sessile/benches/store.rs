//! Record codec and memory store operations, with the benchmark's ~200-byte login payload.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use sessile::record::{Metadata, Payload, Record};
use sessile::store::WriteId;
use sessile::{MemoryStore, SessionId, SessionStore};

/// The memory store never waits: poll its futures once.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("MemoryStore operations complete at once"),
    }
}

fn record() -> Record {
    let mut data = Payload::default();
    let put = |d: &mut Payload, k: &str, v: Vec<u8>| d.insert(k.into(), v);
    put(
        &mut data,
        "user",
        rmp_serde::to_vec("u000123").expect("enc"),
    );
    put(
        &mut data,
        "display",
        rmp_serde::to_vec("Benchmark User u000123").expect("enc"),
    );
    put(
        &mut data,
        "counter",
        rmp_serde::to_vec(&41u64).expect("enc"),
    );
    put(
        &mut data,
        "roles",
        rmp_serde::to_vec(&["reader", "writer", "billing"]).expect("enc"),
    );
    put(&mut data, "theme", rmp_serde::to_vec("dark").expect("enc"));
    put(
        &mut data,
        "locale",
        rmp_serde::to_vec("en-GB").expect("enc"),
    );
    put(
        &mut data,
        "tz",
        rmp_serde::to_vec("Europe/London").expect("enc"),
    );
    put(
        &mut data,
        "csrf",
        rmp_serde::to_vec(&"ab".repeat(32)).expect("enc"),
    );
    Record {
        id: SessionId::random(),
        version: 1,
        idle_deadline: u64::MAX / 2,
        meta: Metadata {
            created_at: 1,
            absolute_deadline: u64::MAX / 2,
            user_id: Some("u000123".into()),
            tenant: None,
            hint: "node-1".into(),
        },
        data,
    }
}

fn codec(c: &mut Criterion) {
    let r = record();
    let body = r.encode_body().expect("encode");
    c.bench_function("record/encode", |b| {
        b.iter(|| black_box(&r).encode_body().expect("encode"))
    });
    c.bench_function("record/decode", |b| {
        b.iter(|| Record::decode(r.id, 1, 1, black_box(&body)).expect("decode"))
    });
}

fn memory_store(c: &mut Criterion) {
    let store = MemoryStore::builder().sweep_interval(None).build();
    let ids: Vec<SessionId> = (0..10_000)
        .map(|_| {
            let mut r = record();
            r.id = SessionId::random();
            ready(store.create(&r, WriteId::random())).expect("create");
            r.id
        })
        .collect();
    let mut i = 0;
    c.bench_function("memory_store/load", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            ready(store.load(ids[i])).expect("load").expect("present")
        })
    });
    let mut r = record();
    ready(store.create(&r, WriteId::random())).expect("create");
    let mut n = 0u64;
    c.bench_function("memory_store/save", |b| {
        b.iter(|| {
            r.version += 1;
            ready(store.save(&r, r.version - 1, WriteId::random())).expect("save");
        })
    });
    // Every login is a new user here: the realistic case for the index.
    c.bench_function("memory_store/create", |b| {
        b.iter(|| {
            n += 1;
            let user = format!("u{n}");
            r.id = SessionId::random_for_user(Some(&user));
            r.meta.user_id = Some(user);
            ready(store.create(&r, WriteId::random())).expect("create");
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2));
    targets = codec, memory_store
}
criterion_main!(benches);
