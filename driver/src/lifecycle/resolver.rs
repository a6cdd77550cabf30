//! [`InventoryResolver`]: the [`DeviceResolver`] the daemon gives [`super::Pods`]. It
//! answers "which host interface is published device `device` of pool `pool`" from the
//! inventory's device list, and asks the kernel when the list does not know it yet.
//!
//! It lives here, with the trait, because the pod lifecycle is its only user and
//! decides what a good enough answer is (a fresh scan when the watcher lags behind);
//! the inventory only provides the list and the scan.

use std::sync::Arc;

use tokio::sync::watch;

use super::DeviceResolver;
use crate::inventory::{Device, Inventory, InventoryOptions};
use crate::netns::Netns;

/// Resolves the devices of pool `node` (this node's pool) to their host interface.
pub struct InventoryResolver {
    node: String,
    devices: watch::Receiver<Arc<Vec<Device>>>,
    host: Arc<Netns>,
    options: InventoryOptions,
}

impl InventoryResolver {
    /// `devices` is the inventory's list; `host` and `options` are what it scans with
    /// (the node's namespace and the inventory's options), for the fallback scan.
    pub fn new(
        node: impl Into<String>,
        devices: watch::Receiver<Arc<Vec<Device>>>,
        host: Arc<Netns>,
        options: InventoryOptions,
    ) -> Self {
        Self {
            node: node.into(),
            devices,
            host,
            options,
        }
    }
}

impl DeviceResolver for InventoryResolver {
    /// `None` for another pool, or a device neither the list nor a fresh scan has (a
    /// failed scan is logged).
    fn host_ifname(&self, pool: &str, device: &str) -> Option<String> {
        if pool != self.node {
            return None;
        }
        let list: Arc<Vec<Device>> = self.devices.borrow().clone();
        if let Some(d) = list.iter().find(|d| d.name == device) {
            return Some(d.ifname.clone());
        }
        // The watcher may not have rescanned yet (a device that just came home from
        // another pod): ask the kernel directly.
        match Inventory::scan(&self.host, &self.options) {
            Ok(fresh) => fresh
                .into_iter()
                .find(|d| d.name == device)
                .map(|d| d.ifname),
            Err(e) => {
                tracing::warn!(device, error = %e, "inventory rescan for the resolver failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, ifname: &str) -> Device {
        Device {
            name: name.into(),
            ifname: ifname.into(),
            ifindex: 3,
            attributes: Default::default(),
            carrier_lost: false,
        }
    }

    #[test]
    fn answers_from_the_list_and_only_for_this_pool() {
        let host = Netns::current().expect("the test's own network namespace");
        let (_tx, rx) = watch::channel(Arc::new(vec![dev("nic-1", "ens1")]));
        let resolver =
            InventoryResolver::new("node-a", rx, Arc::new(host), InventoryOptions::default());
        assert_eq!(
            resolver.host_ifname("node-a", "nic-1").as_deref(),
            Some("ens1")
        );
        assert_eq!(resolver.host_ifname("node-b", "nic-1"), None);
    }
}
