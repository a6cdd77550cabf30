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
///
/// Stored as JSON; a checkpoint written before [`Placement`] existed (with `attached`
/// and `attachment`) still loads (see [`StoredPlan`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "StoredPlan")]
pub struct Plan {
    pub claim: ClaimRecord,
    pub pod: PodRecord,
    /// Device name as published in the ResourceSlice.
    pub device: String,
    /// Pool name as published in the ResourceSlice.
    pub pool: String,
    /// The claim's requests this device satisfies (`results[].request`).
    pub requests: Vec<String>,
    /// The merged opaque parameters of this driver for the device, as the claim has
    /// them.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The same parameters validated at prepare, so a pod hook does not parse them
    /// again; `None` in older checkpoints (then the hook parses `config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<crate::config::ValidConfig>,
    /// Where the device is, written ahead of every move (set by the pod hooks).
    #[serde(default)]
    pub placement: Placement,
    /// A data path may be staged for the device: attached at prepare on the host,
    /// counting only, carried into the pod by the move (written before it is made,
    /// cleared after it is removed at unprepare).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub staged: bool,
    /// Prepare took the device down at home, where it was up (written before it is
    /// taken down, cleared after unprepare brought it up again): a pod start records
    /// it as up in the host state it restores (see [`crate::lifecycle::parking`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
    /// `results[].shareID`, when the device is shared (consumable capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// Unix seconds when the plan was made.
    #[serde(default)]
    pub prepared_at: u64,
}

impl Plan {
    /// The record of the device's hand-over, in whatever phase it is.
    pub fn attachment(&self) -> Option<&Attachment> {
        self.placement.attachment()
    }

    /// True when the device is in its pod, configured and enforced.
    pub fn in_pod(&self) -> bool {
        matches!(self.placement, Placement::InPod { .. })
    }
}

/// Where a planned device is. Every move is written here first (write-ahead), so a
/// driver killed at any point finds out what to finish from this alone:
///
/// ```text
///   Home ──(pod start: record, then move/configure/attach)──▶ Entering ──▶ InPod
///    ▲                                                                      │
///    └──(restored, record cleared)── Leaving ◀──(pod stop: record first)───┘
/// ```
///
/// A restarted driver brings `Entering` and `Leaving` devices home (and starts the pod
/// over when it still runs); `InPod` devices stay while their pod lives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Placement {
    /// In the node's namespace as the host had it.
    #[default]
    Home,
    /// Being handed to the pod: moved, configured and attached in some part. The host
    /// originals were recorded before the first change.
    Entering { attachment: Attachment },
    /// In the pod, configured and (when `datapath`) enforced.
    InPod { attachment: Attachment },
    /// Being given back: the data path stands down, the device moves home and is
    /// restored, in some part.
    Leaving { attachment: Attachment },
}

impl Placement {
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Placement::Home => None,
            Placement::Entering { attachment }
            | Placement::InPod { attachment }
            | Placement::Leaving { attachment } => Some(attachment),
        }
    }

    pub fn attachment_mut(&mut self) -> Option<&mut Attachment> {
        match self {
            Placement::Home => None,
            Placement::Entering { attachment }
            | Placement::InPod { attachment }
            | Placement::Leaving { attachment } => Some(attachment),
        }
    }

    /// Short name for logs and errors.
    pub fn phase(&self) -> &'static str {
        match self {
            Placement::Home => "home",
            Placement::Entering { .. } => "entering",
            Placement::InPod { .. } => "inPod",
            Placement::Leaving { .. } => "leaving",
        }
    }
}

/// How a plan is read from the checkpoint: today's fields plus the two that
/// [`Placement`] replaced (`attached`, `attachment`). A record with `placement` uses
/// it; an older one maps `attached` + `attachment` to `InPod`, `attachment` alone to
/// `Entering` (a write-ahead record), neither to `Home`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPlan {
    claim: ClaimRecord,
    pod: PodRecord,
    device: String,
    pool: String,
    requests: Vec<String>,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    valid: Option<crate::config::ValidConfig>,
    #[serde(default)]
    placement: Option<Placement>,
    #[serde(default)]
    staged: bool,
    #[serde(default)]
    parked: bool,
    #[serde(default)]
    attached: bool,
    #[serde(default)]
    attachment: Option<Attachment>,
    #[serde(default)]
    share_id: Option<String>,
    #[serde(default)]
    prepared_at: u64,
}

