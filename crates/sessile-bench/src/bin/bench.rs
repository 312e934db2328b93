//! The benchmark harness. `scripts/bench` runs it end to end; the subcommands are:
//!
//! * `bench run [--repeats 3] [--seconds 5] [--connections 64] [--users 2048] [--out FILE]
//!   [--workloads read,incr,...] [--contenders sessile-memory,...]`
//!   starts a private `redis-server`, and for every repetition, workload and contender (contenders
//!   interleaved, in an order rotated per cell so drift hits all alike) starts a fresh
//!   `bench-server`, logs its users in, measures, and prints one JSON line: req/s, p50/p99/p99.9,
//!   errors, Redis round trips per request (from `MONITOR`, over a sample sent apart), the server's peak RSS, and for
//!   the race workload the lost updates. The `stale` workload (Redis contenders, two instances)
//!   logs a session in on one, reads it on the other, logs it out on the first and reports how
//!   long the second goes on serving it.
//! * `bench report FILE [--md docs/benchmarks.md] [--svg docs/benchmarks.svg]` writes the tables
//!   of medians and ratios and the chart.
//! * `bench memory [--sessions 1000000]` measures bytes per stored session in `MemoryStore`.
//! * `bench redis-cost [--saves 20000]` measures what the Redis store costs Redis: time inside
//!   Redis per save script, per empty script sent with a save's arguments, per load and per plain
//!   `SET` of the same body (the baseline, in the same run), and `MEMORY USAGE` of a record and of
//!   its user's index.
//! * `bench edge [--repeats 3] [--seconds 5] [--out FILE]` puts three `sessile-redis-cached`
//!   instances on one Redis behind each front in turn: the edge router (`examples/edge`; also
//!   with a load bound of c = 1.5), nginx with the affinity recipe, and nginx round robin; runs `read` and `mixed` through each, and
//!   reports req/s, p99, the front's CPU per request and the instances' cache hit rate.
//!
//! All traffic goes to 127.0.0.1; every process it starts it stops, by pid.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sessile::store::WriteId;
use sessile_bench::{Spawned, User, client, free_port, histogram, ms_at, wait_ready};
use sessile_testkit::redis::RedisServer;

const CONTENDERS: &[&str] = &[
    "bare",
    "sessile-memory",
    "sessile-redis",
    "sessile-redis-cached",
    "tower-sessions-memory",
    "tower-sessions-redis",
    "tower-sessions-redis-cached",
];
const WORKLOADS: &[&str] = &["read", "incr", "login", "mixed", "race", "stale"];
/// Stale workload: sessions logged out, and how long a reader on the other instance is watched.
const STALE_SESSIONS: usize = 20;
const STALE_LIMIT: Duration = Duration::from_secs(2);
/// Race workload: clients and increments each, on one session.
const RACE_CLIENTS: usize = 16;
const RACE_EACH: usize = 200;

#[derive(Debug, Serialize, Deserialize, Clone, Default)]
struct Row {
    repeat: usize,
    workload: String,
    contender: String,
    requests: u64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    redis_commands_per_request: Option<f64>,
    peak_rss_kb: u64,
    lost_updates: Option<i64>,
    /// CPU time the server process used per measured request, in microseconds.
    #[serde(default)]
    server_cpu_us_per_request: Option<f64>,
    /// CPU time Redis used per measured request, in microseconds.
    #[serde(default)]
    redis_cpu_us_per_request: Option<f64>,
    /// Stale workload: how long, after the logout's reply on one instance, the other instance
    /// went on serving the session (ms; sessions still served at the limit count as the limit).
    #[serde(default)]
    stale_ms: Option<Vec<f64>>,
    /// Stale workload: reads after the logout that still answered the logged-out user.
    #[serde(default)]
    stale_reads: Option<u64>,
    /// Edge benchmark: loads the instances' caches served, of all their loads.
    #[serde(default)]
    cache_hit_rate: Option<f64>,
}

impl Row {
    /// A row of the figures every cell has; the others are left empty.
    fn measured(
        repeat: usize,
        workload: String,
        contender: &str,
        (requests, seconds): (u64, f64),
        hist: &hdrhistogram::Histogram<u64>,
        errors: u64,
        peak_rss_kb: u64,
    ) -> Self {
        Self {
            repeat,
            workload,
            contender: contender.to_owned(),
            requests,
            seconds,
            rps: requests as f64 / seconds,
            p50_ms: ms_at(hist, 0.5),
            p99_ms: ms_at(hist, 0.99),
            p999_ms: ms_at(hist, 0.999),
            errors,
            peak_rss_kb,
            ..Self::default()
        }
    }

    /// Prints the row and appends it to the results file.
    fn emit(&self, file: &mut std::fs::File) {
        let line = serde_json::to_string(self).expect("json");
        println!("{line}");
        writeln!(file, "{line}").expect("write results");
    }
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every option takes a value; anything else (`--help` among them) is a usage error, not a
    // run of the whole matrix.
    let known: &[&str] = match args.first().map(String::as_str) {
        Some("run") => &[
            "--repeats",
            "--seconds",
            "--connections",
            "--users",
            "--out",
            "--workloads",
            "--contenders",
        ],
        Some("report") => &["--md", "--svg"],
        Some("memory") => &["--sessions"],
        Some("redis-cost") => &["--saves"],
        Some("edge") => &["--repeats", "--seconds", "--out"],
        _ => &[],
    };
    let positional = usize::from(args.first().is_some_and(|c| c == "report"));
    let mut rest = args.iter().skip(1 + positional);
    while let Some(a) = rest.next() {
        if !known.contains(&a.as_str()) || rest.next().is_none() {
            eprintln!(
                "usage: bench run|report FILE|memory|redis-cost|edge [--option value]... (unknown or incomplete: {a}; \
                 the options are in the docs of crates/sessile-bench/src/bin/bench.rs)"
            );
            std::process::exit(2);
        }
    }
    match args.first().map(String::as_str) {
        Some("run") => run(&args).await,
        Some("report") => report(&args),
        Some("memory") => memory(flag(&args, "--sessions", 1_000_000usize)).await,
        Some("redis-cost") => redis_cost(flag(&args, "--saves", 20_000u64)).await,
        Some("edge") => edge(&args).await,
        _ => {
            eprintln!("usage: bench run|report|memory|redis-cost|edge (see the file's docs)");
            std::process::exit(2);
        }
    }
}

