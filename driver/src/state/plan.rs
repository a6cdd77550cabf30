//! The plan of one prepared device and the per-claim record that groups them.
//!
//! These types are stored in the checkpoint as JSON: new fields must carry
//! `#[serde(default)]` so an older checkpoint still loads.

use serde::{Deserialize, Serialize};

/// The claim a plan belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod that will receive the device (from the claim's `status.reservedFor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What prepare decided for one device of one claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub claim: ClaimRecord,
    pub pod: PodRecord,
    /// Device name as published in the ResourceSlice.
    pub device: String,
    /// Pool name as published in the ResourceSlice.
    pub pool: String,
    /// The claim's requests this device satisfies (`results[].request`).
    pub requests: Vec<String>,
    /// The merged and validated opaque parameters of this driver for the device.
    #[serde(default)]
    pub config: serde_json::Value,
    /// True while the device is inside the pod (set by the NRI hooks).
    #[serde(default)]
    pub attached: bool,
    /// `results[].shareID`, when the device is shared (consumable capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// Unix seconds when the plan was made.
    #[serde(default)]
    pub prepared_at: u64,
    /// What the pod hooks did with the device while it is inside the pod: enough to
    /// detach and restore it after a restart of the driver. `None` while at home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// The record of a device handed to a pod (written by `lifecycle`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The pod's network namespace path (the runtime's bind mount).
    pub pod_netns: std::path::PathBuf,
    /// The device's name, ifindex and MAC inside the pod.
    pub pod_ifname: String,
    #[serde(default)]
    pub pod_ifindex: Option<u32>,
    #[serde(default)]
    pub pod_mac: Option<[u8; 6]>,
    /// The host's state of the device before it moved.
    pub originals: crate::netns::HostOriginals,
    /// Whether a data path is pinned for the device (key: claim namespace/name, device).
    #[serde(default)]
    pub datapath: bool,
    /// Unix seconds when the device was attached.
    #[serde(default)]
    pub attached_at: u64,
    /// For `interface.dhcp`: the lease the driver holds for the device, so a restarted
    /// driver keeps renewing it and releases it at stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpRecord>,
}

/// The DHCP lease of an attached device (written by `lifecycle`, updated on every
/// renewal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpRecord {
    /// The lease held now; `None` after it ran out and before a new one came.
    #[serde(default)]
    pub lease: Option<crate::dhcp::Lease>,
    /// The device's data-path policy without the lease (`crate::dhcp::policy_with_lease`
    /// adds each new lease to it); `None` when the data path is off.
    #[serde(default)]
    pub policy: Option<crate::datapath::DatapathPolicy>,
}

/// Everything prepared for one claim: the checkpoint's unit of storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimPlans {
    pub claim: ClaimRecord,
    /// One plan per device of this driver in the claim's allocation.
    pub plans: Vec<Plan>,
}
