//! The checks behind `AUTH_CLIENT`, and the client app's HTTP auth callback.
//!
//! Always: the user id names a configured client app, the app id matches, and the user lives
//! on this domain. If the app has `authEnabled`, the connector then POSTs
//! `{"appId","userId","token"}` to its `authUrl` and accepts only a 2xx answer
//! `{"appId","userId","isAuthenticated":true}` whose ids match the request. Calls are bounded
//! in number and time; every failure is an [`AuthError`] whose `reason()` goes into the
//! `AUTH_CLIENT_REPLY`, so no socket is left "authenticating".

use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info};

use common::config::domain_app_name;
use common::ids::{IdError, UserId};
use common::network::{Home, Network};

/// Largest callback answer read; a larger one is a bad reply.
const MAX_REPLY_BYTES: usize = 16 * 1024;
/// Most cached callback answers kept; past it nothing new is cached until entries expire.
const MAX_CACHED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("`{0}` is not a user id of the form <app>-<number>")]
    InvalidUserId(String),
    #[error("user id `{0}` is reserved")]
    ReservedUserId(String),
    #[error("no client app named `{0}`")]
    UnknownApp(String),
    #[error("appId does not match client app `{0}`")]
    AppIdMismatch(String),
    #[error("user `{user}` lives on domain `{home}`, not on this one")]
    WrongDomain { user: String, home: String },
    #[error("app `{0}` is a domain's link identity; its users cannot log in over WebSocket")]
    DomainApp(String),
    #[error("no domain holds the number of user `{0}`")]
    NoHomeDomain(String),
    #[error("the auth callback said the user is not authenticated")]
    CallbackRejected,
    #[error("the auth callback did not answer within {0:?}")]
    CallbackTimeout(Duration),
    #[error("the auth callback answered HTTP {0}")]
    CallbackStatus(u16),
    #[error("the auth callback's answer is not usable: {0}")]
    CallbackBadReply(String),
    #[error("the auth callback cannot be reached: {0}")]
    CallbackUnreachable(String),
    #[error("too many auth callbacks in flight")]
    CallbackBusy,
    #[error("presence is unavailable: {0}")]
    PresenceUnavailable(String),
}

impl AuthError {
    /// The stable code carried in `AUTH_CLIENT_REPLY.data.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::InvalidUserId(_) => "INVALID_USER_ID",
            AuthError::ReservedUserId(_) => "RESERVED_ID",
            AuthError::UnknownApp(_) => "UNKNOWN_APP",
            AuthError::AppIdMismatch(_) => "APP_ID_MISMATCH",
            AuthError::WrongDomain { .. } => "WRONG_DOMAIN",
            AuthError::DomainApp(_) => "DOMAIN_APP",
            AuthError::NoHomeDomain(_) => "NO_HOME_DOMAIN",
            AuthError::CallbackRejected => "AUTH_REJECTED",
            AuthError::CallbackTimeout(_) => "AUTH_CALLBACK_TIMEOUT",
            AuthError::CallbackStatus(_) => "AUTH_CALLBACK_STATUS",
            AuthError::CallbackBadReply(_) => "AUTH_CALLBACK_BAD_REPLY",
            AuthError::CallbackUnreachable(_) => "AUTH_CALLBACK_UNREACHABLE",
            AuthError::CallbackBusy => "AUTH_CALLBACK_BUSY",
            AuthError::PresenceUnavailable(_) => "PRESENCE_UNAVAILABLE",
        }
    }
}

