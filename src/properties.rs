//! placeholder
/// placeholder
#[derive(Debug, Clone, Default)]
pub struct Properties;
