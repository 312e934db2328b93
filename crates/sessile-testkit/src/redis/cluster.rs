//! A Redis Cluster of real processes: three primaries with a replica each.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_node_lines_name_their_slot_ranges() {
        let line = "abc 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 9000";
        assert!(owns(line, 0) && owns(line, 5460) && owns(line, 9000));
        assert!(!owns(line, 5461) && !owns(line, 16383));
    }
}
