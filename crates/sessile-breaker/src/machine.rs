//! The breaker's state machine: plain data, no clock, no locks, no I/O.
//!
//! Time is passed in as "time since the breaker's origin", so tests drive it with plain numbers
//! and the shared wrapper with a real or manual clock.

use std::time::Duration;

use thiserror::Error;

use crate::window::{Sliding, Totals};
use crate::{Config, ConfigError};

/// What the breaker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are rejected until the open wait ends.
    Open,
    /// A few probe calls go through; their outcome decides.
    HalfOpen,
    /// Held open by an operator.
    ForcedOpen,
    /// Held closed by an operator: calls go through whatever happens.
    ForcedClosed,
}

impl State {
    /// A short, stable name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
}

/// The call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("circuit breaker is open; retry after {retry_after:?}")]
pub struct Rejected {
    /// When trying again is worthwhile.
    pub retry_after: Duration,
}

/// Permission for one call. Hand it back with the outcome; a permit from before a state change is
/// ignored, so late answers from an old period cannot sway the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a permit's outcome must be recorded"]
pub struct Permit {
    generation: u64,
    pub(crate) started: Duration,
    /// A half-open probe's number, to find its slot among the outstanding ones.
    probe: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: Duration,
    },
    /// `succeeded` probes answered well; the unanswered ones are in `Breaker::probes`.
    HalfOpen {
        succeeded: u32,
    },
    ForcedOpen,
    ForcedClosed,
}

impl Phase {
    fn state(self) -> State {
        match self {
            Self::Closed => State::Closed,
            Self::Open { .. } => State::Open,
            Self::HalfOpen { .. } => State::HalfOpen,
            Self::ForcedOpen => State::ForcedOpen,
            Self::ForcedClosed => State::ForcedClosed,
        }
    }
}

