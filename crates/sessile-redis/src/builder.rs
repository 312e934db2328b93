//! Configuring and connecting a [`RedisStore`].

use std::time::Duration;

use fred::error::Error as FredError;
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use fred::types::{ClusterHash, CustomCommand, Value};
use thiserror::Error;

use crate::keys::{KeySpace, valid_part};
use crate::scripts::Scripts;
use crate::store::{Inner, RedisStore, stop};

/// Key prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "sessile";

/// Connections in the pool. fred pipelines many commands on one connection; a few connections
/// spread the encoding work and one slow reply's head-of-line blocking.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// fred's per-command timeout (fred's default is none at all), for a call made outside a session
/// layer. Within one, a command is given what is left of the layer's deadline for the call when
/// that is shorter (see [`Deadline`](sessile_core::store::Deadline)): either way, fred answers
/// `Timeout` by then and drops a command that is still queued instead of sending it later.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `connect` waits for the first connection (fred's default is 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Commands that may wait in one client's queue before new ones fail fast with "unavailable"
/// (fred's default is unbounded). 10 000 is several seconds of a busy instance's traffic.
pub const DEFAULT_MAX_QUEUED_COMMANDS: usize = 10_000;

/// A connection with a command unanswered this long is closed and reconnected (fred's default is
/// never): a paused or wedged server is noticed without waiting for TCP.
pub const DEFAULT_UNRESPONSIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a cache tier's invalidation listener sends its heartbeat round the channel: a
/// silent stream pauses the cache after three periods.
pub const DEFAULT_INVALIDATION_HEARTBEAT: Duration = Duration::from_millis(200);

/// Reconnect delays: exponential from this...
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(50);
/// ...up to this, forever...
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// ...plus up to this much random jitter, so a fleet does not reconnect in lockstep.
pub const DEFAULT_RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// URL schemes accepted: plain TCP to a server, a cluster, or through Sentinel.
const SCHEMES: &[&str] = &[
    "redis",
    "redis-cluster",
    "redis-sentinel",
    "valkey",
    "valkey-cluster",
    "valkey-sentinel",
];