/// Decides whether `user_id` may log in here with `app_id`, without the callback.
pub fn check(network: &Network, app_id: &str, user_id: &str) -> Result<UserId, AuthError> {
    let user = UserId::parse(user_id).map_err(|e| match e {
        IdError::Malformed(id) => AuthError::InvalidUserId(id),
        IdError::Reserved(id) => AuthError::ReservedUserId(id),
    })?;
    let app = network
        .app(user.app())
        .ok_or_else(|| AuthError::UnknownApp(user.app().to_owned()))?;
    if app.app_id != app_id {
        return Err(AuthError::AppIdMismatch(app.app_name.clone()));
    }
    if network
        .config()
        .domains
        .iter()
        .any(|d| domain_app_name(&d.name) == app.app_name)
    {
        return Err(AuthError::DomainApp(app.app_name.clone()));
    }
    match network.home(&user) {
        Some(Home::Local) => Ok(user),
        Some(Home::Remote(home)) => Err(AuthError::WrongDomain {
            user: user.to_string(),
            home: home.to_string(),
        }),
        None => Err(AuthError::NoHomeDomain(user.to_string())),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallbackRequest<'a> {
    app_id: &'a str,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallbackReply {
    app_id: Option<String>,
    user_id: Option<String>,
    is_authenticated: Option<bool>,
}

/// Runs the checks and, where the app asks for it, the callback.
pub struct Authenticator {
    http: reqwest::Client,
    in_flight: Semaphore,
    timeout: Duration,
    /// (app id, user id, token) -> when the cached "yes" expires.
    cache: DashMap<(String, String, String), Instant>,
}

impl Authenticator {
    pub fn new(timeout: Duration, max_in_flight: usize) -> Authenticator {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_default();
        Authenticator {
            http,
            in_flight: Semaphore::new(max_in_flight.max(1)),
            timeout,
            cache: DashMap::new(),
        }
    }

    pub async fn authenticate(
        &self,
        network: &Network,
        app_id: &str,
        user_id: &str,
        token: Option<&str>,
    ) -> Result<UserId, AuthError> {
        let user = check(network, app_id, user_id)?;
        let Some(app) = network.app(user.app()) else {
            return Err(AuthError::UnknownApp(user.app().to_owned()));
        };
        if !app.auth_enabled {
            return Ok(user);
        }
        let url = app.auth_url.as_deref().unwrap_or_default();
        let key = (
            app_id.to_owned(),
            user_id.to_owned(),
            token.unwrap_or_default().to_owned(),
        );
        if self
            .cache
            .get(&key)
            .is_some_and(|exp| *exp > Instant::now())
        {
            debug!(user = user_id, "auth callback answer reused from cache");
            return Ok(user);
        }
        self.callback(url, app_id, user_id, token).await?;
        if app.auth_cache_seconds > 0 {
            if self.cache.len() >= MAX_CACHED {
                let now = Instant::now();
                self.cache.retain(|_, exp| *exp > now);
            }
            if self.cache.len() < MAX_CACHED {
                let ttl = Duration::from_secs(app.auth_cache_seconds);
                self.cache.insert(key, Instant::now() + ttl);
            }
        }
        Ok(user)
    }

    async fn callback(
        &self,
        url: &str,
        app_id: &str,
        user_id: &str,
        token: Option<&str>,
    ) -> Result<(), AuthError> {
        let started = Instant::now();
        let _permit = tokio::time::timeout(self.timeout, self.in_flight.acquire())
            .await
            .map_err(|_| AuthError::CallbackBusy)?
            .map_err(|_| AuthError::CallbackBusy)?;
        let request = CallbackRequest {
            app_id,
            user_id,
            token,
        };
        let left = self.timeout.saturating_sub(started.elapsed());
        let exchange = async {
            let mut response = self
                .http
                .post(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&request)
                .send()
                .await
                .map_err(|e| classify(e, self.timeout))?;
            let status = response.status();
            if !status.is_success() {
                return Err(AuthError::CallbackStatus(status.as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| classify(e, self.timeout))?
            {
                if body.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(AuthError::CallbackBadReply("answer too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        let body = tokio::time::timeout(left, exchange)
            .await
            .map_err(|_| AuthError::CallbackTimeout(self.timeout))??;
        let reply: CallbackReply = serde_json::from_slice(&body)
            .map_err(|e| AuthError::CallbackBadReply(format!("not the expected JSON: {e}")))?;
        if reply.app_id.as_deref() != Some(app_id) || reply.user_id.as_deref() != Some(user_id) {
            return Err(AuthError::CallbackBadReply(
                "appId or userId does not match the request".into(),
            ));
        }
        match reply.is_authenticated {
            Some(true) => Ok(()),
            Some(false) => Err(AuthError::CallbackRejected),
            None => Err(AuthError::CallbackBadReply(
                "isAuthenticated is missing or null".into(),
            )),
        }
        .inspect_err(
            |e| info!(user = user_id, reason = e.reason(), error = %e, "auth callback refused"),
        )
    }
}

fn classify(e: reqwest::Error, timeout: Duration) -> AuthError {
    if e.is_timeout() {
        AuthError::CallbackTimeout(timeout)
    } else if e.is_connect() {
        AuthError::CallbackUnreachable(e.to_string())
    } else {
        AuthError::CallbackBadReply(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::{DomainConfig, NetworkConfig, UserDistribution};
    use common::ids::DomainName;

    fn network() -> Network {
        let mut c = NetworkConfig::single_domain("d1");
        c.domains.push(DomainConfig {
            name: "d2".into(),
            urls: vec![],
        });
        c.user_distributions = vec![
            UserDistribution {
                domain_name: "d1".into(),
                from: 0,
                to: Some(999),
            },
            UserDistribution {
                domain_name: "d2".into(),
                from: 1000,
                to: None,
            },
        ];
        Network::new(c, DomainName::new("d1"))
    }

    #[test]
    fn each_failed_check_has_its_reason() {
        let n = network();
        assert!(check(&n, "app-id-343", "ANZ-12").is_ok());
        let reason = |app: &str, user: &str| check(&n, app, user).unwrap_err().reason();
        assert_eq!(reason("app-id-343", "ANZ"), "INVALID_USER_ID");
        assert_eq!(reason("app-id-343", "SYSTEM-1"), "RESERVED_ID");
        assert_eq!(reason("app-id-343", "XYZ-12"), "UNKNOWN_APP");
        assert_eq!(reason("wrong", "ANZ-12"), "APP_ID_MISMATCH");
        assert_eq!(reason("app-id-343", "ANZ-5000"), "WRONG_DOMAIN");
    }
}
