//! Runs the edge router: `cargo run -p sessile-edge-example`.
//!
//! Environment:
//! * `EDGE_ADDR`: where it listens (default `127.0.0.1:8080`);
//! * `EDGE_NODES_FILE`: the node table, one node per line (`<id> <host:port> [weight=N]
//!   [healthy|draining|down]`), re-read when it changes; or
//! * `EDGE_NODES_REDIS` and `EDGE_NODES_KEY` (default `sessile:edge:nodes`): the table in a Redis
//!   string, re-read when a message is published on the channel of the same name;
//! * `EDGE_COOKIE`: the session cookie's name (default `sid`);
//! * `EDGE_ADMIN_ADDR`: where `GET /metrics` and `GET /nodes` are served (default
//!   `127.0.0.1:9400`; keep it off the public network);
//! * `EDGE_HEALTH_INTERVAL_MS` (default 1000), `EDGE_CONNECT_TIMEOUT_MS` (default 1000),
//!   `EDGE_REQUEST_TIMEOUT_MS` (default 30000);
//! * `EDGE_BALANCE_FACTOR`: the load bound's `c` (default 1.25; at least 1).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use sessile_affinity::NodeTable;
use sessile_edge_example::{Control, Edge, EdgeConfig, serve, sources, spawn_health_checks};

fn env_ms(name: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{name}={v:?}: a number of milliseconds")),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder)?;

    let config = EdgeConfig {
        cookie_name: std::env::var("EDGE_COOKIE").unwrap_or_else(|_| "sid".into()),
        health_interval: env_ms("EDGE_HEALTH_INTERVAL_MS", 1000)?,
        connect_timeout: env_ms("EDGE_CONNECT_TIMEOUT_MS", 1000)?,
        request_timeout: env_ms("EDGE_REQUEST_TIMEOUT_MS", 30_000)?,
        balance_factor: match std::env::var("EDGE_BALANCE_FACTOR") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|c: &f64| *c >= 1.0)
                .ok_or(format!("EDGE_BALANCE_FACTOR={v:?}: a number of at least 1"))?,
            Err(_) => sessile_affinity::DEFAULT_BALANCE_FACTOR,
        },
        ..EdgeConfig::default()
    };
    let control = Control::new(NodeTable::default(), &config);
    let _source = match (
        std::env::var("EDGE_NODES_FILE"),
        std::env::var("EDGE_NODES_REDIS"),
    ) {
        (Ok(path), _) => {
            let path = PathBuf::from(path);
            // A bad file at start is an error, not an empty table.
            control.configure(NodeTable::parse(&std::fs::read_to_string(&path)?)?);
            sources::watch_file(path, control.clone(), Duration::from_millis(500))
        }
        (_, Ok(url)) => {
            let key =
                std::env::var("EDGE_NODES_KEY").unwrap_or_else(|_| "sessile:edge:nodes".into());
            sources::watch_redis(&url, key, control.clone(), Duration::from_secs(5)).await?
        }
        _ => return Err("set EDGE_NODES_FILE or EDGE_NODES_REDIS".into()),
    };
    let _health = spawn_health_checks(control.clone(), &config);

    let admin: SocketAddr = std::env::var("EDGE_ADMIN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9400".into())
        .parse()?;
    let admin = tokio::net::TcpListener::bind(admin).await?;
    let control_for_admin = control.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = admin.accept().await else {
                continue;
            };
            let (metrics, control) = (metrics.clone(), control_for_admin.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = match req.uri().path() {
                            "/metrics" => metrics.render(),
                            "/nodes" => control.balancer().table().to_string(),
                            _ => String::new(),
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                Full::new(Bytes::from(body)).map_err(|n| match n {}),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let addr: SocketAddr = std::env::var("EDGE_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("edge router on http://{}", listener.local_addr()?);
    let edge = Edge::new(Arc::clone(&control), config);
    serve(listener, edge, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
