//! Test support for netclaim: real network namespaces, veth pairs and bpffs roots
//! that clean up after themselves, plus (in later modules) stand-ins for kubelet, the
//! Kubernetes API server and the container runtime that speak the real protocols.
//!
//! Everything here creates its objects inside namespaces it made itself; the
//! machine's root namespace never gets a test device, address, route or packet.

pub mod apiserver;
pub mod chaos;
pub mod containerd;
pub mod dhcp_server;
pub mod fake_sysfs;
pub mod floor;
pub mod hook_steps;
pub mod kubelet;
pub mod netenv;
pub mod nri_wire;
pub mod raw;
pub mod runp;
pub mod runtime;
pub mod scenario;
pub mod tmpfs;
pub mod topology;
pub mod traffic;
pub mod validation;
