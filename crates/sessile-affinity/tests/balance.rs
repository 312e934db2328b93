//! The balancer's promises, checked exactly (placements are deterministic for a seed): the load
//! bound holds under any sequence of requests, hot users included; a node added or removed moves
//! about its share of the keys and no others; draining nodes get no new sessions; weights and
//! seeds do what they say.

use proptest::prelude::*;
use sessile_affinity::{Balancer, Lease, Node, NodeState, NodeTable, Pick, RouteHint};

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node::new(&format!("n{i}"), &format!("127.0.0.1:{}", 9000 + i)))
        .collect()
}

fn table(n: usize) -> NodeTable {
    NodeTable::new(nodes(n)).expect("table")
}

/// Spread keys, as route keys of random session ids are.
fn keys(n: u32) -> Vec<u32> {
    (0..n)
        .map(|k| k.wrapping_mul(2_654_435_761) ^ (k >> 3))
        .collect()
}

fn ceil_bound(c: f64, total_after: u64, share: f64) -> u64 {
    (c * total_after as f64 * share).ceil() as u64
}

/// Node of each key when nothing else is in flight.
fn placement(b: &Balancer, keys: &[u32]) -> Vec<String> {
    keys.iter()
        .map(|k| b.pick(None, *k).expect("a node").node().id.to_string())
        .collect()
}

#[test]
fn a_node_added_or_removed_moves_its_share_of_keys_and_no_others() {
    let keys = keys(20_000);
    for n in [3usize, 5, 10, 20] {
        let before = placement(&Balancer::new(table(n)), &keys);
        let added = placement(&Balancer::new(table(n + 1)), &keys);
        let newcomer = format!("n{n}");
        let moved: Vec<usize> = (0..keys.len())
            .filter(|i| before[*i] != added[*i])
            .collect();
        assert!(
            moved.iter().all(|i| added[*i] == newcomer),
            "a key moved between old nodes"
        );
        let frac_add = moved.len() as f64 / keys.len() as f64;

        let mut fewer = nodes(n);
        let gone = fewer.remove(n / 2).id.to_string();
        let removed = placement(&Balancer::new(NodeTable::new(fewer).expect("t")), &keys);
        let moved: Vec<usize> = (0..keys.len())
            .filter(|i| before[*i] != removed[*i])
            .collect();
        assert!(
            moved.iter().all(|i| before[*i] == gone),
            "a key of a remaining node moved"
        );
        let frac_remove = moved.len() as f64 / keys.len() as f64;
        let (ideal_add, ideal_remove) = (1.0 / (n + 1) as f64, 1.0 / n as f64);
        eprintln!(
            "{n} nodes: adding one moved {:.4} of keys (ideal {ideal_add:.4}, {:.2}x); removing \
             one moved {:.4} (ideal {ideal_remove:.4}, {:.2}x)",
            frac_add,
            frac_add / ideal_add,
            frac_remove,
            frac_remove / ideal_remove
        );
        assert!((frac_add / ideal_add - 1.0).abs() < 0.1, "{frac_add}");
        assert!(
            (frac_remove / ideal_remove - 1.0).abs() < 0.1,
            "{frac_remove}"
        );
    }
}

