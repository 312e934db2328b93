//! Session affinity: which application instance (node) a request should go to.
//!
//! sessile's cookie is `<hint>.<sealed>`: the hint is readable without keys. This crate gives the
//! hint a shape an edge can route on, and picks nodes:
//!
//! - [`RouteHint`]: `<route key, 8 hex digits>-<node id>`. The node id says where the session is
//!   warm; the route key is a stable, non-secret number derived from the session id
//!   ([`route_key`]), the same on every re-issue of the cookie, which the fallback hashes. (The
//!   sealed part changes at every re-issue, and hashing the node id would send all of a dead
//!   node's sessions to one successor.)
//! - [`NodeTable`]: nodes with an id, an address, a weight and a [`NodeState`]; parsed from a
//!   small text format ([`NodeTable::parse`]) so that a file or a Redis key can carry it.
//! - [`Balancer`]: holds the table behind an atomic swap (replace it at any time, requests in
//!   flight keep their leases) and counts requests in flight per node. [`Balancer::pick`]
//!   honours the hint while its node is up (healthy, or draining: its sessions keep working) and
//!   under the load bound, and otherwise ranks the healthy nodes by weighted rendezvous hashing
//!   of the route key and takes the first under the bound: consistent hashing with bounded loads
//!   (Mirrokni, Thorup and Zadimoghaddam). A node's bound is `ceil(c x average in-flight x its
//!   share of the weight)`, `c` = 1.25 by default.
//!
//! Everything is deterministic for a given seed, so tests are exact. No web framework here: the
//! edge router (`examples/edge`) and the session layer both use it.

mod balancer;
mod hash;
mod hint;
mod table;

pub use balancer::{Balancer, DEFAULT_BALANCE_FACTOR, Lease, Pick};
pub use hint::{RouteHint, route_key};
pub use table::{Node, NodeState, NodeTable, TableError};
