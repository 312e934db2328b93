//! Real `redis-server` processes for tests.
//!
//! Each server runs on a free loopback port with its own temporary directory, is stopped on drop
//! by its own pid, and can be killed, paused (SIGSTOP), resumed and restarted, so tests can inject
//! the faults that matter. Nothing here touches a process it did not start.
//!
//! When `redis-server` is not installed, starting one panics with the command that installs it:
//! Redis-backed tests fail loudly; they are never skipped.

mod cluster;
mod sentinel;

pub use cluster::RedisCluster;
pub use sentinel::{RedisSentinels, SENTINEL_SERVICE};

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
            // A record starts with `R`, a rotation marker with `M`.
            .filter(|k| self.cli(&["getrange", k, "0", "0"]).trim() == "R")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "apt-get install -y redis-server")]
    fn a_missing_binary_fails_with_the_install_command() {
        require("redis-server-that-does-not-exist");
    }
}
