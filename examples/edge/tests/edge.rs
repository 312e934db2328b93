//! The edge router in front of three app instances on one real Redis: sessions stay on their
//! instance; a killed instance's users move, stay logged in and are re-pinned; a draining
//! instance gets no new sessions but keeps its own; instances added through the table file or the
//! Redis key get new sessions without a restart; bodies go through whole.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use sessile_affinity::{NodeState, NodeTable};
use sessile_edge_example::{Control, Edge, EdgeConfig, serve, sources, spawn_health_checks};
use sessile_testkit::redis::{RedisServer, unique_prefix};
use support::{Instance, User, log_in, moved_and_re_pinned, sticky_share, table, until};

/// Three instances on one Redis, an edge in front (health checks every 100 ms), its control.
struct Rig {
    _redis: RedisServer,
    instances: Vec<Instance>,
    edge: SocketAddr,
    control: Arc<Control>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn config() -> EdgeConfig {
    EdgeConfig {
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..EdgeConfig::default()
    }
}

impl Rig {
    /// Starts three instances; the edge's table lists those `listed` says (by index).
    async fn start(listed: &[usize]) -> Self {
        Self::start_holding(listed, Arc::new(tokio::sync::Semaphore::new(0))).await
    }

    /// As [`start`](Self::start), the instances' `GET /hold` waiting for permits of `hold`.
    async fn start_holding(listed: &[usize], hold: Arc<tokio::sync::Semaphore>) -> Self {
        let redis = RedisServer::start();
        let prefix = unique_prefix();
        let instances: Vec<Instance> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|n| Instance::start_holding(n, &redis.url(), &prefix, hold.clone()))
            .collect();
        let table = table(&instances, listed, &[]);
        let config = config();
        let control = Control::new(NodeTable::parse(&table).expect("table"), &config);
        let health = spawn_health_checks(control.clone(), &config);
        let edge = Edge::new(control.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, edge, std::future::pending()));
        Self {
            _redis: redis,
            instances,
            edge: addr,
            control,
            _tasks: vec![health, server],
        }
    }

    async fn log_in(&self, tag: &str, n: usize) -> Vec<User> {
        log_in(self.edge, tag, n).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_their_instance() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let mut users = rig.log_in("u", 30).await;
    let mut per_node = std::collections::BTreeMap::new();
    for u in &users {
        *per_node.entry(u.pinned()).or_insert(0) += 1;
    }
    let (sticky, total) = sticky_share(&mut users).await;
    eprintln!("sessions per node {per_node:?}; {sticky} of {total} requests on the hinted node");
    assert_eq!(per_node.len(), 3, "new sessions spread over the nodes");
    assert!(sticky * 100 >= total * 99, "{sticky} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_users_move_stay_logged_in_and_are_re_pinned() {
    let mut rig = Rig::start(&[0, 1, 2]).await;
    let mut users = rig.log_in("u", 30).await;
    rig.instances[1].kill();
    let moved_to = moved_and_re_pinned(&mut users, "node-b").await;
    eprintln!("node-b's users moved to {moved_to:?}");
    assert!(!rig.control.is_up("node-b"));
    assert!(
        moved_to.values().sum::<usize>() >= 3,
        "node-b held sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_keeps_its_sessions_and_gets_no_new_ones() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("nodes");
    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[])).expect("write");
    let _watch = sources::watch_file(file.clone(), rig.control.clone(), Duration::from_millis(50));
    let mut old = rig.log_in("old", 30).await;

    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[2])).expect("write");
    until("the drain is seen", || {
        rig.control
            .configured()
            .get("node-c")
            .is_some_and(|n| n.state == NodeState::Draining)
    })
    .await;
    let new = rig.log_in("new", 30).await;
    assert!(
        new.iter().all(|u| u.pinned() != "node-c"),
        "a new session on the draining node"
    );
    let mut kept = 0;
    for u in old.iter_mut().filter(|u| u.pinned() == "node-c") {
        let r = u.post("/incr").await;
        assert_eq!((r.status, r.node.as_str()), (StatusCode::OK, "node-c"));
        kept += 1;
    }
    assert!(kept > 0, "node-c held sessions before the drain");
}

