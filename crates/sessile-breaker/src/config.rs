//! Breaker settings. Every default is a named constant.

use std::time::Duration;

use thiserror::Error;

/// Calls remembered by the default count-based window.
pub const DEFAULT_WINDOW_CALLS: u32 = 50;
/// Failure rate at or above which the breaker opens.
pub const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// Slow-call rate at or above which the breaker opens: a backend that answers, but late, is
/// failing its callers too.
pub const DEFAULT_SLOW_CALL_RATE: f64 = 0.8;
/// A call slower than this counts as slow.
pub const DEFAULT_SLOW_CALL_DURATION: Duration = Duration::from_millis(250);
/// No verdict on fewer calls than this: one early failure must not open the breaker.
pub const DEFAULT_MINIMUM_CALLS: u32 = 10;
/// Calls let through while half-open; all must succeed to close again.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 3;
/// A half-open probe not answered within this is given up on, and its slot given back, so that
/// probes whose callers vanished can never hold the breaker half-open. Set it to the calls' own
/// deadline (the session layer uses its store deadline).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// First open wait.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(1);
/// Longest open wait, however long the backend keeps failing.
pub const DEFAULT_MAX_OPEN_WAIT: Duration = Duration::from_secs(30);
/// Each consecutive re-open multiplies the wait by this.
pub const DEFAULT_BACKOFF: f64 = 2.0;
/// Open waits vary by up to this fraction either way, so a fleet does not probe in lockstep.
pub const DEFAULT_JITTER: f64 = 0.2;

/// How the breaker remembers recent calls. Either way, memory is fixed at construction, whatever
/// the call rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// Calls of the last `buckets * bucket` of time, in `buckets` counters.
    Time {
        /// Number of buckets.
        buckets: u32,
        /// Width of one bucket.
        bucket: Duration,
    },
}

/// Breaker settings; [`Config::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The sliding window.
    pub window: Window,
    /// Failure rate (above 0, at most 1) that opens the breaker.
    pub failure_rate: f64,
    /// Slow-call rate (above 0, at most 1) that opens the breaker.
    pub slow_call_rate: f64,
    /// Duration above which a call is slow.
    pub slow_call_duration: Duration,
    /// Minimum calls in the window before rates are judged.
    pub minimum_calls: u32,
    /// Probes allowed while half-open.
    pub half_open_probes: u32,
    /// How long a half-open probe may stay unanswered before its slot is given back.
    pub probe_timeout: Duration,
    /// First open wait.
    pub open_wait: Duration,
    /// Cap of the open wait.
    pub max_open_wait: Duration,
    /// Growth of the open wait per consecutive re-open.
    pub backoff: f64,
    /// Jitter fraction (0..1) applied to each open wait.
    pub jitter: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: Window::Count(DEFAULT_WINDOW_CALLS),
            failure_rate: DEFAULT_FAILURE_RATE,
            slow_call_rate: DEFAULT_SLOW_CALL_RATE,
            slow_call_duration: DEFAULT_SLOW_CALL_DURATION,
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            open_wait: DEFAULT_OPEN_WAIT,
            max_open_wait: DEFAULT_MAX_OPEN_WAIT,
            backoff: DEFAULT_BACKOFF,
            jitter: DEFAULT_JITTER,
        }
    }
}

/// Longest open wait or probe timeout accepted: a day (longer ones are mistakes, and bounding
/// them keeps time arithmetic far from overflow).
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// A setting is out of range.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("invalid circuit breaker setting: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate = |r: f64| r > 0.0 && r <= 1.0;
        match self.window {
            Window::Count(0) => return Err(ConfigError("count window must hold at least 1 call")),
            Window::Time { buckets: 0, .. } => {
                return Err(ConfigError("time window needs at least 1 bucket"));
            }
            Window::Time { bucket, .. } if bucket.is_zero() => {
                return Err(ConfigError("time window buckets must be wider than zero"));
            }
            _ => {}
        }
        if !rate(self.failure_rate) || !rate(self.slow_call_rate) {
            return Err(ConfigError("rates must be above 0.0 and at most 1.0"));
        }
        if self.minimum_calls == 0 || self.half_open_probes == 0 {
            return Err(ConfigError(
                "minimum calls and half-open probes must be at least 1",
            ));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout > MAX_WAIT {
            return Err(ConfigError(
                "probe timeout must be positive and at most a day",
            ));
        }
        if self.max_open_wait > MAX_WAIT {
            return Err(ConfigError("maximum open wait must be at most a day"));
        }
        if self.open_wait.is_zero() || self.open_wait > self.max_open_wait {
            return Err(ConfigError(
                "open wait must be positive and at most the maximum",
            ));
        }
        if self.backoff < 1.0 || !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError("backoff must be >= 1.0 and jitter in 0.0..1.0"));
        }
        Ok(())
    }
}
