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

/// The operator's page: every `sessile_*` series of this instance, grouped by metric, with the
/// breaker state in words and histogram buckets left out (their count and sum stay).
fn status_page(text: Option<&str>) -> String {
    let mut rows = String::new();
    let mut breaker = "unknown";
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
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>sessile status</title><style>body{{font-family:sans-serif;margin:2em}}\
         td{{padding:2px 12px;border-bottom:1px solid #ddd}}</style></head><body>\
         <h1>sessile status</h1><p>Store circuit breaker: <strong>{breaker}</strong></p>{note}\
         <table><tr><th>series</th><th>value</th></tr>{rows}</table>\
         <p>Refreshed every 5 s. Metrics are described in docs/observability.md.</p></body></html>"
    )
}