async fn lands_on_node_c(rig: &Rig) {
    let before = rig.log_in("before", 20).await;
    assert!(before.iter().all(|u| u.pinned() != "node-c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_added_to_the_file_gets_new_sessions() {
    let rig = Rig::start(&[0, 1]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("nodes");
    std::fs::write(&file, table(&rig.instances, &[0, 1], &[])).expect("write");
    let _watch = sources::watch_file(file.clone(), rig.control.clone(), Duration::from_millis(50));
    lands_on_node_c(&rig).await;
    std::fs::write(&file, table(&rig.instances, &[0, 1, 2], &[])).expect("write");
    added(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_announced_through_redis_gets_new_sessions() {
    let rig = Rig::start(&[0, 1]).await;
    let redis = RedisServer::start();
    let key = "edge:nodes";
    redis.cli(&["SET", key, &table(&rig.instances, &[0, 1], &[])]);
    // A long resync: only the announcement can bring the change in time.
    let _watch = sources::watch_redis(
        &redis.url(),
        key.into(),
        rig.control.clone(),
        Duration::from_secs(3600),
    )
    .await
    .expect("watch");
    lands_on_node_c(&rig).await;
    redis.cli(&["SET", key, &table(&rig.instances, &[0, 1, 2], &[])]);
    redis.cli(&["PUBLISH", key, "changed"]);
    added(&rig).await;
}

async fn added(rig: &Rig) {
    until("the new table is seen", || {
        rig.control.configured().nodes().len() == 3
    })
    .await;
    let after = rig.log_in("after", 30).await;
    let on_c = after.iter().filter(|u| u.pinned() == "node-c").count();
    eprintln!("{on_c} of 30 new sessions on the added node");
    assert!(on_c >= 3, "{on_c}");
}

/// A body of 1 MiB each way, and a bad table refused with the old one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_go_through_whole_and_a_bad_table_changes_nothing() {
    let rig = Rig::start(&[0, 1, 2]).await;
    let mut u = User::new(rig.edge);
    let body: Bytes = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let r = u.send(Method::POST, "/echo", body.clone()).await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, body.len()));
    assert!(r.body == body);

    let before = rig.control.configured();
    for bad in ["node-a 127.0.0.1:1 sick\n", "node-a\n", "a 1:1\na 1:2\n"] {
        assert!(
            sources::apply(&rig.control, bad, "test").is_err(),
            "{bad:?}"
        );
        assert_eq!(rig.control.configured(), before, "the old table stays");
    }
}

/// 30 requests held in flight at once, 9 of them (30%) from one hot user whose session is on
/// node-a: no node holds more than ceil(1.25 x 30 / 3) = 13, so some of the hot user's requests
/// go elsewhere (as overflow, which does not re-pin: its session stays on node-a).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_user_does_not_push_its_node_over_the_bound() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let rig = Rig::start_holding(&[0, 1, 2], hold.clone()).await;
    let (addr, control) = (rig.edge, rig.control.clone());

    // The hot user, on node-a, and 21 others.
    let mut users = log_in(addr, "u", 60).await;
    let hot = users
        .iter()
        .position(|u| u.pinned() == "node-a")
        .expect("a session on node-a");
    let hot_cookie = users[hot].cookie.clone();
    let others: Vec<User> = users
        .drain(..)
        .enumerate()
        .filter(|(i, _)| *i != hot)
        .map(|(_, u)| u)
        .take(21)
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..9 {
        let mut u = User::new(addr);
        u.cookie = hot_cookie.clone();
        tasks.push(tokio::spawn(async move {
            let r = u.get("/hold").await;
            (true, r.status, r.node, r.set_cookie)
        }));
    }
    for mut u in others {
        tasks.push(tokio::spawn(async move {
            let r = u.get("/hold").await;
            (false, r.status, r.node, r.set_cookie)
        }));
    }
    let nodes = ["node-a", "node-b", "node-c"];
    let in_flight =
        |c: &Control| -> Vec<u64> { nodes.iter().map(|n| c.balancer().in_flight(n)).collect() };
    until("all 30 requests in flight", || {
        in_flight(&control).iter().sum::<u64>() == 30
    })
    .await;
    let loads = in_flight(&control);
    hold.add_permits(30);
    let mut hot_on = std::collections::BTreeMap::new();
    for t in tasks {
        let (is_hot, status, node, set_cookie) = t.await.expect("request");
        assert_eq!(status, StatusCode::OK);
        if is_hot {
            *hot_on.entry(node).or_insert(0) += 1;
            assert_eq!(set_cookie, None, "an overflow does not re-pin");
        }
    }
    eprintln!(
        "30 held requests: in flight per node {loads:?}; the hot user's 9 went to {hot_on:?}"
    );
    assert!(loads.iter().all(|l| *l <= 13), "{loads:?}");
    assert!(hot_on.len() > 1, "the hot user overflowed: {hot_on:?}");
}
