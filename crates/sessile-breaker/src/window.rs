//! Sliding windows of call outcomes, with memory fixed at construction.

use std::time::Duration;

use crate::Window;

/// Call outcomes counted in a breaker's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Totals {
    /// Calls that finished.
    pub calls: u32,
    /// Of those, the ones that failed.
    pub failures: u32,
    /// Of those, the ones slower than the slow-call duration.
    pub slow: u32,
}

pub(crate) enum Sliding {
    /// Ring of the last `n` outcomes (bit 0: failed, bit 1: slow) with running totals.
    Count {
        ring: Box<[u8]>,
        next: usize,
        totals: Totals,
    },
    /// One counter per bucket, tagged with the bucket's number since the window's origin.
    Time {
        buckets: Box<[(u64, Totals)]>,
        width_ns: u64,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;
const EMPTY: u8 = 4;

impl Sliding {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => Self::Count {
                ring: vec![EMPTY; n as usize].into_boxed_slice(),
                next: 0,
                totals: Totals::default(),
            },
            Window::Time { buckets, bucket } => Self::Time {
                buckets: vec![(u64::MAX, Totals::default()); buckets as usize].into_boxed_slice(),
                width_ns: u64::try_from(bucket.as_nanos()).unwrap_or(u64::MAX).max(1),
            },
        }
    }

    /// Records an outcome; `at` is the time since the breaker's origin.
    pub(crate) fn record(&mut self, failed: bool, slow: bool, at: Duration) {
        match self {
            Self::Count { ring, next, totals } => {
                let old = ring[*next];
                if old & EMPTY == 0 {
                    totals.calls -= 1;
                    totals.failures -= u32::from(old & FAILED != 0);
                    totals.slow -= u32::from(old & SLOW != 0);
                }
                ring[*next] = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
                totals.calls += 1;
                totals.failures += u32::from(failed);
                totals.slow += u32::from(slow);
                *next = (*next + 1) % ring.len();
            }
            Self::Time { buckets, width_ns } => {
                let n = nanos(at) / *width_ns;
                let slot = &mut buckets[(n % buckets.len() as u64) as usize];
                if slot.0 != n {
                    *slot = (n, Totals::default());
                }
                slot.1.calls += 1;
                slot.1.failures += u32::from(failed);
                slot.1.slow += u32::from(slow);
            }
        }
    }

    /// Totals of the outcomes still in the window at `at`.
    pub(crate) fn totals(&self, at: Duration) -> Totals {
        match self {
            Self::Count { totals, .. } => *totals,
            Self::Time { buckets, width_ns } => {
                let now = nanos(at) / *width_ns;
                let oldest = now.saturating_sub(buckets.len() as u64 - 1);
                buckets
                    .iter()
                    .filter(|(n, _)| *n != u64::MAX && (oldest..=now).contains(n))
                    .fold(Totals::default(), |a, (_, t)| Totals {
                        calls: a.calls + t.calls,
                        failures: a.failures + t.failures,
                        slow: a.slow + t.slow,
                    })
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        match self {
            Self::Count { ring, next, totals } => {
                ring.fill(EMPTY);
                *next = 0;
                *totals = Totals::default();
            }
            Self::Time { buckets, .. } => buckets.fill((u64::MAX, Totals::default())),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn count_window_forgets_the_oldest_call() {
        let mut w = Sliding::new(Window::Count(3));
        w.record(true, false, MS);
        w.record(false, true, MS);
        w.record(false, false, MS);
        assert_eq!(
            w.totals(MS),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(false, false, MS);
        assert_eq!(
            w.totals(MS),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.totals(MS), Totals::default());
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let mut w = Sliding::new(Window::Time {
            buckets: 3,
            bucket: 10 * MS,
        });
        w.record(true, false, Duration::ZERO);
        w.record(true, false, 15 * MS);
        w.record(false, false, 25 * MS);
        assert_eq!(
            w.totals(25 * MS),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // At 35 ms the window covers buckets 1..=3: the first failure is gone.
        assert_eq!(
            w.totals(35 * MS),
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        // A bucket slot reused by a later period starts from zero.
        w.record(false, true, 45 * MS);
        assert_eq!(
            w.totals(45 * MS),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.totals(200 * MS), Totals::default());
    }
}
