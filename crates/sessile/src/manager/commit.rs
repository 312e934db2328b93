//! Saving a request's session after the handler ran: create, save with compare-and-set and
//! replay, rotate, touch, destroy; and deciding what cookie, if any, the response carries.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;
use sessile_token::{Claims, Hint};

use crate::SessionId;
use crate::clock::UnixMillis;
use crate::error::SaveError;
use crate::record::{Metadata, Record};
use crate::session::{Base, RequestSession, State};
use crate::store::StoreError;

/// What the response's `Set-Cookie` should do.
#[derive(Debug, Default)]
pub(crate) enum CookieAction {
    /// Leave the browser's cookie as it is.
    #[default]
    Keep,
    /// Send this token, with this `Max-Age` in seconds (`None`: a browser-session cookie).
    Set { token: String, max_age: Option<u64> },
    /// Tell the browser to drop the cookie.
    Remove,
}

#[derive(Debug, Default)]
pub(crate) struct Commit {
    pub(crate) cookie: CookieAction,
    pub(crate) error: Option<SaveError>,
}

impl SaveError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Store(e) => e.kind(),
            Self::Replay(_) => "replay",
            Self::Contended { .. } => "contended",
            Self::Degraded => "degraded",
            Self::Ended => "ended",
        }
    }
}

impl RequestSession {
    fn idle_ms(&self) -> u64 {
        self.shared.config.idle_timeout.as_millis() as u64
    }

    /// Milliseconds that must pass since the last extension before another one is worth a write.
    fn renew_after_ms(&self) -> u64 {
        (self.idle_ms() as f64 * self.shared.config.renew_fraction) as u64
    }

    /// Saves what the handler changed. Runs after the handler, before the response leaves.
    pub(crate) async fn commit(&self, status: StatusCode) -> Commit {
        let mut out = Commit::default();
        if status.is_server_error() && !self.shared.config.save_on_server_error {
            return out;
        }
        if !matches!(self.loaded.get(), Some(Ok(()))) {
            // The record could not be read, so nothing may be written over it.
            return out;
        }
        let st = std::mem::take(&mut *self.state());
        let now = self.shared.clock.now_ms();
        if st.degraded {
            // A stand-in session is never written: not over the real record, not as a new one,
            // and the browser keeps its cookie.
            if !st.ops.is_empty() || st.cycle || st.ended.is_some() {
                out.error = Some(SaveError::Degraded);
            }
            return out;
        }

        if let Some(old) = st.ended {
            out.cookie = CookieAction::Remove;
            self.forget(&old);
            match self.shared.store.destroy(old).await {
                Ok(()) => metrics::counter!("sessile_sessions_destroyed_total").increment(1),
                Err(e) => out.error = Some(SaveError::Store(e)),
            }
        }
        match st.base.clone() {
            None => self.commit_new(st, now, &mut out).await,
            Some(base) => self.commit_existing(base, st, now, &mut out).await,
        }
        out
    }

    async fn commit_new(&self, st: State, now: UnixMillis, out: &mut Commit) {
        let nothing_to_store = st.ops.is_empty() || (st.data.is_empty() && st.user_id.is_none());
        if nothing_to_store {
            if self.incoming().is_some() && st.ended.is_none() {
                // The cookie points at a session that no longer exists: stop the browser sending it.
                out.cookie = CookieAction::Remove;
            }
            return;
        }
        let cfg = &self.shared.config;
        let absolute = now + cfg.absolute_timeout.as_millis() as u64;
        let id = SessionId::random_for_user(st.user_id.as_deref());
        let mut record = Record {
            id,
            version: 1,
            idle_deadline: (now + self.idle_ms()).min(absolute),
            meta: Metadata {
                created_at: now,
                absolute_deadline: absolute,
                user_id: st.user_id,
                tenant: cfg.tenant.clone(),
                hint: self.shared.hints.hint_for(&id).as_str().to_owned(),
            },
            data: st.data,
        };
        // A clash of two random 128-bit ids will not happen, but `create` reports it, so handle it.
        for _ in 0..2 {
            match self.shared.store.create(&record).await {
                Ok(()) => {
                    metrics::counter!("sessile_sessions_created_total").increment(1);
                    self.remember(&record);
                    out.cookie = self.issue(&record, now);
                    return;
                }
                Err(StoreError::Conflict) => {
                    record.id = SessionId::random_for_user(record.meta.user_id.as_deref());
                    record.meta.hint = self.shared.hints.hint_for(&record.id).as_str().to_owned();
                }
                Err(e) => {
                    out.error = Some(SaveError::Store(e));
                    return;
                }
            }
        }
        out.error = Some(SaveError::Store(StoreError::Conflict));
    }

