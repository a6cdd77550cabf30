//! One device's `status.devices` entry, rendered with the k8s-openapi types and kept
//! inside the limits kube-apiserver enforces (pure; the writer owns the I/O).
//!
//! The limits (`resource.k8s.io/v1`, `validateDeviceStatus` and
//! `validateNetworkDeviceData` upstream): at most 16 `networkData.ips`, each in the
//! canonical form Go prints (an IPv4-mapped IPv6 address as IPv4); `data` at most
//! 10 KiB of JSON; at most 8 conditions. What netclaim reports is chosen so that every
//! claim it accepts fits at any counter value: the first 16 addresses and their count,
//! counter totals and the 16 busiest prefixes (the full table is in
//! `netclaim inspect` and the metrics). If an entry still does not fit, optional parts
//! of `data` are dropped in a fixed order and `data.truncated` names them.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::resource::v1::{AllocatedDeviceStatus, NetworkDeviceData};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as MetaCondition, Time};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{json, Map, Value};

use super::conditions::Condition;
use crate::datapath::CounterSnapshot;

/// `NetworkDeviceDataMaxIPs`.
pub const MAX_IPS: usize = 16;
/// `AllocatedDeviceStatusDataMaxLength` (bytes of JSON).
pub const MAX_DATA_BYTES: usize = 10 * 1024;
/// Allowed prefixes whose hit counts go into `data.counters.routeHits`.
pub const MAX_ROUTE_HITS: usize = 16;
/// Parts of `data` dropped, in this order, when an entry would exceed the limit.
pub const OPTIONAL_PARTS: [&str; 3] = ["datapath", "counters", "link"];

/// `data.dhcp` of a device whose address comes from DHCP: the lease (address,
/// server, routers, option-121 routes, length) and when it was granted, is renewed
/// and expires, as RFC 3339 UTC. `None` (no lease now) renders `{"lease": null}`.
pub fn dhcp_lease(lease: Option<&crate::dhcp::Lease>) -> Value {
    let Some(l) = lease else {
        return json!({ "lease": null });
    };
    let at = |secs: u64| {
        k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let mut v = json!({
        "address": l.address.to_string(),
        "server": l.server.to_string(),
        "routers": l.routers.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "leaseSeconds": l.lease_secs,
        "grantedAt": at(l.granted_at),
    });
    if !l.classless_routes.is_empty() {
        v["routes"] = json!(l
            .classless_routes
            .iter()
            .map(|(d, g)| json!({"destination": d.to_string(), "gateway": g.to_string()}))
            .collect::<Vec<_>>());
    }
    if let (Some(t), Some(end)) = (l.timing, l.expires_at()) {
        v["renewAt"] = json!(at(l.granted_at.saturating_add(t.renew.as_secs())));
        v["expiresAt"] = json!(at(end));
    }
    v
}

/// An interface address in the form kube-apiserver accepts (`IsValidInterfaceAddress`):
/// Go's spelling, so an IPv4-mapped IPv6 address is written as IPv4 with the prefix
/// length reduced by 96.
pub fn canonical_address(net: &IpNet) -> String {
    match net.addr() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                let len = net.prefix_len();
                let len = if len > 32 { len - 96 } else { len };
                format!("{v4}/{len}")
            }
            None => format!("{v6}/{}", net.prefix_len()),
        },
        IpAddr::V4(v4) => format!("{v4}/{}", net.prefix_len()),
    }
}

/// `networkData` for the addresses found on the interface: the first [`MAX_IPS`] in
/// canonical form (duplicates after canonicalisation dropped). Returns it with the
/// total number of addresses, so the caller can report what did not fit.
pub fn network_data(
    interface: &str,
    mac: Option<&str>,
    addresses: &[IpNet],
) -> (NetworkDeviceData, usize) {
    let mut ips: Vec<String> = Vec::new();
    for a in addresses {
        let c = canonical_address(a);
        if !ips.contains(&c) {
            ips.push(c);
        }
    }
    let total = ips.len();
    ips.truncate(MAX_IPS);
    (
        NetworkDeviceData {
            interface_name: Some(interface.to_string()),
            hardware_address: mac.map(str::to_string),
            ips: Some(ips),
        },
        total,
    )
}

/// Counters for the status: totals and drops by reason, and the [`MAX_ROUTE_HITS`]
/// busiest prefixes (ties by prefix) with how many prefixes there are in all.
pub fn bounded_counters(c: &CounterSnapshot) -> Value {
    let mut busiest: Vec<(&String, &u64)> = c.route_hits.iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Map<String, Value> = busiest
        .iter()
        .take(MAX_ROUTE_HITS)
        .map(|(p, n)| ((*p).clone(), json!(n)))
        .collect();
    json!({
        "rxPackets": c.rx_packets,
        "rxBytes": c.rx_bytes,
        "txPackets": c.tx_packets,
        "txBytes": c.tx_bytes,
        "drops": c.drops,
        "routeHits": shown,
        "routes": c.route_hits.len(),
    })
}

fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// Drops the [`OPTIONAL_PARTS`] of `data`, in order, until it fits in
/// [`MAX_DATA_BYTES`]; the dropped parts are listed in `data.truncated`. Only
/// `state`, `pod`, `error` and `truncated` are never dropped (and are bounded: the
/// error text is cut to fit).
pub fn fit_data(mut data: Map<String, Value>) -> Map<String, Value> {
    let mut dropped: Vec<&str> = Vec::new();
    for part in OPTIONAL_PARTS {
        if json_len(&Value::Object(data.clone())) <= MAX_DATA_BYTES {
            break;
        }
        if data.remove(part).is_some() {
            dropped.push(part);
            data.insert("truncated".into(), json!(dropped));
        }
    }
    if json_len(&Value::Object(data.clone())) > MAX_DATA_BYTES {
        if let Some(Value::String(e)) = data.get_mut("error") {
            let keep = MAX_DATA_BYTES / 2;
            if e.len() > keep {
                let mut cut = keep;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push_str(" …");
            }
        }
    }
    data
}

/// A condition as `metav1.Condition`; a time that does not parse becomes the Unix
/// epoch rather than an entry the server refuses (`lastTransitionTime` is required).
fn meta_condition(c: &Condition) -> MetaCondition {
    let time = c.last_transition_time.parse().unwrap_or_default();
    MetaCondition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: Time(time),
        observed_generation: None,
    }
}

/// The entry, typed. `data` is fitted to the limit here.
pub fn entry(
    driver: &str,
    pool: &str,
    device: &str,
    conditions: &[Condition],
    data: Map<String, Value>,
    network: Option<NetworkDeviceData>,
) -> AllocatedDeviceStatus {
    AllocatedDeviceStatus {
        driver: driver.to_string(),
        pool: pool.to_string(),
        device: device.to_string(),
        conditions: Some(conditions.iter().map(meta_condition).collect()),
        data: Some(RawExtension(Value::Object(fit_data(data)))),
        network_data: network,
        share_id: None,
    }
}

/// Condition added when the server refused the full entry and only this minimal one
/// was written.
pub const STATUS_COMPLETE: &str = "StatusComplete";

