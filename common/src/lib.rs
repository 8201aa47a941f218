//! The language every part of linker speaks.
//!
//! Nothing here depends on an engine: connectors, processors and backends meet on these types.
//!
//! Layout:
//! - [`ids`]: `UserId`, `AppName`, `DomainName`, `ConnectorName`, `MessageId`, socket addresses.
//! - [`frame`]: client frames: parsing what a client sends, writing what it receives.
//! - [`envelope`]: the internal message a connector hands to processors, and the commands a
//!   processor sends back to a connector.
//! - [`config`]: the network configuration (the seed's YAML format) and its validation.
//! - [`network`]: user id -> home domain, and the domain graph.
//! - [`link`]: the wire format of domain links.
//! - [`channel`]: channel names (`<appName>/<name>`).
//! - [`bus`], [`store`], [`presence`]: the three backend traits.

pub mod bus;
pub mod channel;
pub mod config;
pub mod envelope;
pub mod frame;
pub mod ids;
pub mod link;
pub mod network;
pub mod presence;
pub mod store;

/// Milliseconds since the Unix epoch, the timestamp unit of every envelope and stored message.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
