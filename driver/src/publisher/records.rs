//! Reading back what this driver last published for this node: the records of devices
//! that are inside pods when the driver restarts.
//!
//! A device inside a pod is not in the node's namespace, so the inventory cannot see
//! it; yet it must stay in the node's ResourceSlices (or the scheduler would think it
//! gone). At start the daemon asks [`published_records`] for the claimed devices as
//! the previous run published them, hands them to the inventory to remember, and waits
//! ([`until_listed`]) until the inventory lists them before the publisher starts, so
//! they never vanish from the slices.
//!
//! Only this node's slices are read: the list uses the label selector the publisher
//! itself writes and watches ([`PoolIdentity::selector`]), never a cluster-wide list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::ListParams;
use kube::Api;
use tokio::sync::watch;

use super::slices::{device_record, PoolIdentity};
use super::PublishError;
use crate::inventory::Device;

/// The devices named in `claimed`, as `pool` last published them. No API call when
/// `claimed` is empty.
pub async fn published_records(
    client: &kube::Client,
    pool: &PoolIdentity,
    claimed: &BTreeSet<String>,
) -> Result<Vec<Device>, PublishError> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<ResourceSlice> = Api::all(client.clone());
    let slices = api
        .list(&ListParams::default().labels(&pool.selector()))
        .await
        .map_err(|source| PublishError::List {
            node: pool.node.clone(),
            source,
        })?
        .items;
    let records = records_in(&slices, pool, claimed);
    if !records.is_empty() {
        tracing::info!(
            devices = records.len(),
            "claimed devices kept published from the previous slices"
        );
    }
    Ok(records)
}

/// The devices named in `claimed` in those of `slices` that belong to `pool` (driver
/// and pool name; labels can be copied, the spec says whose slice it is).
/// Pure: no I/O.
pub fn records_in(
    slices: &[ResourceSlice],
    pool: &PoolIdentity,
    claimed: &BTreeSet<String>,
) -> Vec<Device> {
    slices
        .iter()
        .filter(|s| s.spec.driver == pool.driver && s.spec.pool.name == pool.node)
        .flat_map(|s| s.spec.devices.iter().flatten())
        .filter(|d| claimed.contains(&d.name))
        .map(|d| device_record(&pool.driver, d))
        .collect()
}

/// Waits up to `within` until every device in `names` is in the inventory's list.
/// `false` only when the time ran out; an inventory that stopped ends the wait too.
pub async fn until_listed(
    devices: &watch::Receiver<Arc<Vec<Device>>>,
    names: &[String],
    within: Duration,
) -> bool {
    let mut listed = devices.clone();
    let present = |l: &Arc<Vec<Device>>| names.iter().all(|n| l.iter().any(|d| &d.name == n));
    let in_time = tokio::time::timeout(within, listed.wait_for(present))
        .await
        .is_ok();
    in_time
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::AttrValue;
    use crate::publisher::slices::build_slices;

    fn dev(name: &str, ifname: &str) -> Device {
        Device {
            name: name.into(),
            ifname: ifname.into(),
            ifindex: 4,
            attributes: [
                (
                    "netclaim.dev/ifName".to_string(),
                    AttrValue::String(ifname.into()),
                ),
                ("netclaim.dev/mtu".to_string(), AttrValue::Int(9000)),
            ]
            .into_iter()
            .collect(),
            carrier_lost: false,
        }
    }

    fn pool(node: &str) -> PoolIdentity {
        PoolIdentity {
            driver: "netclaim.dev".into(),
            node: node.into(),
            owner: None,
        }
    }

    #[test]
    fn claimed_devices_of_this_pool_come_back_with_their_interface_name() {
        let mut slices = build_slices(
            &pool("node-a"),
            &[dev("eth1", "eth1"), dev("nic-2", "ens2")],
            3,
        );
        slices.extend(build_slices(&pool("node-b"), &[dev("nic-2", "other")], 1));
        let claimed = ["nic-2".to_string(), "gone".to_string()]
            .into_iter()
            .collect();
        let got = records_in(&slices, &pool("node-a"), &claimed);
        let mut want = dev("nic-2", "ens2");
        // Only what a slice carries comes back: the ifindex is not published.
        want.ifindex = 0;
        assert_eq!(got, vec![want]);
    }

    #[tokio::test]
    async fn until_listed_waits_for_every_name() {
        let (tx, rx) = watch::channel(Arc::new(vec![dev("a", "a")]));
        let names = ["a".to_string(), "b".to_string()];
        assert!(!until_listed(&rx, &names, Duration::from_millis(20)).await);
        tx.send_replace(Arc::new(vec![dev("a", "a"), dev("b", "b")]));
        assert!(until_listed(&rx, &names, Duration::from_millis(20)).await);
    }
}
