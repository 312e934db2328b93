//! The node table and its text form.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::hint::{MAX_NODE_ID_LEN, valid_node_id};

/// Heaviest weight a node may have.
const MAX_WEIGHT: u32 = 1000;

/// What a node may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// New sessions and the sessions it holds.
    Healthy,
    /// Only the sessions it holds (their hints are honoured); no new ones.
    Draining,
    /// Nothing: its sessions go elsewhere.
    Down,
}

impl NodeState {
    /// The word the text form uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Draining => "draining",
            Self::Down => "down",
        }
    }
}

impl FromStr for NodeState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "healthy" => Ok(Self::Healthy),
            "draining" => Ok(Self::Draining),
            "down" => Ok(Self::Down),
            _ => Err(()),
        }
    }
}

/// One application instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The id its hints carry: 1 to 23 characters of `[A-Za-z0-9_-]`.
    pub id: Arc<str>,
    /// Where to reach it (for a proxy: `host:port`).
    pub addr: Arc<str>,
    /// Its share of new sessions, relative to the others (1 to 1000).
    pub weight: u32,
    /// What it may be sent.
    pub state: NodeState,
}

impl Node {
    /// A healthy node of weight 1.
    pub fn new(id: &str, addr: &str) -> Self {
        Self {
            id: id.into(),
            addr: addr.into(),
            weight: 1,
            state: NodeState::Healthy,
        }
    }

    /// The same node with another weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same node in another state.
    pub fn state(mut self, state: NodeState) -> Self {
        self.state = state;
        self
    }
}

/// Why a node table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A node id that a hint cannot carry.
    #[error("line {line}: node id must be 1 to {MAX_NODE_ID_LEN} characters of [A-Za-z0-9_-]")]
    BadId {
        /// 1-based line (0 for a table built in code).
        line: usize,
    },
    /// Two nodes with one id.
    #[error("line {line}: node id {id:?} is listed twice")]
    Duplicate {
        /// 1-based line (0 for a table built in code).
        line: usize,
        /// The repeated id.
        id: String,
    },
    /// An empty or spaced address.
    #[error("line {line}: a node needs an address (host:port)")]
    BadAddress {
        /// 1-based line (0 for a table built in code).
        line: usize,
    },
    /// A weight out of range.
    #[error("line {line}: weight must be 1 to {MAX_WEIGHT}")]
    BadWeight {
        /// 1-based line (0 for a table built in code).
        line: usize,
    },
    /// A word that is neither a weight nor a state.
    #[error("line {line}: unknown field {field:?} (expected weight=N, healthy, draining or down)")]
    BadField {
        /// 1-based line.
        line: usize,
        /// The field.
        field: String,
    },
}

/// The nodes, validated; cheap to share (the [`Balancer`](crate::Balancer) swaps whole tables).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeTable {
    nodes: Vec<Node>,
}

impl NodeTable {
    /// Validates `nodes`: ids a hint can carry and unique, addresses present, weights in range.
    pub fn new(nodes: Vec<Node>) -> Result<Self, TableError> {
        for (i, node) in nodes.iter().enumerate() {
            check(node, 0)?;
            if nodes[..i].iter().any(|n| n.id == node.id) {
                return Err(TableError::Duplicate {
                    line: 0,
                    id: node.id.to_string(),
                });
            }
        }
        Ok(Self { nodes })
    }

    /// Reads the text form: one node per line, `<id> <host:port> [weight=N] [healthy|draining|down]`
    /// (weight 1 and healthy when left out); blank lines and `#` comments are skipped.
    ///
    /// ```
    /// use sessile_affinity::{NodeState, NodeTable};
    /// let table = NodeTable::parse("
    ///     node-a 127.0.0.1:8081    # the login app
    ///     node-b 127.0.0.1:8082 weight=2 draining
    /// ").unwrap();
    /// assert_eq!(table.nodes()[1].state, NodeState::Draining);
    /// assert_eq!(NodeTable::parse(&table.to_string()).unwrap(), table);
    /// ```
    pub fn parse(text: &str) -> Result<Self, TableError> {
        let mut nodes: Vec<Node> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("");
            let mut fields = content.split_whitespace();
            let Some(id) = fields.next() else {
                continue;
            };
            let addr = fields.next().ok_or(TableError::BadAddress { line })?;
            let mut node = Node::new(id, addr);
            for field in fields {
                if let Some(w) = field.strip_prefix("weight=") {
                    node.weight = w.parse().map_err(|_| TableError::BadWeight { line })?;
                } else if let Ok(state) = field.parse() {
                    node.state = state;
                } else {
                    return Err(TableError::BadField {
                        line,
                        field: field.chars().take(40).collect(),
                    });
                }
            }
            check(&node, line)?;
            if nodes.iter().any(|n| n.id == node.id) {
                return Err(TableError::Duplicate {
                    line,
                    id: node.id.to_string(),
                });
            }
            nodes.push(node);
        }
        Ok(Self { nodes })
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with this id.
    pub fn get(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| &*n.id == id)
    }

    /// The same table with `id` in `state` (unchanged if there is no such node).
    pub fn with_state(&self, id: &str, state: NodeState) -> Self {
        let mut t = self.clone();
        for n in &mut t.nodes {
            if &*n.id == id {
                n.state = state;
            }
        }
        t
    }
}

impl fmt::Display for NodeTable {
    /// The text form [`parse`](Self::parse) reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            writeln!(
                f,
                "{} {} weight={} {}",
                n.id,
                n.addr,
                n.weight,
                n.state.as_str()
            )?;
        }
        Ok(())
    }
}

fn check(node: &Node, line: usize) -> Result<(), TableError> {
    if !valid_node_id(&node.id) {
        return Err(TableError::BadId { line });
    }
    if node.addr.is_empty() || node.addr.contains(char::is_whitespace) {
        return Err(TableError::BadAddress { line });
    }
    if !(1..=MAX_WEIGHT).contains(&node.weight) {
        return Err(TableError::BadWeight { line });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tables_get_typed_errors() {
        let cases: [(&str, TableError); 6] = [
            ("node.a 127.0.0.1:1", TableError::BadId { line: 1 }),
            ("\nnode-a", TableError::BadAddress { line: 2 }),
            ("a 127.0.0.1:1 weight=0", TableError::BadWeight { line: 1 }),
            ("a 127.0.0.1:1 weight=x", TableError::BadWeight { line: 1 }),
            (
                "a 127.0.0.1:1 sick",
                TableError::BadField {
                    line: 1,
                    field: "sick".into(),
                },
            ),
            (
                "a 127.0.0.1:1\na 127.0.0.1:2",
                TableError::Duplicate {
                    line: 2,
                    id: "a".into(),
                },
            ),
        ];
        for (text, err) in cases {
            assert_eq!(NodeTable::parse(text), Err(err), "{text:?}");
        }
        assert!(matches!(
            NodeTable::new(vec![Node::new("a", "x:1"), Node::new("a", "x:2")]),
            Err(TableError::Duplicate { .. })
        ));
        assert_eq!(
            NodeTable::parse("  # nothing\n\n").map(|t| t.nodes().len()),
            Ok(0)
        );
    }
}
