//! The example's metrics page: sessile's metrics (and any other `metrics` facade metric) in the
//! Prometheus text format, served on its own listener so that it is not public with the app.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
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

/// `GET /metrics`, for the admin listener.
pub fn metrics_routes() -> Router {
    let handle = metrics_handle();
    Router::new().route(
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
