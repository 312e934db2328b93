//! Saving a request's session after the handler ran: create, save with compare-and-set and
//! replay, rotate, touch, destroy; and deciding what cookie, if any, the response carries.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;
use sessile_token::{Claims, Hint};

use super::WriteError;
use super::cookie::CookieAction;
use super::request::{Base, Op, RequestSession, State};
use crate::SessionId;
use crate::clock::UnixMillis;
use crate::error::SaveError;
use crate::record::{Metadata, Record};
use crate::store::StoreError;

#[derive(Debug, Default)]
pub(crate) struct Commit {
    pub(crate) cookie: CookieAction,
    pub(crate) error: Option<SaveError>,
}

/// What became of one attempt to write a record.
enum Attempt {
    /// Written; the request is done.
    Done,
    /// Not written, for a reason worth another attempt on a fresh copy of the record.
    Again,
    /// Not written, and the request is done (the reason is in the `Commit`).
    Stop,
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
            if st.dirty || st.cycle || st.ended.is_some() {
                out.error = Some(SaveError::Degraded);
            }
            return out;
        }

        if let Some(old) = st.ended {
            self.forget(&old);
            match self.shared.store.destroy(old).await {
                Ok(()) => {
                    metrics::counter!("sessile_sessions_destroyed_total").increment(1);
                    out.cookie = CookieAction::Remove;
                }
                Err(StoreError::Rotated) => {
                    // A login moved the session while this logout was on its way: the browser's
                    // cookie is the login's by now, and the logout named the old id. Leave both.
                    out.error = Some(SaveError::Rotated);
                    return out;
                }
                Err(e) => {
                    // The session lives on: keep the cookie, so that the user still holds it and
                    // can log out again, and write nothing else.
                    out.error = Some(SaveError::Store(e));
                    return out;
                }
            }
        }
        match st.base.clone() {
            None => self.commit_new(st, now, &mut out).await,
            Some(base) => self.commit_existing(base, st, now, &mut out).await,
        }
        out
    }

    async fn commit_new(&self, st: State, now: UnixMillis, out: &mut Commit) {
        let nothing_to_store = !st.dirty || (st.data.is_empty() && st.user_id.is_none());
        if st.moved && st.user_id.is_none() {
            // The cookie names a session that a login moved to a new id while this request was
            // on its way: it is a request from before the login. Creating a session for it, or
            // removing its cookie, would log the user out when this response arrives after the
            // login's. Leave the cookie alone. (A request that logs a user in does create its
            // session: it is a login itself, and a browser that lost a login's response must be
            // able to log in again at once.)
            if !nothing_to_store {
                out.error = Some(SaveError::Rotated);
            }
            return;
        }
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
        // A clash of two random ids will not happen, but `create` reports it; and a create whose
        // reply was lost and that was settled as not applied may be made again.
        for attempt in 1..=2 {
            let error = match self.shared.store.create(&record).await {
                Ok(()) => {
                    metrics::counter!("sessile_sessions_created_total").increment(1);
                    self.remember(&record);
                    out.cookie = self.issue(&record, now);
                    return;
                }
                Err(WriteError::Unknown(e)) => {
                    // If it landed, nobody knows its id: it expires unused.
                    out.error = Some(SaveError::Unknown(e));
                    return;
                }
                Err(WriteError::Failed(StoreError::Conflict)) => StoreError::Conflict,
                Err(WriteError::NotApplied(e)) => e,
                Err(WriteError::Failed(e)) => {
                    out.error = Some(SaveError::Store(e));
                    return;
                }
            };
            if attempt == 2 {
                out.error = Some(SaveError::Store(error));
                return;
            }
            record.id = SessionId::random_for_user(record.meta.user_id.as_deref());
            record.meta.hint = self.shared.hints.hint_for(&record.id).as_str().to_owned();
        }
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

        if !st.dirty && !st.cycle {
            self.touch_only(&base, now, cookie_due, out).await;
            return;
        }
        // Waiting here is bounded by the other writers' store deadlines, all of which finish.
        let lock = self.shared.commit_lock(&base.id);
        let (_queue, waited) = match lock.try_lock() {
            Ok(guard) => (guard, false),
            Err(_) => (lock.lock().await, true),
        };
        let mut writer = Writer::new(self, &base, &st, now);
        // A request that queued behind other writers of this session almost surely holds a stale
        // version: reading the record now costs one round trip, where a doomed save would cost one
        // and the reload after it another.
        let mut reload = waited;
        let State {
            data, user_id, ops, ..
        } = st;
        let (mut meta, mut data) = (base.meta.clone(), data);
        meta.user_id = user_id;
        let max = self.shared.config.max_save_attempts;
        for attempt in 1..=max {
            if reload {
                match writer.reload(&ops, out).await {
                    Some(Reloaded::Write(m, d)) => (meta, data) = (m, d),
                    Some(Reloaded::Unchanged {
                        hint,
                        idle_deadline,
                    }) => {
                        // The replay changed nothing: what this request wanted is already stored,
                        // and the load just confirmed the id is live.
                        if cookie_due {
                            out.cookie = self.issue_token(base.id, &hint, idle_deadline, now);
                        }
                        return;
                    }
                    None => return,
                }
            }
            let record = writer.record(meta, data);
            match writer.write(&record, attempt == max, out).await {
                Attempt::Done => {
                    if writer.cycle || cookie_due {
                        out.cookie = self.issue(&record, now);
                    }
                    return;
                }
                Attempt::Stop => return,
                Attempt::Again => {}
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
            // The record moved into the attempt: take its parts back for the next one.
            (meta, data) = (record.meta, record.data);
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
        // A cookie is only re-issued for an id the store has just confirmed: the session may have
        // been rotated (a login) since this request loaded it, and a fresh token for the dead id,
        // arriving after the login's response, would log the user out.
        if touch_due || cookie_due {
            let new_deadline = new_deadline.max(base.idle_deadline);
            match self.shared.store.touch(base.id, new_deadline).await {
                Ok(()) => {
                    deadline = new_deadline;
                    if let Some(copies) = &self.shared.recent_copies {
                        copies.touched(&base.id, new_deadline);
                    }
                }
                Err(StoreError::NotFound) => {
                    self.forget(&base.id);
                    out.cookie = CookieAction::Remove;
                    return;
                }
                Err(StoreError::Rotated) => {
                    // A read made before a login: the browser's cookie is the login's by now.
                    self.forget(&base.id);
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
        if let Some(copies) = &self.shared.recent_copies {
            copies.remember(record);
        }
    }

    fn forget(&self, id: &SessionId) {
        if let Some(copies) = &self.shared.recent_copies {
            copies.forget(id);
        }
    }

    /// The session ended (logout, expiry) while the request ran: report it and drop the cookie.
    fn ended_meanwhile(&self, id: &SessionId, out: &mut Commit) {
        self.forget(id);
        out.cookie = CookieAction::Remove;
        out.error = Some(SaveError::Ended);
    }

    /// The session was rotated away by another request while this one ran: report it and leave
    /// the cookie (by now the login's) alone.
    fn rotated_meanwhile(&self, id: &SessionId, out: &mut Commit) {
        self.forget(id);
        out.error = Some(SaveError::Rotated);
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

/// What a reload gave the next attempt.
enum Reloaded {
    /// The fresh record's metadata and payload with the request's operations replayed.
    Write(Metadata, crate::record::Payload),
    /// The replay changed nothing (and no id is to be cycled): nothing to write.
    Unchanged {
        hint: String,
        idle_deadline: UnixMillis,
    },
}

/// The save of one request's changes to a stored session: what stays the same across attempts.
struct Writer<'r> {
    req: &'r RequestSession,
    /// The id the request loaded.
    old: SessionId,
    /// The id the record is written under: `old`, or a fresh one when cycling.
    new: SessionId,
    cycle: bool,
    expected: u64,
    now: UnixMillis,
}

impl<'r> Writer<'r> {
    fn new(req: &'r RequestSession, base: &Base, st: &State, now: UnixMillis) -> Self {
        let new = if st.cycle {
            SessionId::random_for_user(st.user_id.as_deref())
        } else {
            base.id
        };
        Self {
            req,
            old: base.id,
            new,
            cycle: st.cycle,
            expected: base.version,
            now,
        }
    }

    /// Reads the record again and replays the request's operations on it. `None`: the request
    /// is done (the session ended or moved, or the store failed; `out` says which).
    async fn reload(&mut self, ops: &[Op], out: &mut Commit) -> Option<Reloaded> {
        let req = self.req;
        let fresh = match req.shared.store.load(self.old).await {
            Ok(Some(r)) if !r.is_expired(req.shared.clock.now_ms()) => r,
            Ok(_) => {
                req.ended_meanwhile(&self.old, out);
                return None;
            }
            Err(StoreError::Rotated) => {
                req.rotated_meanwhile(&self.old, out);
                return None;
            }
            Err(e) => {
                out.error = Some(SaveError::Store(e));
                return None;
            }
        };
        self.expected = fresh.version;
        let idle_deadline = fresh.idle_deadline;
        let (mut meta, mut data) = (fresh.meta, fresh.data);
        let mut user = meta.user_id.take();
        let mut changed = false;
        for op in ops {
            match op.apply(&mut data, &mut user, req.shared.config.max_payload_bytes) {
                Ok(c) => changed |= c,
                Err(e) => {
                    out.error = Some(SaveError::Replay(e));
                    return None;
                }
            }
        }
        meta.user_id = user;
        Some(if changed || self.cycle {
            Reloaded::Write(meta, data)
        } else {
            Reloaded::Unchanged {
                hint: meta.hint,
                idle_deadline,
            }
        })
    }

    /// The record to write from `meta` and `data`. A cycled id is a new session identity: new
    /// hint, and the absolute lifetime restarts.
    fn record(&self, mut meta: Metadata, data: crate::record::Payload) -> Record {
        let req = self.req;
        if self.cycle {
            meta.hint = req.shared.hints.hint_for(&self.new).as_str().to_owned();
            meta.absolute_deadline =
                self.now + req.shared.config.absolute_timeout.as_millis() as u64;
        }
        Record {
            id: self.new,
            version: self.expected + 1,
            idle_deadline: (self.now + req.idle_ms()).min(meta.absolute_deadline),
            meta,
            data,
        }
    }

    /// One compare-and-set attempt (a `rotate` when cycling).
    async fn write(&self, record: &Record, last: bool, out: &mut Commit) -> Attempt {
        let req = self.req;
        let store = &req.shared.store;
        let result = if self.cycle {
            store.rotate(self.old, record, self.expected).await
        } else {
            store.save(record, self.expected).await
        };
        match result {
            Ok(()) => {
                if self.cycle {
                    req.forget(&self.old);
                }
                req.remember(record);
                Attempt::Done
            }
            Err(WriteError::Failed(StoreError::Conflict)) => {
                metrics::counter!("sessile_save_conflicts_total").increment(1);
                if last {
                    out.error = Some(SaveError::Contended {
                        attempts: req.shared.config.max_save_attempts,
                    });
                    return Attempt::Stop;
                }
                Attempt::Again
            }
            // The reply was lost, and the store established that the write did not land and
            // never will: writing again (with a new write id) cannot apply it twice.
            Err(WriteError::NotApplied(_)) if !last => Attempt::Again,
            Err(WriteError::Failed(StoreError::NotFound)) => {
                req.ended_meanwhile(&self.old, out);
                Attempt::Stop
            }
            Err(WriteError::Failed(StoreError::Rotated)) => {
                req.rotated_meanwhile(&self.old, out);
                Attempt::Stop
            }
            Err(WriteError::Failed(e) | WriteError::NotApplied(e)) => {
                out.error = Some(SaveError::Store(e));
                Attempt::Stop
            }
            Err(WriteError::Unknown(e)) => {
                out.error = Some(SaveError::Unknown(e));
                Attempt::Stop
            }
        }
    }
}
