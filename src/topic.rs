//! placeholder
/// placeholder
pub struct Topic;
/// placeholder
pub struct Wildcard;