fn server_binary() -> PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .with_file_name("bench-server")
}

/// Peak resident set of a process, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Requests of the round-trip sample, sent one at a time after the measured run.
const SAMPLE: usize = 400;

/// Redis round trips per request of `workload`: the commands clients sent while [`SAMPLE`]
/// requests ran one at a time, as `MONITOR` lists them. `INFO commandstats` cannot tell: it also
/// counts the commands a script runs inside the server (`MONITOR` marks those `lua`), and those
/// share names with what clients send (`GET`, `SET`). Sampled apart from the measured run because
/// `MONITOR` slows Redis down.
async fn round_trips(
    redis: &RedisServer,
    base: &str,
    contender: &str,
    workload: &str,
    users: &mut [User],
) -> f64 {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    const END: &str = "sessile-bench-sample-end";
    let port = redis.port().to_string();
    let mut monitor = Command::new("redis-cli")
        .args(["-p", &port, "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli monitor");
    let mut lines = BufReader::new(monitor.stdout.take().expect("piped"));
    let mut first = String::new();
    let _ = lines.read_line(&mut first); // "OK": monitoring from here on
    let shared = client();
    for n in 0..SAMPLE {
        if workload == "login" || users.is_empty() {
            let mut u = User::new(shared.clone(), base, cookie_name(contender));
            u.send(Method::GET, &format!("/login?user=sample{n}"), None)
                .await;
            continue;
        }
        let k = n % users.len();
        let u = &mut users[k];
        if workload == "incr" || (workload == "mixed" && n % 10 == 0) {
            u.send(Method::POST, "/incr", None).await;
        } else {
            u.send(Method::GET, "/read", None).await;
        }
    }
    redis.cli(&["echo", END]);
    let counted = tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        for line in lines.lines() {
            let Ok(line) = line else { break };
            if line.contains(END) {
                break;
            }
            // `<time> [<db> <client>] "<COMMAND>" ...`; a script's own commands show `lua` as
            // their client; the harness's and the clients' housekeeping are not requests.
            let Some((who, command)) = line.split_once("] \"") else {
                continue;
            };
            let command = command.split('"').next().unwrap_or("").to_ascii_lowercase();
            if who.ends_with(" lua")
                || matches!(
                    command.as_str(),
                    "ping" | "echo" | "info" | "config" | "client" | "flushall" | "subscribe"
                )
            {
                continue;
            }
            n += 1;
        }
        n
    })
    .await
    .unwrap_or(0);
    let _ = monitor.kill();
    let _ = monitor.wait();
    counted as f64 / SAMPLE as f64
}

/// CPU time (user + system) a process has used, in microseconds.
fn process_cpu_us(pid: u32) -> u64 {
    let ticks_per_sec = 100; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime = f.get(11)?.parse::<u64>().ok()?;
            let stime = f.get(12)?.parse::<u64>().ok()?;
            Some((utime + stime) * 1_000_000 / ticks_per_sec)
        })
        .unwrap_or(0)
}

/// CPU time Redis has used, in microseconds (`INFO cpu`).
fn redis_cpu_us(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "cpu"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ((field("used_cpu_user:") + field("used_cpu_sys:")) * 1e6) as u64
}

fn start_server(contender: &str, redis: &RedisServer, log_dir: &Path) -> (Spawned, String) {
    let port = free_port();
    let mut cmd = Command::new(server_binary());
    cmd.arg(contender)
        .arg(format!("127.0.0.1:{port}"))
        .arg(redis.url());
    let log = log_dir.join(format!("{contender}-{port}.log"));
    (
        Spawned::start(cmd, &log),
        format!("http://127.0.0.1:{port}"),
    )
}

fn cookie_name(contender: &str) -> &'static str {
    if contender.starts_with("sessile") {
        "sid"
    } else {
        "id"
    }
}

async fn log_in(base: &str, contender: &str, users: usize) -> Vec<User> {
    let shared = client();
    let mut all = Vec::with_capacity(users);
    // Log in with some concurrency, like a crowd arriving.
    for chunk in (0..users).collect::<Vec<_>>().chunks(64) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| {
                let mut u = User::new(shared.clone(), base, cookie_name(contender));
                let i = *i;
                tokio::spawn(async move {
                    let r = u
                        .send(Method::GET, &format!("/login?user=u{i:06}"), None)
                        .await;
                    assert_eq!(r.status, Some(StatusCode::OK), "login failed: {}", r.body);
                    u
                })
            })
            .collect();
        for t in tasks {
            all.push(t.await.expect("login task"));
        }
    }
    all
}

