//! [`RedisStore`]: the [`SessionStore`] operations as scripts and commands.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::clients::WithOptions;
use fred::error::{Error as FredError, ErrorKind};
use fred::prelude::*;
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, FromValue, Key, MultipleKeys, Value};
use sessile_core::clock::UnixMillis;
use sessile_core::record::{CodecError, Record};
use sessile_core::store::{
    DEFAULT_MAX_RECORD_BYTES, Deadline, ROTATED_MARKER_TTL_MS, Settled, WriteId,
};
use sessile_core::{SessionId, SessionStore, StoreError};
use thiserror::Error;

use crate::builder::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_INVALIDATION_HEARTBEAT,
    DEFAULT_MAX_QUEUED_COMMANDS, DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_RECONNECT_JITTER,
    DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, DEFAULT_UNRESPONSIVE_TIMEOUT, RedisStoreBuilder,
    RedisStoreError,
};
use crate::keys::KeySpace;
use crate::layout::{self, Stored};
use crate::scripts::Scripts;

mod inner;
mod listen;
mod ops;

/// Index members handled by one "log out everywhere" batch: a script of about a millisecond.
const DESTROY_BATCH: u32 = 100;

/// Stops a pool that failed to start, so its reconnect loop does not outlive the error.
pub(crate) async fn stop(pool: &Pool) {
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

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) keys: KeySpace,
    pub(crate) scripts: Scripts,
    pub(crate) clustered: bool,
    pub(crate) command_timeout: Duration,
    pub(crate) max_record_bytes: usize,
    /// How often a cache listener's heartbeat goes round the invalidation channel.
    pub(crate) heartbeat: Duration,
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
            heartbeat: DEFAULT_INVALIDATION_HEARTBEAT,
        }
    }

    pub(crate) fn from_parts(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
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

    /// The key of a user's index, for the user's sessions in `tenant`.
    pub fn index_key(&self, tenant: Option<&str>, user: &str) -> String {
        self.inner.keys.index(tenant, user)
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

/// A script's keys: the record (or records), then the user's index and generation when they go
/// along.
type Keys = Vec<String>;
