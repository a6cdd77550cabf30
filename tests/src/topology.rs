//! A pod namespace and a "wire" namespace joined by a veth pair, addressed from the
//! documentation ranges, with static neighbours so no ARP/ND traffic muddies counts.
//!
//! ```text
//!  pod ns                         wire ns
//!  a0  192.0.2.10/24   <veth>     b0  192.0.2.1/24
//!      2001:db8::10/64                2001:db8::1/64
//!                                 lo  198.51.100.1, 203.0.113.1,
//!                                     2001:db8:100::1, 2001:db8:200::1
//! ```
//! The pod routes 198.51.100.0/24, 203.0.113.0/24, 2001:db8:100::/48 and
//! 2001:db8:200::/48 via the wire, so tests can make the data path (not the routing
//! table) decide what passes.

use anyhow::Result;

use crate::netenv::{veth, TestNetns};

pub const POD_IF: &str = "a0";
pub const WIRE_IF: &str = "b0";

pub struct PodWire {
    pub pod: TestNetns,
    pub wire: TestNetns,
    pub pod_mac: String,
    pub wire_mac: String,
}

/// Disables IPv6 on every device of `ns`, present and future.
pub fn disable_ipv6(ns: &TestNetns) -> Result<()> {
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )?;
    Ok(())
}

impl PodWire {
    /// Builds the topology. With `ipv6 == false`, IPv6 is disabled in both namespaces
    /// so that nothing but the test's own packets crosses the veth.
    pub fn new(tag: &str, ipv6: bool) -> Result<Self> {
        let pod = TestNetns::new(&format!("{tag}p"))?;
        let wire = TestNetns::new(&format!("{tag}w"))?;
        if !ipv6 {
            disable_ipv6(&pod)?;
            disable_ipv6(&wire)?;
        } else {
            for ns in [&pod, &wire] {
                // No router solicitations or DAD probes while tests count packets.
                ns.exec(
                    "sysctl",
                    &[
                        "-qw",
                        "net.ipv6.conf.default.accept_dad=0",
                        "net.ipv6.conf.default.router_solicitations=0",
                        "net.ipv6.conf.all.accept_dad=0",
                    ],
                )?;
            }
        }
        veth(&pod, POD_IF, &wire, WIRE_IF)?;
        let pod_mac = pod.mac(POD_IF)?;
        let wire_mac = wire.mac(WIRE_IF)?;
        pod.ip(&["addr", "add", "192.0.2.10/24", "dev", POD_IF])?;
        wire.ip(&["addr", "add", "192.0.2.1/24", "dev", WIRE_IF])?;
        pod.ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &wire_mac,
            "dev",
            POD_IF,
            "nud",
            "permanent",
        ])?;
        wire.ip(&[
            "neigh",
            "replace",
            "192.0.2.10",
            "lladdr",
            &pod_mac,
            "dev",
            WIRE_IF,
            "nud",
            "permanent",
        ])?;
        for dst in ["198.51.100.1/32", "203.0.113.1/32"] {
            wire.ip(&["addr", "add", dst, "dev", "lo"])?;
        }
        for dst in ["198.51.100.0/24", "203.0.113.0/24"] {
            pod.ip(&["route", "add", dst, "via", "192.0.2.1", "dev", POD_IF])?;
        }
        if ipv6 {
            pod.ip(&["addr", "add", "2001:db8::10/64", "dev", POD_IF, "nodad"])?;
            wire.ip(&["addr", "add", "2001:db8::1/64", "dev", WIRE_IF, "nodad"])?;
            pod.ip(&[
                "-6",
                "neigh",
                "replace",
                "2001:db8::1",
                "lladdr",
                &wire_mac,
                "dev",
                POD_IF,
                "nud",
                "permanent",
            ])?;
            wire.ip(&[
                "-6",
                "neigh",
                "replace",
                "2001:db8::10",
                "lladdr",
                &pod_mac,
                "dev",
                WIRE_IF,
                "nud",
                "permanent",
            ])?;
            for dst in ["2001:db8:100::1/128", "2001:db8:200::1/128"] {
                wire.ip(&["addr", "add", dst, "dev", "lo", "nodad"])?;
            }
            for dst in ["2001:db8:100::/48", "2001:db8:200::/48"] {
                pod.ip(&[
                    "-6",
                    "route",
                    "add",
                    dst,
                    "via",
                    "2001:db8::1",
                    "dev",
                    POD_IF,
                ])?;
            }
        }
        Ok(Self {
            pod,
            wire,
            pod_mac,
            wire_mac,
        })
    }
}
