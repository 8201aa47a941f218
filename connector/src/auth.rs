//! The checks behind `AUTH_CLIENT`: the user id names a configured client app, the app id
//! matches, and the user lives on this domain.
//!
//! Each failure is an [`AuthError`] whose `reason()` goes into the `AUTH_CLIENT_REPLY`.
//! Apps with `authEnabled` are refused until the HTTP callback exists, and say so.

use common::ids::{IdError, UserId};
use common::network::{Home, Network};

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
    #[error("no domain holds the number of user `{0}`")]
    NoHomeDomain(String),
    #[error("client app `{0}` requires the auth callback, which this server does not support yet")]
    CallbackUnsupported(String),
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
            AuthError::NoHomeDomain(_) => "NO_HOME_DOMAIN",
            AuthError::CallbackUnsupported(_) => "AUTH_CALLBACK_UNSUPPORTED",
            AuthError::PresenceUnavailable(_) => "PRESENCE_UNAVAILABLE",
        }
    }
}

/// Decides whether `user_id` may log in here with `app_id`.
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
    match network.home(&user) {
        Some(Home::Local) => {}
        Some(Home::Remote(home)) => {
            return Err(AuthError::WrongDomain {
                user: user.to_string(),
                home: home.to_string(),
            });
        }
        None => return Err(AuthError::NoHomeDomain(user.to_string())),
    }
    if app.auth_enabled {
        return Err(AuthError::CallbackUnsupported(app.app_name.clone()));
    }
    Ok(user)
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
