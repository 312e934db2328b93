//! The session layer: [`SessionManagerLayer`] and the [`SessionManager`] service it builds.
//!
//! One concern per file:
//!
//! | file | what |
//! |---|---|
//! | `layer.rs` | the layer and its builder: settings, validation, the default circuit breaker |
//! | `shared.rs` | what every request shares (store, codec, settings, per-session commit queue) |
//! | `service.rs` | the tower service: the lazy handle in, the inner service, the save after |
//! | `request.rs` | one request's session state: token, load (once), operations, degraded modes |
//! | `commit.rs` | the save path: destroy, create, renew (touch), and the cookie to send |
//! | `writer.rs` | a stored session's save: compare-and-set (or rotate), reload and replay |
//! | `cookie.rs` | reading the token from `Cookie`, writing `Set-Cookie`, `Vary` and `Cache-Control` |
//! | `store_handle.rs` | every store call: breaker, deadline, span, metrics, settling lost writes |
//! | `recent.rs` | the recent copies [`DegradedMode::RecentCopy`](crate::DegradedMode) serves |

mod commit;
mod cookie;
mod layer;
mod recent;
pub(crate) mod request;
mod service;
mod shared;
mod store_handle;
mod writer;

pub(crate) use cookie::CookieConfig;
pub use cookie::MAX_SESSION_COOKIES;
pub use layer::{STORE_BREAKER_NAME, SessionManagerBuilder, SessionManagerLayer};
pub(crate) use recent::RecentCopies;
pub(crate) use service::SessionHandle;
pub use service::{ResponseFuture, SessionManager};
pub use shared::{REROUTE_HEADER, RePin, RePinHook, SaveErrorHook};
pub(crate) use shared::{Shared, detached};
pub(crate) use store_handle::{StoreHandle, WriteError};