    async fn commit_existing(&self, base: Base, st: State, now: UnixMillis, out: &mut Commit) {
        // A stored session is only ever loaded from a valid cookie.
        let Some(incoming) = self.incoming() else {
            return;
        };
        let cookie_due = !incoming.sealed_with_primary
            || (self.shared.config.cookie.persistent
                && (now / 1000).saturating_sub(u64::from(incoming.issued_at)) * 1000
                    >= self.renew_after_ms());

        if st.ops.is_empty() && !st.cycle {
            self.touch_only(&base, now, cookie_due, out).await;
            return;
        }

        let cfg = &self.shared.config;
        let cycle = st.cycle;
        let new_id = if cycle {
            SessionId::random_for_user(st.user_id.as_deref())
        } else {
            base.id
        };
        // A cycled id is a new session identity: new hint, and the absolute lifetime restarts.
        let fix_meta = |meta: &mut Metadata| {
            if cycle {
                meta.hint = self.shared.hints.hint_for(&new_id).as_str().to_owned();
                meta.absolute_deadline = now + cfg.absolute_timeout.as_millis() as u64;
            }
        };
        // Waiting here is bounded by the other writers' store deadlines, all of which finish.
        let lock = self.shared.commit_lock(&base.id);
        let (_queue, waited) = match lock.try_lock() {
            Ok(guard) => (guard, false),
            Err(_) => (lock.lock().await, true),
        };
        let mut expected = base.version;
        let mut meta = base.meta;
        fix_meta(&mut meta);
        meta.user_id = st.user_id;
        let mut data = st.data;
        // A request that queued behind other writers of this session almost surely holds a stale
        // version: reading the record now costs one round trip, where a doomed save would cost one
        // and the reload after it another.
        let mut reload = waited;

        for attempt in 1..=cfg.max_save_attempts {
            if reload {
                let fresh = match self.shared.store.load(base.id).await {
                    Ok(Some(r)) if !r.is_expired(self.shared.clock.now_ms()) => r,
                    Ok(_) => {
                        self.ended_meanwhile(out);
                        return;
                    }
                    Err(e) => {
                        out.error = Some(SaveError::Store(e));
                        return;
                    }
                };
                // Replay this request's operations on what the others saved.
                expected = fresh.version;
                meta = fresh.meta;
                fix_meta(&mut meta);
                data = fresh.data;
                let mut user = meta.user_id.take();
                for op in &st.ops {
                    if let Err(e) = op.apply(&mut data, &mut user, cfg.max_payload_bytes) {
                        out.error = Some(SaveError::Replay(e));
                        return;
                    }
                }
                meta.user_id = user;
            }
            let record = Record {
                id: new_id,
                version: expected + 1,
                idle_deadline: (now + self.idle_ms()).min(meta.absolute_deadline),
                meta,
                data,
            };
            let result = if cycle {
                self.shared.store.rotate(base.id, &record, expected).await
            } else {
                self.shared.store.save(&record, expected).await
            };
            match result {
                Ok(()) => {
                    if cycle {
                        self.forget(&base.id);
                    }
                    self.remember(&record);
                    if cycle || cookie_due {
                        out.cookie = self.issue(&record, now);
                    }
                    return;
                }
                Err(StoreError::Conflict) if attempt < cfg.max_save_attempts => {
                    metrics::counter!("sessile_save_conflicts_total").increment(1);
                }
                Err(StoreError::Conflict) => {
                    metrics::counter!("sessile_save_conflicts_total").increment(1);
                    out.error = Some(SaveError::Contended { attempts: attempt });
                    return;
                }
                Err(StoreError::NotFound) => {
                    self.forget(&base.id);
                    self.ended_meanwhile(out);
                    return;
                }
                Err(e) => {
                    out.error = Some(SaveError::Store(e));
                    return;
                }
            }
            // Someone saved first: another instance, since this one's writers are queued. Retry
            // at once; only when that keeps failing, pause a little (random, growing) so the
            // instances' writers spread out. The pause holds this session's queue, so it is kept
            // short.
            if attempt >= 2 {
                let cap_us = 100u64 << attempt.min(6);
                let pause = Duration::from_micros(rand::rng().random_range(0..=cap_us));
                tokio::time::sleep(pause).await;
            }
            reload = true;
            // The record moved to `record`: take its parts back for the next attempt.
            meta = record.meta;
            data = record.data;
        }
    }

