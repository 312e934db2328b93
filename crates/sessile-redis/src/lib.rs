//! A Redis session store for `sessile`, built on [`fred`].
//!
//! ```no_run
//! use sessile::{KeyRing, SessionManagerLayer};
//! use sessile_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // redis://, redis-sentinel://host:26379/0?sentinelServiceName=mymaster, or
//! // redis-cluster://host:7000?node=host:7001&node=host:7002
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .connect()
//!     .await?;
//! let layer = SessionManagerLayer::builder(store, KeyRing::random(1)).build()?;
//! # Ok(()) }
//! ```
//!
//! # One round trip per operation
//!
//! `load` is one `HMGET`; `create`, `save`, `touch` and `rotate` are one `EVALSHA` each (scripts are
//! loaded at connect and reloaded on `NOSCRIPT`); `destroy` is one `DEL`. `destroy_user` reads the
//! user's index and then deletes in one script per hash slot (one, for sessions the layer made).
//!
//! # Cluster
//!
//! Keys carry a hash tag from the session id's partition, and the layer makes a logged-in user's
//! session ids in the user's partition, so a user's records and index share one slot (see
//! [`keys`](crate#key-layout)). A rotation across slots (an anonymous session logging in) is done
//! in two atomic steps: write the new record, then delete the old one only if it is still at the
//! expected version (undoing the first step if not). The old id stops working at the second step,
//! and no client knows the new id before it, so the rotation is atomic to every observer.
//!
//! # Durability
//!
//! Redis acknowledges a write before it reaches a replica. If a primary dies, writes from its last
//! moments that had not replicated are lost when the replica takes over: such a session reverts to
//! an older version or disappears (its user logs in again). Nothing is ever resurrected and no two
//! versions are merged. Persistence (`appendonly`) and `min-replicas-to-write` are server settings
//! that narrow this window; the store does not change them.
//!
//! # Key layout
//!
//! ```text
//! <prefix>:[<tenant>:]{<partition>}:s:<session id hex>   session record (hash: v, e, d, u)
//! <prefix>:[<tenant>:]{<partition>}:u:<user id>          user index (set of session ids)
//! ```
//!
//! Every key has an expiry: records at their idle deadline, indexes at the latest absolute deadline
//! of their sessions, the short-lived marker left by a cross-slot rotation after 60 seconds.

mod keys;
mod scripts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::error::{Error as FredError, ErrorKind};
use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use fred::types::scripts::Script;
use fred::types::{MultipleKeys, Value};
use sessile::clock::UnixMillis;
use sessile::record::Record;
use sessile::store::{DEFAULT_MAX_RECORD_BYTES, encode_record};
use sessile::{SessionId, SessionStore, StoreError};
use thiserror::Error;

use keys::{KeySpace, valid_part};
use scripts::Scripts;

/// Key prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "sessile";

/// Connections in the pool. fred pipelines many commands on one connection; a few connections
/// spread the encoding work and one slow reply's head-of-line blocking.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// fred's own per-command timeout (fred's default is none at all). The session layer puts its
/// own, shorter deadline on each store call; this one makes sure a command whose caller gave up
/// does not sit in fred's queue forever.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `connect` waits for the first connection (fred's default is 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Commands that may wait in one client's queue before new ones fail fast with "unavailable"
/// (fred's default is unbounded). 10 000 is several seconds of a busy instance's traffic.
pub const DEFAULT_MAX_QUEUED_COMMANDS: usize = 10_000;

/// A connection with a command unanswered this long is closed and reconnected (fred's default is
/// never): a paused or wedged server is noticed without waiting for TCP.
pub const DEFAULT_UNRESPONSIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect delays: exponential from this...
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(50);
/// ...up to this, forever...
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// ...plus up to this much random jitter, so a fleet does not reconnect in lockstep.
pub const DEFAULT_RECONNECT_JITTER: Duration = Duration::from_millis(100);

/// How long the marker of a cross-slot rotation stays (so a re-sent delete recognises its own
/// work). Longer than any command's retries.
const MOVED_MARKER_TTL_MS: u64 = 60_000;

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
}

/// Configures a [`RedisStore`]. Every default is a named constant in this crate.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    tenant: Option<String>,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    max_queued_commands: usize,
    unresponsive_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    reconnect_jitter: Duration,
    max_record_bytes: usize,
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

    /// Largest encoded record accepted (default `sessile::store::DEFAULT_MAX_RECORD_BYTES`).
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
        let scripts = Scripts::new();
        for script in scripts.all() {
            if let Err(e) = script.load(pool.next_connected()).await {
                stop(&pool).await;
                return Err(RedisStoreError::Connect(e));
            }
        }
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                keys: KeySpace::new(&self.prefix, self.tenant.as_deref()),
                scripts,
                clustered,
                command_timeout: self.command_timeout,
                max_record_bytes: self.max_record_bytes,
            }),
        })
    }
}

