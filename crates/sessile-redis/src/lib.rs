//! A Redis session store for `sessile`, built on [`fred`].
//!
//! ```no_run
//! use sessile::{KeyRing, SessionManagerLayer};
//! use sessile_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // redis://, redis-sentinel://host:26379/0?sentinelServiceName=mymaster, or
//! // redis-cluster://host:7000?node=host:7001&node=host:7002
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("myapp")
//!     .connect()
//!     .await?;
//! let layer = SessionManagerLayer::builder(store, KeyRing::random(1)).build()?;
//! # Ok(()) }
//! ```
//!
//! # One round trip per operation
//!
//! `load` is one `HMGET`; `create`, `save`, `touch` and `rotate` are one `EVALSHA` each (scripts are
//! loaded at connect and reloaded on `NOSCRIPT`); `destroy` is one `DEL`. `destroy_user` bumps the
//! user's generation, then walks the user's index in batches of about a hundred sessions, one
//! short script each, so that no command blocks Redis for long however many sessions a user has.
//!
//! # Exactly once
//!
//! The compare-and-set scripts are sent with one attempt: fred never re-sends them after a
//! dropped connection (a blind re-send that finds other writes since cannot tell whether it ran).
//! When a reply is lost, the session layer calls `settle`, which reads the record's recent write
//! ids and fences the write off if it has not landed. See [`scripts`](crate#record-layout) for the
//! layout and the bounds.
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
//! <prefix>:[<tenant>:]{<partition>}:s:<session id hex>   session record (hash: v, e, d, u, g, h, x)
//! <prefix>:[<tenant>:]{<partition>}:i:<user id>          user index (sorted set of session ids)
//! <prefix>:[<tenant>:]{<partition>}:g:<user id>          user generation (integer)
//! ```
//!
//! Every key has an expiry: records at their idle deadline, indexes and generations at the latest
//! absolute deadline of their sessions, the marker left under a rotated-away id after
//! `sessile::store::ROTATED_MARKER_TTL_MS`. The index holds each session until its absolute
//! deadline (logins remove the id they rotate away from), and every indexing write prunes the
//! expired members: it holds the user's live sessions plus those that ended (logout, idle expiry)
//! less than one absolute lifetime ago.
//!
//! # Record layout
//!
//! See the fields and return codes in the scripts' documentation: `v` version, `e` idle deadline,
//! `d` body, `u` user, `g` user generation, `h` the last four write ids, `x` fenced write ids;
//! markers hold `m` (the new id) and `w` (the rotating write).

mod builder;
mod keys;
mod scripts;
mod store;

pub use builder::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_QUEUED_COMMANDS,
    DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_RECONNECT_JITTER, DEFAULT_RECONNECT_MAX,
    DEFAULT_RECONNECT_MIN, DEFAULT_UNRESPONSIVE_TIMEOUT, MAX_COMMAND_TIMEOUT, MIN_REDIS_VERSION,
    RedisStoreBuilder, RedisStoreError,
};
pub use store::RedisStore;
