//! DHCPv4 for pod interfaces (`interface.dhcp: true`): netclaim, not the pod, is the
//! client. Before the pod-start hook returns, a lease is acquired inside the pod's
//! namespace and its address and routes are installed; while the pod runs the lease
//! is renewed; when the pod stops it is released and removed.
//!
//! * [`lease`] — what a server's reply grants and when to renew (pure);
//! * [`exchange`] — DISCOVER/OFFER/REQUEST/ACK, renew, rebind, release over a
//!   [`exchange::Transport`], with retransmissions inside a deadline;
//! * [`socket`] — the transport: UDP port 68 bound to the device;
//! * [`install`] — the lease's address and routes on the interface, and their removal;
//! * [`keeper`] — [`LeaseKeeper`], the thread that owns one device's lease;
//! * [`policy`] — the lease applied to the device's data-path policy (pure).
//!
//! The data path lets the client's own exchange through when the policy says the
//! device uses DHCP (`netclaim_common::flags::DHCP_CLIENT`; README, "Enforcement").

pub mod exchange;
pub mod install;
pub mod keeper;
pub mod lease;
pub mod policy;
pub mod socket;

pub use keeper::{DhcpError, LeaseEvent, LeaseKeeper};
pub use lease::Lease;
pub use policy::policy_with_lease;
