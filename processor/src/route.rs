//! Whether a message's target lives on this domain.
//!
//! Forwarding to other domains over domain links belongs to the network (a later part);
//! until a route exists, a message for another domain is refused with `NO_ROUTE` rather than
//! stored where its user would never fetch it.

use common::ids::UserId;
use common::network::{Home, Network};

use crate::ProcessError;

/// Ok if `user` lives here.
pub fn local(network: &Network, user: &UserId) -> Result<(), ProcessError> {
    match network.home(user) {
        Some(Home::Local) => Ok(()),
        Some(Home::Remote(domain)) => Err(ProcessError::NoRoute(domain.to_string())),
        None => Err(ProcessError::NoRoute(format!("(none holds {user})"))),
    }
}
