//! Saving a request's session after the handler ran: destroy, create, renew (touch), or hand a
//! stored session's changes to the [`Writer`]; and deciding what cookie, if any, the response
//! carries.

use http::StatusCode;
use sessile_token::{Claims, Hint};

use super::WriteError;
use super::cookie::CookieAction;
use super::request::{Base, Incoming, RequestSession, State};
use super::writer::Writer;
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

impl RequestSession {
    pub(super) fn idle_ms(&self) -> u64 {
        self.shared.config.idle_timeout.as_millis() as u64
    }

    /// Milliseconds that must pass since the last extension before another one is worth a write.
    fn renew_after_ms(&self) -> u64 {
        (self.idle_ms() as f64 * self.shared.config.renew_fraction) as u64
    }

    /// The request failed (and saves on failure are off), or its record could not be read, so
    /// that nothing may be written over it: there is nothing to commit.
    fn nothing_may_be_written(&self, status: StatusCode) -> bool {
        (status.is_server_error() && !self.shared.config.save_on_server_error)
            || !matches!(self.loaded.get(), Some(Ok(())))
    }

    /// Does what [`commit`](Self::commit) would when it needs no store call, changes no cookie and
    /// reports nothing, and says whether that was the case: the request failed (and saves on
    /// failure are off), could not load its session, or only read a stored session with no
    /// renewal due and its cookie to stay as it is. Most requests are such reads; they finish
    /// without a commit future.
    pub(crate) fn committed_without_store(&self, status: StatusCode) -> bool {
        if self.nothing_may_be_written(status) {
            return true;
        }
        let mut st = self.state();
        let Some(base) = st.base.as_ref() else {
            return false;
        };
        if st.dirty || st.cycle || st.degraded || st.ended.is_some() {
            return false;
        }
        let Some(incoming) = self.incoming() else {
            return false;
        };
        let now = self.shared.clock.now_ms();
        if self.cookie_due(&incoming, now) || incoming.re_pin || self.touch_due(base, now) {
            return false;
        }
        // As `commit` does: the request's session is spent once its response is on its way.
        drop(std::mem::take(&mut *st));
        true
    }

    /// Saves what the handler changed. Runs after the handler, before the response leaves.
    pub(crate) async fn commit(&self, status: StatusCode) -> Commit {
        let mut out = Commit::default();
        if self.nothing_may_be_written(status) {
            return out;
        }
        let mut st = std::mem::take(&mut *self.state());
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
        // Nothing reads the state's base after this.
        match st.base.take() {
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

    /// Saves a stored session's changes, or only renews it when nothing changed.
    async fn commit_existing(&self, base: Base, st: State, now: UnixMillis, out: &mut Commit) {
        // A stored session is only ever loaded from a valid cookie.
        let Some(incoming) = self.incoming() else {
            return;
        };
        let cookie_due = self.cookie_due(&incoming, now);
        let re_pin = incoming.re_pin;
        if !st.dirty && !st.cycle {
            self.touch_only(&base, now, cookie_due, re_pin, out).await;
            return;
        }
        // Waiting here is bounded by the other writers' store deadlines, all of which finish.
        let lock = self.shared.commit_lock(&base.id);
        let (_queue, waited) = match lock.try_lock() {
            Ok(guard) => (guard, false),
            Err(_) => (lock.lock().await, true),
        };
        let mut writer = Writer::new(self, &base, &st, now);
        let Some(written) = writer.run(st, base.meta.clone(), waited, out).await else {
            return;
        };
        if !written.stored && (cookie_due || re_pin) {
            // Nothing was written, and the id was confirmed only by a load, which a cache tier
            // may have answered from a copy: as on a read, the store confirms the id before a
            // cookie is issued for it.
            self.touch_only(&base, now, cookie_due, re_pin, out).await;
            return;
        }
        if writer.cycle || cookie_due || re_pin {
            // A re-pin seals this node's hint; a rotation already has it.
            let hint = if re_pin && !writer.cycle {
                metrics::counter!("sessile_affinity_repins_total").increment(1);
                self.shared.hints.hint_for(&written.id).as_str().to_owned()
            } else {
                written.hint
            };
            out.cookie = self.issue_token(written.id, &hint, written.idle_deadline, now);
        }
    }

    /// Whether the response must carry a fresh token: the cookie was sealed with an old key, or
    /// its own expiry (`Max-Age`) is due to move.
    fn cookie_due(&self, incoming: &Incoming, now: UnixMillis) -> bool {
        !incoming.sealed_with_primary
            || (self.shared.config.cookie.persistent
                && (now / 1000).saturating_sub(u64::from(incoming.issued_at)) * 1000
                    >= self.renew_after_ms())
    }

    /// A read-only request: extend the idle deadline if enough of it has passed, and re-issue the
    /// cookie if its own expiry must move, it was sealed with an old key, or it is to be re-pinned
    /// to this node.
    async fn touch_only(
        &self,
        base: &Base,
        now: UnixMillis,
        cookie_due: bool,
        re_pin: bool,
        out: &mut Commit,
    ) {
        let new_deadline = (now + self.idle_ms()).min(base.meta.absolute_deadline);
        let touch_due = self.touch_due(base, now);
        let mut deadline = base.idle_deadline;
        // A cookie is only re-issued for an id the store has just confirmed: the session may have
        // been rotated (a login) since this request loaded it, and a fresh token for the dead id,
        // arriving after the login's response, would log the user out.
        if touch_due || cookie_due || re_pin {
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
                    // Ended meanwhile. A touch made only to re-pin leaves the cookie alone: this
                    // response may arrive after a new login's and must not remove its cookie.
                    if touch_due || cookie_due {
                        out.cookie = CookieAction::Remove;
                    }
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
        if cookie_due || re_pin {
            let hint = if re_pin {
                metrics::counter!("sessile_affinity_repins_total").increment(1);
                self.shared.hints.hint_for(&base.id).as_str().to_owned()
            } else {
                base.meta.hint.clone()
            };
            out.cookie = self.issue_token(base.id, &hint, deadline, now);
        }
    }

    /// Whether enough of the idle timeout has passed since the last extension for another one to
    /// be worth a write (and it would move the deadline at all).
    fn touch_due(&self, base: &Base, now: UnixMillis) -> bool {
        let new_deadline = (now + self.idle_ms()).min(base.meta.absolute_deadline);
        let last_extended = base.idle_deadline.saturating_sub(self.idle_ms());
        now.saturating_sub(last_extended) >= self.renew_after_ms()
            && new_deadline > base.idle_deadline
    }

    pub(super) fn remember(&self, record: &Record) {
        if let Some(copies) = &self.shared.recent_copies {
            copies.remember(record);
        }
    }

    pub(super) fn forget(&self, id: &SessionId) {
        if let Some(copies) = &self.shared.recent_copies {
            copies.forget(id);
        }
    }

    /// The session ended (logout, expiry) while the request ran: report it and drop the cookie.
    pub(super) fn ended_meanwhile(&self, id: &SessionId, out: &mut Commit) {
        self.forget(id);
        out.cookie = CookieAction::Remove;
        out.error = Some(SaveError::Ended);
    }

    /// The session was rotated away by another request while this one ran: report it and leave
    /// the cookie (by now the login's) alone.
    pub(super) fn rotated_meanwhile(&self, id: &SessionId, out: &mut Commit) {
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
