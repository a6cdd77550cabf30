//! Claim configuration: the [`NetworkConfig`] format and its validation.

pub mod types;

pub use types::{EthtoolConfig, InterfaceConfig, NetworkConfig, RouteConfig};
