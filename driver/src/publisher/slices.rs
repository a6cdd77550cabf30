//! The ResourceSlices a node's device list becomes: a pure function of the devices,
//! the pool generation, the node, the driver and the Node's owner reference.
//!
//! One pool per node, named after the node. Devices are sorted by name and cut into
//! slices of at most [`MAX_DEVICES_PER_SLICE`]; every slice carries the pool's
//! generation and the slice count. Slice names are deterministic
//! (`<node>-<driver with dots dashed>-<index>`), so a restart finds and overwrites
//! the same objects. Labels ([`NODE_LABEL`], [`DRIVER_LABEL`]) select this node's
//! slices for listing and watching.
//!
//! [`device_record`] reads a published device back (for [`super::records`]).
//!
//! Nothing here talks to the API server; [`super`] compares and writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{
    Device as SliceDevice, DeviceAttribute, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::inventory::{AttrValue, Device};

/// The API's limit of devices in one ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// Label naming the node whose slices these are (value: the node name, or a hash of
/// it when it is not a valid label value).
pub const NODE_LABEL: &str = "netclaim.dev/node";
/// Label naming the DRA driver that wrote the slice (value: the driver name, or a hash).
pub const DRIVER_LABEL: &str = "netclaim.dev/driver";

/// Longest object name (DNS subdomain).
const MAX_NAME_LEN: usize = 253;
/// Longest label value.
const MAX_LABEL_VALUE_LEN: usize = 63;

/// What every slice of one node's pool shares.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolIdentity {
    pub driver: String,
    pub node: String,
    /// Owner reference to the Node object, when it was found.
    pub owner: Option<OwnerReference>,
}

impl PoolIdentity {
    /// The labels this node's slices carry.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NODE_LABEL.to_string(), label_value(&self.node)),
            (DRIVER_LABEL.to_string(), label_value(&self.driver)),
        ])
    }

    /// The label selector matching [`PoolIdentity::labels`].
    pub fn selector(&self) -> String {
        self.labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Name of slice `index` of the pool.
    pub fn slice_name(&self, index: usize) -> String {
        slice_name(&self.node, &self.driver, index)
    }
}

/// An owner reference to a Node (`controller: true`, so the garbage collector removes
/// the slices with the Node).
pub fn node_owner(node: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// `<node>-<driver with dots dashed>-<index>`, lowercased; when that would exceed the
/// 253-character limit, the prefix is cut and a hash of the full prefix keeps it unique.
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let prefix = format!("{node}-{}", driver.replace('.', "-")).to_ascii_lowercase();
    let suffix = format!("-{index}");
    if prefix.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{prefix}{suffix}");
    }
    let hash = short_hash(&prefix);
    let keep = MAX_NAME_LEN - suffix.len() - hash.len() - 1;
    let mut cut: String = prefix.chars().take(keep).collect();
    while cut.ends_with(['-', '.']) {
        cut.pop();
    }
    format!("{cut}-{hash}{suffix}")
}

/// `value` if it is a valid label value, otherwise `h-` and a hash of it.
pub fn label_value(value: &str) -> String {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let valid = value.len() <= MAX_LABEL_VALUE_LEN
        && value.chars().all(ok_char)
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        value.to_string()
    } else {
        format!("h-{}", short_hash(value))
    }
}

fn short_hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// One inventory device as a ResourceSlice device.
pub fn slice_device(device: &Device) -> SliceDevice {
    let attributes = device
        .attributes
        .iter()
        .map(|(k, v)| {
            let mut a = DeviceAttribute::default();
            match v {
                AttrValue::String(s) => a.string = Some(s.clone()),
                AttrValue::Int(i) => a.int = Some(*i),
                AttrValue::Bool(b) => a.bool = Some(*b),
                AttrValue::Version(s) => a.version = Some(s.clone()),
            }
            (k.clone(), a)
        })
        .collect();
    SliceDevice {
        name: device.name.clone(),
        attributes: Some(attributes),
        ..Default::default()
    }
}

