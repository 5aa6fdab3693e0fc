#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub)]
#![deny(unsafe_code)]

mod client;
mod connection;
mod deadline;
mod end;
mod engine;
mod error;
#[cfg(test)]
mod facade_tests;
mod incoming;
mod limits;
mod logging;
mod message;
mod ops;
mod options;
mod payload;
mod properties;
mod qos;
mod reason_code;
mod reconnect;
mod session;
mod topic;
mod will;

pub use client::Client;
pub use connection::Connection;
pub use error::{Error, TlsErrorKind};
pub use incoming::Messages;
pub use message::Message;
pub use ops::{
    Filters, IntoFilter, IntoFilters, IntoUnsubscribeFilters, Publish, RetainHandling, Subscribe,
    SubscribeOptions, Unsubscribe, UnsubscribeFilters,
};
pub use options::{
    CertRequirements, CleanStart, ClientBuilder, ProtocolVersion, ProxyKind, ProxySettings,
    QueueType, SocketOption, TlsParams, TlsVersion, Transport,
};
pub use payload::Payload;
pub use properties::{PayloadFormat, Properties};
pub use qos::QoS;
pub use reason_code::ReasonCode;
pub use reconnect::{ConnectionEvent, ConnectionEvents, ReconnectPolicy};
pub use topic::{Topic, Wildcard};
pub use will::Will;

/// Guides: how the client behaves, with examples. Each example compiles.
pub mod guide {
    #[doc = include_str!("../docs/guide/migrating.md")]
    pub mod migrating {}
    #[doc = include_str!("../docs/guide/tls_and_proxies.md")]
    pub mod tls_and_proxies {}
    #[doc = include_str!("../docs/guide/backpressure.md")]
    pub mod backpressure {}
    #[doc = include_str!("../docs/guide/consumers.md")]
    pub mod consumers {}
    #[doc = include_str!("../docs/guide/v5_properties.md")]
    pub mod v5_properties {}
    #[doc = include_str!("../docs/guide/reconnection.md")]
    pub mod reconnection {}
    #[doc = include_str!("../docs/guide/guarantees.md")]
    pub mod guarantees {}
}

/// The version of the Paho C engine this crate runs on (`"1.3.16"`), as the engine
/// reports it: worth quoting in bug reports.
///
/// ```
/// assert_eq!(aiomqtt::paho_c_version(), Some("1.3.16"));
/// ```
pub fn paho_c_version() -> Option<&'static str> {
    engine::paho_version()
}
