//! The benchmark server: the same three endpoints for every contender.
//!
//! * `GET /login?user=U` creates a session of about 200 bytes (user, display name, counter, roles,
//!   theme, locale, time zone, CSRF token) and sets its cookie;
//! * `GET /read` answers the session's user;
//! * `POST /incr` increments the session's counter (sessile: `update`, an atomic read-modify-write;
//!   tower-sessions: `get` then `insert`, its documented way) and answers the new value;
//! * `POST /logout` ends the session (sessile: `destroy`; tower-sessions: `flush`).
//!
//! Contenders, each with its documented defaults: `bare` (axum, no sessions: the ceiling),
//! `sessile-memory`, `sessile-redis`, `tower-sessions-memory`, `tower-sessions-redis`.
//!
//! Every contender also answers `GET /healthz`. With `SESSILE_NODE_ID` set, sessile's contenders
//! stamp affinity hints naming that node (for the edge benchmark); `sessile-redis-cached` answers
//! `GET /cache-stats` with its hits and misses.
//!
//! Usage: `bench-server <contender> <127.0.0.1:port> [redis URL]`. Prints `ready` once listening.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Login {
    user: String,
}

/// The session's contents at login, about 200 bytes in either library's encoding.
#[derive(Serialize)]
struct Profile<'a> {
    user: &'a str,
    display: String,
    roles: [&'static str; 3],
    theme: &'static str,
    locale: &'static str,
    tz: &'static str,
    csrf: String,
}

fn profile(user: &str) -> Profile<'_> {
    Profile {
        user,
        display: format!("Benchmark User {user}"),
        roles: ["reader", "writer", "billing"],
        theme: "dark",
        locale: "en-GB",
        tz: "Europe/London",
        csrf: format!(
            "{:064x}",
            u128::from(user.len() as u64) * 0x9E37_79B9_7F4A_7C15
        ),
    }
}

fn bare() -> Router {
    Router::new()
        .route(
            "/login",
            get(|Query(l): Query<Login>| async move { l.user }),
        )
        .route("/read", get(|| async { "user" }))
        .route("/incr", post(|| async { "1" }))
        .route("/logout", post(|| async { "" }))
}

mod sessile_app {
    use sessile::{KeyRing, Session, SessionError, SessionManagerLayer, SessionStore};

    use super::*;

    pub(super) fn app(store: impl SessionStore) -> Router {
        let keys = KeyRing::new(1, &[42; 32]).expect("32-byte key");
        let mut builder = SessionManagerLayer::builder(store, keys);
        if let Ok(node) = std::env::var("SESSILE_NODE_ID") {
            builder = builder.hint_source(sessile::AffinityHints::new(&node).expect("node id"));
        }
        let layer = builder.build().expect("defaults are valid");
        Router::new()
            .route(
                "/login",
                get(|s: Session, Query(l): Query<Login>| async move {
                    let p = profile(&l.user);
                    s.log_in(p.user);
                    s.insert("user", p.user)?;
                    s.insert("display", &p.display)?;
                    s.insert("counter", &0u64)?;
                    s.insert("roles", &p.roles)?;
                    s.insert("theme", p.theme)?;
                    s.insert("locale", p.locale)?;
                    s.insert("tz", p.tz)?;
                    s.insert("csrf", &p.csrf)?;
                    Ok::<_, SessionError>("ok")
                }),
            )
            .route(
                "/read",
                get(|s: Session| async move {
                    Ok::<_, SessionError>(s.get::<String>("user")?.unwrap_or_default())
                }),
            )
            .route(
                "/incr",
                post(|s: Session| async move {
                    s.update("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
                        .map(|n| n.to_string())
                }),
            )
            .route(
                "/logout",
                post(|s: Session| async move {
                    s.destroy();
                    ""
                }),
            )
            .layer(layer)
    }
}

mod tower_sessions_app {
    use tower_sessions::{Session, SessionManagerLayer, SessionStore};

    use super::*;