/// Runs `workload` with `connections` workers for `seconds` (after a short warm-up).
#[allow(clippy::too_many_arguments)]
async fn measure(
    base: &str,
    contender: &str,
    workload: &str,
    users: Vec<User>,
    connections: usize,
    seconds: f64,
    redis: &RedisServer,
    server_pid: u32,
) -> (u64, f64, hdrhistogram::Histogram<u64>, u64, f64, u64, u64) {
    let warmup = Duration::from_millis(500);
    let total = warmup + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut per_worker: Vec<Vec<User>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, u) in users.into_iter().enumerate() {
        per_worker[i % connections].push(u);
    }
    let shared = client();
    let base_owned = base.to_owned();
    let measured_from = start + warmup;
    let reset = {
        // Reset Redis's counters and read the CPU clocks when the warm-up ends.
        let port = redis.port();
        tokio::spawn(async move {
            tokio::time::sleep_until(measured_from.into()).await;
            let _ = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "config", "resetstat"])
                .output();
            (process_cpu_us(server_pid), redis_cpu_us(port))
        })
    };
    let workers: Vec<_> = per_worker
        .into_iter()
        .enumerate()
        .map(|(w, mut mine)| {
            let workload = workload.to_owned();
            let (base, shared, cookie) =
                (base_owned.clone(), shared.clone(), cookie_name(contender));
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut count, mut errors, mut n) = (0u64, 0u64, 0usize);
                let mut fresh = 0usize;
                while Instant::now() < start + total && count < 10_000_000 {
                    n += 1;
                    let at = Instant::now();
                    let r = match workload.as_str() {
                        "login" => {
                            fresh += 1;
                            let mut u = User::new(shared.clone(), &base, cookie);
                            u.send(Method::GET, &format!("/login?user=w{w}x{fresh}"), None)
                                .await
                        }
                        _ => {
                            let k = n % mine.len().max(1);
                            let u = &mut mine[k];
                            let incr = workload == "incr" || (workload == "mixed" && n % 10 == 0);
                            if incr {
                                u.send(Method::POST, "/incr", None).await
                            } else {
                                u.send(Method::GET, "/read", None).await
                            }
                        }
                    };
                    if at >= measured_from {
                        count += 1;
                        errors += u64::from(r.status != Some(StatusCode::OK));
                        let _ = h.record(
                            u64::try_from(r.latency.as_micros())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                }
                (count, errors, h, mine)
            })
        })
        .collect();
    let mut hist = histogram();
    let (mut count, mut errors) = (0, 0);
    let mut users = Vec::new();
    for w in workers {
        let (c, e, h, mine) = w.await.expect("worker");
        count += c;
        errors += e;
        hist.add(h).expect("same bounds");
        users.extend(mine);
    }
    let elapsed = start.elapsed().saturating_sub(warmup).as_secs_f64();
    let (server_cpu, redis_cpu) = (process_cpu_us(server_pid), redis_cpu_us(redis.port()));
    let (server_before, redis_before) = reset.await.unwrap_or((server_cpu, redis_cpu));
    let commands = if contender.contains("redis") {
        round_trips(redis, base, contender, workload, &mut users).await
    } else {
        0.0
    };
    (
        count,
        elapsed,
        hist,
        errors,
        commands,
        server_cpu.saturating_sub(server_before),
        redis_cpu.saturating_sub(redis_before),
    )
}

