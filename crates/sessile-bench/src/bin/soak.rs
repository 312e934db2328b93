//! Soak test: the login example on Redis under load while Redis is killed and restarted.
//!
//! Run it with `scripts/soak` (builds release binaries first). It starts its own `redis-server`
//! (append-only file on, so sessions survive a restart) and the example app on free loopback
//! ports, logs in `--clients` users, and has them read their profile and increment their counter
//! until the run ends. It kills Redis `--outages` times for `--outage-secs`, restarting it after
//! each. Everything it starts it stops, by pid. The run is bounded in time.
//!
//! It prints, per phase, the request count, error rate and p50/p99 latency, and per outage the
//! time from restarting Redis to the first request served normally again.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sessile_bench::{Spawned, User, client, free_port, histogram, ms_at, wait_ready};
use sessile_testkit::redis::RedisServer;

struct Args {
    clients: usize,
    outages: usize,
    outage: Duration,
    between: Duration,
    app: PathBuf,
    degraded: String,
}

fn args() -> Args {
    let mut a = Args {
        clients: 16,
        outages: 3,
        outage: Duration::from_secs(3),
        between: Duration::from_secs(6),
        app: PathBuf::from("target/release/login"),
        degraded: "recent-copy".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let secs = |v: &str| Duration::from_secs_f64(v.parse().expect("seconds"));
        match flag.as_str() {
            "--clients" => a.clients = value.parse().expect("a count"),
            "--outages" => a.outages = value.parse().expect("a count"),
            "--outage-secs" => a.outage = secs(&value),
            "--between-secs" => a.between = secs(&value),
            "--app" => a.app = value.into(),
            "--degraded" => a.degraded = value,
            other => panic!("unknown flag {other}; see the file's docs"),
        }
    }
    assert!(a.clients > 0 && a.clients <= 256, "1 to 256 clients");
    assert!(a.outages <= 10, "at most 10 outages");
    a
}

/// One request's outcome.
struct Sample {
    at: Instant,
    latency: Duration,
    /// Served normally: 2xx, or a redirect that is not to the login page.
    ok: bool,
    /// Served from a degraded session (the profile page says the store is unreachable).
    degraded: bool,
}

fn csrf_of(body: &str) -> Option<String> {
    let start = body.find("name=\"csrf\" value=\"")? + 19;
    body.get(start..start + 64).map(str::to_owned)
}

async fn log_in(user: &mut User, name: &str, password: &str) {
    let page = user.send(Method::GET, "/login", None).await;
    let csrf = csrf_of(&page.body).expect("login form has a CSRF token");
    let form = format!("username={name}&password={password}&csrf={csrf}");
    let r = user.send(Method::POST, "/login", Some(&form)).await;
    assert_eq!(
        r.status,
        Some(StatusCode::SEE_OTHER),
        "login failed: {}",
        r.body
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(&a.app);
    cmd.env("REDIS_URL", redis.url())
        .env("SESSILE_ADDR", format!("127.0.0.1:{port}"))
        .env("SESSILE_KEYS", format!("1:{}", "ab".repeat(32)))
        .env("SESSILE_DEGRADED", &a.degraded)
        .env("RUST_LOG", "error");
    let log = redis.dir().join("app.log");
    let _app = Spawned::start(cmd, &log);
    wait_ready(&base, "/healthz", Duration::from_secs(30)).await;

    let shared = client();
    let mut users = Vec::new();
    for i in 0..a.clients {
        let mut u = User::new(shared.clone(), &base, "sid");
        let (name, pw) = if i % 2 == 0 {
            ("alice", "wonderland")
        } else {
            ("bob", "builder")
        };
        log_in(&mut u, name, pw).await;
        users.push(u);
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = users
        .into_iter()
        .map(|mut u| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut csrf = None;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && samples.len() < 1_000_000 {
                    n += 1;
                    let at = Instant::now();
                    let r = match (&csrf, n % 5) {
                        (Some(token), 0) => {
                            u.send(Method::POST, "/counter", Some(&format!("csrf={token}")))
                                .await
                        }
                        _ => u.send(Method::GET, "/profile", None).await,
                    };
                    if let Some(t) = csrf_of(&r.body) {
                        csrf = Some(t);
                    }
                    let ok = match r.status {
                        Some(s) if s.is_success() => true,
                        Some(s) if s.is_redirection() => r.location.as_deref() != Some("/login"),
                        _ => false,
                    };
                    let degraded = r.body.contains("<td>unreachable");
                    samples.push(Sample {
                        at,
                        latency: r.latency,
                        ok,
                        degraded,
                    });
                }
                samples
            })
        })
        .collect();

    // Timeline: a healthy phase, then outages separated by healthy phases. A request counts in
    // the phase it started in, so the requests in flight when Redis is killed count as healthy.
    let mut marks = vec![("healthy", start)];
    let mut restarts = Vec::new();
    tokio::time::sleep(a.between).await;
    for i in 0..a.outages {
        redis.kill();
        marks.push(("outage", Instant::now()));
        tokio::time::sleep(a.outage).await;
        redis.restart();
        let restarted = Instant::now();
        restarts.push((i + 1, restarted));
        marks.push(("recovery", restarted));
        tokio::time::sleep(a.between).await;
    }
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.expect("worker"));
    }

    println!(
        "soak: {} clients, {} outages of {:?}, {:?} between, degraded mode {:?}, {:.1} s",
        a.clients,
        a.outages,
        a.outage,
        a.between,
        a.degraded,
        end.duration_since(start).as_secs_f64()
    );
    println!(
        "| phase | from (s) | requests | errors | error rate | degraded reads | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (name, from)) in marks.iter().enumerate() {
        let to = marks.get(i + 1).map_or(end, |m| m.1);
        let mut h = histogram();
        let (mut count, mut errors, mut degraded) = (0u64, 0u64, 0u64);
        for s in samples.iter().filter(|s| s.at >= *from && s.at < to) {
            count += 1;
            errors += u64::from(!s.ok);
            degraded += u64::from(s.degraded);
            let _ = h.record(
                u64::try_from(s.latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        }
        if count == 0 {
            continue;
        }
        println!(
            "| {name} | {:.1} | {count} | {errors} | {:.2}% | {degraded} | {:.2} | {:.2} | {:.1} |",
            from.duration_since(start).as_secs_f64(),
            100.0 * errors as f64 / count as f64,
            ms_at(&h, 0.5),
            ms_at(&h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    println!();
    println!("| outage | time to recover after Redis restart (ms) |");
    println!("|---|---|");
    for (i, restarted) in restarts {
        // Recovered: the first request started after the restart that was served normally and
        // not from a degraded session.
        let first = samples
            .iter()
            .filter(|s| s.at >= restarted && s.ok && !s.degraded)
            .map(|s| s.at + s.latency)
            .min();
        match first {
            Some(t) => println!(
                "| {i} | {:.0} |",
                t.duration_since(restarted).as_secs_f64() * 1000.0
            ),
            None => println!("| {i} | not recovered within the run |"),
        }
    }
}