/// A circuit breaker.
pub struct Breaker {
    config: Config,
    window: Sliding,
    phase: Phase,
    generation: u64,
    /// Opens since the last close: the exponent of the open wait.
    opens: u32,
    /// xorshift64 state for jitter; seeded, so tests are repeatable.
    rng: u64,
    /// Half-open probes out and unanswered: (number, start). At most `half_open_probes`; each is
    /// given back when answered, dropped early, or older than `probe_timeout`.
    probes: Vec<(u64, Duration)>,
    next_probe: u64,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("phase", &self.phase)
            .field("opens", &self.opens)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker. `seed` drives the jitter of open waits.
    pub fn new(config: Config, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            window: Sliding::new(config.window),
            config,
            phase: Phase::Closed,
            generation: 0,
            opens: 0,
            rng: splitmix64(seed) | 1,
            probes: Vec::new(),
            next_probe: 0,
        })
    }

    /// The current state (an open breaker whose wait is over still reads `Open` until the next
    /// call asks).
    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// Counts in the window at `now`.
    pub fn totals(&self, now: Duration) -> Totals {
        self.window.totals(now)
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(&mut self, now: Duration) -> (Result<Permit, Rejected>, Option<Transition>) {
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now < until {
                return (
                    Err(Rejected {
                        retry_after: until - now,
                    }),
                    None,
                );
            }
            transition = self.enter(Phase::HalfOpen { succeeded: 0 });
        }
        let probes = self.config.half_open_probes;
        let timeout = self.config.probe_timeout;
        let result = match self.phase {
            Phase::Closed | Phase::ForcedClosed => Ok(self.permit(now, None)),
            Phase::HalfOpen { succeeded } => {
                // Probes unanswered for the probe timeout never will be: their callers gave up
                // or hang. Give their slots back; a late answer still counts when it comes.
                self.probes
                    .retain(|(_, started)| now < started.saturating_add(timeout));
                if succeeded + (self.probes.len() as u32) < probes {
                    let n = self.next_probe;
                    self.next_probe += 1;
                    self.probes.push((n, now));
                    Ok(self.permit(now, Some(n)))
                } else {
                    // Slots come back when probes answer, are dropped, or time out.
                    let next = self
                        .probes
                        .iter()
                        .map(|(_, started)| started.saturating_add(timeout))
                        .min()
                        .unwrap_or(now);
                    Err(Rejected {
                        retry_after: next.saturating_sub(now).max(Duration::from_millis(1)),
                    })
                }
            }
            Phase::ForcedOpen | Phase::Open { .. } => Err(Rejected {
                retry_after: self.config.open_wait,
            }),
        };
        (result, transition)
    }

    /// Records how the call of `permit` went, at `now`.
    pub fn record(&mut self, permit: Permit, failed: bool, now: Duration) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        let slow = now.saturating_sub(permit.started) > self.config.slow_call_duration;
        self.release(permit);
        match &mut self.phase {
            Phase::Closed => {
                self.window.record(failed, slow, now);
                if self.tripped(now) {
                    return self.open(now);
                }
                None
            }
            Phase::ForcedClosed => {
                self.window.record(failed, slow, now);
                None
            }
            Phase::HalfOpen { succeeded, .. } => {
                if failed || slow {
                    return self.open(now);
                }
                *succeeded += 1;
                if *succeeded >= self.config.half_open_probes {
                    self.opens = 0;
                    return self.enter(Phase::Closed);
                }
                None
            }
            Phase::Open { .. } | Phase::ForcedOpen => None,
        }
    }

    /// The call of `permit` was abandoned at `now` (its caller dropped it) without an outcome.
    ///
    /// A call abandoned after [`slow_call_duration`](Config::slow_call_duration) is recorded as a
    /// slow success: its caller waited that long, so an outer timeout shorter than the call's own
    /// still shows the breaker a slow backend. One abandoned sooner (a client that went away) says
    /// nothing about the backend: it is not counted, and a half-open probe's slot is given back.
    pub fn abandon(&mut self, permit: Permit, now: Duration) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        if now.saturating_sub(permit.started) > self.config.slow_call_duration {
            return self.record(permit, false, now);
        }
        self.release(permit);
        None
    }

    /// Frees a half-open probe's slot, if it still holds one (not already given back).
    fn release(&mut self, permit: Permit) {
        if let Some(n) = permit.probe {
            self.probes.retain(|(p, _)| *p != n);
        }
    }

    /// Holds the breaker open until [`reset`](Self::reset) or [`force_closed`](Self::force_closed).
    pub fn force_open(&mut self) -> Option<Transition> {
        self.enter(Phase::ForcedOpen)
    }

    /// Holds the breaker closed until [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn force_closed(&mut self) -> Option<Transition> {
        self.enter(Phase::ForcedClosed)
    }

    /// Back to closed and automatic, with an empty window.
    pub fn reset(&mut self) -> Option<Transition> {
        self.opens = 0;
        self.enter(Phase::Closed)
    }

    fn permit(&self, now: Duration, probe: Option<u64>) -> Permit {
        Permit {
            generation: self.generation,
            started: now,
            probe,
        }
    }

    fn tripped(&self, now: Duration) -> bool {
        let t = self.window.totals(now);
        if t.calls < self.config.minimum_calls {
            return false;
        }
        let calls = f64::from(t.calls);
        f64::from(t.failures) / calls >= self.config.failure_rate
            || f64::from(t.slow) / calls >= self.config.slow_call_rate
    }

    fn open(&mut self, now: Duration) -> Option<Transition> {
        self.opens = self.opens.saturating_add(1);
        let c = &self.config;
        let exp = i32::try_from(self.opens - 1).unwrap_or(i32::MAX);
        let base = c.open_wait.as_secs_f64() * c.backoff.powi(exp);
        let capped = base.min(c.max_open_wait.as_secs_f64());
        let wait = capped * (1.0 + c.jitter * (2.0 * self.next_unit() - 1.0));
        // Bounded by validation (`max_open_wait` at most a day), so this cannot overflow.
        self.enter(Phase::Open {
            until: now.saturating_add(Duration::from_secs_f64(wait.max(0.0))),
        })
    }

    fn enter(&mut self, phase: Phase) -> Option<Transition> {
        let from = self.phase.state();
        self.phase = phase;
        // New period: permits from the old one no longer count, and the window starts empty.
        self.generation += 1;
        self.window.clear();
        self.probes.clear();
        let to = phase.state();
        (from != to).then_some(Transition { from, to })
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Spreads a seed over all 64 bits, so nearby seeds (1, 2, 3...) give unrelated jitter.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Window;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn config() -> Config {
        Config {
            window: Window::Count(10),
            minimum_calls: 4,
            half_open_probes: 2,
            jitter: 0.0,
            ..Config::default()
        }
    }

    fn call(b: &mut Breaker, now: Duration, failed: bool) -> Option<Transition> {
        let (permit, t1) = b.try_acquire(now);
        let permit = permit.expect("let through");
        let t2 = b.record(permit, failed, now + MS);
        t2.or(t1)
    }

    #[test]
    fn half_open_slots_come_back_probe_by_probe_and_never_exceed_the_limit() {
        let mut b = Breaker::new(
            Config {
                half_open_probes: 3,
                probe_timeout: 500 * MS,
                ..config()
            },
            1,
        )
        .expect("valid");
        for _ in 0..4 {
            call(&mut b, S, true);
        }
        assert_eq!(b.state(), State::Open);
        let t0 = 3 * S;
        let acquire = |b: &mut Breaker, at: Duration| b.try_acquire(at).0;
        // A answers at once; B and C start later and are still running at t0 + 500 ms.
        let a = acquire(&mut b, t0).expect("probe A");
        b.record(a, false, t0 + 5 * MS);
        let pb = acquire(&mut b, t0 + 400 * MS).expect("probe B");
        let _pc = acquire(&mut b, t0 + 450 * MS).expect("probe C");
        // One success and two running: all three slots are in use. (The first fix timed the
        // give-back from the oldest probe and let D and E in here: five probes at once.)
        assert!(acquire(&mut b, t0 + 500 * MS).is_err());
        // B's caller leaves quickly: its slot comes back, once.
        b.abandon(pb, t0 + 520 * MS);
        let pd = acquire(&mut b, t0 + 520 * MS).expect("probe D takes B's slot");
        assert!(acquire(&mut b, t0 + 521 * MS).is_err());
        // Abandoning B again (a stale permit) frees nothing.
        b.abandon(pb, t0 + 530 * MS);
        assert!(acquire(&mut b, t0 + 531 * MS).is_err());
        // D succeeds: two successes and C still running fill the three slots.
        b.record(pd, false, t0 + 600 * MS);
        assert!(acquire(&mut b, t0 + 601 * MS).is_err());
        // C times out 500 ms after it started, not after A did.
        assert!(acquire(&mut b, t0 + 949 * MS).is_err());
        let pe = acquire(&mut b, t0 + 950 * MS).expect("C's slot after its timeout");
        b.record(pe, false, t0 + 960 * MS);
        assert_eq!(b.state(), State::Closed, "three successes close it");
    }

    #[test]
    fn huge_waits_are_refused_not_overflowed() {
        for c in [
            Config {
                probe_timeout: Duration::MAX,
                ..config()
            },
            Config {
                max_open_wait: Duration::MAX,
                ..config()
            },
        ] {
            assert!(Breaker::new(c, 1).is_err());
        }
    }

    #[test]
    fn opens_at_the_failure_rate_only_after_the_minimum_calls() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        assert_eq!(call(&mut b, S, true), None);
        assert_eq!(call(&mut b, S, true), None);
        assert_eq!(
            call(&mut b, S, true),
            None,
            "3 calls: below the minimum of 4"
        );
        assert_eq!(
            call(&mut b, S, false),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            }),
            "3 of 4 failed"
        );
        let (r, _) = b.try_acquire(S + 10 * MS);
        assert_eq!(
            r,
            Err(Rejected {
                retry_after: S - 10 * MS + MS
            })
        );
    }

    #[test]
    fn stays_closed_below_the_failure_rate() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        for i in 0..100 {
            assert_eq!(call(&mut b, S, i % 4 == 3), None, "one in four fails");
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn slow_calls_open_it_too() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        let mut last = None;
        for _ in 0..4 {
            let (p, _) = b.try_acquire(S);
            last = b.record(p.expect("through"), false, S + Duration::from_millis(300));
        }
        assert_eq!(last.map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn half_open_probes_close_it_after_the_wait() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        for _ in 0..4 {
            call(&mut b, S, true);
        }
        assert_eq!(b.state(), State::Open);
        let later = S + 2 * S;
        let (p1, t) = b.try_acquire(later);
        assert_eq!(
            t,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        let (p2, _) = b.try_acquire(later);
        let (p3, _) = b.try_acquire(later);
        assert!(p3.is_err(), "only two probes");
        assert_eq!(b.record(p1.expect("probe"), false, later + MS), None);
        assert_eq!(
            b.record(p2.expect("probe"), false, later + MS),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(
            b.totals(later),
            Totals::default(),
            "a closed breaker starts with an empty window"
        );
    }

    #[test]
    fn a_failed_probe_reopens_with_a_longer_wait_up_to_the_cap() {
        let c = Config {
            max_open_wait: 5 * S,
            ..config()
        };
        let mut b = Breaker::new(c, 1).expect("valid");
        for _ in 0..4 {
            call(&mut b, Duration::ZERO, true);
        }
        // `call` records one millisecond after it starts: the breaker opened then.
        let mut now = MS;
        let mut waits = Vec::new();
        for _ in 0..5 {
            // Find when the breaker lets a probe through again.
            let (r, _) = b.try_acquire(now);
            let wait = r.expect_err("open").retry_after;
            waits.push(wait);
            now += wait;
            assert_eq!(call(&mut b, now, true).map(|t| t.to), Some(State::Open));
            now += MS;
        }
        assert_eq!(waits, vec![S, 2 * S, 4 * S, 5 * S, 5 * S]);
    }

    #[test]
    fn jitter_spreads_open_waits_within_bounds() {
        let c = Config {
            jitter: 0.2,
            ..config()
        };
        let mut seen = Vec::new();
        for seed in 1..50 {
            let mut b = Breaker::new(c.clone(), seed).expect("valid");
            for _ in 0..4 {
                call(&mut b, Duration::ZERO, true);
            }
            let wait = b
                .try_acquire(Duration::ZERO)
                .0
                .expect_err("open")
                .retry_after;
            assert!(wait >= 800 * MS && wait <= 1200 * MS, "{wait:?}");
            seen.push(wait);
        }
        seen.dedup();
        assert!(seen.len() > 10, "waits vary between breakers");
    }

    #[test]
    fn late_answers_from_a_previous_period_are_ignored() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        let (stale, _) = b.try_acquire(S);
        for _ in 0..4 {
            call(&mut b, S, true);
        }
        let (p, _) = b.try_acquire(4 * S);
        let p = p.expect("probe");
        // The old call fails late: it must not reopen the half-open breaker.
        assert_eq!(b.record(stale.expect("permit"), true, 4 * S), None);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.record(p, false, 4 * S), None);
    }

    #[test]
    fn operators_can_force_either_way() {
        let mut b = Breaker::new(config(), 1).expect("valid");
        b.force_open();
        assert!(b.try_acquire(S).0.is_err());
        b.force_closed();
        for _ in 0..20 {
            assert_eq!(call(&mut b, S, true), None, "forced closed never opens");
        }
        assert_eq!(
            b.reset(),
            Some(Transition {
                from: State::ForcedClosed,
                to: State::Closed
            })
        );
        assert!(b.try_acquire(S).0.is_ok());
    }

    #[test]
    fn time_windows_forget_old_failures() {
        let c = Config {
            window: Window::Time {
                buckets: 5,
                bucket: S,
            },
            ..config()
        };
        let mut b = Breaker::new(c, 1).expect("valid");
        for _ in 0..3 {
            call(&mut b, Duration::ZERO, true);
        }
        // Ten seconds later those failures are out of the 5-second window.
        assert_eq!(call(&mut b, 10 * S, true), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            Config {
                window: Window::Count(0),
                ..config()
            },
            Config {
                failure_rate: 1.5,
                ..config()
            },
            Config {
                minimum_calls: 0,
                ..config()
            },
            Config {
                open_wait: Duration::ZERO,
                ..config()
            },
            Config {
                open_wait: 60 * S,
                max_open_wait: S,
                ..config()
            },
            Config {
                jitter: 1.0,
                ..config()
            },
        ] {
            assert!(Breaker::new(bad, 1).is_err());
        }
    }
}
