//! [`RedisStore`]: the [`SessionStore`] operations as scripts and commands.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes::Bytes;
use fred::error::{Error as FredError, ErrorKind};
use fred::prelude::*;
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, MultipleKeys, Value};
use sessile_core::clock::UnixMillis;
use sessile_core::record::{CodecError, Record};
use sessile_core::store::{
    DEFAULT_MAX_RECORD_BYTES, ROTATED_MARKER_TTL_MS, Settled, WriteId, encode_record,
};
use sessile_core::{SessionId, SessionStore, StoreError};
use thiserror::Error;

use crate::builder::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_QUEUED_COMMANDS,
    DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_RECONNECT_JITTER, DEFAULT_RECONNECT_MAX,
    DEFAULT_RECONNECT_MIN, DEFAULT_UNRESPONSIVE_TIMEOUT, RedisStoreBuilder, RedisStoreError,
};
use crate::keys::KeySpace;
use crate::scripts::Scripts;

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

fn wid(w: WriteId) -> Value {
    Value::from(format!("{:016x}", u64::from_be_bytes(*w.as_bytes())))
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

impl Inner {
    fn fail(&self, e: FredError) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(self.command_timeout),
            _ => StoreError::Unavailable(Box::new(e)),
        }
    }

    /// Runs a script that fred may re-send after a dropped connection: reads, and writes whose
    /// second run changes nothing.
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

    /// Runs a compare-and-set script, asking fred for a single attempt. That is not a guarantee:
    /// fred 10.1 re-sends a command that was in flight when its connection dropped once the
    /// client reconnects (the retry path resets the attempt count). The scripts do not rely on it:
    /// a write's id key tells a re-sent write that it already ran, or that it was fenced off.
    async fn run_once(
        &self,
        script: &Script,
        keys: Keys,
        args: Vec<Value>,
    ) -> Result<i64, StoreError> {
        let client = self.pool.next_connected();
        let once = client.with_options(&Options {
            max_attempts: Some(1),
            ..Options::default()
        });
        let sha = script.sha1().clone();
        let first = once
            .evalsha::<i64, _, _, _>(sha.clone(), keys.clone(), args.clone())
            .await;
        match first {
            // NOSCRIPT: the script did not run, so sending it again is safe.
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                script.load(client).await.map_err(|e| self.fail(e))?;
                once.evalsha(sha, keys, args).await
            }
            other => other,
        }
        .map_err(|e| self.fail(e))
    }

    fn outcome(code: i64) -> Result<(), StoreError> {
        match code {
            1 | 2 => Ok(()),
            0 | -3 => Err(StoreError::Conflict),
            -1 => Err(StoreError::NotFound),
            -2 => Err(StoreError::Rotated),
            other => Err(StoreError::Unavailable(Box::new(UnexpectedReply(other)))),
        }
    }

    /// The user's index and generation keys for a script that also writes `with`, if the record
    /// has a user; and whether they can go along (always outside a Cluster; in one, only when the
    /// keys share a slot, which they do for every id the layer makes).
    fn user_keys(&self, record: &Record, with: &str) -> Option<([String; 2], bool)> {
        let user = record.meta.user_id.as_deref()?;
        let tenant = record.meta.tenant.as_deref();
        let index = self.keys.index(tenant, user);
        let together = !self.clustered || slot(&index) == slot(with);
        Some(([index, self.keys.generation(tenant, user)], together))
    }

    /// `ARGV` of `CREATE`, or of `SAVE`/`ROTATE` after the expected version.
    fn write_args(record: &Record, body: Bytes) -> Vec<Value> {
        vec![
            int(record.version),
            int(record.idle_deadline.min(record.meta.absolute_deadline)),
            Value::Bytes(body),
            // The user within its tenant: what the record's `u` field and the index compare.
            Value::from(record.user_key().unwrap_or_default()),
            Value::from(record.id.to_hex()),
            int(record.meta.absolute_deadline),
        ]
    }

    /// Writes a record with `script`: keys `leading` then the record, the write's id key (in the
    /// slot of the first key), then the user's index and generation when they can go along;
    /// `pre` arguments before the record's, `post` after.
    async fn write(
        &self,
        script: &Script,
        leading: Option<(SessionId, String)>,
        record: &Record,
        write: WriteId,
        pre: Option<u64>,
        post: Vec<Value>,
    ) -> Result<(), StoreError> {
        let body = Bytes::from(encode_record(record, self.max_record_bytes)?);
        let key = self.keys.record(&record.id);
        let first = leading.as_ref().map_or(record.id, |(id, _)| *id);
        let write_key = self.keys.write(&first, write);
        let leading = leading.map(|(_, k)| k);
        let user_keys = self.user_keys(record, leading.as_deref().unwrap_or(&key));
        let mut keys: Keys = leading.into_iter().collect();
        keys.push(key);
        keys.push(write_key);
        let mut apart = None;
        match user_keys {
            Some((user_keys, true)) => keys.extend(user_keys),
            Some((user_keys, false)) => apart = Some(user_keys),
            None => {}
        }
        let mut args: Vec<Value> = pre.map(int).into_iter().collect();
        args.extend(Self::write_args(record, body));
        args.extend(post);
        let code = self.run_once(script, keys, args).await?;
        Self::outcome(code)?;
        if let Some(user_keys) = apart {
            self.index_apart(user_keys, record).await?;
        } else if code == 2 {
            self.prune_index(record).await?;
        }
        Ok(())
    }

    /// Index upkeep for a record whose index lives in another slot.
    async fn index_apart(&self, keys: [String; 2], record: &Record) -> Result<(), StoreError> {
        let args = vec![
            Value::from(record.id.to_hex()),
            int(record.meta.absolute_deadline),
        ];
        if self.run(&self.scripts.index, keys.to_vec(), args).await? == 2 {
            self.prune_index(record).await?;
        }
        Ok(())
    }

    /// Drops the rest of an index's expired members, a bounded chunk per call, so that no single
    /// script blocks Redis for long however many there are.
    async fn prune_index(&self, record: &Record) -> Result<(), StoreError> {
        let Some(user) = record.meta.user_id.as_deref() else {
            return Ok(());
        };
        let index = self.keys.index(record.meta.tenant.as_deref(), user);
        while self.run(&self.scripts.prune, index.clone(), vec![]).await? == 2 {}
        Ok(())
    }

    /// One page of `ZSCAN` over a user's index: the next cursor and the members.
    async fn scan_index(
        &self,
        index: &str,
        cursor: &str,
    ) -> Result<(String, Vec<String>), StoreError> {
        let cmd = CustomCommand::new_static("ZSCAN", ClusterHash::FirstKey, false);
        let reply: Value = self
            .pool
            .next_connected()
            .custom(
                cmd,
                vec![
                    Value::from(index),
                    Value::from(cursor),
                    Value::from("COUNT"),
                    Value::from(DESTROY_BATCH),
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        let (next, flat): (String, Vec<String>) = reply.convert().map_err(|e| self.fail(e))?;
        // Members alternate with their scores.
        let members = flat.into_iter().step_by(2).collect();
        Ok((next, members))
    }

    /// Ends the sessions among `members` (ids hex from `index`) that are still the user's and
    /// older than generation `g`; returns how many.
    async fn destroy_batch(
        &self,
        index: &str,
        user: &str,
        g: i64,
        members: Vec<String>,
    ) -> Result<u64, StoreError> {
        // One script per slot; for the ids the layer makes that is one, with the index.
        let mut by_slot: Vec<(u16, Vec<(String, String)>)> = Vec::new();
        for m in members {
            let Some(key) = self.keys.record_for_hex(&m) else {
                continue;
            };
            let s = if self.clustered { slot(&key) } else { 0 };
            match by_slot.iter_mut().find(|(k, _)| *k == s) {
                Some((_, v)) => v.push((key, m)),
                None => by_slot.push((s, vec![(key, m)])),
            }
        }
        let index_slot = if self.clustered { slot(index) } else { 0 };
        let mut destroyed = 0;
        for (s, records) in by_slot {
            let with_index = s == index_slot;
            let mut keys: Keys = Vec::with_capacity(records.len() + 1);
            if with_index {
                keys.push(index.to_owned());
            }
            let mut args = vec![
                Value::from(user),
                Value::Integer(g),
                Value::from(if with_index { "1" } else { "0" }),
            ];
            let mut handled = Vec::with_capacity(records.len());
            for (key, member) in records {
                keys.push(key);
                args.push(Value::from(member.clone()));
                handled.push(member);
            }
            let n = self.run(&self.scripts.destroy_batch, keys, args).await?;
            destroyed += u64::try_from(n).unwrap_or(0);
            if !with_index {
                // Records the layer did not make (ids outside the user's partition): their
                // generation is never current, so every one was handled.
                let _: i64 = self
                    .pool
                    .next_connected()
                    .zrem(index, handled)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
        }
        Ok(destroyed)
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let key = self.inner.keys.record(&id);
        // Read as bytes and parsed here: a field that is not a number is a corrupt record (which
        // never opens the breaker), not a failing store.
        let (version, idle, body, moved): (
            Option<Bytes>,
            Option<Bytes>,
            Option<Bytes>,
            Option<Bytes>,
        ) = self
            .inner
            .pool
            .next_connected()
            .hmget(key, vec!["v", "e", "d", "m"])
            .await
            .map_err(|e| self.inner.fail(e))?;
        let (Some(version), Some(idle), Some(body)) = (version, idle, body) else {
            return match moved {
                Some(_) => Err(StoreError::Rotated),
                None => Ok(None),
            };
        };
        let number = |field: &'static str, raw: &[u8]| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(StoreError::Corrupt(CodecError::Field(field)))
        };
        let (version, idle) = (number("v", &version)?, number("e", &idle)?);
        Record::decode(id, version, idle, &body)
            .map(Some)
            .map_err(StoreError::Corrupt)
    }

    async fn create(&self, record: &Record, write: WriteId) -> Result<(), StoreError> {
        let scripts = &self.inner.scripts;
        self.inner
            .write(&scripts.create, None, record, write, None, vec![])
            .await
    }

    async fn save(
        &self,
        record: &Record,
        expected_version: u64,
        write: WriteId,
    ) -> Result<(), StoreError> {
        let scripts = &self.inner.scripts;
        self.inner
            .write(
                &scripts.save,
                None,
                record,
                write,
                Some(expected_version),
                vec![],
            )
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
        write: WriteId,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let old_key = inner.keys.record(&old);
        let new_key = inner.keys.record(&record.id);
        if !inner.clustered || slot(&old_key) == slot(&new_key) {
            let post = vec![
                int(ROTATED_MARKER_TTL_MS),
                Value::from(old.to_hex()),
                wid(write),
            ];
            return inner
                .write(
                    &inner.scripts.rotate,
                    Some((old, old_key)),
                    record,
                    write,
                    Some(expected_version),
                    post,
                )
                .await;
        }
        // Different slots: write the new record (no client knows its id yet), then replace the
        // old one with a marker only at the expected version. Undo the first step if the second
        // fails; if the second's reply is lost, `settle` finishes the job.
        let create = &inner.scripts.create;
        inner
            .write(create, None, record, write, None, vec![])
            .await?;
        let args = vec![
            int(expected_version),
            Value::from(record.id.to_hex()),
            int(ROTATED_MARKER_TTL_MS),
            wid(write),
        ];
        let keys = vec![old_key, inner.keys.write(&old, write)];
        let code = inner.run_once(&inner.scripts.delete_at, keys, args).await;
        let result = code.and_then(Inner::outcome);
        if matches!(
            result,
            Err(StoreError::Conflict | StoreError::NotFound | StoreError::Rotated)
        ) {
            let _: Result<i64, _> = inner.pool.next_connected().del(new_key).await;
        }
        result
    }

    /// Reads (and, if absent, fences) the write's id key, in the slot of the record the write
    /// changed first; a rotation across Cluster slots that did not land is undone.
    async fn settle(
        &self,
        old: SessionId,
        new: SessionId,
        _expected_version: u64,
        write: WriteId,
    ) -> Result<Settled, StoreError> {
        let inner = &self.inner;
        let key = inner.keys.write(&old, write);
        let code = inner.run(&inner.scripts.settle, key, vec![]).await?;
        let (old_key, new_key) = (inner.keys.record(&old), inner.keys.record(&new));
        if code == 0 && inner.clustered && old != new && slot(&old_key) != slot(&new_key) {
            // The rotation's first step (the new record) may have landed, or may still land if
            // it is on its way: fence it in its own slot, then undo it.
            let first = inner.keys.write(&new, write);
            inner.run(&inner.scripts.settle, first, vec![]).await?;
            let _: i64 = inner
                .pool
                .next_connected()
                .del(new_key)
                .await
                .map_err(|e| inner.fail(e))?;
        }
        match code {
            1 => Ok(Settled::Applied),
            0 => Ok(Settled::NotApplied),
            other => Err(StoreError::Unavailable(Box::new(UnexpectedReply(other)))),
        }
    }

    /// One script (deleting, unless the id was rotated away), then, for a logged-in user's
    /// session, removing it from the user's index.
    async fn destroy(&self, id: SessionId) -> Result<(), StoreError> {
        let inner = &self.inner;
        let key = inner.keys.record(&id);
        let reply: Value = inner
            .scripts
            .destroy
            .evalsha_with_reload(inner.pool.next_connected(), key, Vec::<Value>::new())
            .await
            .map_err(|e| inner.fail(e))?;
        if let Value::Integer(-2) = reply {
            return Err(StoreError::Rotated);
        }
        let user_key = reply.into_string().unwrap_or_default();
        if let Some((tenant, user)) = user_key.split_once(':') {
            let tenant = (!tenant.is_empty()).then_some(tenant);
            let index = inner.keys.index(tenant, user);
            // The session is gone either way; a stale index entry is only slack (it is pruned at
            // the session's absolute deadline), so a failure here does not fail the logout.
            let removed: Result<i64, _> =
                inner.pool.next_connected().zrem(index, id.to_hex()).await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "session destroyed; its user index entry stays until it expires");
            }
        }
        Ok(())
    }

    /// Bumps the user's generation first, so that from then on no session of the user can rotate
    /// to a new id; then walks the index with `ZSCAN` (which returns every member present from
    /// start to end) and deletes in batches of about a hundred sessions, each one short script.
    async fn destroy_user(&self, tenant: Option<&str>, user_id: &str) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let index = inner.keys.index(tenant, user_id);
        let keys = vec![index.clone(), inner.keys.generation(tenant, user_id)];
        let g = inner.run(&inner.scripts.bump, keys, vec![]).await?;
        if g < 0 {
            return Ok(0);
        }
        let mut destroyed = 0;
        let mut cursor = String::from("0");
        loop {
            let (next, members) = inner.scan_index(&index, &cursor).await?;
            if !members.is_empty() {
                let user = sessile_core::record::user_key(tenant, user_id);
                destroyed += inner.destroy_batch(&index, &user, g, members).await?;
            }
            if next == "0" {
                return Ok(destroyed);
            }
            cursor = next;
        }
    }
}