/// With the bound binding (every session holding a request, so nodes fill up), a node added
/// still moves a small multiple of the ideal share.
#[test]
fn under_load_a_node_added_moves_a_small_multiple_of_its_share() {
    let keys = keys(6000);
    let held = |b: &Balancer| -> (Vec<String>, Vec<Lease>) {
        let leases: Vec<Lease> = keys
            .iter()
            .map(|k| b.pick(None, *k).expect("node"))
            .collect();
        (
            leases.iter().map(|l| l.node().id.to_string()).collect(),
            leases,
        )
    };
    for n in [3usize, 5, 10] {
        let (before, _l1) = held(&Balancer::new(table(n)));
        let (after, _l2) = held(&Balancer::new(table(n + 1)));
        let moved = (0..keys.len()).filter(|i| before[*i] != after[*i]).count();
        let frac = moved as f64 / keys.len() as f64;
        let ideal = 1.0 / (n + 1) as f64;
        eprintln!(
            "{n} nodes, all {} sessions in flight: adding one moved {frac:.4} (ideal {ideal:.4}, \
             {:.2}x)",
            keys.len(),
            frac / ideal
        );
        assert!(frac / ideal < 3.0, "{frac}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A request with this key, and perhaps a hint naming node `hint % n`.
    Start { key: u32, hint: Option<usize> },
    /// The request at `index % in flight` ends.
    End { index: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u32>(), proptest::option::of(0usize..8)).prop_map(|(key, hint)| Op::Start { key, hint }),
        1 => any::<usize>().prop_map(|index| Op::End { index }),
    ]
}

proptest! {
    /// Whatever arrives and ends, and with whatever weights, no node takes a request that puts it
    /// above `ceil(c x (in flight + 1) x its share)`.
    #[test]
    fn no_node_goes_above_the_bound(
        weights in proptest::collection::vec(1u32..5, 2..7),
        ops in proptest::collection::vec(op(), 1..400),
        seed in any::<u64>(),
    ) {
        let n = weights.len();
        let table = NodeTable::new(
            nodes(n).into_iter().zip(&weights).map(|(node, w)| node.weight(*w)).collect(),
        ).expect("table");
        let total_weight: u32 = weights.iter().sum();
        let b = Balancer::with_options(table, seed, 1.25);
        let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut leases: Vec<Lease> = Vec::new();
        for op in ops {
            match op {
                Op::Start { key, hint } => {
                    let before = leases.len() as u64;
                    let hint = hint.map(|h| RouteHint { key, node: &ids[h % n] });
                    let lease = b.pick(hint, key).expect("a node");
                    let i: usize = lease.node().id[1..].parse().expect("index");
                    let share = f64::from(weights[i]) / f64::from(total_weight);
                    prop_assert!(b.in_flight(&lease.node().id) <= ceil_bound(1.25, before + 1, share));
                    if hint.is_some_and(|h| h.node == &*lease.node().id) {
                        prop_assert_eq!(lease.pick(), Pick::Sticky);
                    }
                    leases.push(lease);
                }
                Op::End { index } => {
                    if !leases.is_empty() {
                        let i = index % leases.len();
                        leases.swap_remove(i);
                    }
                }
            }
        }
        drop(leases);
        for id in &ids {
            prop_assert_eq!(b.in_flight(id), 0);
        }
    }
}

/// One user sending 30% of the requests, all on one node's hint, while the other 70% arrive
/// with spread keys and hints: no node goes above the bound, and the hot user's node is full
/// but not over.
#[test]
fn a_hot_user_does_not_push_its_node_over_the_bound() {
    let b = Balancer::new(table(3));
    let mut leases = Vec::new();
    let (mut sticky, mut rerouted) = (0, 0);
    for (i, key) in keys(3000).into_iter().enumerate() {
        let hot = i % 10 < 3;
        let hint = if hot {
            RouteHint { key: 7, node: "n0" }
        } else {
            RouteHint {
                key,
                node: ["n0", "n1", "n2"][key as usize % 3],
            }
        };
        let before = leases.len() as u64;
        let lease = b.pick(Some(hint), key).expect("node");
        assert!(b.in_flight(&lease.node().id) <= ceil_bound(1.25, before + 1, 1.0 / 3.0));
        if hot {
            match lease.pick() {
                Pick::Sticky => sticky += 1,
                _ => rerouted += 1,
            }
        }
        leases.push(lease);
    }
    let loads: Vec<u64> = ["n0", "n1", "n2"].iter().map(|n| b.in_flight(n)).collect();
    eprintln!("hot user: {sticky} of its requests sticky, {rerouted} rerouted; loads {loads:?}");
    assert!(loads.iter().all(|l| *l <= 1250), "{loads:?}");
    assert!(rerouted > 0 && sticky > 0);
}

#[test]
fn draining_nodes_keep_their_sessions_and_get_no_new_ones() {
    let b = Balancer::new(table(3));
    assert!(b.set_state("n1", NodeState::Draining));
    for key in keys(3000) {
        let lease = b.pick(None, key).expect("node");
        assert_ne!(&*lease.node().id, "n1", "a new session on a draining node");
        let lease = b
            .pick(Some(RouteHint { key, node: "n1" }), key)
            .expect("node");
        assert_eq!((&*lease.node().id, lease.pick()), ("n1", Pick::Sticky));
    }
    // Down: its sessions go elsewhere, rerouted.
    assert!(b.set_state("n1", NodeState::Down));
    for key in keys(1000) {
        let lease = b
            .pick(Some(RouteHint { key, node: "n1" }), key)
            .expect("node");
        assert_ne!(&*lease.node().id, "n1");
        assert_eq!(lease.pick(), Pick::Rerouted);
    }
    // A hint naming a node the table does not have is rerouted too.
    let lease = b
        .pick(
            Some(RouteHint {
                key: 1,
                node: "gone",
            }),
            1,
        )
        .expect("node");
    assert_eq!(lease.pick(), Pick::Rerouted);
    assert!(!b.set_state("gone", NodeState::Down));
}

#[test]
fn no_node_to_take_a_request_is_none() {
    let b = Balancer::new(table(2));
    b.set_state("n0", NodeState::Down);
    b.set_state("n1", NodeState::Draining);
    assert!(
        b.pick(None, 1).is_none(),
        "a draining node takes no new session"
    );
    assert!(b.pick(Some(RouteHint { key: 1, node: "n1" }), 1).is_some());
    assert!(Balancer::new(NodeTable::default()).pick(None, 1).is_none());
}

#[test]
fn weights_set_the_shares_of_new_sessions() {
    let weights = [1u32, 2, 3, 4];
    let table = NodeTable::new(
        nodes(4)
            .into_iter()
            .zip(weights)
            .map(|(n, w)| n.weight(w))
            .collect(),
    )
    .expect("table");
    let keys = keys(40_000);
    let placed = placement(&Balancer::new(table), &keys);
    for (i, w) in weights.iter().enumerate() {
        let share = placed.iter().filter(|p| **p == format!("n{i}")).count() as f64 / 40_000.0;
        let want = f64::from(*w) / 10.0;
        assert!((share - want).abs() < 0.01, "n{i}: {share} for {want}");
    }
}

#[test]
fn placements_are_fixed_by_the_seed() {
    let keys = keys(5000);
    let a = placement(&Balancer::with_options(table(5), 1, 1.25), &keys);
    let again = placement(&Balancer::with_options(table(5), 1, 1.25), &keys);
    let other = placement(&Balancer::with_options(table(5), 2, 1.25), &keys);
    assert_eq!(a, again);
    let differ = (0..keys.len()).filter(|i| a[*i] != other[*i]).count();
    assert!(differ > keys.len() / 2, "{differ}");
}

/// A new table (here: new weights, one node more) keeps the requests in flight counted, and
/// their end is counted on the same node.
#[test]
fn a_table_swap_keeps_the_load_in_flight() {
    let b = Balancer::new(table(2));
    let lease = b
        .pick(Some(RouteHint { key: 3, node: "n0" }), 3)
        .expect("node");
    b.set_table(
        NodeTable::new(vec![
            Node::new("n0", "127.0.0.1:9000").weight(3),
            Node::new("n1", "127.0.0.1:9001"),
            Node::new("n2", "127.0.0.1:9002"),
        ])
        .expect("t"),
    );
    assert_eq!(b.in_flight("n0"), 1);
    assert_eq!(b.table().nodes().len(), 3);
    drop(lease);
    assert_eq!(b.in_flight("n0"), 0);
}

/// Four threads picking and ending at once, all on one hint: every lease is given back.
#[test]
fn concurrent_picks_leave_no_count_behind() {
    let b = std::sync::Arc::new(Balancer::new(table(3)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                for k in 0..20_000u32 {
                    held.push_back(
                        b.pick(
                            Some(RouteHint {
                                key: k ^ t,
                                node: "n0",
                            }),
                            k,
                        )
                        .expect("node"),
                    );
                    if held.len() > 8 {
                        held.pop_front();
                    }
                    if k % 1000 == 0 {
                        b.set_state(
                            "n2",
                            if k % 2000 == 0 {
                                NodeState::Draining
                            } else {
                                NodeState::Healthy
                            },
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for n in ["n0", "n1", "n2"] {
        assert_eq!(b.in_flight(n), 0, "{n}");
    }
}
