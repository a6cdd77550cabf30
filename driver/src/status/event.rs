//! What `lifecycle` tells the status writer: one [`DeviceEvent`] per state change of a
//! device. Plain data, sent over an unbounded channel so the pod hooks never wait for
//! the API server.

use std::path::PathBuf;

use crate::datapath::DatapathKey;
use crate::dhcp::Lease;
use crate::state::{ClaimRecord, PodRecord};

/// One device of one claim, as the status entry and the health stream name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRef {
    pub claim: ClaimRecord,
    pub pod: PodRecord,
    pub pool: String,
    pub device: String,
}

/// Which part of handing the device to the pod failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedPart {
    /// Config, device lookup, move, addresses, routes, ethtool: `NetworkReady` is False.
    Network,
    /// The interface was configured, the data path could not be attached (so the
    /// device went home again): `DataPathReady` is False.
    DataPath,
    /// This device was fine but was returned because another device of the same pod
    /// failed.
    Sibling,
}

/// A state change of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The device is inside the pod, configured, and (unless disabled) its data path
    /// is attached.
    Started {
        device: DeviceRef,
        pod_netns: PathBuf,
        pod_ifname: String,
        /// `None` when the data path is disabled (`--dataplane=off`).
        datapath: Option<DatapathKey>,
        /// The lease acquired for the device (`interface.dhcp`); `None` otherwise.
        dhcp: Option<Lease>,
    },
    /// The DHCP lease of a started device changed: renewed or acquired again
    /// (`Some`), or ran out (`None`).
    Lease {
        device: DeviceRef,
        lease: Option<Lease>,
    },
    /// Handing the device to the pod failed; it is back home.
    Failed {
        device: DeviceRef,
        part: FailedPart,
        /// One CamelCase word, e.g. `RoutesFailed`.
        reason: String,
        message: String,
    },
    /// The device left the pod (pod stopped or gone).
    Stopped { device: DeviceRef },
}

impl DeviceEvent {
    pub fn device(&self) -> &DeviceRef {
        match self {
            DeviceEvent::Started { device, .. }
            | DeviceEvent::Failed { device, .. }
            | DeviceEvent::Lease { device, .. }
            | DeviceEvent::Stopped { device } => device,
        }
    }
}
