//! Health of the published devices that are still on the node, from their carrier.
//!
//! The kubelet health stream ([`crate::kubelet::health`]) serves one list of
//! [`DeviceHealth`]; two writers fill it, each for its own devices:
//! * devices in prepared claims (inside pods, or about to be) are reported by the
//!   [`super::StatusWriter`] from what it observes in the pod (carrier, drop spikes);
//! * every other published device is reported here: healthy unless the inventory says
//!   its link lost carrier ([`host_health`], merged by [`merge_host_health`]).
//!
//! Entries of this node's unclaimed devices that left the inventory are dropped; the
//! claimed devices' entries are never touched here.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

use crate::inventory::Device;
use crate::kubelet::DeviceHealth;

/// Keeps `health` in step with the inventory's `devices` and the `claimed` device
/// names of pool `node`: merges once now and again after every change of either, until
/// one of their senders is gone. Meant to be spawned.
pub async fn host_health(
    mut devices: watch::Receiver<Arc<Vec<Device>>>,
    mut claimed: watch::Receiver<BTreeSet<String>>,
    health: watch::Sender<Vec<DeviceHealth>>,
    node: String,
) {
    loop {
        let list: Arc<Vec<Device>> = devices.borrow_and_update().clone();
        let claimed_now = claimed.borrow_and_update().clone();
        merge_host_health(&health, &node, &list, &claimed_now);
        tokio::select! {
            r = devices.changed() => if r.is_err() { break },
            r = claimed.changed() => if r.is_err() { break },
        }
    }
}

/// Merges the carrier-based health of unclaimed `devices` into the health list: adds
/// and updates their entries, drops entries of unclaimed devices that are gone, and
/// leaves claimed devices' entries to the status writer. Watchers are woken only when
/// the list changed.
pub fn merge_host_health(
    health: &watch::Sender<Vec<DeviceHealth>>,
    node: &str,
    devices: &[Device],
    claimed: &BTreeSet<String>,
) {
    health.send_if_modified(|list| {
        let before = list.clone();
        list.retain(|h| {
            h.pool != node
                || claimed.contains(&h.device)
                || devices.iter().any(|d| d.name == h.device)
        });
        for d in devices.iter().filter(|d| !claimed.contains(&d.name)) {
            let healthy = !d.carrier_lost;
            match list.iter_mut().find(|h| h.pool == node && h.device == d.name) {
                Some(h) => {
                    if h.healthy != healthy {
                        tracing::info!(device = %d.name, healthy, "device health changed (carrier)");
                        h.healthy = healthy;
                    }
                }
                None => list.push(DeviceHealth {
                    pool: node.to_string(),
                    device: d.name.clone(),
                    healthy,
                }),
            }
        }
        *list != before
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, carrier_lost: bool) -> Device {
        Device {
            name: name.into(),
            ifname: name.into(),
            ifindex: 2,
            attributes: Default::default(),
            carrier_lost,
        }
    }

    fn entry(device: &str, healthy: bool) -> DeviceHealth {
        DeviceHealth {
            pool: "node-a".into(),
            device: device.into(),
            healthy,
        }
    }

    #[test]
    fn host_health_follows_carrier_and_leaves_claimed_devices_alone() {
        // eth9 is claimed (inside a pod): the status writer said unhealthy; keep it.
        // gone0 vanished from the node and is not claimed: drop it.
        let (tx, rx) = watch::channel(vec![entry("eth9", false), entry("gone0", true)]);
        let claimed = ["eth9".to_string()].into_iter().collect();
        let devices = [dev("eth1", false), dev("eth2", true), dev("eth9", false)];
        merge_host_health(&tx, "node-a", &devices, &claimed);
        let mut got = rx.borrow().clone();
        got.sort_by(|a, b| a.device.cmp(&b.device));
        assert_eq!(
            got,
            vec![
                entry("eth1", true),
                entry("eth2", false),
                entry("eth9", false)
            ]
        );
    }
}