/// 16 clients x 200 increments of one session, spread over `bases` round-robin.
async fn race(
    bases: &[String],
    contender: &str,
) -> (u64, f64, hdrhistogram::Histogram<u64>, u64, i64) {
    let shared = client();
    let mut owner = User::new(shared.clone(), &bases[0], cookie_name(contender));
    let r = owner.send(Method::GET, "/login?user=racer", None).await;
    assert_eq!(r.status, Some(StatusCode::OK));
    let token = owner.token.clone().expect("session cookie");
    let start = Instant::now();
    let tasks: Vec<_> = (0..RACE_CLIENTS)
        .map(|c| {
            let (bases, shared, token) = (bases.to_vec(), shared.clone(), token.clone());
            let cookie = cookie_name(contender);
            tokio::spawn(async move {
                let mut users: Vec<User> = bases
                    .iter()
                    .map(|b| {
                        let mut u = User::new(shared.clone(), b, cookie);
                        u.token = Some(token.clone());
                        u
                    })
                    .collect();
                let mut h = histogram();
                let mut errors = 0;
                for k in 0..RACE_EACH {
                    let u = &mut users[(c + k) % bases.len()];
                    // Keep the one session: a contender that re-issues the cookie must not move
                    // this client to another session.
                    u.token = Some(token.clone());
                    let r = u.send(Method::POST, "/incr", None).await;
                    errors += u64::from(r.status != Some(StatusCode::OK));
                    let _ = h.record(
                        u64::try_from(r.latency.as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                }
                (errors, h)
            })
        })
        .collect();
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        let (e, h) = t.await.expect("racer");
        errors += e;
        hist.add(h).expect("same bounds");
    }
    let elapsed = start.elapsed().as_secs_f64();
    owner.token = Some(token);
    let last = owner.send(Method::POST, "/incr", None).await;
    let final_value: i64 = last.body.trim().parse().unwrap_or(-1);
    let expected = (RACE_CLIENTS * RACE_EACH) as i64 + 1;
    (hist.len(), elapsed, hist, errors, expected - final_value)
}

/// Logs `STALE_SESSIONS` sessions in on `bases[0]`, reads each on `bases[1]` (so a cache there
/// holds it), logs it out on `bases[0]`, then reads it on `bases[1]` back to back until it is no
/// longer served, or `STALE_LIMIT` passes. Returns the requests made, their latencies, errors,
/// per session the time until the first read that no longer served it (that read's round trip
/// included), and the reads that still served it.
async fn staleness(
    bases: &[String],
    contender: &str,
) -> (u64, f64, hdrhistogram::Histogram<u64>, u64, Vec<f64>, u64) {
    let shared = client();
    let cookie = cookie_name(contender);
    let (mut hist, mut errors, mut stale, mut stale_reads) = (histogram(), 0u64, Vec::new(), 0u64);
    let start = Instant::now();
    for i in 0..STALE_SESSIONS {
        let user = format!("stale{i:03}");
        let mut a = User::new(shared.clone(), &bases[0], cookie);
        let r = a
            .send(Method::GET, &format!("/login?user={user}"), None)
            .await;
        assert_eq!(r.status, Some(StatusCode::OK), "login failed: {}", r.body);
        let token = a.token.clone().expect("session cookie");
        let mut b = User::new(shared.clone(), &bases[1], cookie);
        b.token = Some(token.clone());
        let r = b.send(Method::GET, "/read", None).await;
        assert_eq!(r.body, user, "the other instance reads the session");
        let r = a.send(Method::POST, "/logout", None).await;
        assert_eq!(r.status, Some(StatusCode::OK), "logout failed: {}", r.body);
        let out = Instant::now();
        loop {
            b.token = Some(token.clone());
            let r = b.send(Method::GET, "/read", None).await;
            errors += u64::from(r.status != Some(StatusCode::OK));
            let _ = hist.record(
                u64::try_from(r.latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
            let served = r.body == user;
            stale_reads += u64::from(served);
            if !served || out.elapsed() >= STALE_LIMIT {
                let ms = if served {
                    STALE_LIMIT.as_secs_f64() * 1e3
                } else {
                    out.elapsed().as_secs_f64() * 1e3
                };
                stale.push(ms);
                break;
            }
        }
    }
    (
        hist.len(),
        start.elapsed().as_secs_f64(),
        hist,
        errors,
        stale,
        stale_reads,
    )
}

async fn run(args: &[String]) {
    let repeats: usize = flag(args, "--repeats", 3);
    let seconds: f64 = flag(args, "--seconds", 5.0);
    let connections: usize = flag(args, "--connections", 64);
    let users: usize = flag(args, "--users", 2048);
    let out: PathBuf = flag(args, "--out", PathBuf::from("target/bench/results.jsonl"));
    let only: String = flag(args, "--workloads", WORKLOADS.join(","));
    let workloads: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| only.split(',').any(|o| o == *w))
        .collect();
    let picked: String = flag(args, "--contenders", CONTENDERS.join(","));
    let contenders: Vec<&str> = CONTENDERS
        .iter()
        .copied()
        .filter(|c| picked.split(',').any(|p| p == *c))
        .collect();
    let (mut file, redis) = setup(repeats, seconds, connections, &out);
    let logs = redis.dir().to_owned();

    for repeat in 0..repeats {
        for (wi, workload) in workloads.iter().enumerate() {
            let n = contenders.len();
            // Rotate the order per cell: no contender always runs first or last.
            let order: Vec<&str> = (0..n).map(|i| contenders[(i + repeat + wi) % n]).collect();
            for contender in order {
                let two = *workload == "race" || *workload == "stale";
                if (*workload == "race" && contender == "bare")
                    || (*workload == "stale" && !contender.contains("redis"))
                {
                    continue;
                }
                redis.cli(&["flushall"]);
                let instances = if two && contender.contains("redis") {
                    2
                } else {
                    1
                };
                let servers: Vec<(Spawned, String)> = (0..instances)
                    .map(|_| start_server(contender, &redis, &logs))
                    .collect();
                for (_, base) in &servers {
                    wait_ready(base, "/read", Duration::from_secs(30)).await;
                }
                let bases: Vec<String> = servers.iter().map(|(_, b)| b.clone()).collect();
                let (mut stale, mut stale_reads) = (None, None);
                let (requests, secs, hist, errors, commands, lost, cpu) = if *workload == "race" {
                    let (r, s, h, e, lost) = race(&bases, contender).await;
                    (r, s, h, e, None, Some(lost), None)
                } else if *workload == "stale" {
                    let (r, s, h, e, served, reads) = staleness(&bases, contender).await;
                    (stale, stale_reads) = (Some(served), Some(reads));
                    (r, s, h, e, None, None, None)
                } else {
                    let logged = if *workload == "login" {
                        Vec::new()
                    } else {
                        log_in(&bases[0], contender, users).await
                    };
                    let pid = servers[0].0.0.id();
                    let (r, s, h, e, c, server_us, redis_us) = measure(
                        &bases[0],
                        contender,
                        workload,
                        logged,
                        connections,
                        seconds,
                        &redis,
                        pid,
                    )
                    .await;
                    (r, s, h, e, Some(c), None, Some((server_us, redis_us)))
                };
                let rss = servers
                    .iter()
                    .map(|(p, _)| peak_rss_kb(p.0.id()))
                    .max()
                    .unwrap_or(0);
                Row {
                    redis_commands_per_request: commands.filter(|_| contender.contains("redis")),
                    lost_updates: lost,
                    server_cpu_us_per_request: cpu.map(|(s, _)| s as f64 / requests.max(1) as f64),
                    redis_cpu_us_per_request: cpu
                        .filter(|_| contender.contains("redis"))
                        .map(|(_, r)| r as f64 / requests.max(1) as f64),
                    stale_ms: stale,
                    stale_reads,
                    ..Row::measured(
                        repeat,
                        (*workload).to_owned(),
                        contender,
                        (requests, secs),
                        &hist,
                        errors,
                        rss,
                    )
                }
                .emit(&mut file);
                drop(servers);
            }
        }
    }
}

/// Checks that the run is bounded, opens the results file, and starts the private Redis.
fn setup(
    repeats: usize,
    seconds: f64,
    connections: usize,
    out: &Path,
) -> (std::fs::File, RedisServer) {
    assert!(
        repeats <= 20 && seconds <= 120.0 && connections <= 512,
        "bounded runs only"
    );
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).expect("output dir");
    let file = std::fs::File::create(out).expect("output file");
    (file, RedisServer::start_with(&["--maxmemory", "2gb"]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

struct Cell {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    commands: Option<f64>,
    rss_mb: f64,
    lost: Option<f64>,
    server_cpu: Option<f64>,
    redis_cpu: Option<f64>,
    /// Stale workload: every session's time served after its logout, over all runs, sorted.
    stale: Vec<f64>,
    /// Stale workload: reads that served a logged-out session, over all runs.
    stale_reads: u64,
    runs: usize,
}

fn cells(rows: &[Row]) -> BTreeMap<(String, String), Cell> {
    let mut groups: BTreeMap<(String, String), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.workload.clone(), r.contender.clone()))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let m = |f: &dyn Fn(&Row) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let cell = Cell {
                rps: m(&|r| r.rps),
                p50: m(&|r| r.p50_ms),
                p99: m(&|r| r.p99_ms),
                p999: m(&|r| r.p999_ms),
                errors: rs.iter().map(|r| r.errors).sum(),
                commands: rs[0]
                    .redis_commands_per_request
                    .map(|_| m(&|r| r.redis_commands_per_request.unwrap_or(0.0))),
                rss_mb: m(&|r| r.peak_rss_kb as f64 / 1024.0),
                lost: rs[0]
                    .lost_updates
                    .map(|_| m(&|r| r.lost_updates.unwrap_or(0) as f64)),
                server_cpu: rs[0]
                    .server_cpu_us_per_request
                    .map(|_| m(&|r| r.server_cpu_us_per_request.unwrap_or(0.0))),
                redis_cpu: rs[0]
                    .redis_cpu_us_per_request
                    .map(|_| m(&|r| r.redis_cpu_us_per_request.unwrap_or(0.0))),
                stale: {
                    let mut all: Vec<f64> = rs
                        .iter()
                        .flat_map(|r| r.stale_ms.iter().flatten().copied())
                        .collect();
                    all.sort_by(f64::total_cmp);
                    all
                },
                stale_reads: rs.iter().filter_map(|r| r.stale_reads).sum(),
                runs: rs.len(),
            };
            (k, cell)
        })
        .collect()
}