/// The entry with only what identifies it and its conditions, plus a
/// [`STATUS_COMPLETE`] condition saying why: what the writer sends when the server
/// refused the full entry.
pub fn minimal(entry: &AllocatedDeviceStatus, why: &str) -> AllocatedDeviceStatus {
    let state = entry
        .data
        .as_ref()
        .and_then(|d| d.0.get("state").cloned())
        .unwrap_or(Value::Null);
    let mut conditions = entry.conditions.clone().unwrap_or_default();
    conditions.retain(|c| c.type_ != STATUS_COMPLETE);
    conditions.push(MetaCondition {
        type_: STATUS_COMPLETE.into(),
        status: "False".into(),
        reason: "RejectedByAPIServer".into(),
        message: why.chars().take(1024).collect(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    });
    AllocatedDeviceStatus {
        driver: entry.driver.clone(),
        pool: entry.pool.clone(),
        device: entry.device.clone(),
        conditions: Some(conditions),
        data: Some(RawExtension(json!({
            "state": state,
            "truncated": ["networkData", "datapath", "counters", "link"],
            "rejected": why.chars().take(1024).collect::<String>(),
        }))),
        network_data: None,
        share_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn addresses_are_canonical_and_at_most_sixteen() {
        assert_eq!(
            canonical_address(&net("::ffff:192.0.2.31/120")),
            "192.0.2.31/24"
        );
        assert_eq!(
            canonical_address(&net("::ffff:192.0.2.31/20")),
            "192.0.2.31/20"
        );
        assert_eq!(
            canonical_address(&net("2001:db8:0:0::1/64")),
            "2001:db8::1/64"
        );
        assert_eq!(canonical_address(&net("192.0.2.5/24")), "192.0.2.5/24");
        let many: Vec<IpNet> = (0..20).map(|i| net(&format!("192.0.2.{i}/24"))).collect();
        let (nd, total) = network_data("net1", Some("02:00:00:00:00:01"), &many);
        assert_eq!(total, 20);
        let ips = nd.ips.expect("ips");
        assert_eq!(ips.len(), MAX_IPS);
        assert_eq!(ips[0], "192.0.2.0/24");
        let dup = [net("::ffff:192.0.2.31/120"), net("192.0.2.31/24")];
        assert_eq!(network_data("n", None, &dup).1, 1, "the same address twice");
    }

    fn snapshot(routes: usize, hits: u64) -> CounterSnapshot {
        let mut drops = BTreeMap::new();
        for r in netclaim_common::DropReason::ALL {
            drops.insert(r.name().to_string(), u64::MAX);
        }
        CounterSnapshot {
            rx_packets: u64::MAX,
            rx_bytes: u64::MAX,
            tx_packets: u64::MAX,
            tx_bytes: u64::MAX,
            drops,
            route_hits: (0..routes)
                .map(|i| {
                    (
                        format!("2001:db8:{:x}:{:x}::/64", i / 256, i % 256),
                        hits - i as u64,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn counters_are_bounded_at_any_value() {
        let c = bounded_counters(&snapshot(1024, u64::MAX));
        assert_eq!(c["routes"], 1024);
        let shown = c["routeHits"].as_object().expect("map");
        assert_eq!(shown.len(), MAX_ROUTE_HITS);
        assert!(shown.contains_key("2001:db8:0:0::/64"), "the busiest one");
        let mut data = Map::new();
        data.insert("state".into(), json!("Available"));
        data.insert("pod".into(), json!("default/web-0"));
        data.insert("counters".into(), c);
        data.insert("link".into(), json!({"state": "up"}));
        let fitted = fit_data(data.clone());
        assert_eq!(
            fitted, data,
            "1,024 routes at u64::MAX fit without truncation"
        );
        let size = json_len(&Value::Object(fitted));
        println!("status data, 1,024 routes, every counter u64::MAX: {size} bytes");
        assert!(size <= MAX_DATA_BYTES);
    }

    #[test]
    fn oversized_data_drops_optional_parts_in_order_and_says_so() {
        let mut data = Map::new();
        data.insert("state".into(), json!("Error"));
        data.insert("pod".into(), json!("default/web-0"));
        data.insert("datapath".into(), json!({"pinDir": "x".repeat(9000)}));
        data.insert("counters".into(), json!({"rxPackets": 1}));
        data.insert("error".into(), json!("e".repeat(20_000)));
        let fitted = fit_data(data);
        assert!(json_len(&Value::Object(fitted.clone())) <= MAX_DATA_BYTES);
        assert_eq!(fitted["truncated"], json!(["datapath", "counters"]));
        assert_eq!(fitted["state"], "Error");
    }

    #[test]
    fn the_typed_entry_serialises_as_the_api_expects() {
        let cond = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Available".into(),
            message: String::new(),
            last_transition_time: "2025-01-01T00:00:00Z".into(),
        };
        let (nd, _) = network_data("net1", None, &[net("192.0.2.10/24")]);
        let mut data = Map::new();
        data.insert("state".into(), json!("Available"));
        let e = entry("netclaim.dev", "node-a", "eth1", &[cond], data, Some(nd));
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["driver"], "netclaim.dev");
        assert_eq!(v["networkData"]["ips"], json!(["192.0.2.10/24"]));
        assert_eq!(v["networkData"]["interfaceName"], "net1");
        assert_eq!(
            v["conditions"][0]["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(v["data"]["state"], "Available");
        let m = serde_json::to_value(minimal(&e, "422: too big")).expect("json");
        assert!(m.get("networkData").is_none());
        assert_eq!(
            m["conditions"][0], v["conditions"][0],
            "conditions are kept"
        );
        assert_eq!(m["conditions"][1]["type"], STATUS_COMPLETE);
        assert_eq!(m["conditions"][1]["status"], "False");
        assert_eq!(m["conditions"][1]["message"], "422: too big");
    }

    #[test]
    fn a_lease_renders_with_its_times() {
        use crate::dhcp::lease::Timing;
        use std::time::Duration;
        let lease = crate::dhcp::Lease {
            address: "192.0.2.101/24".parse().expect("net"),
            server: "192.0.2.1".parse().expect("ip"),
            routers: vec!["192.0.2.1".parse().expect("ip")],
            classless_routes: vec![(
                "198.51.100.0/24".parse().expect("net"),
                "192.0.2.1".parse().expect("ip"),
            )],
            lease_secs: 120,
            timing: Some(Timing {
                renew: Duration::from_secs(60),
                rebind: Duration::from_secs(105),
                expire: Duration::from_secs(120),
            }),
            granted_at: 1_800_000_000,
        };
        let v = dhcp_lease(Some(&lease));
        assert_eq!(v["address"], "192.0.2.101/24");
        assert_eq!(v["server"], "192.0.2.1");
        assert_eq!(v["leaseSeconds"], 120);
        assert_eq!(v["grantedAt"], "2027-01-15T08:00:00Z");
        assert_eq!(v["renewAt"], "2027-01-15T08:01:00Z");
        assert_eq!(v["expiresAt"], "2027-01-15T08:02:00Z");
        assert_eq!(v["routes"][0]["destination"], "198.51.100.0/24");
        assert_eq!(dhcp_lease(None), json!({"lease": null}));
    }
}
