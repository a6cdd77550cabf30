//! Counter snapshots: the per-CPU values of a device's maps, summed.

use std::collections::BTreeMap;

use netclaim_common::{DeviceCounters, DropReason};
use serde::Serialize;

/// One device's counters at one moment, summed over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason name (`spoofed_source`, `no_route`, `not_local`, `multicast`).
    pub drops: BTreeMap<String, u64>,
    /// Packets per allowed prefix (CIDR → packets).
    pub route_hits: BTreeMap<String, u64>,
}

impl CounterSnapshot {
    /// Sums the per-CPU copies of [`DeviceCounters`].
    pub fn from_per_cpu<'a>(values: impl IntoIterator<Item = &'a DeviceCounters>) -> Self {
        let mut sum = DeviceCounters::default();
        for v in values {
            sum.rx_packets += v.rx_packets;
            sum.rx_bytes += v.rx_bytes;
            sum.tx_packets += v.tx_packets;
            sum.tx_bytes += v.tx_bytes;
            for (total, d) in sum.drops.iter_mut().zip(v.drops.iter()) {
                *total += d;
            }
        }
        Self {
            rx_packets: sum.rx_packets,
            rx_bytes: sum.rx_bytes,
            tx_packets: sum.tx_packets,
            tx_bytes: sum.tx_bytes,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), sum.drops[*r as usize]))
                .collect(),
            route_hits: BTreeMap::new(),
        }
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.name()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_cpu() {
        let a = DeviceCounters {
            rx_packets: 1,
            rx_bytes: 100,
            tx_packets: 2,
            tx_bytes: 200,
            drops: [1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            logged_generation: 4,
        };
        let b = DeviceCounters {
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 20,
            tx_bytes: 2000,
            drops: [0, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            logged_generation: 4,
        };
        let s = CounterSnapshot::from_per_cpu([&a, &b]);
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (11, 1100, 22, 2200)
        );
        assert_eq!(s.dropped(DropReason::SpoofedSource), 1);
        assert_eq!(s.dropped(DropReason::NoRoute), 5);
        assert_eq!(s.dropped(DropReason::NotLocal), 1);
        assert_eq!(s.dropped(DropReason::Multicast), 3);
        assert_eq!(s.dropped(DropReason::NdForbidden), 9);
    }
}