fn peer_of(contender: &str) -> Option<&'static str> {
    match contender {
        "sessile-memory" => Some("tower-sessions-memory"),
        "sessile-redis" => Some("tower-sessions-redis"),
        "sessile-redis-cached" => Some("tower-sessions-redis-cached"),
        _ => None,
    }
}

fn report(args: &[String]) {
    let input = args.get(1).expect("usage: bench report FILE");
    let md: PathBuf = flag(args, "--md", PathBuf::from("docs/benchmarks.md"));
    let svg: PathBuf = flag(args, "--svg", PathBuf::from("docs/benchmarks.svg"));
    let rows: Vec<Row> = std::fs::read_to_string(input)
        .expect("results file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a result row"))
        .collect();
    let cells = cells(&rows);
    let mut out = edge_table(&rows);
    let get = |w: &str, c: &str| cells.get(&(w.to_owned(), c.to_owned()));
    for workload in WORKLOADS {
        if !cells.keys().any(|(w, _)| w == workload) {
            continue;
        }
        out.push_str(&format!("\n### {workload}\n\n"));
        if *workload == "stale" {
            out.push_str(&stale_table(&cells));
            continue;
        }
        out.push_str("| contender | req/s | vs bare axum | vs tower-sessions | p50 ms | p99 ms | p99.9 ms | errors | Redis cmds/req | server CPU µs/req | Redis CPU µs/req | peak RSS MiB | lost updates | runs |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for contender in CONTENDERS {
            let Some(c) = get(workload, contender) else {
                continue;
            };
            let vs_bare =
                get(workload, "bare").map_or("-".into(), |b| format!("{:.2}x", c.rps / b.rps));
            let vs_peer = peer_of(contender)
                .and_then(|p| get(workload, p))
                .map_or("-".into(), |p| format!("{:.2}x", c.rps / p.rps));
            out.push_str(&format!(
                "| {contender} | {:.0} | {vs_bare} | {vs_peer} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.1} | {} | {} |\n",
                c.rps,
                c.p50,
                c.p99,
                c.p999,
                c.errors,
                c.commands.map_or("-".into(), |x| format!("{x:.2}")),
                c.server_cpu.map_or("-".into(), |x| format!("{x:.1}")),
                c.redis_cpu.map_or("-".into(), |x| format!("{x:.1}")),
                c.rss_mb,
                c.lost.map_or("-".into(), |x| format!("{x:.0}")),
                c.runs,
            ));
        }
    }
    std::fs::write(
        &md,
        replace_generated(&std::fs::read_to_string(&md).unwrap_or_default(), &out),
    )
    .expect("write markdown");
    std::fs::write(&svg, chart(&cells)).expect("write svg");
    println!("{out}");
}

