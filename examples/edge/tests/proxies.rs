//! The nginx and HAProxy recipes (`examples/edge/recipes/`, quoted in `docs/affinity.md`), each
//! run for real (Debian's packages, started here on loopback) in front of three app instances on
//! one Redis: sessions stay on their instance; a killed instance's users move, stay logged in and
//! are re-pinned; a drained instance (nginx: marked `down` in the hashed pool and reloaded;
//! HAProxy: `set server ... state drain` on the runtime API) gets no new sessions and keeps its
//! own.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sessile_testkit::redis::{RedisServer, unique_prefix};
use support::{Instance, log_in, moved_and_re_pinned, sticky_share};

/// A proxy process started by this test, killed (by its own pid) when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where `program` is installed (on `PATH`, or in `/usr/sbin`, where Debian puts both).
fn require(program: &str) -> String {
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let sbin = format!("/usr/sbin/{program}");
    on_path
        .or_else(|| Path::new(&sbin).exists().then_some(sbin))
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: `apt-get install nginx haproxy` (scripts/test does)"
            )
        })
}

/// The recipe `name` with its placeholders filled in.
fn recipe(name: &str, dir: &Path, listen: SocketAddr, instances: &[Instance]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(name);
    std::fs::read_to_string(path)
        .expect("recipe")
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{LISTEN}}", &listen.to_string())
        .replace("{{NODE_A}}", &instances[0].addr.to_string())
        .replace("{{NODE_B}}", &instances[1].addr.to_string())
        .replace("{{NODE_C}}", &instances[2].addr.to_string())
}

/// Starts `program` with the filled-in recipe and waits (bounded) until it accepts connections.
fn start(program: &str, recipe_name: &str, instances: &[Instance]) -> Proxy {
    let binary = require(program);
    let dir = tempfile::tempdir().expect("dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join(recipe_name);
    std::fs::write(&config, recipe(recipe_name, dir.path(), addr, instances)).expect("config");
    let config = config.display().to_string();
    let args: Vec<&str> = match program {
        "nginx" => vec![
            "-p",
            dir.path().to_str().expect("utf-8"),
            "-c",
            &config,
            "-g",
            "daemon off;",
        ],
        _ => vec!["-f", &config, "-db"],
    };
    let child = Command::new(binary)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the proxy");
    let mut proxy = Proxy {
        child,
        addr,
        dir,
        config: config.into(),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("{program} exited: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{program} never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy
}

fn instances(redis: &RedisServer) -> Vec<Instance> {
    let prefix = unique_prefix();
    ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| Instance::start(n, &redis.url(), &prefix))
        .collect()
}

async fn sticky_then_kill(program: &str, recipe_name: &str) {
    let redis = RedisServer::start();
    let mut instances = instances(&redis);
    let proxy = start(program, recipe_name, &instances);
    let mut users = log_in(proxy.addr, "u", 30).await;
    let mut per_node = std::collections::BTreeMap::new();
    for u in &users {
        *per_node.entry(u.pinned()).or_insert(0) += 1;
    }
    let (sticky, total) = sticky_share(&mut users).await;
    eprintln!("{program}: sessions per node {per_node:?}; {sticky} of {total} on the hinted node");
    assert!(sticky * 100 >= total * 99, "{sticky} of {total}");
    assert!(per_node.len() >= 2, "new sessions spread: {per_node:?}");

    let victim = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(node, _)| node.clone())
        .expect("a node");
    let index = instances
        .iter()
        .position(|i| i.node == victim)
        .expect("instance");
    instances[index].kill();
    let moved_to = moved_and_re_pinned(&mut users, &victim).await;
    eprintln!("{program}: {victim}'s users moved to {moved_to:?}");
    assert_eq!(
        moved_to.values().sum::<usize>(),
        per_node[&victim],
        "every one of its users moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_routes_on_the_hint_and_falls_back_to_hashing() {
    sticky_then_kill("nginx", "nginx.conf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_on_the_hint_and_falls_back_to_hashing() {
    sticky_then_kill("haproxy", "haproxy.cfg").await;
}

/// The recipes in `docs/affinity.md` are these files, word for word.
#[test]
fn the_documented_recipes_are_the_tested_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc =
        std::fs::read_to_string(root.join("../../docs/affinity.md")).expect("docs/affinity.md");
    for name in ["nginx.conf", "haproxy.cfg"] {
        let recipe = std::fs::read_to_string(root.join("recipes").join(name)).expect("recipe");
        assert!(
            doc.contains(recipe.trim()),
            "docs/affinity.md does not quote {name}"
        );
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            if let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(child);
            }
        }
    }
    out.sort_unstable();
    out
}

/// nginx: node-c marked `down` in the hashed pool, the config reloaded (SIGHUP to the master this
/// test started), and the new worker waited for (its pid differs).
fn drain_nginx(proxy: &Proxy) {
    let config = std::fs::read_to_string(&proxy.config).expect("config");
    let node_c = config
        .lines()
        .filter(|l| l.trim_start().starts_with("server ") && l.contains("max_fails"))
        .nth(2)
        .expect("node-c in the hashed pool")
        .to_owned();
    let drained = config.replace(&node_c, "        server NODE_C down;");
    let addr = node_c
        .split_whitespace()
        .nth(1)
        .expect("an address")
        .to_owned();
    std::fs::write(&proxy.config, drained.replace("NODE_C", &addr)).expect("config");
    let before = children(proxy.child.id());
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let start = Instant::now();
    loop {
        let now = children(proxy.child.id());
        if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx never reloaded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// HAProxy: `set server app/node-c state drain` on the runtime API.
fn drain_haproxy(proxy: &Proxy) {
    use std::io::{Read as _, Write as _};
    let mut socket = std::os::unix::net::UnixStream::connect(proxy.dir.path().join("admin.sock"))
        .expect("the runtime API");
    socket
        .write_all(b"set server app/node-c state drain\n")
        .expect("command");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("answer");
    assert!(answer.trim().is_empty(), "HAProxy said: {answer}");
}

async fn drain(program: &str, recipe_name: &str) {
    let redis = RedisServer::start();
    let instances = instances(&redis);
    let proxy = start(program, recipe_name, &instances);
    let mut old = log_in(proxy.addr, "old", 30).await;
    assert!(old.iter().any(|u| u.pinned() == "node-c"));
    match program {
        "nginx" => drain_nginx(&proxy),
        _ => drain_haproxy(&proxy),
    }
    let new = log_in(proxy.addr, "new", 30).await;
    let mut per_node = std::collections::BTreeMap::new();
    for u in &new {
        *per_node.entry(u.pinned()).or_insert(0) += 1;
    }
    eprintln!("{program}, node-c draining: new sessions per node {per_node:?}");
    assert!(
        !per_node.contains_key("node-c"),
        "a new session on the draining node"
    );
    let mut kept = 0;
    for u in old.iter_mut().filter(|u| u.pinned() == "node-c") {
        let r = u.post("/incr").await;
        assert_eq!((r.status.as_u16(), r.node.as_str()), (200, "node-c"));
        kept += 1;
    }
    eprintln!("{program}: {kept} sessions kept on the draining node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_drains_a_node() {
    drain("nginx", "nginx.conf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drains_a_node() {
    drain("haproxy", "haproxy.cfg").await;
}