/// Stops a pool that failed to start, so its reconnect loop does not outlive the error.
async fn stop(pool: &Pool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
}

/// Sessions in Redis (standalone, Sentinel or Cluster). Cloning is cheap and shares the pool.
///
/// Every command goes to a pool connection that is up (`Pool::next_connected`): after an outage
/// the pool's clients reconnect one by one, and plain round-robin would send every fourth request
/// to one still reconnecting, where it waits out its deadline although Redis is back.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    keys: KeySpace,
    scripts: Scripts,
    clustered: bool,
    command_timeout: Duration,
    max_record_bytes: usize,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.inner.keys)
            .field("clustered", &self.inner.clustered)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts configuring a store for `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            tenant: None,
            pool_size: DEFAULT_POOL_SIZE,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_queued_commands: DEFAULT_MAX_QUEUED_COMMANDS,
            unresponsive_timeout: DEFAULT_UNRESPONSIVE_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            reconnect_jitter: DEFAULT_RECONNECT_JITTER,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Connects with every default.
    pub async fn connect(url: &str) -> Result<Self, RedisStoreError> {
        Self::builder(url).connect().await
    }

    /// The underlying fred pool, for operations this crate does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The key of a session record (for operators and tests; contains the full id).
    pub fn record_key(&self, id: &SessionId) -> String {
        self.inner.keys.record(id)
    }

    /// The key of a user's index.
    pub fn index_key(&self, user: &str) -> String {
        self.inner.keys.index(user)
    }

    /// Closes the connections.
    pub async fn quit(&self) {
        stop(&self.inner.pool).await;
    }
}

fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

#[derive(Debug, Error)]
#[error("unexpected reply from a sessile script: {0}")]
struct UnexpectedReply(i64);

impl Inner {
    fn fail(&self, e: FredError) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(self.command_timeout),
            _ => StoreError::Unavailable(Box::new(e)),
        }
    }

    async fn run(
        &self,
        script: &Script,
        keys: impl Into<MultipleKeys> + Send,
        args: Vec<Value>,
    ) -> Result<i64, StoreError> {
        script
            .evalsha_with_reload::<i64, _, _>(self.pool.next_connected(), keys, args)
            .await
            .map_err(|e| self.fail(e))
    }

    fn outcome(code: i64) -> Result<(), StoreError> {
        match code {
            1 => Ok(()),
            0 => Err(StoreError::Conflict),
            -1 => Err(StoreError::NotFound),
            other => Err(StoreError::Unavailable(Box::new(UnexpectedReply(other)))),
        }
    }

    /// The record's index key, and whether a script can update it together with `with` (always
    /// outside a Cluster; in one, only when the keys share a slot).
    fn index_for(&self, record: &Record, with: &str) -> Option<(String, bool)> {
        let user = record.meta.user_id.as_deref()?;
        let index = self.keys.index(user);
        let together = !self.clustered || slot(&index) == slot(with);
        Some((index, together))
    }

    /// Index upkeep for a record whose index lives in another slot.
    async fn index_apart(&self, index: String, record: &Record) -> Result<(), StoreError> {
        let args = vec![
            Value::from(record.id.to_hex()),
            int(record.meta.absolute_deadline),
        ];
        Self::outcome(self.run(&self.scripts.index, index, args).await?)
    }

    /// `ARGV` of `CREATE`, or of `SAVE`/`ROTATE` after the expected version.
    fn write_args(record: &Record, body: Bytes) -> Vec<Value> {
        vec![
            int(record.version),
            int(record.idle_deadline.min(record.meta.absolute_deadline)),
            Value::Bytes(body),
            Value::from(record.meta.user_id.clone().unwrap_or_default()),
            Value::from(record.id.to_hex()),
            int(record.meta.absolute_deadline),
            // A fresh random write id per call (not per retry: fred re-sends the same arguments).
            Value::from(SessionId::random().to_hex()),
        ]
    }

    /// Writes a record with `script`, keys `leading` then the record (then the index when it can
    /// go along), `pre` arguments before the record's.
    async fn write(
        &self,
        script: &Script,
        leading: Option<String>,
        record: &Record,
        pre: Option<u64>,
    ) -> Result<(), StoreError> {
        let body = Bytes::from(encode_record(record, self.max_record_bytes)?);
        let key = self.keys.record(&record.id);
        let index = self.index_for(record, leading.as_deref().unwrap_or(&key));
        let mut keys: Vec<String> = leading.into_iter().collect();
        keys.push(key);
        let mut apart = None;
        match index {
            Some((index, true)) => keys.push(index),
            Some((index, false)) => apart = Some(index),
            None => {}
        }
        let mut args: Vec<Value> = pre.map(int).into_iter().collect();
        args.extend(Self::write_args(record, body));
        Self::outcome(self.run(script, keys, args).await?)?;
        if let Some(index) = apart {
            self.index_apart(index, record).await?;
        }
        Ok(())
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let key = self.inner.keys.record(&id);
        let (version, idle, body): (Option<u64>, Option<u64>, Option<Bytes>) = self
            .inner
            .pool
            .next_connected()
            .hmget(key, vec!["v", "e", "d"])
            .await
            .map_err(|e| self.inner.fail(e))?;
        let (Some(version), Some(idle), Some(body)) = (version, idle, body) else {
            return Ok(None);
        };
        Record::decode(id, version, idle, &body)
            .map(Some)
            .map_err(StoreError::Corrupt)
    }

    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        let scripts = &self.inner.scripts;
        self.inner.write(&scripts.create, None, record, None).await
    }

    async fn save(&self, record: &Record, expected_version: u64) -> Result<(), StoreError> {
        let scripts = &self.inner.scripts;
        self.inner
            .write(&scripts.save, None, record, Some(expected_version))
            .await
    }

    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        let key = self.inner.keys.record(&id);
        let code = self
            .inner
            .run(&self.inner.scripts.touch, key, vec![int(idle_deadline)])
            .await?;
        Inner::outcome(code)
    }

    async fn rotate(
        &self,
        old: SessionId,
        record: &Record,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let old_key = inner.keys.record(&old);
        let new_key = inner.keys.record(&record.id);
        if !inner.clustered || slot(&old_key) == slot(&new_key) {
            return inner
                .write(
                    &inner.scripts.rotate,
                    Some(old_key),
                    record,
                    Some(expected_version),
                )
                .await;
        }
        // Different slots: write the new record (no client knows its id yet), then delete the old
        // one only at the expected version, leaving a marker naming the new id so that a re-sent
        // delete recognises its own work. Undo the first step if the second fails.
        inner
            .write(&inner.scripts.create, None, record, None)
            .await?;
        let args = vec![
            int(expected_version),
            Value::from(record.id.to_hex()),
            int(MOVED_MARKER_TTL_MS),
        ];
        let code = inner
            .run(&inner.scripts.delete_at, old_key, args)
            .await
            .and_then(Inner::outcome);
        if code.is_err() {
            let _: Result<i64, _> = inner.pool.next_connected().del(new_key).await;
        }
        code
    }

    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        let key = self.inner.keys.record(&id);
        let _: i64 = self
            .inner
            .pool
            .next_connected()
            .del(key)
            .await
            .map_err(|e| self.inner.fail(e))?;
        Ok(())
    }

    async fn destroy_user(&self, user_id: &str) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let index = inner.keys.index(user_id);
        let members: Vec<String> = inner
            .pool
            .next_connected()
            .smembers(&index)
            .await
            .map_err(|e| inner.fail(e))?;
        if members.is_empty() {
            return Ok(0);
        }
        // One script per slot; for sessions the layer made that is one script in all.
        let mut by_slot: Vec<(u16, Vec<String>)> = Vec::new();
        for key in members.iter().filter_map(|m| inner.keys.record_for_hex(m)) {
            let s = if inner.clustered { slot(&key) } else { 0 };
            match by_slot.iter_mut().find(|(k, _)| *k == s) {
                Some((_, keys)) => keys.push(key),
                None => by_slot.push((s, vec![key])),
            }
        }
        let mut destroyed = 0;
        for (_, keys) in by_slot {
            let n = inner
                .run(
                    &inner.scripts.destroy_if_user,
                    keys,
                    vec![Value::from(user_id)],
                )
                .await?;
            destroyed += u64::try_from(n).unwrap_or(0);
        }
        // Remove only what was handled: a session created meanwhile keeps its index entry.
        let _: i64 = inner
            .pool
            .next_connected()
            .srem(&index, members)
            .await
            .map_err(|e| inner.fail(e))?;
        Ok(destroyed)
    }
}
