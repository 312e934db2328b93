//! The [`SessionStore`] operations, one script or command each.

use super::*;

impl SessionStore for RedisStore {
    fn system_name(&self) -> &'static str {
        "redis"
    }

    /// Every command is sent with what is left of the caller's deadline as fred's timeout, so
    /// the session layer sets no timer of its own.
    fn keeps_deadlines(&self) -> bool {
        true
    }

    async fn load(&self, id: SessionId) -> Result<Option<Record>, StoreError> {
        let key = self.inner.keys.record(&id);
        let raw: Option<Bytes> = match self.inner.client()?.get(key).await {
            Ok(raw) => raw,
            // A key of another type where a record belongs: what is stored is wrong, not the
            // store (and a corrupt record never opens the breaker).
            Err(e) if e.details().starts_with("WRONGTYPE") => {
                return Err(StoreError::Corrupt(CodecError::Layout));
            }
            Err(e) => return Err(self.inner.fail(e)),
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        // A value this build cannot read is a corrupt record (which never opens the breaker), not
        // a failing store.
        match layout::parse(raw).map_err(StoreError::Corrupt)? {
            Stored::Marker => Err(StoreError::Rotated),
            Stored::Record {
                version,
                idle_deadline,
                body,
            } => Record::decode_shared(id, version, idle_deadline, body)
                .map(Some)
                .map_err(StoreError::Corrupt),
        }
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
                vec![Value::Bytes(layout::invalidation(
                    &record.id,
                    Some(record.version),
                ))],
            )
            .await
    }

    async fn touch(&self, id: SessionId, idle_deadline: UnixMillis) -> Result<(), StoreError> {
        let key = self.inner.keys.record(&id);
        let code = self
            .inner
            .run(
                &self.inner.scripts.touch,
                key,
                vec![
                    Value::Bytes(layout::word(idle_deadline)),
                    int(idle_deadline),
                ],
            )
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
                Value::Bytes(layout::invalidation(&old, None)),
                int(ROTATED_MARKER_TTL_MS),
                Value::from(old.to_hex()),
                Value::Bytes(layout::marker(&record.id, write)),
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
            Value::Bytes(layout::word(expected_version)),
            int(ROTATED_MARKER_TTL_MS),
            Value::Bytes(layout::marker(&record.id, write)),
            Value::Bytes(layout::invalidation(&old, None)),
        ];
        let keys = [Key::from(old_key), Key::from(inner.keys.write(&old, write))];
        let code = inner.run_once(&inner.scripts.delete_at, &keys, &args).await;
        let result = code.and_then(Inner::outcome);
        if matches!(
            result,
            Err(StoreError::Conflict
                | StoreError::NotFound
                | StoreError::Rotated
                | StoreError::Corrupt(_))
        ) {
            // The first step must go. If its undo cannot be sent (the deadline ran out) or gets
            // no answer, the rotation is reported unavailable rather than refused: the layer then
            // settles it, and settling a cross-slot rotation that did not land deletes the new
            // record. Refused, the new record would stay, and every retry's create would find it.
            let undone = match inner.client() {
                Ok(client) => client
                    .del::<i64, _>(new_key)
                    .await
                    .map_err(|e| inner.fail(e)),
                Err(e) => Err(e),
            };
            if let Err(e) = undone {
                return Err(if e.is_ambiguous() {
                    e
                } else {
                    StoreError::Unavailable(Box::new(e))
                });
            }
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
                .client()?
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
            .run_as(
                &inner.scripts.destroy,
                key,
                vec![Value::Bytes(layout::invalidation(&id, None))],
            )
            .await?;
        if let Value::Integer(-2) = reply {
            return Err(StoreError::Rotated);
        }
        let user_key = reply.into_string().unwrap_or_default();
        if let Some((tenant, user)) = user_key.split_once(':') {
            let tenant = (!tenant.is_empty()).then_some(tenant);
            let index = inner.keys.index(tenant, user);
            // The session is gone either way; a stale index entry is only slack (it is pruned at
            // the session's absolute deadline), so a failure here does not fail the logout.
            let removed = match inner.client() {
                Ok(client) => client
                    .zrem::<i64, _, _>(index, id.to_hex())
                    .await
                    .map_err(|e| inner.fail(e)),
                Err(e) => Err(e),
            };
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
        let keys = inner.keys.user_keys(tenant, user_id).to_vec();
        let index = keys[0].clone();
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
