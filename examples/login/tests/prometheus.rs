//! A real Prometheus (Debian's `prometheus`, started by this test on a free loopback port) scrapes
//! two instances of the login example, run as processes, and answers queries for the store
//! latency histogram, the breaker state and the token rejections.
//!
//! When `prometheus` is not installed the test fails with the command that installs it; it is
//! never skipped. `./scripts/test` installs it on Debian when it runs as root.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process of this test, killed (by its own handle) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Polls `f` until it gives a value, for at most `limit`: for processes this test started to
/// come up, and for Prometheus to have scraped.
fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Reply {
    status: u16,
    set_cookies: Vec<String>,
    body: String,
}

/// One HTTP/1.1 request on its own connection.
fn http(addr: SocketAddr, method: &str, path: &str, cookie: &str, form: &str) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", form.len()));
    }
    req.push_str("\r\n");
    req.push_str(form);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let set_cookies = lines
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| {
                value
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .collect();
    Some(Reply {
        status,
        set_cookies,
        body: body.to_owned(),
    })
}

/// Logs in as alice on `app` the way a browser does, and reads the profile page.
fn log_in_and_read(app: SocketAddr) {
    let form = http(app, "GET", "/login", "", "").expect("login form");
    let login_csrf = form
        .set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-login-csrf="))
        .expect("login CSRF cookie")
        .clone();
    let at = form
        .body
        .find("name=\"csrf\" value=\"")
        .expect("CSRF field")
        + 19;
    let csrf = &form.body[at..at + 64];
    let done = http(
        app,
        "POST",
        "/login",
        &login_csrf,
        &format!("username=alice&password=wonderland&csrf={csrf}"),
    )
    .expect("login");
    assert_eq!(done.status, 303);
    let sid = done
        .set_cookies
        .iter()
        .find(|c| c.starts_with("sid="))
        .expect("session cookie")
        .clone();
    let profile = http(app, "GET", "/profile", &sid, "").expect("profile");
    assert_eq!(profile.status, 200, "{}", profile.body);
}

/// Starts the example binary on `app`, its metrics page on `metrics`.
fn example(app: SocketAddr, metrics: SocketAddr) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_login"))
        .env("SESSILE_ADDR", app.to_string())
        .env("SESSILE_METRICS_ADDR", metrics.to_string())
        .env("SESSILE_KEYS", format!("1:{}", "ab".repeat(32)))
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let proc = Proc(child);
    eventually("the example listens", Duration::from_secs(30), || {
        http(app, "GET", "/healthz", "", "").filter(|r| r.status == 200)
    });
    proc
}

/// A Prometheus instant query: the result vector, once the query succeeds.
fn query(prometheus: SocketAddr, promql: &str) -> Option<Vec<serde_json::Value>> {
    let mut encoded = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let reply = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={encoded}"),
        "",
        "",
    )?;
    let json: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
    (json["status"] == "success").then(|| json["data"]["result"].as_array().cloned())?
}

/// The values of a query's result series, once there are `series` of them.
fn values(prometheus: SocketAddr, promql: &str, series: usize) -> Vec<f64> {
    eventually(promql, Duration::from_secs(60), || {
        let result = query(prometheus, promql)?;
        let values: Vec<f64> = result
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .filter(|v: &f64| v.is_finite())
            .collect();
        (values.len() == series).then_some(values)
    })
}

#[test]
fn prometheus_scrapes_two_instances_store_latency_breaker_state_and_rejected_tokens() {
    assert!(
        Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "prometheus is not installed: `apt-get install -y prometheus` (./scripts/test does it as root)"
    );
    let instances: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (free_addr(), free_addr())).collect();
    let _examples: Vec<Proc> = instances.iter().map(|&(a, m)| example(a, m)).collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    let targets: Vec<String> = instances.iter().map(|(_, m)| format!("'{m}'")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sessile\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("config");
    let prometheus = free_addr();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    eventually("prometheus is ready", Duration::from_secs(60), || {
        http(prometheus, "GET", "/-/ready", "", "").filter(|r| r.status == 200)
    });

    for &(app, _) in &instances {
        log_in_and_read(app);
        let rejected = http(app, "GET", "/profile", "sid=node-1.garbage", "").expect("profile");
        assert_eq!(rejected.status, 303, "a garbage cookie is no session");
    }

    // Both instances are scraped.
    assert_eq!(values(prometheus, "up{job=\"sessile\"}", 2), [1.0, 1.0]);
    // The store latency histogram, from each instance, and its p99 over both.
    for v in values(prometheus, "sessile_store_op_seconds_count{op=\"load\"}", 2) {
        assert!(v >= 1.0, "{v}");
    }
    let p99 = values(
        prometheus,
        "histogram_quantile(0.99, sum by (le) (sessile_store_op_seconds_bucket{op=\"create\"}))",
        1,
    );
    assert!(p99[0] > 0.0 && p99[0] <= 10.0, "{p99:?}");
    // The breaker is closed on both.
    assert_eq!(
        values(
            prometheus,
            "sessile_breaker_state{breaker=\"session_store\"}",
            2
        ),
        [0.0, 0.0]
    );
    // Every query of the dashboard is valid PromQL that Prometheus evaluates.
    for expr in dashboard_queries() {
        assert!(
            query(prometheus, &expr).is_some(),
            "dashboard query fails: {expr}"
        );
    }
    // Each instance rejected one token.
    assert_eq!(
        values(
            prometheus,
            "sum(sessile_tokens_rejected_total{reason=\"malformed\"})",
            1
        ),
        [2.0]
    );
}

/// The PromQL of every panel of `docs/grafana-dashboard.json`.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect()
}

/// Every metric the dashboard plots is one the metrics table documents.
#[test]
fn the_dashboard_plots_only_documented_metrics() {
    let table = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/observability.md"
    ))
    .expect("observability.md");
    let queries = dashboard_queries();
    assert!(queries.len() >= 9, "{queries:?}");
    for expr in queries {
        for (at, _) in expr.match_indices("sessile_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                table.contains(&format!("`{name}`")),
                "{name} (in {expr}) is not documented"
            );
        }
    }
}