/// A published ResourceSlice device read back as an inventory record: its name, its
/// attributes and the interface name from the `<driver>/ifName` attribute (empty when
/// absent). The ifindex is not published (0) and the carrier is taken as present.
/// Attributes that do not read back as [`AttrValue`]s are all dropped.
pub fn device_record(driver: &str, device: &SliceDevice) -> Device {
    let attributes = device
        .attributes
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut record = Device {
        name: device.name.clone(),
        ifname: String::new(),
        ifindex: 0,
        attributes,
        carrier_lost: false,
    };
    record.ifname = record
        .attribute(driver, "ifName")
        .map(ToString::to_string)
        .unwrap_or_default();
    record
}

/// The pool's devices, sorted by name, duplicates dropped (the first wins; the API
/// rejects a pool with two devices of one name).
pub fn pool_devices(devices: &[Device]) -> Vec<&Device> {
    let mut sorted: Vec<&Device> = devices.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    sorted.retain(|d| {
        let fresh = seen.insert(d.name.as_str());
        if !fresh {
            tracing::warn!(device = %d.name, "two devices with one name; publishing the first");
        }
        fresh
    });
    sorted
}

/// Every slice of the pool at `generation`. An empty device list still gives one
/// (empty) slice, so the pool and its generation stay visible.
pub fn build_slices(
    pool: &PoolIdentity,
    devices: &[Device],
    generation: u64,
) -> Vec<ResourceSlice> {
    let devices = pool_devices(devices);
    let chunks: Vec<&[&Device]> = if devices.is_empty() {
        vec![&[]]
    } else {
        devices.chunks(MAX_DEVICES_PER_SLICE).collect()
    };
    let count = chunks.len();
    let generation = i64::try_from(generation).unwrap_or(i64::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(pool.slice_name(index)),
                labels: Some(pool.labels()),
                owner_references: pool.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: pool.driver.clone(),
                node_name: Some(pool.node.clone()),
                pool: ResourcePool {
                    name: pool.node.clone(),
                    generation,
                    resource_slice_count: i64::try_from(count).unwrap_or(i64::MAX),
                },
                devices: Some(chunk.iter().map(|d| slice_device(d)).collect()),
                ..Default::default()
            },
        })
        .collect()
}

/// Whether the stored slice `observed` already says what `desired` says: same spec,
/// our labels present, same owner references.
pub fn up_to_date(observed: &ResourceSlice, desired: &ResourceSlice) -> bool {
    let devices = |s: &ResourceSlice| s.spec.devices.clone().unwrap_or_default();
    let spec_eq = {
        let (mut a, mut b) = (observed.spec.clone(), desired.spec.clone());
        a.devices = None;
        b.devices = None;
        a == b && devices(observed) == devices(desired)
    };
    let labels_ok = desired.metadata.labels.iter().flatten().all(|(k, v)| {
        observed
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .is_some_and(|o| o == v)
    });
    let owners = |s: &ResourceSlice| s.metadata.owner_references.clone().unwrap_or_default();
    spec_eq && labels_ok && owners(observed) == owners(desired)
}