    /// A read-only request: extend the idle deadline if enough of it has passed, and re-issue the
    /// cookie if its own expiry must move or it was sealed with an old key.
    async fn touch_only(&self, base: &Base, now: UnixMillis, cookie_due: bool, out: &mut Commit) {
        let new_deadline = (now + self.idle_ms()).min(base.meta.absolute_deadline);
        let last_extended = base.idle_deadline.saturating_sub(self.idle_ms());
        let touch_due = now.saturating_sub(last_extended) >= self.renew_after_ms()
            && new_deadline > base.idle_deadline;
        let mut deadline = base.idle_deadline;
        if touch_due {
            match self.shared.store.touch(base.id, new_deadline).await {
                Ok(()) => {
                    deadline = new_deadline;
                    if let Some(copies) = &self.shared.fallback {
                        copies.touched(&base.id, new_deadline);
                    }
                }
                Err(StoreError::NotFound) => {
                    self.forget(&base.id);
                    out.cookie = CookieAction::Remove;
                    return;
                }
                Err(e) => {
                    out.error = Some(SaveError::Store(e));
                    return;
                }
            }
        }
        if cookie_due {
            out.cookie = self.issue_token(base.id, &base.meta.hint, deadline, now);
        }
    }

    fn remember(&self, record: &Record) {
        if let Some(copies) = &self.shared.fallback {
            copies.remember(record);
        }
    }

    fn forget(&self, id: &SessionId) {
        if let Some(copies) = &self.shared.fallback {
            copies.forget(id);
        }
    }

    fn ended_meanwhile(&self, out: &mut Commit) {
        out.cookie = CookieAction::Remove;
        out.error = Some(SaveError::Ended);
    }

    fn issue(&self, record: &Record, now: UnixMillis) -> CookieAction {
        self.issue_token(record.id, &record.meta.hint, record.idle_deadline, now)
    }

    fn issue_token(
        &self,
        id: SessionId,
        hint: &str,
        deadline: UnixMillis,
        now: UnixMillis,
    ) -> CookieAction {
        let claims = Claims {
            session_id: *id.as_bytes(),
            issued_at: u32::try_from(now / 1000).unwrap_or(u32::MAX),
        };
        // Hints are validated when made; a record from a damaged store falls back to no hint.
        let hint = Hint::new(hint).unwrap_or_default();
        let token = self.shared.codec.seal(&claims, &hint);
        let max_age = self
            .shared
            .config
            .cookie
            .persistent
            .then(|| deadline.saturating_sub(now) / 1000);
        CookieAction::Set { token, max_age }
    }
}
