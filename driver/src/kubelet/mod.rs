//! The kubelet plugin: registration, the DRA services and the health stream.
pub mod proto;
