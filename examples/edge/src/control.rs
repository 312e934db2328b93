//! The node table as configured, the nodes' observed health, and the balancer fed with both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sessile_affinity::{Balancer, NodeState, NodeTable};

use crate::proxy::ClientBody;

/// The router's settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The session cookie whose hint routes (default `sid`, sessile's default).
    pub cookie_name: String,
    /// Longest wait for a connection to an instance (default 1 s).
    pub connect_timeout: Duration,
    /// Longest wait for an instance's response head (default 30 s); then 504.
    pub request_timeout: Duration,
    /// Path of the active health check (default `/healthz`); any 2xx is healthy.
    pub health_path: String,
    /// Time between active health checks of each node (default 1 s).
    pub health_interval: Duration,
    /// Longest wait for a health check's answer (default 500 ms).
    pub health_timeout: Duration,
    /// Request timeouts in a row that mark a node down (default 3).
    pub timeouts_to_down: u32,
    /// The load bound's `c` (default 1.25).
    pub balance_factor: f64,
    /// Seed of the consistent hashing (default 0): every router with one seed places alike.
    pub seed: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            cookie_name: "sid".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            health_path: "/healthz".into(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_millis(500),
            timeouts_to_down: 3,
            balance_factor: sessile_affinity::DEFAULT_BALANCE_FACTOR,
            seed: 0,
        }
    }
}

/// Why a request to a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not connected: refused, unreachable, or the connect timeout passed.
    Connect,
    /// No response head within the request timeout.
    Timeout,
    /// The connection broke after the request was sent.
    Other,
}

impl Failure {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Nodes seen down (absent: up).
    down: HashMap<Arc<str>, &'static str>,
    /// Request timeouts in a row per node.
    timeouts: HashMap<Arc<str>, u32>,
}

/// The configured table, the observed health, and the balancer that routes on both.
#[derive(Debug)]
pub struct Control {
    balancer: Balancer,
    configured: Mutex<NodeTable>,
    health: Mutex<Health>,
    timeouts_to_down: u32,
}

impl Control {
    /// Starts with `table`, every node presumed up until a check or a request says otherwise.
    pub fn new(table: NodeTable, config: &EdgeConfig) -> Arc<Self> {
        Arc::new(Self {
            balancer: Balancer::with_options(table.clone(), config.seed, config.balance_factor),
            configured: Mutex::new(table),
            health: Mutex::new(Health::default()),
            timeouts_to_down: config.timeouts_to_down.max(1),
        })
    }

    /// The balancer, with the effective table (configured states, and down where health says).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The table as configured.
    pub fn configured(&self) -> NodeTable {
        lock(&self.configured).clone()
    }

    /// Replaces the configured table (a file or a Redis key changed). Nodes keep their observed
    /// health; new ones are presumed up.
    pub fn configure(&self, table: NodeTable) {
        let mut configured = lock(&self.configured);
        *configured = table;
        let health = lock(&self.health);
        self.apply(&configured, &health);
    }

    /// Whether node `id` is seen up.
    pub fn is_up(&self, id: &str) -> bool {
        !lock(&self.health).down.contains_key(id)
    }

    /// Records a health observation of node `id`; a change is logged, counted, and applied.
    pub fn set_up(&self, id: &str, up: bool, why: &'static str) {
        let configured = lock(&self.configured);
        let Some(node) = configured.get(id) else {
            return;
        };
        let id = node.id.clone();
        let mut health = lock(&self.health);
        let changed = if up {
            health.timeouts.remove(&id);
            health.down.remove(&id).is_some()
        } else {
            health.down.insert(id.clone(), why).is_none()
        };
        if changed {
            let to = if up { "up" } else { "down" };
            tracing::warn!(node = %id, to, why, "node health changed");
            metrics::counter!("sessile_edge_health_transitions_total", "node" => id.to_string(), "to" => to)
                .increment(1);
            self.apply(&configured, &health);
        }
    }

    /// A request to `id` failed: a connection failure marks it down at once, timeouts after
    /// [`EdgeConfig::timeouts_to_down`] in a row.
    pub(crate) fn failed(&self, id: &str, failure: Failure) {
        metrics::counter!("sessile_edge_upstream_errors_total", "node" => id.to_owned(), "kind" => failure.as_str())
            .increment(1);
        match failure {
            Failure::Connect => self.set_up(id, false, "connect"),
            Failure::Timeout => {
                let many = {
                    let mut health = lock(&self.health);
                    let n = health.timeouts.entry(Arc::from(id)).or_default();
                    *n += 1;
                    *n >= self.timeouts_to_down
                };
                if many {
                    self.set_up(id, false, "timeouts");
                }
            }
            Failure::Other => {}
        }
    }

    /// A request to `id` got a response: its timeouts in a row start again.
    pub(crate) fn answered(&self, id: &str) {
        let mut health = lock(&self.health);
        if !health.timeouts.is_empty() {
            health.timeouts.remove(id);
        }
    }

    fn apply(&self, configured: &NodeTable, health: &Health) {
        let mut effective = configured.clone();
        for id in health.down.keys() {
            if configured
                .get(id)
                .is_some_and(|n| n.state != NodeState::Down)
            {
                effective = effective.with_state(id, NodeState::Down);
            }
        }
        self.balancer.set_table(effective);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks every configured node (except those configured down) every
/// [`EdgeConfig::health_interval`]: a 2xx to `GET <health_path>` within the health timeout is
/// up, anything else down. Stops when the returned handle is aborted.
pub fn spawn_health_checks(
    control: Arc<Control>,
    config: &EdgeConfig,
) -> tokio::task::JoinHandle<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.health_timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, ClientBody> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let config = config.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let nodes = control.configured();
            let checks = nodes
                .nodes()
                .iter()
                .filter(|n| n.state != NodeState::Down)
                .map(|n| {
                    let (client, id) = (client.clone(), n.id.clone());
                    let uri = format!("http://{}{}", n.addr, config.health_path);
                    let timeout = config.health_timeout;
                    async move {
                        let request = http::Request::get(uri)
                            .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed());
                        let up = match request {
                            Ok(request) => {
                                matches!(
                                    tokio::time::timeout(timeout, client.request(request)).await,
                                    Ok(Ok(r)) if r.status().is_success()
                                )
                            }
                            Err(_) => false,
                        };
                        (id, up)
                    }
                });
            let results: Vec<(Arc<str>, bool)> = futures_join(checks.collect()).await;
            for (id, up) in results {
                control.set_up(&id, up, "health check");
            }
        }
    })
}

/// Runs the futures at once and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
