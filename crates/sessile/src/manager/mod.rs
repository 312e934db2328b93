//! The session layer: [`SessionManagerLayer`] and the [`SessionManager`] service it builds.

mod commit;
mod layer;
pub(crate) mod service;
mod store_handle;

use std::sync::Arc;

use sessile_token::TokenCodec;

pub use layer::{SessionManagerBuilder, SessionManagerLayer};
pub use service::{ResponseFuture, SessionManager};
pub(crate) use store_handle::StoreHandle;

use crate::clock::Clock;
use crate::config::SessionConfig;
use crate::hint::HintSource;

/// Everything requests share: built once by the layer, behind one `Arc`.
pub(crate) struct Shared {
    pub(crate) store: StoreHandle,
    pub(crate) codec: TokenCodec,
    pub(crate) config: SessionConfig,
    pub(crate) hints: Arc<dyn HintSource>,
    pub(crate) clock: Arc<dyn Clock>,
}
