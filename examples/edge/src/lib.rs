//! An edge router for sessile: a reverse proxy that sends each request to the app instance that
//! holds its session warm, read from the routing hint in the session cookie (no keys needed).
//!
//! - [`Edge`] is a tower `Service` (per connection, [`EdgeService`]) on hyper 1 and hyper-util's
//!   pooled client. Bodies stream both ways; hop-by-hop headers are stripped; `X-Forwarded-For`,
//!   `-Proto` and `-Host` are set; connecting and waiting for the response head are bounded.
//! - [`Control`] holds the configured node table and what the health checks saw, and feeds the
//!   effective table to a [`sessile_affinity::Balancer`]: the hint while its node is up and under
//!   its load bound, otherwise consistent hashing with bounded loads on the session's route key.
//! - A visitor without a session is spread over the healthy nodes; its session is created where
//!   its first response came from, and the hint keeps it there.
//! - Health: a refused connection marks a node down at once, and repeated timeouts do
//!   (passive); a `GET /healthz` every second marks nodes down and up again (active).
//! - The table changes at run time without a restart: [`sources::watch_file`] (a file polled for
//!   changes) or [`sources::watch_redis`] (a Redis key, re-read when a message is published on a
//!   channel of the same name).
//!
//! Retries: a request without a body whose connection was refused goes to the next node (it was
//! not sent); an idempotent one (GET, HEAD, PUT, DELETE...) without a body is also sent again
//! when the connection failed after sending (a pooled connection the instance had closed). Any
//! other failure is a 502 (a 504 after the request timeout), and a refused node is marked down
//! for the next requests. Upgrades (WebSockets) are not proxied.

mod control;
mod proxy;
pub mod sources;

pub use control::{Control, EdgeConfig, spawn_health_checks};
pub use proxy::{Edge, EdgeService, ProxyBody, serve};
