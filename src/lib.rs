#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod engine;
mod error;
mod properties;
mod qos;
mod reason_code;
mod topic;

pub use error::Error;
pub use properties::Properties;
pub use qos::QoS;
pub use reason_code::ReasonCode;
pub use topic::{Topic, Wildcard};
