//! Real `redis-server` processes for tests.
//!
//! Each server runs on a free loopback port with its own temporary directory, is stopped on drop
//! by its own pid, and can be killed, paused (SIGSTOP), resumed and restarted, so tests can inject
//! the faults that matter. Nothing here touches a process it did not start.
//!
//! When `redis-server` is not installed, starting one panics with the command that installs it:
//! Redis-backed tests fail loudly; they are never skipped.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to answer `PING` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster gets to agree on its slots and replicas.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "redis-server is not installed or not on PATH. Install it \
(Debian/Ubuntu: `apt-get install -y redis-server`); `./scripts/test` does this when it runs as root.";

fn require(binary: &str) {
    let ok = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{binary}: {INSTALL_HINT}");
}

/// A free loopback port; with `bus`, also `port + 10000` is free (a cluster node's bus port).
fn free_port(bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one inline command over a raw socket; returns the first reply line. No client library,
/// so the harness works even while the code under test is broken.
fn raw(port: u16, command: &str, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// One `redis-server` process owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        require("redis-server");
        let cluster = extra.contains(&"--cluster-enabled");
        let dir = tempfile::Builder::new()
            .prefix("sessile-redis-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            child: None,
            port: free_port(cluster),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn_and_wait();
        server
    }

    fn spawn_and_wait(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server failed to start ({e}). {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if raw(self.port, "PING", Duration::from_millis(200)).as_deref() == Some("+PONG") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
            self.port
        );
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} {pid} failed");
        }
    }

    /// Freezes the server (SIGSTOP): it keeps its connections open but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Starts the server again on the same port and directory (after `kill`, or killing it now).
    /// Data does not survive: persistence is off, as on the CI machines' default server.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli");
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Session records (not rotation markers) among the keys matching `pattern`.
    pub fn records(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|k| self.cli(&["hexists", k, "v"]).trim() == "1")
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too, so a paused server never outlives its test.
        self.kill();
    }
}

/// The server basic tests should use: `REDIS_URL` when set, else a fresh private server.
pub enum TestRedis {
    /// A server this test started.
    Owned(RedisServer),
    /// A server named by `REDIS_URL`.
    External(String),
}

impl TestRedis {
    /// `REDIS_URL`, or a new private server.
    pub fn from_env_or_start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Self::External(url),
            _ => Self::Owned(RedisServer::start()),
        }
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        match self {
            Self::Owned(s) => s.url(),
            Self::External(url) => url.clone(),
        }
    }
}

/// A key prefix no other test run uses, for sharing a server (such as `REDIS_URL`'s) safely.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

/// A Redis Cluster of three primaries with one replica each.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create`, and waits until every
    /// node reports the cluster healthy and every replica is in sync.
    pub fn start() -> Self {
        require("redis-cli");
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy(CLUSTER_TIMEOUT);
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and each primary has a replica
    /// with a live link.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&RedisServer> =
                self.nodes.iter().filter(|n| n.pid().is_some()).collect();
            let all_ok = running
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            let replicas_up = running
                .iter()
                .filter(|n| n.cli(&["info", "replication"]).contains("role:slave"))
                .all(|n| {
                    n.cli(&["info", "replication"])
                        .contains("master_link_status:up")
                });
            let primaries = running
                .iter()
                .filter(|n| n.cli(&["info", "replication"]).contains("role:master"))
                .count();
            if all_ok && replicas_up && primaries == 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push_str(if i == 1 { "?" } else { "&" });
            url.push_str(&format!("node=127.0.0.1:{}", n.port()));
        }
        url
    }

    /// The nodes.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Index of the running primary that serves `slot`.
    pub fn primary_of_slot(&self, slot: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                n.pid().is_some()
                    && n.cli(&["info", "replication"]).contains("role:master")
                    && n.cli(&["cluster", "countkeysinslot", &slot.to_string()])
                        .trim()
                        != ""
                    && n.cli(&["cluster", "nodes"])
                        .lines()
                        .find(|l| l.contains("myself"))
                        .is_some_and(|l| owns(l, slot))
            })
            .expect("some primary owns every slot")
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let mut parts = range.split('-');
        let lo = parts.next().and_then(|p| p.parse::<u16>().ok());
        let hi = parts.next().and_then(|p| p.parse::<u16>().ok()).or(lo);
        matches!((lo, hi), (Some(lo), Some(hi)) if (lo..=hi).contains(&slot))
    })
}

/// One `redis-sentinel` process owned by the test.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary, a replica, and three Sentinels watching them as `mymaster` (quorum 2), on free
/// loopback ports: the Sentinel deployment `redis-sentinel://` URLs name.
pub struct RedisSentinels {
    /// The primary and the replica, in that order at the start.
    pub servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

/// The service name the Sentinels monitor.
pub const SENTINEL_SERVICE: &str = "mymaster";

impl RedisSentinels {
    /// Starts the servers and Sentinels and waits until every Sentinel knows the replica and the
    /// other Sentinels.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        // Debian's `redis-sentinel` is `redis-server` in Sentinel mode; either will do.
        let binary = if Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            "redis-sentinel"
        } else {
            require("redis-server");
            "redis-server"
        };
        let sentinels = (0..3)
            .map(|_| {
                let dir = tempfile::Builder::new()
                    .prefix("sessile-sentinel-")
                    .tempdir()
                    .expect("temp dir");
                let port = free_port(false);
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                         sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                         sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                         sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                        dir.path().display(),
                        dir.path().join("sentinel.log").display(),
                        primary.port()
                    ),
                )
                .expect("write sentinel.conf");
                let mut cmd = Command::new(binary);
                cmd.arg(&conf);
                if binary == "redis-server" {
                    cmd.arg("--sentinel");
                }
                let child = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{binary} failed to start ({e}). {INSTALL_HINT}"));
                Sentinel {
                    child,
                    port,
                    _dir: dir,
                }
            })
            .collect();
        let group = Self {
            servers: vec![primary, replica],
            sentinels,
        };
        group.wait_until(
            CLUSTER_TIMEOUT,
            "the Sentinels to see the replica and each other",
            |g| {
                g.sentinels.iter().all(|s| {
                    let info = g.sentinel_cli(s.port, &["sentinel", "master", SENTINEL_SERVICE]);
                    let field = |name: &str| {
                        let mut lines = info.lines();
                        while let Some(l) = lines.next() {
                            if l.trim() == name {
                                return lines.next().map(|v| v.trim().to_owned());
                            }
                        }
                        None
                    };
                    field("num-slaves").as_deref() == Some("1")
                        && field("num-other-sentinels").as_deref() == Some("2")
                })
            },
        );
        group
    }

    fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("waited {timeout:?} for {what}");
    }

    fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port the Sentinels name as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.sentinel_cli(
            self.sentinels[0].port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// `redis-sentinel://` URL naming all three Sentinels.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinels[0].port
        );
        for s in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", s.port));
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "apt-get install -y redis-server")]
    fn a_missing_binary_fails_with_the_install_command() {
        require("redis-server-that-does-not-exist");
    }

    #[test]
    fn cluster_node_lines_name_their_slot_ranges() {
        let line = "abc 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 9000";
        assert!(owns(line, 0) && owns(line, 5460) && owns(line, 9000));
        assert!(!owns(line, 5461) && !owns(line, 16383));
    }
}
