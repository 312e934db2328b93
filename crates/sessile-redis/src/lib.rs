//! A Redis session store for `sessile`, built on [`fred`].
//!
//! ```no_run
//! use sessile_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // redis://, redis-sentinel://host:26379/0?sentinelServiceName=mymaster, or
//! // redis-cluster://host:7000?node=host:7001&node=host:7002
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .connect()
//!     .await?;
//! // Then, in the application (which depends on `sessile`):
//! // let sessions = SessionManagerLayer::builder(store, keys).build()?;
//! # drop(store);
//! # Ok(()) }
//! ```
//!
//! This crate depends on `sessile-core` only (the store contract), not on the session layer, its
//! cookies or axum.
//!
//! # One round trip per operation
//!
//! `load` is one `GET`; `create`, `save`, `touch` and `rotate` are one `EVALSHA` each (scripts are
//! loaded at connect and reloaded on `NOSCRIPT`; a save that gives the session a new user is sent
//! twice, the second time with the user's index keys); `destroy` is one short script. `destroy_user` bumps the
//! user's generation, then walks the user's index in batches of about a hundred sessions, one
//! short script each, so that no command blocks Redis for long however many sessions a user has.
//!
//! # Exactly once
//!
//! Every write carries a write id, and a write that lands records it under its own short-lived
//! key in the record's slot, inside the same script; a copy of a script that already ran (sent
//! again by a client, or arriving late) finds its own write id and answers "done" without running
//! again. Each command goes with what is left of the caller's deadline as fred's timeout, so fred
//! never sends one after the caller gave up on it. When a reply is lost, the session layer calls
//! `settle`, which reads that key and, if the write has not landed, fences the write id off so
//! that no late copy can land. See [the scripts' layout](crate#record-layout) for the fields and
//! the bounds.
//!
//! # Cluster
//!
//! Keys carry a hash tag from the session id's partition, and the layer makes a logged-in user's
//! session ids in the user's partition, so a user's records and index share one slot (see
//! [`keys`](crate#key-layout)). A rotation across slots (an anonymous session logging in) is done
//! in two atomic steps: write the new record, then delete the old one only if it is still at the
//! expected version (undoing the first step if not). The old id stops working at the second step,
//! and no client knows the new id before it, so the rotation is atomic to every observer.
//!
//! # Durability
//!
//! Redis acknowledges a write before it reaches a replica. If a primary dies, the writes of its last
//! moments that had not replicated are lost when the replica takes over, and what the store
//! promises shrinks to what the replica had:
//!
//! * a session saved in that window reverts to its previous version, or disappears if it was
//!   created in it (its user logs in again);
//! * a logout (`destroy`) or log-out-everywhere made in that window is lost too: the session the
//!   replica still holds works again until its idle deadline;
//! * a rotation (login) made in that window is undone: the old id works again and the new one
//!   does not. A rotation across Cluster slots is two writes to two primaries: if only one of them
//!   is lost, either both ids work (the marker step was lost) or neither (the new record was);
//! * no two versions are ever merged, and a write is never applied twice.
//!
//! Persistence (`appendonly`) and `min-replicas-to-write` are server settings that narrow this
//! window; the store does not change them.
//!
//! # Key layout
//!
//! ```text
//! <prefix>:[<tenant>:]{<partition>}:s:<session id hex>   session record (hash: v, e, d, u, g)
//!                                                         or rotation marker (hash: m, w)
//! <prefix>:[<tenant>:]{<partition>}:i:<user id>          user index (sorted set of session ids)
//! <prefix>:[<tenant>:]{<partition>}:g:<user id>          user generation (integer)
//! <prefix>:[<tenant>:]{<partition>}:w:<write id hex>     a write's outcome (1 landed, 0 fenced)
//! ```
//!
//! Every key has an expiry: records at their idle deadline, indexes and generations at the latest
//! absolute deadline of their sessions, write outcomes after a minute, the marker left under a
//! rotated-away id after
//! [`sessile_core::store::ROTATED_MARKER_TTL_MS`]. The index holds each session until its absolute
//! deadline (logins remove the id they rotate away from), and every indexing write prunes the
//! expired members: it holds the user's live sessions plus those that ended (logout, idle expiry)
//! less than one absolute lifetime ago.
//!
//! # Record layout
//!
//! A record is one string: a 27-byte header (`R`, version, idle deadline, the user's generation
//! when the record was given to that user, the user key's length), the user key, then the
//! encoded body; its expiry is the idle deadline. A script compares the header's version bytes
//! and writes the record with one `SET`; Redis never parses the body. A rotated-away id holds a
//! marker instead: `M`, the new id and the rotating write's id. The table, the return codes and
//! the reasons are in the scripts' documentation (`src/scripts.rs`).

mod builder;
mod keys;
mod layout;
mod scripts;
mod store;

pub use builder::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_INVALIDATION_HEARTBEAT,
    DEFAULT_MAX_QUEUED_COMMANDS, DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_RECONNECT_JITTER,
    DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, DEFAULT_UNRESPONSIVE_TIMEOUT,
    MAX_COMMAND_TIMEOUT, MIN_REDIS_VERSION, RedisStoreBuilder, RedisStoreError,
};
pub use store::RedisStore;