/// Why a [`RedisStore`] could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL could not be parsed.
    #[error("invalid Redis URL")]
    BadUrl(#[source] FredError),
    /// A setting is out of range.
    #[error("invalid Redis store setting: {0}")]
    BadConfig(&'static str),
    /// fred refused the configuration.
    #[error("Redis client could not be built")]
    Client(#[source] FredError),
    /// The server answered with an error while connecting or loading scripts.
    #[error("could not connect to Redis")]
    Connect(#[source] FredError),
    /// No connection within the connect timeout.
    #[error("Redis did not answer within {0:?}")]
    Unreachable(Duration),
    /// The server is older than [`MIN_REDIS_VERSION`]: the scripts use `PEXPIRETIME` (7.0), and on
    /// an older server they would stop halfway and leave keys without an expiry.
    #[error("Redis {found} is too old: sessile-redis needs {}.{} or later", MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1)]
    TooOld {
        /// The version the server reported.
        found: String,
    },
}

/// Longest accepted command timeout. A write's id is kept for a minute (so that a re-sent or late
/// write is recognised or refused); fred gives up on a command after its timeout (and never sends
/// it afterwards), so it must be well under that.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Oldest Redis (major, minor) the scripts run on.
pub const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// Whether an `INFO server` reply names a version at least [`MIN_REDIS_VERSION`]; the version
/// found, if any.
pub(crate) fn version_ok(info: &str) -> (bool, Option<&str>) {
    let Some(version) = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
    else {
        return (false, None);
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (found >= MIN_REDIS_VERSION, Some(version))
}

/// `url` with any password replaced (in the user info, and in query parameters such as
/// `sentinelPassword`), for `Debug` output and logs.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{user}:***@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Configures a [`RedisStore`]. Every default is a named constant in this crate. Its `Debug`
/// output hides the URL's password.
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) tenant: Option<String>,
    pub(crate) pool_size: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_queued_commands: usize,
    pub(crate) unresponsive_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) reconnect_jitter: Duration,
    pub(crate) max_record_bytes: usize,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("tenant", &self.tenant)
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Key prefix (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Tenant, inserted after the prefix so tenants never share keys.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Connections in the pool (default [`DEFAULT_POOL_SIZE`]).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// fred's per-command timeout (default [`DEFAULT_COMMAND_TIMEOUT`]).
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// How long `connect` waits (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Bound of each client's command queue (default [`DEFAULT_MAX_QUEUED_COMMANDS`]).
    pub fn max_queued_commands(mut self, n: usize) -> Self {
        self.max_queued_commands = n;
        self
    }

    /// How often a cache tier's invalidation listener checks the stream (default
    /// [`DEFAULT_INVALIDATION_HEARTBEAT`]): a stream whose heartbeat has not come back within three
    /// periods pauses the cache, and an emptied database is noticed within one.
    pub fn invalidation_heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// Unresponsive-connection timeout (default [`DEFAULT_UNRESPONSIVE_TIMEOUT`]).
    pub fn unresponsive_timeout(mut self, d: Duration) -> Self {
        self.unresponsive_timeout = d;
        self
    }

    /// Reconnect backoff: minimum and maximum delay, and jitter.
    pub fn reconnect(mut self, min: Duration, max: Duration, jitter: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self.reconnect_jitter = jitter;
        self
    }

    /// Largest encoded record accepted (default `sessile_core::store::DEFAULT_MAX_RECORD_BYTES`).
    pub fn max_record_bytes(mut self, n: usize) -> Self {
        self.max_record_bytes = n;
        self
    }

    fn check(&self) -> Result<(), RedisStoreError> {
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        if !SCHEMES.contains(&scheme) {
            return Err(RedisStoreError::BadConfig(
                "URL must start with redis://, redis-cluster:// or redis-sentinel:// \
                 (TLS schemes need a build with TLS, which this one does not have)",
            ));
        }
        if !valid_part(&self.prefix) {
            return Err(RedisStoreError::BadConfig(
                "prefix must be 1-64 visible characters without '{', '}' or ':'",
            ));
        }
        if self.tenant.as_deref().is_some_and(|t| !valid_part(t)) {
            return Err(RedisStoreError::BadConfig(
                "tenant must be 1-64 visible characters without '{', '}' or ':'",
            ));
        }
        if self.command_timeout > MAX_COMMAND_TIMEOUT {
            return Err(RedisStoreError::BadConfig(
                "command timeout must be at most 10 s: a write re-sent later than its id is kept \
                 (a minute) could no longer be recognised",
            ));
        }
        if self.pool_size == 0 {
            return Err(RedisStoreError::BadConfig("pool size must be at least 1"));
        }
        for (d, what) in [
            (self.command_timeout, "command timeout must be positive"),
            (self.connect_timeout, "connect timeout must be positive"),
            (
                self.unresponsive_timeout,
                "unresponsive timeout must be positive",
            ),
            (self.heartbeat, "invalidation heartbeat must be positive"),
        ] {
            if d.is_zero() {
                return Err(RedisStoreError::BadConfig(what));
            }
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(RedisStoreError::BadConfig(
                "reconnect minimum must not exceed the maximum",
            ));
        }
        Ok(())
    }

    /// Connects, loads the scripts, and returns the store. Fails with a typed error on a bad URL,
    /// a bad setting, or a server that does not answer within the connect timeout.
    pub async fn connect(self) -> Result<RedisStore, RedisStoreError> {
        self.check()?;
        let config = Config::from_url(&self.url).map_err(RedisStoreError::BadUrl)?;
        let clustered = config.server.is_clustered();
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        // Unlimited attempts (0): a session store must come back by itself after any outage.
        let mut policy = ReconnectPolicy::new_exponential(
            0,
            millis(self.reconnect_min).max(1),
            millis(self.reconnect_max).max(1),
            2,
        );
        policy.set_jitter(millis(self.reconnect_jitter));

        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| p.default_command_timeout = self.command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = self.connect_timeout;
                c.internal_command_timeout = self.connect_timeout;
                c.max_command_buffer_len = self.max_queued_commands;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(self.unresponsive_timeout),
                    interval: (self.unresponsive_timeout / 4).max(Duration::from_millis(10)),
                };
            })
            .set_policy(policy);
        let pool = builder
            .build_pool(self.pool_size)
            .map_err(RedisStoreError::Client)?;

        match tokio::time::timeout(self.connect_timeout, pool.init()).await {
            Ok(Ok(_connection_task)) => {}
            Ok(Err(e)) => {
                stop(&pool).await;
                return Err(RedisStoreError::Connect(e));
            }
            Err(_) => {
                stop(&pool).await;
                return Err(RedisStoreError::Unreachable(self.connect_timeout));
            }
        }
        let info = CustomCommand::new_static("INFO", ClusterHash::Random, false);
        let reply: Result<String, _> = pool
            .next_connected()
            .custom(info, vec![Value::from("server")])
            .await;
        let info = match reply {
            Ok(info) => info,
            Err(e) => {
                stop(&pool).await;
                return Err(RedisStoreError::Connect(e));
            }
        };
        if let (false, found) = version_ok(&info) {
            stop(&pool).await;
            return Err(RedisStoreError::TooOld {
                found: found.unwrap_or("(unknown)").to_owned(),
            });
        }
        let keys = KeySpace::new(&self.prefix, self.tenant.as_deref());
        let scripts = Scripts::new(&keys.channel());
        for script in scripts.all() {
            if let Err(e) = script.load(pool.next_connected()).await {
                stop(&pool).await;
                return Err(RedisStoreError::Connect(e));
            }
        }
        Ok(RedisStore::from_parts(Inner {
            pool,
            keys,
            scripts,
            clustered,
            command_timeout: self.command_timeout,
            max_record_bytes: self.max_record_bytes,
            heartbeat: self.heartbeat,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_output() {
        for url in [
            "redis://:s3cret@127.0.0.1:6379/0",
            "redis://user:s3cret@127.0.0.1:6379",
            "redis-sentinel://user:s3cret@h:26379/0?sentinelServiceName=m",
            "redis-sentinel://h:26379/0?sentinelServiceName=m&sentinelPassword=s3cret&node=h:2",
        ] {
            let shown = format!("{:?}", RedisStore::builder(url));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn servers_older_than_7_0_are_refused() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert_eq!(version_ok(&info("7.0.15")), (true, Some("7.0.15")));
        assert_eq!(version_ok(&info("7.2.4")), (true, Some("7.2.4")));
        assert_eq!(version_ok(&info("8.0.0")), (true, Some("8.0.0")));
        assert_eq!(version_ok(&info("6.2.14")), (false, Some("6.2.14")));
        assert_eq!(version_ok("nothing here"), (false, None));
    }
}
