//! A real Prometheus (Debian's `prometheus`, started by this test on a free loopback port) scrapes
//! two instances of the login example, run as processes, and answers queries for the store
//! latency histogram, the breaker state and the token rejections.
//!
//! When `prometheus` is not installed the test fails with the command that installs it; it is
//! never skipped. `./scripts/test` installs it on Debian when it runs as root.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{
    Proc, browser, chromedriver, eventually, example_on, free_addr, http, log_in_and_read,
    screenshot,
};

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

/// The finite values of a query's result, once it has at least one.
fn values_any(prometheus: SocketAddr, promql: &str) -> Vec<f64> {
    eventually(promql, Duration::from_secs(60), || {
        let values: Vec<f64> = query(prometheus, promql)?
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .filter(|v: &f64| v.is_finite())
            .collect();
        (!values.is_empty()).then_some(values)
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
    // Two instances sharing a Redis, as deployed: the store's breaker has something to guard.
    let redis = sessile_testkit::redis::RedisServer::start();
    let instances: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (free_addr(), free_addr())).collect();
    let _examples: Vec<Proc> = instances
        .iter()
        .map(|&(a, m)| example_on(a, m, Some(&redis.url())))
        .collect();

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
    let consoles = dir.path().join("consoles");
    std::fs::create_dir_all(&consoles).expect("consoles dir");
    std::fs::write(consoles.join("sessile.html"), dashboard_console()).expect("console");
    let prometheus = free_addr();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.console.templates={}", consoles.display()))
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

    // Steady traffic on both instances while Prometheus scrapes, so that the rates have points;
    // bounded in count and time, and stopped at the end of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, apps) = (
            stop.clone(),
            instances.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            let limit = Duration::from_secs(90) + extra_traffic();
            for i in 0..(2_000 + 50 * extra_traffic().as_secs() as usize) {
                if stop.load(Ordering::Relaxed) || start.elapsed() > limit {
                    break;
                }
                log_in_and_read(apps[i % apps.len()]);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
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

    // The dashboard's panels, drawn by Prometheus's console graphs from the same queries, in
    // Chromium: every panel draws a graph or says it has no series (none fails), the panels with
    // traffic draw lines, and the page is saved as a screenshot.
    // First wait until the rates have two scrapes of traffic behind them.
    let panels = dashboard_queries_by_panel();
    for panel in [0, 1, 8] {
        values_any(prometheus, &panels[panel].1[0].0);
    }
    // Longer graphs for the pictures in the docs, when asked for (not in CI).
    std::thread::sleep(extra_traffic());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (driver, _driver) = chromedriver();
        let b = browser(driver).await;
        b.goto(&format!("http://{prometheus}/consoles/sessile.html"))
            .await
            .expect("the dashboard console");
        let panels = panels.len();
        let drawn = eventually_async("every panel is drawn", || async {
            let states: Vec<String> = serde_json::from_value(
                b.execute(
                    "return [...document.querySelectorAll('.sessile-panel')].map(p => \
                     p.querySelector('.prom_graph_error') ? p.querySelector('.prom_graph_error').textContent \
                     : (p.querySelector('svg path.path') ? 'drawn' : 'loading'));",
                    vec![],
                )
                .await
                .ok()?,
            )
            .ok()?;
            (states.len() == panels && !states.iter().any(|s| s == "loading")).then_some(states)
        })
        .await;
        assert!(
            drawn.iter().all(|s| s == "drawn" || s == "No timeseries returned"),
            "{drawn:?}"
        );
        // Load rate, store latency, breaker state and created sessions have traffic behind them.
        for panel in [0, 1, 2, 8] {
            assert_eq!(drawn[panel], "drawn", "panel {panel}: {drawn:?}");
        }
        let shot = screenshot(&b, "dashboard.png").await;
        eprintln!("dashboard: {}", shot.display());
        b.close().await.expect("close");
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
}

/// `SESSILE_DASHBOARD_SECONDS`: how much longer to run traffic before the dashboard screenshot
/// (0 by default; `docs/img/dashboard.png` was taken with 60). At most 600.
fn extra_traffic() -> Duration {
    let seconds = std::env::var("SESSILE_DASHBOARD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    Duration::from_secs(seconds.min(600))
}

/// Polls the async `f` until it gives a value, for at most 60 s.
async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `docs/grafana-dashboard.json` as a Prometheus console page: Grafana is not a Debian package,
/// so the panels (their titles and queries) are drawn by the console graph library that Debian's
/// `prometheus` ships, over the last five minutes.
fn dashboard_console() -> String {
    let mut panels = String::new();
    for (i, (title, targets)) in dashboard_queries_by_panel().iter().enumerate() {
        let exprs: Vec<&str> = targets.iter().map(|(e, _)| e.as_str()).collect();
        // Grafana's `{{label}}` is the console library's `[[ label ]]` (and `{{` would be read
        // by Prometheus's template engine).
        let names: Vec<String> = targets
            .iter()
            .map(|(_, l)| l.replace("{{", "[[ ").replace("}}", " ]]"))
            .collect();
        panels.push_str(&format!(
            "<div class=\"sessile-panel\"><h5>{title}</h5><div id=\"panel{i}\"></div><script>\
             new PromConsole.Graph({{node: document.querySelector('#panel{i}'), expr: {exprs}, \
             name: {names}, duration: {seconds}, height: 130, yAxisFormatter: PromConsole.NumberFormatter.humanize}});\
             </script></div>\n",
            seconds = 60 + extra_traffic().as_secs(),
            exprs = serde_json::to_string(&exprs).expect("JSON"),
            names = serde_json::to_string(&names).expect("JSON"),
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sessile</title>\n\
         <link rel=\"stylesheet\" href=\"/classic/static/rickshaw/rickshaw.min.css\">\n\
         <link rel=\"stylesheet\" href=\"/classic/static/bootstrap4/css/bootstrap.min.css\">\n\
         <link rel=\"stylesheet\" href=\"/classic/static/css/prom_console.css\">\n\
         <script src=\"/classic/static/d3/d3.min.js\"></script>\n\
         <script src=\"/classic/static/rickshaw/rickshaw.min.js\"></script>\n\
         <script src=\"/classic/static/jquery/jquery.min.js\"></script>\n\
         <script>var PATH_PREFIX = \"\";</script>\n\
         <script src=\"/classic/static/js/prom_console.js\"></script>\n\
         <style>.sessile-panel{{display:inline-block;width:32%;vertical-align:top;margin:0 1% 1em 0}}</style>\n\
         </head><body><div class=\"container-fluid\"><h3>sessile (docs/grafana-dashboard.json)</h3>\n\
         {panels}</div></body></html>\n"
    )
}

/// The title of each panel of `docs/grafana-dashboard.json`, with its queries' PromQL and legends.
fn dashboard_queries_by_panel() -> Vec<(String, Vec<(String, String)>)> {
    dashboard()["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let title = p["title"].as_str().expect("title").to_owned();
            let exprs = p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    let expr = t["expr"].as_str().expect("expr").to_owned();
                    (expr, t["legendFormat"].as_str().unwrap_or("").to_owned())
                })
                .collect();
            (title, exprs)
        })
        .collect()
}

fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON")
}

/// The PromQL of every panel of `docs/grafana-dashboard.json`.
fn dashboard_queries() -> Vec<String> {
    dashboard_queries_by_panel()
        .into_iter()
        .flat_map(|(_, exprs)| exprs.into_iter().map(|(expr, _)| expr))
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
