//! The store's machinery: running scripts with reload on `NOSCRIPT`, mapping replies and
//! errors, indexing and pruning, and the batches of "log out everywhere".

use std::ops::Range;

use sessile_core::push_hex_bytes;
use sessile_core::store::encode_record_into;

use super::*;

impl Inner {
    pub(super) fn fail(&self, e: FredError) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(
                Deadline::current().map_or(self.command_timeout, |d| d.budget()),
            ),
            _ => StoreError::Unavailable(Box::new(e)),
        }
    }

    /// How long the next command may take: what is left of the caller's [`Deadline`], and at
    /// most the command timeout. Once the deadline has passed: `Timeout`, and nothing is sent
    /// (fred would take a zero timeout for none at all).
    fn budget(&self) -> Result<Duration, StoreError> {
        let Some(deadline) = Deadline::current() else {
            return Ok(self.command_timeout);
        };
        let left = deadline.remaining();
        if left.is_zero() {
            return Err(StoreError::Timeout(deadline.budget()));
        }
        Ok(left.min(self.command_timeout))
    }

    /// A connected client of the pool whose commands time out by the caller's deadline. fred's
    /// own timeout, unlike a timer around the call, marks a command that runs out of time, and
    /// fred then never sends it: not from its queue while a connection is down, nor again after a
    /// reconnect. So nothing this store was asked to do reaches Redis after the caller's
    /// deadline, except bytes already written to a socket.
    pub(super) fn client(&self) -> Result<WithOptions<Client>, StoreError> {
        self.client_with(Options::default())
    }

    fn client_with(&self, options: Options) -> Result<WithOptions<Client>, StoreError> {
        let timeout = Some(self.budget()?);
        Ok(self
            .pool
            .next_connected()
            .with_options(&Options { timeout, ..options }))
    }

    /// Runs a script that fred may re-send after a dropped connection: reads, and writes whose
    /// second run changes nothing.
    pub(super) async fn run(
        &self,
        script: &Script,
        keys: impl Into<MultipleKeys> + Send,
        args: Vec<Value>,
    ) -> Result<i64, StoreError> {
        self.run_as(script, keys, args).await
    }

    /// [`run`](Self::run), for a script whose reply is not a number.
    pub(super) async fn run_as<R: FromValue>(
        &self,
        script: &Script,
        keys: impl Into<MultipleKeys> + Send,
        args: Vec<Value>,
    ) -> Result<R, StoreError> {
        let keys = keys.into().inner();
        self.eval(script, &keys, &args, Options::default()).await
    }

    /// Runs a compare-and-set script, asking fred for a single attempt: a command in flight when
    /// its connection drops fails, and the layer settles it. The scripts do not rely on it: a
    /// write's id key tells any copy of a write that it already ran, or that it was fenced off.
    pub(super) async fn run_once(
        &self,
        script: &Script,
        keys: &[Key],
        args: &[Value],
    ) -> Result<i64, StoreError> {
        let once = Options {
            max_attempts: Some(1),
            ..Options::default()
        };
        self.eval(script, keys, args, once).await
    }

    /// `EVALSHA`, loading the script and sending it again on `NOSCRIPT` (it did not run, so
    /// sending it again is safe); every command within the caller's deadline.
    ///
    /// Sent as a custom command: fred's `evalsha` is not among the commands its `WithOptions`
    /// client carries options for (it reaches the plain client through `Deref`), so it would go
    /// with neither the deadline nor the single attempt.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: &[Key],
        args: &[Value],
        options: Options,
    ) -> Result<R, StoreError> {
        // Every key of a script shares one slot (the scripts are written so).
        let hash = keys.first().map_or(ClusterHash::Random, |k| {
            ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes()))
        });
        let command = || {
            // One copy per attempt (keys and values share their bytes when copied).
            let mut all = Vec::with_capacity(2 + keys.len() + args.len());
            all.push(Value::from(script.sha1().clone()));
            all.push(Value::Integer(keys.len() as i64));
            all.extend(keys.iter().cloned().map(Value::from));
            all.extend_from_slice(args);
            (
                CustomCommand::new_static("EVALSHA", hash.clone(), false),
                all,
            )
        };
        let (cmd, all) = command();
        let first = self
            .client_with(options.clone())?
            .custom::<R, _>(cmd, all)
            .await;
        match first {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let lua = script.lua().cloned().unwrap_or_default();
                // fred loads a script on every primary of a Cluster through the plain client,
                // which takes no timeout of ours: bounded here (a late load is harmless).
                let budget = self.budget()?;
                match tokio::time::timeout(
                    budget,
                    self.pool.next_connected().script_load_cluster::<(), _>(lua),
                )
                .await
                {
                    Ok(loaded) => loaded.map_err(|e| self.fail(e))?,
                    Err(_) => {
                        return Err(self.fail(FredError::new(ErrorKind::Timeout, "SCRIPT LOAD")));
                    }
                }
                let (cmd, all) = command();
                self.client_with(options)?.custom(cmd, all).await
            }
            other => other,
        }
        .map_err(|e| self.fail(e))
    }

    pub(super) fn outcome(code: i64) -> Result<(), StoreError> {
        match code {
            1 | 2 => Ok(()),
            0 | -3 => Err(StoreError::Conflict),
            -1 => Err(StoreError::NotFound),
            -2 => Err(StoreError::Rotated),
            -4 => Err(StoreError::Corrupt(CodecError::Layout)),
            other => Err(StoreError::Unavailable(Box::new(UnexpectedReply(other)))),
        }
    }

    /// The user's index and generation keys for a script that also writes `with`, if the record
    /// has a user; and whether they can go along (always outside a Cluster; in one, only when the
    /// keys share a slot, which they do for every id the layer makes).
    pub(super) fn user_keys(&self, record: &Record, with: &str) -> Option<([String; 2], bool)> {
        let user = record.meta.user_id.as_deref()?;
        let tenant = record.meta.tenant.as_deref();
        let keys = self.keys.user_keys(tenant, user);
        let together = !self.clustered || slot(&keys[0]) == slot(with);
        Some((keys, together))
    }

    /// Writes a record with `script`: keys `leading` then the record, the write's id key (in the
    /// slot of the first key), then the user's index and generation when they can go along;
    /// `pre` arguments before the record's, `post` after.
    ///
    /// The record's arguments (see [`RecordArgs`]) follow the expected version, if any: the
    /// record's head and tail (the script puts the user's generation between them), its expiry,
    /// its user, its id and its absolute deadline.
    ///
    /// `SAVE` goes without the user's keys first, and its last argument says whether they live
    /// apart: it answers `3` (having written nothing) when the user changed and it needs them,
    /// and is sent again with them. Most saves keep their user.
    pub(super) async fn write(
        &self,
        script: &Script,
        leading: Option<(SessionId, String)>,
        record: &Record,
        write: WriteId,
        pre: Option<u64>,
        post: Vec<Value>,
    ) -> Result<(), StoreError> {
        let first = leading.as_ref().map_or(record.id, |(id, _)| *id);
        let a = RecordArgs::new(self, record, &first, write, pre)?;
        let saving = std::ptr::eq(script, &self.scripts.save);
        // As fred's keys and values, which copy without copying their bytes.
        let mut keys: Vec<Key> = leading.map(|(_, k)| Key::from(k)).into_iter().collect();
        keys.push(Key::from(a.key));
        keys.push(Key::from(a.write_key));
        let mut args: Vec<Value> = Vec::with_capacity(10 + post.len());
        args.extend(a.version.map(Value::Bytes));
        args.extend([
            Value::Bytes(a.head),
            Value::Bytes(a.tail),
            // `SET .. PXAT` refuses 0; 1 is as past as 0, so the record is gone at once either way.
            int(record.expires_at().max(1)),
            Value::Bytes(a.user),
            Value::Bytes(a.id),
            int(record.meta.absolute_deadline),
        ]);
        args.extend(post);
        if saving {
            args.push(Value::from_static_str("0"));
        }
        // The user's keys, in the slot of the first key, go along (or are upkept apart after).
        let add_user_keys = |keys: &mut Vec<Key>, args: &mut Vec<Value>| {
            match self.user_keys(record, keys[0].as_str().unwrap_or_default()) {
                Some((user_keys, true)) => keys.extend(user_keys.map(Key::from)),
                Some((user_keys, false)) => {
                    if saving && let Some(last) = args.last_mut() {
                        *last = Value::from_static_str("1");
                    }
                    return Some(user_keys);
                }
                None => {}
            }
            None
        };
        let mut apart = None;
        if !saving {
            apart = add_user_keys(&mut keys, &mut args);
        }
        let mut code = self.run_once(script, &keys, &args).await?;
        if code == 3 && saving {
            // A new user: again, with the user's keys or word that they live apart.
            apart = add_user_keys(&mut keys, &mut args);
            code = self.run_once(script, &keys, &args).await?;
        }
        Self::outcome(code)?;
        if let Some(user_keys) = apart {
            self.index_apart(user_keys, record).await?;
        } else if code == 2 {
            self.prune_index(record).await?;
        }
        Ok(())
    }

    /// Index upkeep for a record whose index lives in another slot.
    pub(super) async fn index_apart(
        &self,
        keys: [String; 2],
        record: &Record,
    ) -> Result<(), StoreError> {
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
    pub(super) async fn prune_index(&self, record: &Record) -> Result<(), StoreError> {
        let Some(user) = record.meta.user_id.as_deref() else {
            return Ok(());
        };
        let index = self.keys.index(record.meta.tenant.as_deref(), user);
        while self.run(&self.scripts.prune, index.clone(), vec![]).await? == 2 {}
        Ok(())
    }

    /// One page of `ZSCAN` over a user's index: the next cursor and the members.
    pub(super) async fn scan_index(
        &self,
        index: &str,
        cursor: &str,
    ) -> Result<(String, Vec<String>), StoreError> {
        let cmd = CustomCommand::new_static("ZSCAN", ClusterHash::FirstKey, false);
        let reply: Value = self
            .client()?
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
    pub(super) async fn destroy_batch(
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
                Value::Bytes(layout::word(u64::try_from(g).unwrap_or(0))),
                Value::from(if with_index { "1" } else { "0" }),
                int(layout::now_ms()),
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
                    .client()?
                    .zrem(index, handled)
                    .await
                    .map_err(|e| self.fail(e))?;
            }
        }
        Ok(destroyed)
    }
}