    fn fail(e: impl std::fmt::Display) -> (StatusCode, String) {
        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    pub(super) fn app<S: SessionStore + Clone>(store: S) -> Router {
        Router::new()
            .route(
                "/login",
                get(|s: Session, Query(l): Query<Login>| async move {
                    let p = profile(&l.user);
                    s.insert("user", p.user).await.map_err(fail)?;
                    s.insert("display", &p.display).await.map_err(fail)?;
                    s.insert("counter", 0u64).await.map_err(fail)?;
                    s.insert("roles", p.roles).await.map_err(fail)?;
                    s.insert("theme", p.theme).await.map_err(fail)?;
                    s.insert("locale", p.locale).await.map_err(fail)?;
                    s.insert("tz", p.tz).await.map_err(fail)?;
                    s.insert("csrf", &p.csrf).await.map_err(fail)?;
                    Ok::<_, (StatusCode, String)>("ok")
                }),
            )
            .route(
                "/read",
                get(|s: Session| async move {
                    let user: Option<String> = s.get("user").await.map_err(fail)?;
                    Ok::<_, (StatusCode, String)>(user.unwrap_or_default())
                }),
            )
            .route(
                "/incr",
                post(|s: Session| async move {
                    let n: u64 = s.get("counter").await.map_err(fail)?.unwrap_or(0) + 1;
                    s.insert("counter", n).await.map_err(fail)?;
                    Ok::<_, (StatusCode, String)>(n.to_string())
                }),
            )
            .route(
                "/logout",
                post(|s: Session| async move {
                    s.flush().await.map_err(fail)?;
                    Ok::<_, (StatusCode, String)>("")
                }),
            )
            .layer(SessionManagerLayer::new(store))
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(contender), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench-server <contender> <127.0.0.1:port> [redis URL]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("a socket address");
    assert!(
        addr.ip().is_loopback(),
        "the bench server listens on loopback only"
    );
    let redis = || {
        args.get(2)
            .expect("this contender needs a redis URL")
            .clone()
    };
    let app = match contender.as_str() {
        "bare" => bare(),
        "sessile-memory" => sessile_app::app(sessile::MemoryStore::new()),
        "sessile-redis" => {
            let store = sessile_redis::RedisStore::connect(&redis())
                .await
                .expect("connect to redis");
            sessile_app::app(store)
        }
        "sessile-redis-cached" => {
            let store = sessile_redis::RedisStore::connect(&redis())
                .await
                .expect("connect to redis");
            let cache = sessile::store::CachedStore::new(store)
                .await
                .expect("cache");
            // The cache's hits, misses and flushes, appended once a second to this file.
            let stats = cache.clone();
            let cache_stats = Router::new().route(
                "/cache-stats",
                get(move || {
                    let s = stats.stats();
                    async move { format!("{} {}", s.hits, s.misses) }
                }),
            );
            if let Some(path) = std::env::var_os("SESSILE_BENCH_CACHE_STATS") {
                let c = cache.clone();
                tokio::spawn(async move {
                    use std::io::Write as _;
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        if let Ok(mut f) = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                        {
                            let _ = writeln!(f, "{:?}", c.stats());
                        }
                    }
                });
            }
            sessile_app::app(cache).merge(cache_stats)
        }
        "tower-sessions-redis-cached" => {
            use fred::prelude::*;
            let config = Config::from_url(&redis()).expect("redis URL");
            let pool = Builder::from_config(config).build_pool(6).expect("pool");
            pool.init().await.expect("connect to redis");
            // tower-sessions' documented caching set-up: moka (here 10 000 sessions) in front.
            let cache = tower_sessions_moka_store::MokaStore::new(Some(10_000));
            let store = tower_sessions_redis_store::RedisStore::new(pool);
            tower_sessions_app::app(tower_sessions::CachingSessionStore::new(cache, store))
        }
        "tower-sessions-memory" => tower_sessions_app::app(tower_sessions::MemoryStore::default()),
        "tower-sessions-redis" => {
            use fred::prelude::*;
            let config = Config::from_url(&redis()).expect("redis URL");
            // tower-sessions-redis-store's documented set-up: a fred pool of 6, fred's defaults.
            let pool = Builder::from_config(config).build_pool(6).expect("pool");
            pool.init().await.expect("connect to redis");
            tower_sessions_app::app(tower_sessions_redis_store::RedisStore::new(pool))
        }
        other => {
            eprintln!("unknown contender {other}");
            std::process::exit(2);
        }
    };
    let app = app.route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}
