//! Which results count as failures.

/// Decides whether a call's result is a failure for the breaker.
///
/// The default, [`ErrorIsFailure`], counts every `Err`. A closure `Fn(&Result<T, E>) -> bool`
/// (returning `true` for failures) is a classifier too, for services whose errors include
/// answers that are not the backend's fault.
pub trait Classify<T, E> {
    /// Whether `result` is a failure.
    fn is_failure(&self, result: &Result<T, E>) -> bool;
}

/// Every `Err` is a failure; every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorIsFailure;

impl<T, E> Classify<T, E> for ErrorIsFailure {
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        self(result)
    }
}
