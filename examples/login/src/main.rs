//! Runs the login example: `cargo run -p sessile-login-example`.
//!
//! Environment:
//! * `SESSILE_ADDR`: listen address (default `127.0.0.1:3000`);
//! * `SESSILE_NODE_ID`: this instance's routing hint (default `node-1`);
//! * `SESSILE_KEYS`: key ring, `"<id>:<hex secret>,..."` newest last (default: a random key, so
//!   sessions do not survive a restart);
//! * `REDIS_URL`: store sessions in Redis (`redis://`, `redis-sentinel://`, `redis-cluster://`)
//!   instead of in memory. Instances that share Redis and `SESSILE_KEYS` share sessions;
//! * `SESSILE_METRICS_ADDR`: where `GET /metrics` (Prometheus text format) is served (default
//!   `127.0.0.1:9300`; keep it off the public network);
//! * `SESSILE_DEGRADED`: while the store is unreachable, `fail-closed` (503, the default),
//!   `recent-copy` (serve this instance's recent copies read-only) or `ephemeral` (empty
//!   sessions).

use std::net::SocketAddr;

use sessile::{DegradedMode, Hint, KeyRing};
use sessile_login_example::{AppConfig, app, metrics_routes};
use tracing_subscriber::EnvFilter;

/// Where the example listens unless `SESSILE_ADDR` says otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// Where the metrics page is served unless `SESSILE_METRICS_ADDR` says otherwise.
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9300";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,sessile=debug")),
        )
        .init();

    let addr: SocketAddr = std::env::var("SESSILE_ADDR")
        .unwrap_or_else(|_| DEFAULT_ADDR.into())
        .parse()?;
    let node = Hint::new(&std::env::var("SESSILE_NODE_ID").unwrap_or_else(|_| "node-1".into()))?;
    let keys = match std::env::var("SESSILE_KEYS") {
        Ok(spec) => KeyRing::parse(&spec)?,
        Err(_) => {
            tracing::warn!("SESSILE_KEYS not set: using a random key; sessions end at restart");
            KeyRing::random(1)
        }
    };

    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let store = if redis_url.is_some() {
        "redis"
    } else {
        "memory"
    };
    let degraded = match std::env::var("SESSILE_DEGRADED").as_deref() {
        Ok("recent-copy") => DegradedMode::RecentCopy,
        Ok("ephemeral") => DegradedMode::Ephemeral,
        Ok("fail-closed") | Err(_) => DegradedMode::FailClosed,
        Ok(other) => {
            return Err(format!(
                "SESSILE_DEGRADED={other:?}: use fail-closed, recent-copy or ephemeral"
            )
            .into());
        }
    };
    let router = app(AppConfig {
        keys,
        node,
        redis_url,
        degraded,
    })
    .await?;
    let metrics_addr: SocketAddr = std::env::var("SESSILE_METRICS_ADDR")
        .unwrap_or_else(|_| DEFAULT_METRICS_ADDR.into())
        .parse()?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    println!(
        "metrics at http://{}/metrics",
        metrics_listener.local_addr()?
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, metrics_routes()).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "sessile login example listening on http://{} (store: {store}; users: alice/wonderland, bob/builder)",
        listener.local_addr()?
    );
    // With the peer's address, for the login throttle.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