/// A record write's keys and arguments, all pieces of one buffer: one allocation (two once
/// shared), and they copy for an attempt without allocating.
struct RecordArgs {
    key: Bytes,
    write_key: Bytes,
    version: Option<Bytes>,
    head: Bytes,
    tail: Bytes,
    user: Bytes,
    id: Bytes,
}

impl RecordArgs {
    /// The record's key, the write's id key (in the slot of `first`), the expected version, the
    /// record's head and tail (the body encoded in place, and refused when too large), the user
    /// key (inside the tail) and the id in hex.
    fn new(
        inner: &Inner,
        record: &Record,
        first: &SessionId,
        write: WriteId,
        expected: Option<u64>,
    ) -> Result<Self, StoreError> {
        /// Appends what `f` writes; returns where it lies.
        fn piece(b: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
            let at = b.len();
            f(b);
            at..b.len()
        }
        let mut b = Vec::with_capacity(256 + record.encoded_size_hint());
        let key = piece(&mut b, |b| inner.keys.push_record(b, &record.id));
        let write_key = piece(&mut b, |b| inner.keys.push_write(b, first, write));
        let version = expected.map(|v| piece(&mut b, |b| b.extend_from_slice(&v.to_be_bytes())));
        let expires = record.expires_at();
        let head = piece(&mut b, |b| layout::push_head(b, record.version, expires));
        let at = b.len();
        let user = layout::push_user(&mut b, record).map_err(StoreError::Corrupt)?;
        encode_record_into(record, inner.max_record_bytes, &mut b)?;
        let tail = at..b.len();
        let id = piece(&mut b, |b| push_hex_bytes(b, record.id.as_bytes()));
        let b = Bytes::from(b);
        Ok(Self {
            key: b.slice(key),
            write_key: b.slice(write_key),
            version: version.map(|v| b.slice(v)),
            head: b.slice(head),
            tail: b.slice(tail),
            user: b.slice(user),
            id: b.slice(id),
        })
    }
}