impl From<StoredPlan> for Plan {
    fn from(s: StoredPlan) -> Self {
        let placement = match (s.placement, s.attached, s.attachment) {
            (Some(p), _, _) => p,
            (None, true, Some(attachment)) => Placement::InPod { attachment },
            (None, false, Some(attachment)) => Placement::Entering { attachment },
            (None, _, None) => Placement::Home,
        };
        Plan {
            claim: s.claim,
            pod: s.pod,
            device: s.device,
            pool: s.pool,
            requests: s.requests,
            config: s.config,
            valid: s.valid,
            placement,
            staged: s.staged,
            parked: s.parked,
            share_id: s.share_id,
            prepared_at: s.prepared_at,
        }
    }
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

#[cfg(test)]
impl Attachment {
    /// A recorded attachment in pod namespace `netns` (`net1`, from a host `eth1`).
    pub(crate) fn for_tests(netns: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "podNetns": netns, "podIfname": "net1",
            "originals": {"name": "eth1", "ifindex": 7, "kind": null, "mtu": 1500,
                "mac": null, "perm_mac": null, "up": true, "addresses": [], "routes": [],
                "gso_max_size": null, "gro_max_size": null, "gso_ipv4_max_size": null,
                "gro_ipv4_max_size": null, "ethtool_features": {}, "ethtool_changeable": [],
                "private_flags": {}}
        }))
        .expect("attachment")
    }
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

impl ClaimPlans {
    /// The stored plan of the same device as `plan` (same pool and device).
    pub fn plan_mut(&mut self, plan: &Plan) -> Option<&mut Plan> {
        self.plans
            .iter_mut()
            .find(|p| p.pool == plan.pool && p.device == plan.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment() -> Attachment {
        serde_json::from_value(serde_json::json!({
            "podNetns": "/run/netns/p",
            "podIfname": "net1",
            "originals": {
                "name": "eth1", "ifindex": 7, "kind": null, "mtu": 1500, "mac": null,
                "perm_mac": null, "up": true, "addresses": [], "routes": [],
                "gso_max_size": null, "gro_max_size": null, "gso_ipv4_max_size": null,
                "gro_ipv4_max_size": null, "ethtool_features": {},
                "ethtool_changeable": [], "private_flags": {}
            }
        }))
        .expect("attachment JSON")
    }

    fn older(attached: bool, with_record: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "claim": {"namespace": "ns", "name": "c", "uid": "u"},
            "pod": {"namespace": "ns", "name": "p", "uid": "pu"},
            "device": "d", "pool": "node", "requests": ["r"], "attached": attached,
        });
        if with_record {
            v["attachment"] = serde_json::to_value(attachment()).expect("to JSON");
        }
        v
    }

    #[test]
    fn older_checkpoints_map_to_a_placement() {
        let plan = |v| serde_json::from_value::<Plan>(v).expect("plan");
        assert_eq!(plan(older(false, false)).placement, Placement::Home);
        assert!(matches!(
            plan(older(true, true)).placement,
            Placement::InPod { .. }
        ));
        assert!(matches!(
            plan(older(false, true)).placement,
            Placement::Entering { .. }
        ));
        // Attached without a record: nothing to give back from; home.
        assert_eq!(plan(older(true, false)).placement, Placement::Home);
    }

    #[test]
    fn every_placement_survives_the_checkpoint() {
        let a = attachment();
        for placement in [
            Placement::Home,
            Placement::Entering {
                attachment: a.clone(),
            },
            Placement::InPod {
                attachment: a.clone(),
            },
            Placement::Leaving { attachment: a },
        ] {
            for marks in [false, true] {
                let plan = Plan {
                    placement: placement.clone(),
                    valid: Some(crate::config::ValidConfig::default()),
                    staged: marks,
                    parked: marks,
                    ..Default::default()
                };
                let json = serde_json::to_vec(&plan).expect("to JSON");
                let back: Plan = serde_json::from_slice(&json).expect("from JSON");
                assert_eq!(back, plan, "{}", String::from_utf8_lossy(&json));
                assert!(!String::from_utf8_lossy(&json).contains("\"attached\""));
            }
        }
    }
}
