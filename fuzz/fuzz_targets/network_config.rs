//! Arbitrary text as a network config file (`NetworkConfig::from_yaml`, which parses and
//! validates).
//!
//! Never panics, and a config it accepts is one a domain can run on: indexing it and routing
//! over it does not panic either, and it reads back the same after being written as YAML
//! (the meta-server serves it to every domain).
#![no_main]

use std::collections::HashSet;

use common::config::NetworkConfig;
use common::ids::{DomainName, UserId};
use common::network::Network;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let Ok(config) = NetworkConfig::from_yaml(&text) else {
        return;
    };
    let yaml = serde_norway::to_string(&config).expect("a config serialises");
    let again = NetworkConfig::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("its own YAML refused: {e}\n{yaml}"));
    assert_eq!(again, config, "YAML does not read back the same:\n{yaml}");
    route_over(config);
});

/// Every domain as the local one: homes of a few users, next hops to every domain, with and
/// without one domain down.
fn route_over(config: NetworkConfig) {
    let domains: Vec<DomainName> = config
        .domains
        .iter()
        .take(8)
        .map(|d| DomainName::new(&d.name))
        .collect();
    let mut users: Vec<UserId> = Vec::new();
    for app in config.client_apps.iter().take(4) {
        for n in [0u64, 1, 999_999, 1_000_000, 999_999_999_999_999_999] {
            if let Ok(u) = UserId::parse(&format!("{}-{n}", app.app_name)) {
                users.push(u);
            }
        }
    }
    for local in &domains {
        let network = Network::new(config.clone(), local.clone());
        for u in &users {
            let _ = network.home(u);
        }
        for target in &domains {
            let up = HashSet::new();
            if let Some(hop) = network.next_hop(target, &up, &[]) {
                assert!(domains.contains(&hop) || hop == *local);
            }
            let _ = network.next_hop(target, &HashSet::from([target.clone()]), &domains);
        }
    }
}
