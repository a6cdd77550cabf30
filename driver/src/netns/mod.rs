//! Everything the driver does inside network namespaces: entering them on dedicated
//! threads ([`thread`]), handing a host device to a pod ([`configure`]) and giving it
//! back exactly as it was ([`restore`], from the [`host::HostOriginals`] captured
//! before the first change). Netlink plumbing lives in [`netlink`] (framing),
//! [`link`] (rtnetlink: links, addresses, routes), [`rules`] (policy routing rules,
//! neighbours), [`vrf`], [`sysctl`] (per-interface `/proc/sys/net` values) and
//! [`ethtool`] (generic netlink features and private flags).

pub mod configure;
pub mod configuring;
pub mod ethtool;
pub mod foreign;
pub mod host;
pub mod link;
pub mod netlink;
pub mod quiet;
pub mod restore;
pub mod rules;
pub mod sysctl;
pub mod thread;
pub mod vrf;

pub use configure::{
    move_and_configure, ClaimRule, ConfigureError, Configured, InterfaceSettings, Left,
    NeighbourSpec, RouteSpec, Step, VrfSpec,
};
pub use foreign::{remove_foreign_programs, ForeignProgramError, RemovedProgram};
pub use host::HostOriginals;
pub use restore::{restore, restore_device, PodSide, RestoreError, RestoreOutcome};
pub use thread::{ifindex_of, ifname_of, Netns, NetnsError};
