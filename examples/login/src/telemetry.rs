//! The example's metrics page: sessile's metrics (and any other `metrics` facade metric) in the
//! Prometheus text format, served on its own listener so that it is not public with the app.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `sessile_store_op_seconds`, in seconds: from 100 µs (a loopback Redis) to 10 s (the
/// longest store deadline the layer accepts). Histograms, not summaries, so that Prometheus can
/// aggregate them over instances.
pub const STORE_LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use. `None` when another recorder was
/// installed first (there is one per process).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("sessile_store_op_seconds".into()),
                    STORE_LATENCY_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .inspect_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// `GET /metrics` (Prometheus text format) and `GET /status` (the same figures as an HTML page,
/// refreshed every five seconds), for the admin listener.
pub fn metrics_routes() -> Router {
    let handle = metrics_handle();
    let status_handle = handle.clone();
    Router::new()
        .route(
            "/status",
            get(move || {
                let handle = status_handle.clone();
                async move { Html(status_page(handle.map(|h| h.render()).as_deref())) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    match handle {
                        Some(handle) => {
                            // Drains histogram buffers and drops idle entries; a scrape is often enough.
                            handle.run_upkeep();
                            (
                                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                                handle.render(),
                            )
                                .into_response()
                        }
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "another metrics recorder is installed in this process",
                        )
                            .into_response(),
                    }
                }
            }),
        )
}

/// The counters the page's headline shows, with their rate since the previous view.
const HEADLINE: &[(&str, &str)] = &[
    ("Session loads", "sessile_store_ops_total{op=\"load\""),
    ("Saves", "sessile_store_ops_total{op=\"save\""),
    ("Store errors", "outcome=\"error\""),
    ("Sessions created", "sessile_sessions_created_total"),
    ("Sessions ended", "sessile_sessions_destroyed_total"),
    ("Save conflicts", "sessile_save_conflicts_total"),
    ("Failed saves", "sessile_save_failures_total"),
    ("Degraded requests", "sessile_degraded_requests_total"),
    ("Rejected tokens", "sessile_tokens_rejected_total"),
    ("Breaker transitions", "sessile_breaker_transitions_total"),
];

/// The sums of the headline counters at the previous view, for the rates.
static PREVIOUS: std::sync::Mutex<Option<(std::time::Instant, Vec<f64>)>> =
    std::sync::Mutex::new(None);

/// One sample of the text format: the series (name and labels) and its value.
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|l| l.starts_with("sessile_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

/// The label `name`'s value in `series`.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let at = series.find(&format!("{name}=\""))? + name.len() + 2;
    series[at..].split('"').next()
}

/// Store latency quantiles per operation from the cumulative buckets: the upper bound of the
/// bucket that holds the quantile (the page says "at most").
fn latency_rows(text: &str) -> String {
    let mut ops: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for (series, count) in
        samples(text).filter(|(s, _)| s.starts_with("sessile_store_op_seconds_bucket{"))
    {
        let (Some(op), Some(le)) = (label(series, "op"), label(series, "le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        match ops.iter_mut().find(|(o, _)| *o == op) {
            Some((_, buckets)) => buckets.push((le, count)),
            None => ops.push((op, vec![(le, count)])),
        }
    }
    ops.sort_by_key(|(op, _)| *op);
    let mut rows = String::new();
    for (op, mut buckets) in ops {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last().map_or(0.0, |b| b.1);
        let quantile = |q: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= q * total)
                .map_or("-".to_owned(), |(le, _)| duration(*le))
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{total}</td><td>&le; {}</td><td>&le; {}</td></tr>",
            crate::escape(op),
            quantile(0.5),
            quantile(0.99)
        ));
    }
    rows
}

fn duration(seconds: f64) -> String {
    if seconds.is_infinite() {
        "more than 10 s".to_owned()
    } else if seconds < 0.001 {
        format!("{} µs", (seconds * 1e6).round())
    } else if seconds < 1.0 {
        format!("{} ms", seconds * 1e3)
    } else {
        format!("{seconds} s")
    }
}

/// The headline counters' totals and, from the second view on, their rates per second since the
/// previous view of the page.
fn headline_rows(text: &str) -> String {
    let sums: Vec<f64> = HEADLINE
        .iter()
        .map(|(_, pattern)| {
            samples(text)
                .filter(|(s, _)| !s.contains("_seconds") && s.contains(pattern))
                // Not `sum()`: an empty f64 sum is -0.
                .fold(0.0, |total, (_, v)| total + v)
        })
        .collect();
    let now = std::time::Instant::now();
    let previous = PREVIOUS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace((now, sums.clone()));
    let mut rows = String::new();
    for (i, (name, _)) in HEADLINE.iter().enumerate() {
        let rate = previous
            .as_ref()
            .map(|(at, before)| (now - *at, before[i]))
            .filter(|(elapsed, _)| elapsed.as_secs_f64() > 0.0)
            .map_or("-".to_owned(), |(elapsed, before)| {
                format!("{:.2}", (sums[i] - before).max(0.0) / elapsed.as_secs_f64())
            });
        rows.push_str(&format!(
            "<tr><td>{name}</td><td>{}</td><td>{rate}</td></tr>",
            sums[i]
        ));
    }
    rows
}

/// The operator's page: the breaker state in words, the headline counters with their rates,
/// store latency per operation, then every `sessile_*` series of this instance (histogram buckets
/// left out; their count and sum stay).
fn status_page(text: Option<&str>) -> String {
    let mut rows = String::new();
    // No breaker series: the store is in this process, and needs none.
    let mut breaker = "none (sessions are kept in this process)";
    for line in text.unwrap_or_default().lines() {
        if line.starts_with('#') || !line.starts_with("sessile_") || line.contains("_bucket{") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with("sessile_breaker_state{breaker=\"session_store\"") {
            breaker = match value {
                "0" => "closed",
                "1" => "half-open",
                "2" => "open",
                _ => "unknown",
            };
        }
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            crate::escape(series),
            crate::escape(value)
        ));
    }
    let note = if text.is_none() {
        "<p>No metrics recorder in this process.</p>"
    } else {
        ""
    };
    let headline = headline_rows(text.unwrap_or_default());
    let latency = latency_rows(text.unwrap_or_default());
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>sessile status</title><style>body{{font-family:sans-serif;margin:2em}}\
         td,th{{padding:2px 12px;border-bottom:1px solid #ddd;text-align:left}}\
         section{{display:inline-block;vertical-align:top;margin-right:3em}}</style></head><body>\
         <h1>sessile status</h1><p>Store circuit breaker: <strong>{breaker}</strong></p>{note}\
         <section><h2>At a glance</h2><table><tr><th>counter</th><th>total</th>\
         <th>per second since the previous view</th></tr>{headline}</table></section>\
         <section><h2>Store latency</h2><table><tr><th>operation</th><th>calls</th><th>p50</th>\
         <th>p99</th></tr>{latency}</table></section>\
         <h2>All series</h2><table><tr><th>series</th><th>value</th></tr>{rows}</table>\
         <p>Refreshed every 5 s. Metrics are described in docs/observability.md.</p></body></html>"
    )
}
