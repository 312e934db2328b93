//! Picking a node: the hint while its node is up and under the bound, otherwise consistent
//! hashing with bounded loads over the healthy nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::hash::{hash64, mix};
use crate::hint::RouteHint;
use crate::table::{Node, NodeState, NodeTable};

/// The default `c`: no node gets more than 1.25 times its share of the requests in flight.
pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

/// How a node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pick {
    /// The node the hint names.
    Sticky,
    /// The hint named a node that is down or unknown: chosen by hashing instead. The session
    /// should move (its instance re-pins it).
    Rerouted,
    /// The hint named a node at its load bound: chosen by hashing for this request only. The
    /// session should stay where it is (a burst passes).
    Overflow,
    /// No usable hint: chosen by hashing.
    Hashed,
}

impl Pick {
    /// `sticky`, `rerouted` or `hashed`, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sticky => "sticky",
            Self::Rerouted => "rerouted",
            Self::Overflow => "overflow",
            Self::Hashed => "hashed",
        }
    }
}

/// One node of the current table with its in-flight counter (shared with every later table that
/// lists the same id, so that a swap does not forget the load).
#[derive(Debug)]
struct Slot {
    node: Node,
    seed: u64,
    in_flight: Arc<AtomicU64>,
}

#[derive(Debug)]
struct State {
    table: NodeTable,
    slots: Vec<Arc<Slot>>,
    /// Weight of the nodes that take requests (healthy and draining).
    serving_weight: u64,
}

/// Chooses nodes for requests and counts what each has in flight. Share it (`Arc`) between all
/// the requests of a proxy.
#[derive(Debug)]
pub struct Balancer {
    state: ArcSwap<State>,
    counters: Mutex<HashMap<Arc<str>, Arc<AtomicU64>>>,
    total: Arc<AtomicU64>,
    factor: f64,
    seed: u64,
}

/// A request in flight on a node: dropping it ends the request.
#[derive(Debug)]
pub struct Lease {
    slot: Arc<Slot>,
    total: Arc<AtomicU64>,
    pick: Pick,
}

impl Lease {
    /// The node chosen.
    pub fn node(&self) -> &Node {
        &self.slot.node
    }

    /// How it was chosen.
    pub fn pick(&self) -> Pick {
        self.pick
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Balancer {
    /// A balancer over `table`, with seed 0 and [`DEFAULT_BALANCE_FACTOR`].
    pub fn new(table: NodeTable) -> Self {
        Self::with_options(table, 0, DEFAULT_BALANCE_FACTOR)
    }

    /// A balancer with its own hash seed (placements differ per seed, and are the same for the
    /// same seed) and balance factor `c` (at least 1.0; lower values are raised to it).
    pub fn with_options(table: NodeTable, seed: u64, factor: f64) -> Self {
        let factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            DEFAULT_BALANCE_FACTOR
        };
        let b = Self {
            state: ArcSwap::from_pointee(State {
                table: NodeTable::default(),
                slots: Vec::new(),
                serving_weight: 0,
            }),
            counters: Mutex::new(HashMap::new()),
            total: Arc::new(AtomicU64::new(0)),
            factor,
            seed,
        };
        b.set_table(table);
        b
    }

    /// The table now in use.
    pub fn table(&self) -> NodeTable {
        self.state.load().table.clone()
    }

    /// Replaces the table; requests in flight keep their leases, and a node listed again keeps
    /// its in-flight count.
    pub fn set_table(&self, table: NodeTable) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        self.install(&mut counters, table);
    }

    /// Sets one node's state (for health checks and drains); `false` if there is no such node.
    pub fn set_state(&self, id: &str, state: NodeState) -> bool {
        // Under the lock that `set_table` takes: two updates at once do not lose either.
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let current = &self.state.load().table;
        match current.get(id) {
            None => false,
            Some(n) if n.state == state => true,
            Some(_) => {
                let next = current.with_state(id, state);
                self.install(&mut counters, next);
                true
            }
        }
    }

    fn install(&self, counters: &mut HashMap<Arc<str>, Arc<AtomicU64>>, table: NodeTable) {
        let slots: Vec<Arc<Slot>> = table
            .nodes()
            .iter()
            .map(|node| {
                let in_flight = counters.entry(node.id.clone()).or_default().clone();
                Arc::new(Slot {
                    node: node.clone(),
                    seed: hash64(self.seed, node.id.as_bytes()),
                    in_flight,
                })
            })
            .collect();
        // Forget the counters of nodes gone and idle.
        counters.retain(|id, c| {
            table.get(id).is_some() || c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1
        });
        let serving_weight = slots
            .iter()
            .filter(|s| s.node.state != NodeState::Down)
            .map(|s| u64::from(s.node.weight))
            .sum();
        self.state.store(Arc::new(State {
            table,
            slots,
            serving_weight,
        }));
    }

    /// Requests in flight on node `id`.
    pub fn in_flight(&self, id: &str) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Chooses a node for a request whose cookie carries `hint`, or, without one, whose stable
    /// key is `key` (a new visitor: any number that is the same for its next requests, such as a
    /// hash of its address; its first response brings a hint). `None` when no node can take it.
    pub fn pick(&self, hint: Option<RouteHint<'_>>, key: u32) -> Option<Lease> {
        let state = self.state.load();
        let total = self.total.load(Ordering::Acquire);
        let bound = |slot: &Slot| self.bound(slot, total, state.serving_weight);
        let key = hint.map_or(key, |h| h.key);
        let mut pick = if hint.is_some() {
            Pick::Rerouted
        } else {
            Pick::Hashed
        };
        if let Some(hint) = hint {
            let named = state.slots.iter().find(|s| &*s.node.id == hint.node);
            if let Some(slot) = named.filter(|s| s.node.state != NodeState::Down) {
                if let Some(lease) = self.take(slot, bound(slot), Pick::Sticky) {
                    return Some(lease);
                }
                pick = Pick::Overflow;
            }
        }
        let mut ranked: Vec<(f64, &Arc<Slot>)> = state
            .slots
            .iter()
            .filter(|s| s.node.state == NodeState::Healthy)
            .map(|s| (score(key, s), s))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, slot) in &ranked {
            if let Some(lease) = self.take(slot, bound(slot), pick) {
                return Some(lease);
            }
        }
        // Every healthy node at its bound (the load is on draining or down nodes): the first
        // choice takes it anyway rather than nobody.
        let (_, first) = ranked.first()?;
        Some(self.take(first, u64::MAX, pick).expect("no bound"))
    }

    /// Most requests `slot` may have in flight once it takes one more:
    /// `ceil(c x (total + 1) x weight / serving weight)`.
    fn bound(&self, slot: &Slot, total: u64, serving_weight: u64) -> u64 {
        let share = f64::from(slot.node.weight) / serving_weight.max(1) as f64;
        (self.factor * (total + 1) as f64 * share).ceil() as u64
    }

    /// Takes a lease on `slot` if it has fewer than `bound` requests in flight.
    fn take(&self, slot: &Arc<Slot>, bound: u64, pick: Pick) -> Option<Lease> {
        slot.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            })
            .ok()?;
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            slot: slot.clone(),
            total: self.total.clone(),
            pick,
        })
    }
}

/// Weighted rendezvous score of `key` on `slot`: `-weight / ln(u)`, `u` uniform in (0, 1) from
/// the key and the node; the highest score wins, and each node wins its weight's share.
fn score(key: u32, slot: &Slot) -> f64 {
    let h = mix(slot.seed ^ u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // 53 bits into (0, 1): never 0, never 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(slot.node.weight) / u.ln()
}
