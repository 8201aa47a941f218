//! The network configuration, in the seed's YAML format, and its validation.
//!
//! `domains`, `domainLinks`, `clientApps` and `userDistributions` (top level, or inside a
//! client app) are read as the original meta-server wrote them; other top-level keys (the
//! original's `spring:` and `server:`) are ignored. [`NetworkConfig::validate`] refuses a bad
//! file with the field and the reason, once, at load. YAML is read with `serde_norway`, the
//! maintained fork of the deprecated `serde_yaml`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::{UserId, is_app_name, is_reserved_app_name};

/// The whole network: its domains, the links between them, the client apps and where their
/// users live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    #[serde(default)]
    pub domain_links: Vec<DomainLink>,
    #[serde(default)]
    pub client_apps: Vec<ClientApp>,
    /// Ranges for every app that has none of its own.
    #[serde(default)]
    pub user_distributions: Vec<UserDistribution>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainConfig {
    pub name: String,
    /// `ws://` for users, `tcp://` for domain links.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// A bidirectional link between two domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainLink {
    pub n1: String,
    pub n2: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientApp {
    /// The user-id prefix of this app's users.
    pub app_name: String,
    /// The secret-ish id a client must present at auth.
    pub app_id: String,
    /// Receives USER_CONNECTED/USER_DISCONNECTED and may close the app's users.
    #[serde(default)]
    pub master_user_id: Option<String>,
    #[serde(default)]
    pub auth_url: Option<String>,
    #[serde(default)]
    pub auth_enabled: bool,
    /// How long a successful callback answer is reused for the same (user, token); 0 = never.
    #[serde(default)]
    pub auth_cache_seconds: u64,
    #[serde(default)]
    pub user_distributions: Vec<UserDistribution>,
    /// Who may create, join and post to the app's channels.
    #[serde(default)]
    pub channels: ChannelRules,
    /// How many RELIABLE posts of each of the app's channels are kept, and for how long.
    #[serde(default)]
    pub channel_history: ChannelHistory,
}

/// The channel rules of one client app (`channels:` in its entry).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRules {
    #[serde(default)]
    pub policy: ChannelPolicy,
}

/// `open`: any user of the app may join, post to and list any channel of the app (a channel
/// exists while it has members). `managed` (the default): only the users the app's master
/// user added with `CHANNEL_ADD`, and the master user itself. The default is `managed` so that
/// a config written before channels existed gives its users no new way to reach each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelPolicy {
    Open,
    #[default]
    Managed,
}

/// Most posts any channel keeps, whatever the config says.
pub const MAX_CHANNEL_HISTORY: u64 = 10_000;

/// What each channel of an app keeps for `SUBSCRIBE {history}` and `{after}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChannelHistory {
    /// The last `keep` posts (at most [`MAX_CHANNEL_HISTORY`]); 0 keeps none and numbers none.
    pub keep: u64,
    /// Posts older than this are not replayed and are dropped.
    pub max_age_seconds: u64,
}

impl Default for ChannelHistory {
    fn default() -> ChannelHistory {
        ChannelHistory {
            keep: 100,
            max_age_seconds: 86_400,
        }
    }
}

/// Users of numbers `from..=to` live on `domain_name`; an absent `to` is open-ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDistribution {
    pub domain_name: String,
    #[serde(default)]
    pub from: u64,
    #[serde(default)]
    pub to: Option<u64>,
}

impl UserDistribution {
    pub fn contains(&self, number: u64) -> bool {
        self.from <= number && self.to.is_none_or(|to| number <= to)
    }

    fn end(&self) -> u64 {
        self.to.unwrap_or(u64::MAX)
    }
}

