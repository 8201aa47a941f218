//! The network as one domain sees it: which domain a user lives on, and the domain graph.
//!
//! A user's home domain is the first `userDistributions` range of their app (or, if the app
//! has none, of the top level) that holds their number. An app with no ranges anywhere lives
//! wholly on the local domain, as in the single-domain built-in config. The graph is an
//! undirected petgraph over `domains` and `domainLinks`; `next_hop` takes the first step of a
//! shortest path over the links currently up, avoiding domains an envelope has already
//! passed through. A [`NetworkHandle`] holds the current network of a running process and
//! swaps in a new one when the config is reloaded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use petgraph::graph::{NodeIndex, UnGraph};

use crate::config::{ClientApp, NetworkConfig, UserDistribution};
use crate::ids::{DomainName, UserId};

/// Where a user lives, from the local domain's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Local,
    Remote(DomainName),
}

/// A validated network config, indexed for the lookups done per message.
#[derive(Debug, Clone)]
pub struct Network {
    config: NetworkConfig,
    local: DomainName,
    apps: HashMap<String, usize>,
    graph: UnGraph<DomainName, ()>,
    nodes: HashMap<DomainName, NodeIndex>,
}

impl Network {
    /// Indexes `config` (already validated) for the domain named `local`.
    pub fn new(config: NetworkConfig, local: DomainName) -> Network {
        let apps = config
            .client_apps
            .iter()
            .enumerate()
            .map(|(i, a)| (a.app_name.clone(), i))
            .collect();
        let mut graph = UnGraph::new_undirected();
        let mut nodes = HashMap::new();
        for d in &config.domains {
            let name = DomainName::new(&d.name);
            nodes.insert(name.clone(), graph.add_node(name));
        }
        for l in &config.domain_links {
            if let (Some(a), Some(b)) = (
                nodes.get(&DomainName::new(&l.n1)),
                nodes.get(&DomainName::new(&l.n2)),
            ) {
                graph.add_edge(*a, *b, ());
            }
        }
        Network {
            config,
            local,
            apps,
            graph,
            nodes,
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn local_domain(&self) -> &DomainName {
        &self.local
    }

    pub fn app(&self, app_name: &str) -> Option<&ClientApp> {
        self.apps
            .get(app_name)
            .map(|i| &self.config.client_apps[*i])
    }

    /// True if `user` is the master user of their app.
    pub fn is_master(&self, user: &UserId) -> bool {
        self.app(user.app())
            .and_then(|a| a.master_user_id.as_deref())
            .is_some_and(|m| m == user.as_str())
    }

    /// The master user of `user`'s app, if it has one.
    pub fn master_of(&self, user: &UserId) -> Option<UserId> {
        self.app(user.app())
            .and_then(|a| a.master_user_id.as_deref())
            .and_then(|m| UserId::parse(m).ok())
    }

    /// The domain `user` lives on; `None` if no range holds their number.
    pub fn home_domain(&self, user: &UserId) -> Option<DomainName> {
        let ranges: &[UserDistribution] = match self.app(user.app()) {
            Some(app) if !app.user_distributions.is_empty() => &app.user_distributions,
            _ => &self.config.user_distributions,
        };
        if ranges.is_empty() {
            return Some(self.local.clone());
        }
        let number = user.number();
        let range = ranges.iter().find(|r| r.contains(number))?;
        Some(DomainName::new(&range.domain_name))
    }

    /// Where `user` lives, seen from here; `None` if no range holds their number.
    pub fn home(&self, user: &UserId) -> Option<Home> {
        self.home_domain(user).map(|d| {
            if d == self.local {
                Home::Local
            } else {
                Home::Remote(d)
            }
        })
    }

    /// The domains linked to this one.
    pub fn neighbors(&self) -> Vec<DomainName> {
        let Some(local) = self.nodes.get(&self.local) else {
            return Vec::new();
        };
        let mut names: Vec<DomainName> = self
            .graph
            .neighbors(*local)
            .map(|n| self.graph[n].clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The `ws://` url users of `domain` connect to, if the config gives one.
    pub fn ws_url(&self, domain: &DomainName) -> Option<&str> {
        self.config.url(domain.as_str(), "ws://")
    }

    /// The first step from the local domain towards `target`: a shortest path that leaves
    /// through none of the links to the neighbours in `down` and passes through none of the
    /// domains in `visited`. Of equally short paths, the one through the lowest domain names.
    /// `None` if no such path is left.
    pub fn next_hop(
        &self,
        target: &DomainName,
        down: &HashSet<DomainName>,
        visited: &[DomainName],
    ) -> Option<DomainName> {
        let from = *self.nodes.get(&self.local)?;
        let to = *self.nodes.get(target)?;
        if from == to {
            return Some(self.local.clone());
        }
        // Breadth-first search (every link costs the same), keeping each node's parent.
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut seen: HashSet<NodeIndex> = HashSet::from([from]);
        seen.extend(visited.iter().filter_map(|d| self.nodes.get(d)));
        seen.remove(&to);
        let mut queue = VecDeque::from([from]);
        while let Some(n) = queue.pop_front() {
            if n == to {
                break;
            }
            // Neighbours in name order: of equally short paths, the one through the
            // lowest domain names wins, so routes are the same on every run.
            let mut next: Vec<NodeIndex> = self.graph.neighbors(n).collect();
            next.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            for m in next {
                if (n == from && down.contains(&self.graph[m])) || !seen.insert(m) {
                    continue;
                }
                parent.insert(m, n);
                queue.push_back(m);
            }
        }
        let mut step = to;
        loop {
            let p = *parent.get(&step)?;
            if p == from {
                return Some(self.graph[step].clone());
            }
            step = p;
        }
    }
}

/// The current network of a running process. Readers take a cheap snapshot per use; a
/// reload swaps in a new network that readers see from their next use on, and wakes whoever
/// watches for changes.
#[derive(Debug)]
pub struct NetworkHandle {
    current: tokio::sync::watch::Sender<Arc<Network>>,
}

impl NetworkHandle {
    pub fn new(network: Network) -> NetworkHandle {
        NetworkHandle {
            current: tokio::sync::watch::Sender::new(Arc::new(network)),
        }
    }

    /// The network as it is now.
    pub fn current(&self) -> Arc<Network> {
        self.current.borrow().clone()
    }

    /// Replaces the network; true if the config differs from the current one.
    pub fn replace(&self, config: NetworkConfig) -> bool {
        self.current.send_if_modified(|n| {
            if n.config == config {
                return false;
            }
            *n = Arc::new(Network::new(config, n.local.clone()));
            true
        })
    }

    /// A receiver that is told each time the network changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Arc<Network>> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DomainConfig, DomainLink};

    fn ring() -> NetworkConfig {
        let mut c = NetworkConfig::single_domain("d1");
        c.domains = ["d1", "d2", "d3", "d4"]
            .iter()
            .map(|n| DomainConfig {
                name: n.to_string(),
                urls: vec![],
            })
            .collect();
        c.domain_links = [("d1", "d2"), ("d2", "d3"), ("d3", "d4"), ("d4", "d1")]
            .iter()
            .map(|(a, b)| DomainLink {
                n1: a.to_string(),
                n2: b.to_string(),
            })
            .collect();
        c.user_distributions = vec![
            UserDistribution {
                domain_name: "d1".into(),
                from: 0,
                to: Some(999_999),
            },
            UserDistribution {
                domain_name: "d3".into(),
                from: 3_000_000,
                to: None,
            },
        ];
        c
    }

    #[test]
    fn users_map_to_their_home_domain_by_number() {
        let n = Network::new(ring(), DomainName::new("d1"));
        let home = |id: &str| n.home(&UserId::parse(id).unwrap());
        assert_eq!(home("ANZ-123456"), Some(Home::Local));
        assert_eq!(
            home("ANZ-3123456"),
            Some(Home::Remote(DomainName::new("d3")))
        );
        assert_eq!(home("ANZ-1500000"), None);
    }

    #[test]
    fn next_hop_goes_around_a_link_that_is_down() {
        let n = Network::new(ring(), DomainName::new("d1"));
        let d = DomainName::new;
        let none = HashSet::new();
        assert_eq!(n.next_hop(&d("d2"), &none, &[]), Some(d("d2")));
        // Two equally short ways: the lower name wins, every time.
        assert_eq!(n.next_hop(&d("d3"), &none, &[]), Some(d("d2")));
        let down: HashSet<_> = [d("d2")].into();
        assert_eq!(n.next_hop(&d("d3"), &down, &[]), Some(d("d4")));
        // The link to d2 is down, d2 itself is reached the long way round.
        assert_eq!(n.next_hop(&d("d2"), &down, &[]), Some(d("d4")));
        let all: HashSet<_> = [d("d2"), d("d4")].into();
        assert_eq!(n.next_hop(&d("d3"), &all, &[]), None);
    }

    #[test]
    fn next_hop_never_goes_back_through_a_visited_domain() {
        let n = Network::new(ring(), DomainName::new("d2"));
        let d = DomainName::new;
        // At d2, coming from d1, with the link d2-d3 down: the only way left goes back
        // through d1, which the envelope has visited.
        let down: HashSet<_> = [d("d3")].into();
        assert_eq!(n.next_hop(&d("d3"), &down, &[d("d1")]), None);
        assert_eq!(n.next_hop(&d("d3"), &down, &[]), Some(d("d1")));
        assert_eq!(n.neighbors(), vec![d("d1"), d("d3")]);
    }
}