/// `desired` made into a replacement of `observed`: its resourceVersion (for the
/// optimistic-concurrency check), other writers' labels and annotations kept.
pub fn replacement(observed: &ResourceSlice, desired: &ResourceSlice) -> ResourceSlice {
    let mut out = desired.clone();
    out.metadata.resource_version = observed.metadata.resource_version.clone();
    let mut labels = observed.metadata.labels.clone().unwrap_or_default();
    labels.extend(desired.metadata.labels.clone().unwrap_or_default());
    out.metadata.labels = Some(labels);
    out.metadata.annotations = observed.metadata.annotations.clone();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> Device {
        Device {
            name: name.into(),
            ifname: name.into(),
            ifindex: 1,
            attributes: BTreeMap::from([
                ("netclaim.dev/ifName".into(), AttrValue::String(name.into())),
                ("netclaim.dev/mtu".into(), AttrValue::Int(1500)),
                ("netclaim.dev/virtual".into(), AttrValue::Bool(true)),
            ]),
            carrier_lost: false,
        }
    }

    fn pool() -> PoolIdentity {
        PoolIdentity {
            driver: "netclaim.dev".into(),
            node: "node-a".into(),
            owner: Some(node_owner("node-a", "uid-1")),
        }
    }

    #[test]
    fn splits_sorted_into_chunks_of_128() {
        let devices: Vec<Device> = (0..300).rev().map(|i| dev(&format!("d{i:03}"))).collect();
        let slices = build_slices(&pool(), &devices, 7);
        assert_eq!(slices.len(), 3);
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
            .collect();
        assert_eq!(sizes, vec![128, 128, 44]);
        for (i, s) in slices.iter().enumerate() {
            assert_eq!(
                s.metadata.name.as_deref(),
                Some(format!("node-a-netclaim-dev-{i}").as_str())
            );
            assert_eq!(s.spec.pool.generation, 7);
            assert_eq!(s.spec.pool.resource_slice_count, 3);
            assert_eq!(s.spec.pool.name, "node-a");
            assert_eq!(s.spec.node_name.as_deref(), Some("node-a"));
        }
        let first = slices[0].spec.devices.as_ref().map(|d| d[0].name.clone());
        assert_eq!(first.as_deref(), Some("d000"));
        let json = serde_json::to_value(&slices[0]).unwrap_or_default();
        assert_eq!(
            json.pointer("/spec/devices/0/attributes/netclaim.dev~1mtu"),
            Some(&serde_json::json!({"int": 1500}))
        );
    }

    #[test]
    fn a_published_device_reads_back_as_its_record() {
        let mut original = dev("eth7");
        original.ifindex = 0;
        assert_eq!(
            device_record("netclaim.dev", &slice_device(&original)),
            original
        );
        let bare = SliceDevice {
            name: "x".into(),
            ..Default::default()
        };
        let record = device_record("netclaim.dev", &bare);
        assert_eq!((record.ifname.as_str(), record.attributes.len()), ("", 0));
    }

    #[test]
    fn empty_pool_is_one_empty_slice() {
        let slices = build_slices(&pool(), &[], 1);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].spec.pool.resource_slice_count, 1);
    }

    #[test]
    fn duplicates_dropped() {
        let slices = build_slices(&pool(), &[dev("a"), dev("a"), dev("b")], 1);
        assert_eq!(slices[0].spec.devices.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn names_and_labels_stay_valid() {
        let long = "n".repeat(250);
        let name = slice_name(&long, "netclaim.dev", 12);
        assert!(name.len() <= MAX_NAME_LEN, "{}", name.len());
        assert!(name.ends_with("-12"));
        assert_ne!(name, slice_name(&format!("{long}x"), "netclaim.dev", 12));
        assert_eq!(slice_name("Node.A", "x.y", 0), "node.a-x-y-0");
        assert_eq!(label_value("node-a"), "node-a");
        let hashed = label_value(&long);
        assert!(hashed.starts_with("h-") && hashed.len() <= MAX_LABEL_VALUE_LEN);
    }

    #[test]
    fn comparison_and_replacement() {
        let desired = build_slices(&pool(), &[dev("a")], 2).remove(0);
        let mut observed = desired.clone();
        observed.metadata.resource_version = Some("9".into());
        observed
            .metadata
            .labels
            .get_or_insert_default()
            .insert("extra".into(), "x".into());
        assert!(up_to_date(&observed, &desired));
        observed.spec.pool.generation = 1;
        assert!(!up_to_date(&observed, &desired));
        let r = replacement(&observed, &desired);
        assert_eq!(r.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("extra"))
                .map(String::as_str),
            Some("x")
        );
        let mut unlabeled = desired.clone();
        unlabeled.metadata.labels = None;
        assert!(!up_to_date(&unlabeled, &desired));
    }
}