/// A config file that cannot be used, with the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not valid YAML for a network config: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl NetworkConfig {
    /// Reads and validates a YAML file.
    pub fn load(path: &std::path::Path) -> Result<NetworkConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Syntax { reason, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                reason,
            },
            ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                field: format!("{}: {field}", path.display()),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<NetworkConfig, ConfigError> {
        let config: NetworkConfig =
            serde_norway::from_str(text).map_err(|e| ConfigError::Syntax {
                path: "<text>".into(),
                reason: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in config of `linker domain`: one domain, the seed's `ANZ` app, auth off,
    /// open channels.
    pub fn single_domain(domain: &str) -> NetworkConfig {
        NetworkConfig {
            domains: vec![DomainConfig {
                name: domain.to_owned(),
                urls: vec!["ws://127.0.0.1:8088".into(), "tcp://127.0.0.1:9089".into()],
            }],
            domain_links: vec![],
            client_apps: vec![ClientApp {
                app_name: "ANZ".into(),
                app_id: "app-id-343".into(),
                master_user_id: Some("ANZ-123223".into()),
                auth_url: None,
                auth_enabled: false,
                auth_cache_seconds: 0,
                user_distributions: vec![],
                // Open, so a newcomer can try channels at once.
                channels: ChannelRules {
                    policy: ChannelPolicy::Open,
                },
                channel_history: ChannelHistory::default(),
            }],
            user_distributions: vec![],
        }
    }

    /// Checks everything a running domain relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if d.name.trim().is_empty() {
                return Err(invalid(format!("domains[{i}].name"), "is empty"));
            }
            if !names.insert(d.name.as_str()) {
                return Err(invalid(
                    format!("domains[{i}].name"),
                    format!("domain `{}` is defined twice", d.name),
                ));
            }
        }
        let known = |name: &str| self.domains.iter().any(|d| d.name == name);
        for (i, link) in self.domain_links.iter().enumerate() {
            for (key, end) in [("n1", &link.n1), ("n2", &link.n2)] {
                if !known(end) {
                    return Err(invalid(
                        format!("domainLinks[{i}].{key}"),
                        format!("links to unknown domain `{end}`"),
                    ));
                }
            }
            if link.n1 == link.n2 {
                return Err(invalid(
                    format!("domainLinks[{i}]"),
                    "links a domain to itself",
                ));
            }
            for (key, end) in [("n1", &link.n1), ("n2", &link.n2)] {
                if self.link_url(end).is_none() {
                    return Err(invalid(
                        format!("domainLinks[{i}].{key}"),
                        format!("linked domain `{end}` has no tcp:// url"),
                    ));
                }
                let app = domain_app_name(end);
                if self.app(&app).is_none() {
                    return Err(invalid(
                        format!("domainLinks[{i}].{key}"),
                        format!(
                            "linked domain `{end}` has no client app `{app}` to authenticate its links"
                        ),
                    ));
                }
            }
        }
        let mut app_names = HashSet::new();
        let mut app_ids = HashSet::new();
        for (i, app) in self.client_apps.iter().enumerate() {
            let field = |k: &str| format!("clientApps[{i}].{k}");
            if !is_app_name(&app.app_name) {
                return Err(invalid(
                    field("appName"),
                    format!("`{}` must be 1-64 letters, digits or `_`", app.app_name),
                ));
            }
            if is_reserved_app_name(&app.app_name) {
                return Err(invalid(
                    field("appName"),
                    format!(
                        "`{}` starts with a reserved prefix (SYSTEM, Connector, Processor)",
                        app.app_name
                    ),
                ));
            }
            if !app_names.insert(app.app_name.as_str()) {
                return Err(invalid(
                    field("appName"),
                    format!("app name `{}` is used twice", app.app_name),
                ));
            }
            if !app_ids.insert(app.app_id.as_str()) {
                return Err(invalid(
                    field("appId"),
                    format!("app id `{}` is used twice", app.app_id),
                ));
            }
            if let Some(master) = &app.master_user_id {
                match UserId::parse(master) {
                    Ok(u) if u.app() == app.app_name => {}
                    _ => {
                        return Err(invalid(
                            field("masterUserId"),
                            format!("`{master}` is not a user id of app `{}`", app.app_name),
                        ));
                    }
                }
            }
            if app.auth_enabled {
                match app.auth_url.as_deref().map(str::trim) {
                    None | Some("") => {
                        return Err(invalid(
                            field("authUrl"),
                            "authEnabled is true but no authUrl",
                        ));
                    }
                    Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                        return Err(invalid(
                            field("authUrl"),
                            format!("`{url}` is not an http:// or https:// URL"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            check_ranges(&field("userDistributions"), &app.user_distributions, &known)?;
        }
        check_ranges("userDistributions", &self.user_distributions, &known)?;
        Ok(())
    }

    pub fn app(&self, app_name: &str) -> Option<&ClientApp> {
        self.client_apps.iter().find(|a| a.app_name == app_name)
    }

    /// The first url of `domain` with the given scheme (`"ws://"`, `"tcp://"`).
    pub fn url(&self, domain: &str, scheme: &str) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.name == domain)?
            .urls
            .iter()
            .map(|u| u.trim())
            .find(|u| u.starts_with(scheme))
    }

    /// Where `domain`'s connector listens for domain links: the `host:port` of its `tcp://`
    /// url (port 9089 if the url has none).
    pub fn link_url(&self, domain: &str) -> Option<String> {
        let rest = self.url(domain, "tcp://")?.trim_start_matches("tcp://");
        let host_port = rest.split('/').next().unwrap_or_default();
        if host_port.is_empty() {
            return None;
        }
        if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            Some(host_port.to_owned())
        } else {
            Some(format!("{host_port}:{DEFAULT_LINK_PORT}"))
        }
    }

    /// True if a link joins domains `a` and `b`.
    pub fn linked(&self, a: &str, b: &str) -> bool {
        self.domain_links
            .iter()
            .any(|l| (l.n1 == a && l.n2 == b) || (l.n1 == b && l.n2 == a))
    }
}

/// The default port of a domain's link listener.
pub const DEFAULT_LINK_PORT: u16 = 9089;

/// The client app a domain authenticates its links as, as in the original network:
/// `domain-01` -> `domain1` (letters, then the number without leading zeros); a name of
/// another shape loses its non-alphanumeric characters.
pub fn domain_app_name(domain: &str) -> String {
    if let Some((letters, digits)) = domain.rsplit_once('-')
        && !letters.is_empty()
        && letters.chars().all(|c| c.is_ascii_alphabetic())
        && let Ok(n) = digits.parse::<u64>()
    {
        return format!("{letters}{n}");
    }
    domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

fn check_ranges(
    field: &str,
    ranges: &[UserDistribution],
    known: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    for (i, r) in ranges.iter().enumerate() {
        if !known(&r.domain_name) {
            return Err(invalid(
                format!("{field}[{i}].domainName"),
                format!("names unknown domain `{}`", r.domain_name),
            ));
        }
        if r.end() < r.from {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("range is inverted: from {} > to {}", r.from, r.end()),
            ));
        }
        for (j, other) in ranges.iter().enumerate().take(i) {
            if r.from <= other.end() && other.from <= r.end() {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    format!("range {}..{} overlaps {field}[{j}]", r.from, r.end()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
spring:
  profiles: development
server:
  port: 9000
domains:
  - name: domain-01
    urls:
      - tcp://192.168.56.1:9089
      - ws://192.168.56.1:8088
  - name: domain-02
    urls:
      - tcp://192.168.56.2:9089
      - ws://192.168.56.2:8088
  - name: domain-03
    urls: [tcp://192.168.56.3:9089, ws://192.168.56.3:8088]
  - name: domain-04
    urls: [tcp://192.168.56.4:9089, ws://192.168.56.4:8088]
domainLinks:
  - n1: domain-01
    n2: domain-02
  - n1: domain-02
    n2: domain-03
  - n1: domain-03
    n2: domain-04
  - n1: domain-01
    n2: domain-04
clientApps:
  - appName: domain1
    appId: domain1
    masterUserId: domain1-1
    authEnabled: false
  - appName: domain2
    appId: domain2
    masterUserId: domain2-1
    authEnabled: false
  - appName: domain3
    appId: domain3
    masterUserId: domain3-1
    authEnabled: false
  - appName: domain4
    appId: domain4
    masterUserId: domain4-1
    authEnabled: false
  - appName: ANZ
    appId: app-id-343
    masterUserId: ANZ-123223
    authUrl: http://localhost:4200/auth
    authEnabled: false
userDistributions:
  - domainName: domain-01
    from: 0
    to: 999999
  - domainName: domain-02
    from: 1000000
    to: 2999999
  - domainName: domain-03
    from: 3000000
    to: 5999999
  - domainName: domain-04
    from: 6000000
"#;

    #[test]
    fn the_seed_example_loads_as_written() {
        let c = NetworkConfig::from_yaml(SEED).unwrap();
        assert_eq!(c.domains.len(), 4);
        assert_eq!(c.domain_links.len(), 4);
        assert_eq!(
            c.client_apps[4].master_user_id.as_deref(),
            Some("ANZ-123223")
        );
        assert_eq!(
            c.link_url("domain-02").as_deref(),
            Some("192.168.56.2:9089")
        );
        assert_eq!(c.url("domain-03", "ws://"), Some("ws://192.168.56.3:8088"));
        assert_eq!(c.user_distributions[3].to, None);
    }

    #[test]
    fn channel_policy_is_managed_unless_an_app_opens_it() {
        let c = NetworkConfig::from_yaml(SEED).unwrap();
        assert_eq!(c.client_apps[4].channels.policy, ChannelPolicy::Managed);
        let open = SEED.replace(
            "authUrl: http://localhost:4200/auth",
            "authUrl: http://localhost:4200/auth\n    channels: {policy: open}",
        );
        let c = NetworkConfig::from_yaml(&open).unwrap();
        assert_eq!(c.client_apps[4].channels.policy, ChannelPolicy::Open);
        let bad = SEED.replace(
            "authUrl: http://localhost:4200/auth",
            "authUrl: http://localhost:4200/auth\n    channels: {policy: closed}",
        );
        let err = NetworkConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("closed"), "{err}");
        let built_in = NetworkConfig::single_domain("domain-01");
        assert_eq!(built_in.client_apps[0].channels.policy, ChannelPolicy::Open);
    }

    #[test]
    fn domains_authenticate_links_as_their_domain_app() {
        assert_eq!(domain_app_name("domain-01"), "domain1");
        assert_eq!(domain_app_name("domain-12"), "domain12");
        assert_eq!(domain_app_name("eu_west"), "euwest");
    }

    #[test]
    fn bad_files_are_refused_with_field_and_reason() {
        let cases = [
            (
                SEED.replace("n2: domain-03", "n2: domain-09"),
                "domainLinks[1].n2",
            ),
            (
                SEED.replace("to: 999999", "to: 1000000"),
                "userDistributions[1]",
            ),
            (
                SEED.replace("from: 3000000", "from: 9000000"),
                "userDistributions[2]",
            ),
            (
                SEED.replace("appName: ANZ\n", "appName: domain1\n"),
                "clientApps[4].appName",
            ),
            (
                SEED.replace("appId: domain1", "appId: app-id-343"),
                "clientApps[4].appId",
            ),
            (
                SEED.replace("masterUserId: ANZ-123223", "masterUserId: BNZ-1"),
                "masterUserId",
            ),
            (
                SEED.replace("tcp://192.168.56.3:9089", "http://192.168.56.3:9089"),
                "has no tcp:// url",
            ),
            (
                SEED.replace(
                    "appName: domain4\n    appId: domain4",
                    "appName: router4\n    appId: domain4",
                ),
                "has no client app `domain4`",
            ),
            (SEED.replace("to: 5999999", "to: 2999999"), "inverted"),
        ];
        for (text, field) in cases {
            let err = NetworkConfig::from_yaml(&text).unwrap_err().to_string();
            assert!(err.contains(field), "expected {field} in {err}");
        }
    }
}
