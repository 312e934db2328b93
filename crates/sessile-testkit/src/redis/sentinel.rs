//! A primary, a replica and three Sentinels, all real processes.

use super::*;

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