/// The stale workload's table: how long the other instance served a logged-out session.
fn stale_table(cells: &BTreeMap<(String, String), Cell>) -> String {
    let limit = STALE_LIMIT.as_secs_f64() * 1e3;
    let mut out = format!(
        "Log out on instance A, then read on instance B (which read the session just before): \
         the time from A's reply to B's first answer without it (that request's round trip \
         included), watched for {limit:.0} ms, and the reads B answered with it meanwhile.\n\n\
         | contender | sessions | p50 ms | p99 ms | max ms | still served at {limit:.0} ms | stale reads | runs |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for contender in CONTENDERS {
        let Some(c) = cells.get(&("stale".to_owned(), (*contender).to_owned())) else {
            continue;
        };
        let at = |q: f64| {
            c.stale
                .get(((c.stale.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        out.push_str(&format!(
            "| {contender} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |\n",
            c.stale.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            c.stale.iter().filter(|ms| **ms >= limit).count(),
            c.stale_reads,
            c.runs,
        ));
    }
    out
}

/// Replaces the text between the generated-results markers, keeping the hand-written rest.
fn replace_generated(doc: &str, tables: &str) -> String {
    const BEGIN: &str = "<!-- results:begin -->";
    const END: &str = "<!-- results:end -->";
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{BEGIN}\n{tables}\n{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{BEGIN}\n{tables}\n{END}\n"),
    }
}

/// A chart panel: its title and the value it plots.
type Panel = (&'static str, fn(&Cell) -> f64);

/// Two grouped bar charts: throughput and p99, one group per workload, one bar per contender.
fn chart(cells: &BTreeMap<(String, String), Cell>) -> String {
    let colors = [
        "#888888", "#1f77b4", "#0b3d91", "#6baed6", "#ff7f0e", "#b35806", "#fdae6b",
    ];
    let workloads: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| *w != "race" && *w != "stale")
        .collect();
    let (w, h, top) = (900.0, 260.0, 40.0);
    let group = (w - 80.0) / workloads.len() as f64;
    let bar = group / (CONTENDERS.len() as f64 + 1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        2.0 * (h + top) + 60.0
    );
    let panels: [Panel; 2] = [
        ("throughput (req/s, higher is better)", |c| c.rps),
        ("p99 latency (ms, lower is better)", |c| c.p99),
    ];
    for (pi, (title, value)) in panels.iter().enumerate() {
        let y0 = pi as f64 * (h + top) + top;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{title}</text>\n",
            y0 - 12.0
        ));
        for (wi, workload) in workloads.iter().enumerate() {
            let max = CONTENDERS
                .iter()
                .filter_map(|c| cells.get(&((*workload).to_owned(), (*c).to_owned())))
                .map(value)
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let gx = 60.0 + wi as f64 * group;
            for (ci, contender) in CONTENDERS.iter().enumerate() {
                let Some(c) = cells.get(&((*workload).to_owned(), (*contender).to_owned())) else {
                    continue;
                };
                let v = value(c);
                let bh = (v / max) * (h - 30.0);
                let x = gx + ci as f64 * bar;
                svg.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{contender} {workload}: {v:.2}</title></rect>\n",
                    y0 + h - 30.0 - bh,
                    bar * 0.9,
                    colors[ci]
                ));
                svg.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>\n",
                    x + bar * 0.45,
                    y0 + h - 33.0 - bh,
                    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
                ));
            }
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{workload}</text>\n",
                gx + group / 2.0 - bar / 2.0,
                y0 + h - 12.0
            ));
        }
    }
    let ly = 2.0 * (h + top) + 30.0;
    for (ci, contender) in CONTENDERS.iter().enumerate() {
        let x = 20.0 + ci as f64 * 175.0;
        svg.push_str(&format!("<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{ly}\">{contender}</text>\n", ly - 10.0, colors[ci], x + 16.0));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Bytes per stored session in `MemoryStore`, with the benchmark's login payload.
/// Session `i` of the size benchmarks: the bench server's login payload, logged in, with deadlines
/// at `now`.
fn sized_record(i: usize, now: u64) -> sessile::record::Record {
    use sessile::record::{Metadata, Payload, Record};
    let mut p = Payload::default();
    let user = format!("u{i:06}");
    let put = |p: &mut Payload, k: &str, v: &dyn erased::Encode| p.insert(k.into(), v.encode());
    put(&mut p, "user", &user);
    put(&mut p, "display", &format!("Benchmark User {user}"));
    put(&mut p, "counter", &0u64);
    put(&mut p, "roles", &["reader", "writer", "billing"]);
    put(&mut p, "theme", &"dark");
    put(&mut p, "locale", &"en-GB");
    put(&mut p, "tz", &"Europe/London");
    put(
        &mut p,
        "csrf",
        &format!("{:064x}", i as u128 * 0x9E37_79B9_7F4A_7C15),
    );
    Record {
        id: sessile::SessionId::random_for_user(Some(&user)),
        version: 1,
        idle_deadline: now,
        meta: Metadata {
            created_at: now - 1000,
            absolute_deadline: now + 1000,
            user_id: Some(user),
            tenant: None,
            hint: "node-1".into(),
        },
        data: p,
    }
}

async fn memory(sessions: usize) {
    use sessile::SessionStore as _;
    assert!(sessions <= 5_000_000, "bounded");
    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
    let store = sessile::MemoryStore::builder().sweep_interval(None).build();
    let now = 1_900_000_000_000u64;
    let sample = sized_record(0, now).data.size();
    let before = rss_kb();
    for i in 0..sessions {
        let r = sized_record(i, now);
        store.create(&r, WriteId::random()).await.expect("create");
    }
    let after = rss_kb();
    let per = (after.saturating_sub(before) * 1024) as f64 / sessions as f64;
    println!(
        "{{\"sessions\":{sessions},\"payload_bytes\":{sample},\"bytes_per_session\":{per:.0},\"ratio_to_payload\":{:.2},\"held\":{}}}",
        per / sample as f64,
        store.len()
    );
}

/// What the Redis store costs Redis, by `INFO commandstats` (time inside Redis per command) and
/// `MEMORY USAGE`, on a private `redis-server` with one subscriber on the invalidation channel
/// (as with a cache tier): `saves` saves of one bench session, as many loads, and as a baseline in
/// the same run the same number of plain `SET .. PX` of the session's body (what tower-sessions'
/// Redis store sends per save).
async fn redis_cost(saves: u64) {
    use fred::prelude::*;
    use sessile::SessionStore as _;
    use sessile::store::invalidation::PublishesInvalidations as _;
    assert!(saves <= 1_000_000, "bounded");
    let redis = RedisServer::start();
    let store = sessile_redis::RedisStore::connect(&redis.url())
        .await
        .expect("connect");
    let _listening = store
        .listen(std::sync::Arc::new(|_| {}))
        .await
        .expect("listen");
    let now = sessile::clock::Clock::now_ms(&sessile::clock::SystemClock) + 3_600_000;
    let mut r = sized_record(0, now);
    let payload = r.data.size();
    store.create(&r, WriteId::random()).await.expect("create");
    let key = store.record_key(&r.id);
    let index = store.index_key(None, r.meta.user_id.as_deref().unwrap_or_default());
    let usage = |k: &str| {
        redis
            .cli(&["memory", "usage", k])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (record_bytes, index_bytes) = (usage(&key), usage(&index));
    let per_call = |cmd: &str| {
        let stats = redis.cli(&["info", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix("usec_per_call="))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    redis.cli(&["config", "resetstat"]);
    for _ in 0..saves {
        let expected = r.version;
        r.version += 1;
        store
            .save(&r, expected, WriteId::random())
            .await
            .expect("save");
    }
    let save_us = per_call("evalsha");
    redis.cli(&["config", "resetstat"]);
    for _ in 0..saves {
        store.load(r.id).await.expect("load").expect("held");
    }
    let load_us = per_call("get");
    let body = r.encode_body().expect("encode");
    let pool = store.pool().next();
    redis.cli(&["config", "resetstat"]);
    for _ in 0..saves {
        let _: () = pool
            .set(
                "bench:plain",
                body.as_slice(),
                Some(fred::types::Expiration::PX(3_600_000)),
                None,
                false,
            )
            .await
            .expect("set");
    }
    let set_us = per_call("set");
    // The floor of any script: one that does nothing, sent with as many keys and arguments of
    // about the sizes a save sends (two keys; the version, the record's head and tail, the expiry,
    // the user, the id, the absolute deadline, the invalidation message, a flag).
    let empty = fred::types::scripts::Script::from_lua("return 1");
    empty.load(pool).await.expect("script load");
    let keys = vec![key.clone(), format!("{key}:w")];
    let hex = r.id.to_hex();
    let args: Vec<fred::types::Value> = vec![
        fred::types::Value::from(&[0u8; 8][..]),
        fred::types::Value::from(&[0u8; 17][..]),
        fred::types::Value::from(body.as_slice()),
        fred::types::Value::from(now as i64),
        fred::types::Value::from(":u000000"),
        fred::types::Value::from(hex.as_str()),
        fred::types::Value::from(now as i64),
        fred::types::Value::from(format!("{hex}:12345:{now}")),
        fred::types::Value::from("0"),
    ];
    redis.cli(&["config", "resetstat"]);
    for _ in 0..saves {
        let _: i64 = empty
            .evalsha(pool, keys.clone(), args.clone())
            .await
            .expect("evalsha");
    }
    let empty_us = per_call("evalsha");
    println!(
        "{{\"saves\":{saves},\"save_script_us\":{save_us:.2},\"empty_script_us\":{empty_us:.2},\"load_get_us\":{load_us:.2},\"plain_set_us\":{set_us:.2},\"save_vs_set\":{:.2},\"payload_bytes\":{payload},\"record_memory_usage\":{record_bytes},\"record_vs_payload\":{:.2},\"index_memory_usage\":{index_bytes}}}",
        save_us / set_us,
        record_bytes as f64 / payload as f64
    );
    store.quit().await;
}

mod erased {
    /// MessagePack-encodes a value, as `Session::insert` does.
    pub(super) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize + ?Sized> Encode for T {
        fn encode(&self) -> Vec<u8> {
            rmp_serde::to_vec(self).expect("encodable")
        }
    }
}

/// The app instances behind the fronts of `bench edge`.
const EDGE_NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const FRONTS: [&str; 4] = ["edge", "edge-c1.5", "nginx", "nginx-round-robin"];

fn edge_binary() -> PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .with_file_name("sessile-edge-example")
}

/// nginx's binary: on `PATH` or where Debian puts it.
fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| "nginx".to_owned(), |p| (*p).to_owned())
}

/// Starts `front` before `nodes` (addresses); returns it and its base URL.
fn start_front(front: &str, nodes: &[String], dir: &Path) -> (Spawned, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.join(format!("{front}-{port}.log"));
    let cmd = match front {
        "edge" | "edge-c1.5" => {
            let table: String = EDGE_NODES
                .iter()
                .zip(nodes)
                .map(|(n, a)| format!("{n} {a}\n"))
                .collect();
            let file = dir.join(format!("nodes-{port}"));
            std::fs::write(&file, table).expect("node table");
            let mut cmd = Command::new(edge_binary());
            cmd.env("EDGE_ADDR", &listen)
                .env("EDGE_NODES_FILE", &file)
                .env("EDGE_ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
                .env("RUST_LOG", "warn");
            if front == "edge-c1.5" {
                cmd.env("EDGE_BALANCE_FACTOR", "1.5");
            }
            cmd
        }
        _ => {
            let conf_dir = dir.join(format!("nginx-{port}"));
            std::fs::create_dir_all(&conf_dir).expect("nginx dir");
            let conf = if front == "nginx" {
                let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../examples/edge/recipes/nginx.conf");
                std::fs::read_to_string(recipe).expect("the nginx recipe")
            } else {
                ROUND_ROBIN.to_owned()
            };
            let conf = conf
                .replace("{{DIR}}", &conf_dir.display().to_string())
                .replace("{{LISTEN}}", &listen)
                .replace("{{NODE_A}}", &nodes[0])
                .replace("{{NODE_B}}", &nodes[1])
                .replace("{{NODE_C}}", &nodes[2]);
            let path = conf_dir.join("nginx.conf");
            std::fs::write(&path, conf).expect("nginx config");
            let mut cmd = Command::new(nginx_binary());
            // One process, so that its CPU time is the front's.
            cmd.arg("-p")
                .arg(&conf_dir)
                .arg("-c")
                .arg(&path)
                .args(["-g", "daemon off; master_process off;"]);
            cmd
        }
    };
    (Spawned::start(cmd, &log), format!("http://{listen}"))
}

/// nginx round robin over the three instances, otherwise as the recipe.
const ROUND_ROBIN: &str = "worker_processes 1;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path {{DIR}}/body;
    proxy_temp_path {{DIR}}/proxy;
    fastcgi_temp_path {{DIR}}/fastcgi;
    uwsgi_temp_path {{DIR}}/uwsgi;
    scgi_temp_path {{DIR}}/scgi;
    upstream app {
        server {{NODE_A}};
        server {{NODE_B}};
        server {{NODE_C}};
        keepalive 16;
    }
    server {
        listen {{LISTEN}};
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_set_header Host $host;
        location / { proxy_pass http://app; }
    }
}
";

/// The instances' cache hits and misses so far, summed.
async fn cache_stats(nodes: &[String]) -> (u64, u64) {
    let mut total = (0, 0);
    for addr in nodes {
        let mut probe = User::new(client(), &format!("http://{addr}"), "unused");
        let r = probe.send(Method::GET, "/cache-stats", None).await;
        let mut parts = r
            .body
            .split_whitespace()
            .map(|n| n.parse::<u64>().unwrap_or(0));
        total.0 += parts.next().unwrap_or(0);
        total.1 += parts.next().unwrap_or(0);
    }
    total
}

async fn edge(args: &[String]) {
    let repeats: usize = flag(args, "--repeats", 3);
    let seconds: f64 = flag(args, "--seconds", 5.0);
    let connections: usize = flag(args, "--connections", 64);
    let users: usize = flag(args, "--users", 2048);
    let out: PathBuf = flag(args, "--out", PathBuf::from("target/bench/edge.jsonl"));
    let (mut file, redis) = setup(repeats, seconds, connections, &out);
    let logs = redis.dir().to_owned();
    let contender = "sessile-redis-cached";
    for repeat in 0..repeats {
        for (wi, workload) in ["read", "mixed"].iter().enumerate() {
            for k in 0..FRONTS.len() {
                let front = FRONTS[(k + repeat + wi) % FRONTS.len()];
                redis.cli(&["flushall"]);
                let instances: Vec<(Spawned, String)> = EDGE_NODES
                    .iter()
                    .map(|node| {
                        let addr = format!("127.0.0.1:{}", free_port());
                        let mut cmd = Command::new(server_binary());
                        cmd.arg(contender)
                            .arg(&addr)
                            .arg(redis.url())
                            .env("SESSILE_NODE_ID", node);
                        let log = logs.join(format!("{node}-{}.log", addr.replace(':', "-")));
                        (Spawned::start(cmd, &log), addr)
                    })
                    .collect();
                let nodes: Vec<String> = instances.iter().map(|(_, a)| a.clone()).collect();
                for a in &nodes {
                    wait_ready(&format!("http://{a}"), "/healthz", Duration::from_secs(30)).await;
                }
                let (proxy, base) = start_front(front, &nodes, &logs);
                wait_ready(&base, "/healthz", Duration::from_secs(30)).await;
                let logged = log_in(&base, contender, users).await;
                let before = cache_stats(&nodes).await;
                let (requests, secs, hist, errors, _, proxy_us, _) = measure(
                    &base,
                    contender,
                    workload,
                    logged,
                    connections,
                    seconds,
                    &redis,
                    proxy.0.id(),
                )
                .await;
                let after = cache_stats(&nodes).await;
                let (hits, misses) = (after.0 - before.0, after.1 - before.1);
                Row {
                    server_cpu_us_per_request: Some(proxy_us as f64 / requests.max(1) as f64),
                    cache_hit_rate: Some(hits as f64 / (hits + misses).max(1) as f64),
                    ..Row::measured(
                        repeat,
                        format!("edge-{workload}"),
                        front,
                        (requests, secs),
                        &hist,
                        errors,
                        peak_rss_kb(proxy.0.id()),
                    )
                }
                .emit(&mut file);
                drop(proxy);
                drop(instances);
            }
        }
    }
}

/// The edge benchmark's table, if the rows have one.
fn edge_table(rows: &[Row]) -> String {
    let cells = cells(rows);
    let mut out = String::new();
    for workload in ["edge-read", "edge-mixed"] {
        let get = |c: &str| cells.get(&(workload.to_owned(), c.to_owned()));
        if FRONTS.iter().all(|f| get(f).is_none()) {
            continue;
        }
        out.push_str(&format!(
            "\n### {workload}\n\nThree `sessile-redis-cached` instances behind each front.\n\n\
             | front | req/s | vs nginx | p50 ms | p99 ms | p99.9 ms | errors | front CPU µs/req | front peak RSS MiB | cache hit rate | runs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        for front in FRONTS {
            let Some(c) = get(front) else {
                continue;
            };
            let vs = get("nginx").map_or("-".into(), |n| format!("{:.2}x", c.rps / n.rps));
            let hit = median(
                rows.iter()
                    .filter(|r| r.workload == workload && r.contender == front)
                    .filter_map(|r| r.cache_hit_rate)
                    .collect(),
            );
            out.push_str(&format!(
                "| {front} | {:.0} | {vs} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {:.2}% | {} |\n",
                c.rps,
                c.p50,
                c.p99,
                c.p999,
                c.errors,
                c.server_cpu.map_or("-".into(), |x| format!("{x:.1}")),
                c.rss_mb,
                hit * 100.0,
                c.runs,
            ));
        }
    }
    out
}
