//! The compare-and-set save of a stored session's changes: write, and on a conflict reload the
//! record, replay the request's operations on it, and write again.

use std::time::Duration;

use rand::Rng;

use super::WriteError;
use super::commit::Commit;
use super::request::{Base, Op, RequestSession, State};
use crate::SessionId;
use crate::clock::UnixMillis;
use crate::error::SaveError;
use crate::record::{Metadata, Payload, Record};
use crate::store::StoreError;

/// What became of one attempt to write a record.
enum Attempt {
    /// Written; the request is done.
    Done,
    /// Not written, for a reason worth another attempt on a fresh copy of the record.
    Again,
    /// Not written, and the request is done (the reason is in the `Commit`).
    Stop,
}

/// What is stored once the save is done, for the cookie.
pub(crate) struct Written {
    pub(crate) id: SessionId,
    pub(crate) hint: String,
    pub(crate) idle_deadline: UnixMillis,
    /// Whether this request wrote the record (`false`: its changes were already stored, and the
    /// id was confirmed only by a load).
    pub(crate) stored: bool,
}

/// What a reload gave the next attempt.
enum Reloaded {
    /// The fresh record's metadata and payload with the request's operations replayed.
    Write(Metadata, Payload),
    /// The replay changed nothing (and no id is to be cycled): nothing to write.
    Unchanged {
        hint: String,
        idle_deadline: UnixMillis,
    },
}

/// The save of one request's changes to a stored session: what stays the same across attempts.
pub(crate) struct Writer<'r> {
    req: &'r RequestSession,
    /// The id the request loaded.
    old: SessionId,
    /// The id the record is written under: `old`, or a fresh one when cycling.
    new: SessionId,
    pub(crate) cycle: bool,
    expected: u64,
    now: UnixMillis,
}

impl<'r> Writer<'r> {
    pub(crate) fn new(req: &'r RequestSession, base: &Base, st: &State, now: UnixMillis) -> Self {
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

    /// Writes the request's changes, starting from `meta` and the state's payload, with as many
    /// attempts as the settings allow. `None`: nothing was written (`out` says why, or there was
    /// nothing left to write and no cookie to issue).
    pub(crate) async fn run(
        &mut self,
        st: State,
        mut meta: Metadata,
        waited: bool,
        out: &mut Commit,
    ) -> Option<Written> {
        let State {
            data, user_id, ops, ..
        } = st;
        let mut data = data;
        meta.user_id = user_id;
        // A request that queued behind other writers of this session almost surely holds a stale
        // version: reading the record now costs one round trip, where a doomed save would cost one
        // and the reload after it another.
        let mut reload = waited;
        let max = self.req.shared.config.max_save_attempts;
        for attempt in 1..=max {
            if reload {
                match self.reload(&ops, out).await? {
                    Reloaded::Write(m, d) => (meta, data) = (m, d),
                    // The replay changed nothing: what this request wanted is already stored, and
                    // the load just confirmed the id is live.
                    Reloaded::Unchanged {
                        hint,
                        idle_deadline,
                    } => {
                        return Some(Written {
                            id: self.old,
                            hint,
                            idle_deadline,
                            stored: false,
                        });
                    }
                }
            }
            let record = self.record(meta, data);
            match self.write(&record, attempt == max, out).await {
                Attempt::Done => {
                    return Some(Written {
                        id: record.id,
                        hint: record.meta.hint,
                        idle_deadline: record.idle_deadline,
                        stored: true,
                    });
                }
                Attempt::Stop => return None,
                Attempt::Again => {}
            }
            backoff(attempt).await;
            reload = true;
            // The record moved into the attempt: take its parts back for the next one.
            (meta, data) = (record.meta, record.data);
        }
        None
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
    fn record(&self, mut meta: Metadata, data: Payload) -> Record {
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

/// Someone saved first: another instance, since this one's writers are queued. Retry at once;
/// only when that keeps failing, pause a little (random, growing) so the instances' writers spread
/// out. The pause holds this session's queue, so it is kept short.
async fn backoff(attempt: u32) {
    if attempt >= 2 {
        let cap_us = 100u64 << attempt.min(6);
        let pause = Duration::from_micros(rand::rng().random_range(0..=cap_us));
        tokio::time::sleep(pause).await;
    }
}
