//! Semantic validation of a [`NetworkConfig`] into a [`ValidConfig`].
//!
//! [`validate`] checks every rule and returns every problem at once, each with the path
//! of the field it is about. Its result, [`ValidConfig`], carries parsed values
//! (addresses as [`IpNet`], the MAC as bytes, scopes as [`RouteScope`], knobs with their
//! defaults filled in), so the modules that plan and apply a config never parse strings
//! again. This module is pure: it does not look at devices or the kernel; limits that
//! depend on the device (its maximum MTU, which ethtool features exist) are checked
//! when the interface is configured, not here.
//!
//! DraNet parity: every config DraNet's `pkg/apis/validation.go` accepts is accepted
//! here, except where netclaim is deliberately stricter; each such rule says why in its
//! message, and the README's DraNet table lists them. DraNet's own validation cases are
//! replayed against this module in `tests/tests/dranet_parity.rs`.

mod routing;
mod valid;

pub use routing::vrf_default_table;
use routing::{check_neighbors, check_routes, check_rules, check_vrf};
pub use valid::*;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::error::{index, join, key, ConfigErrors, FieldError};
use super::types::{
    EthtoolConfig, InterfaceConfig, NeighborConfig, NetworkConfig, RouteConfig, RuleConfig,
    VrfConfig,
};

/// Longest interface name in bytes (`IFNAMSIZ` 16 minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU accepted (the IPv4 minimum).
pub const MIN_MTU: i32 = 68;
/// Largest MTU accepted; the device's own maximum is checked at configure time.
pub const MAX_MTU: i32 = 65535;
/// The kernel disables IPv6 on a device whose MTU is below this.
pub const IPV6_MIN_MTU: i32 = 1280;
/// `GSO_MAX_SIZE` / `GRO_MAX_SIZE` with BIG TCP: 8 bytes × 65535 segments.
pub const GSO_MAX_SIZE: i32 = 524_280;
/// `ETH_GSTRING_LEN`: ethtool names are NUL-terminated in 32 bytes, so 31 usable.
pub const ETH_GSTRING_LEN: usize = 32;
/// Bounds on list sizes, so one claim cannot make the driver do unbounded work.
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 1024;
pub const MAX_ETHTOOL_FEATURES: usize = 256;
pub const MAX_PRIVATE_FLAGS: usize = 64;
/// The kernel's `local` routing table, which the driver never writes.
pub const RT_TABLE_LOCAL: u32 = 255;
/// The `main` routing table, used when a route names none.
pub const RT_TABLE_MAIN: u32 = 254;
/// The `default` routing table (consulted last by the kernel's default rules).
pub const RT_TABLE_DEFAULT: u32 = 253;
/// Highest rule priority DraNet accepts (the kernel's `default` rule sits at 32767).
pub const MAX_RULE_PRIORITY: i64 = 32767;
/// Bounds on the new lists, like [`MAX_ROUTES`].
pub const MAX_RULES: usize = 256;
pub const MAX_NEIGHBORS: usize = 256;
/// DraNet's `VRFTableOffset`: tables derived from a VRF name are 1000..=1999.
pub const VRF_TABLE_OFFSET: u32 = 1000;

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A 6-byte MAC in any spelling Go's `net.ParseMAC` (DraNet) accepts for Ethernet:
/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`, either case.
pub fn parse_config_mac(s: &str) -> Option<[u8; 6]> {
    if s.len() == 17 && s.as_bytes()[2] == b'-' {
        if s.contains(':') {
            return None;
        }
        return parse_mac(&s.replace('-', ":"));
    }
    if s.len() == 14 && s.as_bytes()[4] == b'.' && s.as_bytes()[9] == b'.' {
        let hex: String = s.split('.').collect();
        if hex.len() != 12 || s.split('.').count() != 3 {
            return None;
        }
        let pairs: Vec<&str> = (0..6).filter_map(|i| hex.get(2 * i..2 * i + 2)).collect();
        return parse_mac(&pairs.join(":"));
    }
    parse_mac(s)
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case) into bytes; only the format is checked.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(mac),
    }
}

/// Checks every rule on `cfg` and returns either the parsed config or every problem,
/// with paths relative to the config's root (`interface.mtu`, `routes[1].gateway`).
pub fn validate(cfg: &NetworkConfig) -> Result<ValidConfig, ConfigErrors> {
    let mut errs = Problems::default();
    if cfg.profile.as_deref().is_some_and(|p| !p.is_empty()) {
        errs.add(
            "profile",
            "DraNet resolves profiles through a provider plugin; netclaim has no provider plugins, so write the settings out in interface, routes and rules",
        );
    }
    let interface = check_interface(&cfg.interface, &mut errs);
    let disable_ebpf_programs = check_disable_ebpf(cfg, &mut errs);
    // Route checks against the addresses only make sense when all of them parsed;
    // otherwise one typo in an address would be reported again on every route.
    let addresses_ok = !errs
        .0
        .iter()
        .any(|e| e.path.starts_with("interface.addresses"));
    let mut routes = check_routes(&cfg.routes, &interface, addresses_ok, &mut errs);
    if let Some(vrf) = &interface.vrf {
        // DraNet puts every route of a VRF interface into the VRF's table.
        for (n, r) in cfg.routes.iter().enumerate() {
            if r.table.is_some_and(|t| t != 0) {
                errs.add(
                    join(&index("routes", n), "table"),
                    "must not be set when interface.vrf is: every route of a VRF interface goes into the VRF's table (DraNet ignores the field; netclaim refuses it rather than ignore it)",
                );
            }
        }
        for r in &mut routes {
            r.table = Some(vrf.table);
        }
    }
    let rules = if !cfg.rules.is_empty() && interface.vrf.is_some() {
        errs.add(
            "rules",
            "rules are not supported when interface.vrf is set (as in DraNet)",
        );
        Vec::new()
    } else {
        check_rules(&cfg.rules, &mut errs)
    };
    let neighbors = check_neighbors(&cfg.neighbors, &mut errs);
    let ethtool = check_ethtool(cfg.ethtool.as_ref(), &mut errs);
    if !errs.0.is_empty() {
        return Err(ConfigErrors { errors: errs.0 });
    }
    Ok(ValidConfig {
        interface,
        routes,
        rules,
        neighbors,
        ethtool,
        knobs: cfg.dataplane.unwrap_or_default(),
        disable_ebpf_programs,
    })
}

/// The top-level `disableEbpfPrograms` and DraNet's `interface.disableEbpfPrograms`
/// are one switch: either may be given, both only when they agree.
fn check_disable_ebpf(cfg: &NetworkConfig, errs: &mut Problems) -> bool {
    match (
        cfg.disable_ebpf_programs,
        cfg.interface.disable_ebpf_programs,
    ) {
        (Some(top), Some(nested)) if top != nested => {
            errs.add(
                "interface.disableEbpfPrograms",
                format!("is {nested} but the top-level disableEbpfPrograms is {top}; they are the same switch, give one or make them agree"),
            );
            false
        }
        (top, nested) => top.or(nested).unwrap_or(false),
    }
}

/// A table number from Go's `int`: `Ok(None)` for 0 (meaning "unset" in DraNet).
fn table_number(t: i64) -> Result<Option<u32>, String> {
    if t < 0 {
        return Err(format!("must be a non-negative integer, got {t}"));
    }
    match u32::try_from(t) {
        Ok(0) => Ok(None),
        Ok(t) => Ok(Some(t)),
        Err(_) => Err(format!(
            "{t} is above the kernel's largest table number {}",
            u32::MAX
        )),
    }
}

/// A CIDR selector of a rule: a network with its host bits clear.
fn parse_network(s: &str) -> Result<IpNet, String> {
    let net = parse_cidr(s)?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s} has host bits set; the kernel would use {} — write the network",
            net.trunc()
        ));
    }
    Ok(net)
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Parses `address/prefix-length` with a message saying exactly what is wrong.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} is not a CIDR: expected address/prefix-length, e.g. 192.0.2.10/24 or 2001:db8::10/64"
        ));
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("prefix length {len:?} is not a number"));
    }
    let max: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let n = len
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            format!(
                "prefix length /{len} is out of range for an {} address (at most /{max})",
                family(ip)
            )
        })?;
    // n <= 128, so the conversion and the constructor cannot fail; map anyway.
    let n = u8::try_from(n).map_err(|_| format!("prefix length /{len} is out of range"))?;
    IpNet::new(ip, n).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    if s.contains('/') {
        return Err(format!(
            "{s:?} is a prefix; expected a single IP address without /length"
        ));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

/// Kernel `isspace` for a byte (its ctype table also marks 0xa0 as space).
fn kernel_isspace(b: u8) -> bool {
    matches!(b, b' ' | 0x09..=0x0d | 0xa0)
}

/// The kernel's `dev_valid_name`, plus `%` (which `dev_change_name` expands as a
/// template), plus DraNet's character set: letters, digits, `-`, `_`, `.` — ASCII only,
/// because the kernel's `isspace` also refuses byte 0xa0, which many UTF-8 letters
/// contain.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty when set; omit it to keep the device's name".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "is {} bytes; interface names are at most {MAX_IFNAME_LEN} bytes (IFNAMSIZ - 1)",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    for b in name.bytes() {
        let why = match b {
            0 => "a NUL byte",
            b'/' => "'/'",
            b':' => "':'",
            b'%' => "'%', which the kernel expands as a name template",
            b if kernel_isspace(b) => "whitespace",
            _ => continue,
        };
        return Err(format!("{name:?} contains {why}; interface names may not"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; interface names may hold ASCII letters, digits, '-', '_' and '.' (DraNet's set, ASCII only)"
        ));
    }
    Ok(())
}

fn check_size(v: Option<i32>, path: &str, what: &str, errs: &mut Problems) -> Option<u32> {
    let v = v?;
    if v <= 0 {
        errs.add(path, format!("must be greater than 0, got {v}"));
        return None;
    }
    if v > GSO_MAX_SIZE {
        errs.add(
            path,
            format!("must be at most {GSO_MAX_SIZE} ({what} with BIG TCP), got {v}"),
        );
        return None;
    }
    u32::try_from(v).ok()
}

fn check_interface(i: &InterfaceConfig, errs: &mut Problems) -> ValidInterface {
    let mut out = ValidInterface::default();

    // An empty name means "keep the device's name", as in DraNet.
    if let Some(name) = i.name.as_ref().filter(|n| !n.is_empty()) {
        match check_ifname(name) {
            Ok(()) => out.name = Some(name.clone()),
            Err(m) => errs.add("interface.name", m),
        }
    }

    if i.addresses.len() > MAX_ADDRESSES {
        errs.add(
            "interface.addresses",
            format!(
                "at most {MAX_ADDRESSES} addresses, got {}",
                i.addresses.len()
            ),
        );
    }
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    for (n, s) in i.addresses.iter().take(MAX_ADDRESSES).enumerate() {
        let path = index("interface.addresses", n);
        let net = match parse_cidr(s) {
            Ok(net) => net,
            Err(m) => {
                errs.add(path, m);
                continue;
            }
        };
        let ip = net.addr();
        if ip.is_unspecified() {
            errs.add(path, format!("{ip} is the unspecified address"));
            continue;
        }
        if ip.is_multicast() {
            errs.add(path, format!("{ip} is a multicast address"));
            continue;
        }
        if let Some(first) = seen.get(&ip) {
            errs.add(
                path,
                format!("duplicate address {ip}: already in interface.addresses[{first}]"),
            );
            continue;
        }
        seen.insert(ip, n);
        out.addresses.push(net);
    }

    if let Some(mtu) = i.mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            errs.add(
                "interface.mtu",
                format!(
                    "must be between {MIN_MTU} and {MAX_MTU}, got {mtu} (the device's own maximum is checked when it is configured)"
                ),
            );
        } else if mtu < IPV6_MIN_MTU && out.addresses.iter().any(|a| a.addr().is_ipv6()) {
            errs.add(
                "interface.mtu",
                format!(
                    "must be at least {IPV6_MIN_MTU} when the interface has IPv6 addresses (the kernel disables IPv6 below it), got {mtu}"
                ),
            );
        } else {
            out.mtu = u32::try_from(mtu).ok();
        }
    }

    if let Some(s) = &i.hardware_addr {
        match parse_config_mac(s) {
            None => errs.add(
                "interface.hardwareAddr",
                format!("{s:?} is not a MAC address: expected six hex octets, e.g. 02:00:00:00:00:01"),
            ),
            Some(mac) if mac[0] & 1 != 0 => errs.add(
                "interface.hardwareAddr",
                format!("{s} is a multicast (group) address; the lowest bit of the first octet must be clear"),
            ),
            Some(mac) if mac == [0; 6] => {
                errs.add("interface.hardwareAddr", "must not be all zero")
            }
            Some(mac) => out.hardware_addr = Some(mac),
        }
    }

    out.gso_max_size = check_size(i.gso_max_size, "interface.gsoMaxSize", "GSO_MAX_SIZE", errs);
    out.gro_max_size = check_size(i.gro_max_size, "interface.groMaxSize", "GRO_MAX_SIZE", errs);
    out.gso_ipv4_max_size = check_size(
        i.gso_ipv4_max_size,
        "interface.gsoIPv4MaxSize",
        "GSO_MAX_SIZE",
        errs,
    );
    out.gro_ipv4_max_size = check_size(
        i.gro_ipv4_max_size,
        "interface.groIPv4MaxSize",
        "GRO_MAX_SIZE",
        errs,
    );

    if i.dhcp == Some(true) {
        if i.addresses.is_empty() {
            out.dhcp = true;
        } else {
            errs.add(
                "interface.dhcp",
                "dhcp and addresses are mutually exclusive: the address comes from the DHCP server",
            );
        }
    }
    out.forwarding = i.forwarding;
    if let Some(v) = i.arp_ignore {
        match u8::try_from(v) {
            Ok(v @ (0..=3 | 8)) => out.arp_ignore = Some(v),
            _ => errs.add(
                "interface.arpIgnore",
                format!("must be one of 0, 1, 2, 3, or 8, got {v}"),
            ),
        }
    }
    if let Some(v) = i.arp_announce {
        match u8::try_from(v) {
            Ok(v @ 0..=2) => out.arp_announce = Some(v),
            _ => errs.add(
                "interface.arpAnnounce",
                format!("must be between 0 and 2, got {v}"),
            ),
        }
    }
    if let Some(v) = &i.vrf {
        out.vrf = check_vrf(v, out.name.as_deref(), errs);
    }
    out
}

fn check_names(
    map: &BTreeMap<String, bool>,
    path: &str,
    limit: usize,
    what: &str,
    errs: &mut Problems,
) -> BTreeMap<String, bool> {
    if map.len() > limit {
        errs.add(path, format!("at most {limit} {what}, got {}", map.len()));
    }
    let mut out = BTreeMap::new();
    for (name, on) in map.iter().take(limit) {
        let at = key(path, name);
        if name.is_empty() {
            errs.add(at, "name must not be empty");
        } else if name.len() >= ETH_GSTRING_LEN {
            errs.add(
                at,
                format!(
                    "name is {} bytes; ethtool names are at most {} bytes (ETH_GSTRING_LEN {ETH_GSTRING_LEN} with the NUL)",
                    name.len(),
                    ETH_GSTRING_LEN - 1
                ),
            );
        } else if !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            errs.add(at, "name must be printable ASCII");
        } else {
            out.insert(name.clone(), *on);
        }
    }
    out
}

fn check_ethtool(e: Option<&EthtoolConfig>, errs: &mut Problems) -> ValidEthtool {
    let Some(e) = e else {
        return ValidEthtool::default();
    };
    ValidEthtool {
        features: check_names(
            &e.features,
            "ethtool.features",
            MAX_ETHTOOL_FEATURES,
            "features",
            errs,
        ),
        private_flags: check_names(
            &e.private_flags,
            "ethtool.privateFlags",
            MAX_PRIVATE_FLAGS,
            "private flags",
            errs,
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::config::parse_parameters;
    use crate::datapath::DataplaneKnobs;

    fn base() -> Value {
        json!({
            "interface": {
                "name": "net0",
                "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
                "mtu": 1500,
                "hardwareAddr": "02:00:00:00:00:01",
                "gsoMaxSize": 65536,
                "groMaxSize": 65536,
                "gsoIPv4MaxSize": 65536,
                "groIPv4MaxSize": 65536
            },
            "routes": [
                {"destination": "198.51.100.0/24", "gateway": "192.0.2.1", "source": "192.0.2.10"},
                {"destination": "203.0.113.0/24", "scope": 253},
                {"destination": "2001:db8:1::/48", "gateway": "2001:db8::1"}
            ],
            "ethtool": {"features": {"tso": false}, "privateFlags": {"flag-a": true}}
        })
    }

    /// Sets the member or element at a JSON pointer (`null` removes a member).
    fn set(v: &mut Value, ptr: &str, new: Value) {
        let (parent, last) = ptr.rsplit_once('/').expect("pointer has a '/'");
        match v.pointer_mut(parent).expect("parent exists") {
            Value::Object(m) => {
                m.insert(last.to_string(), new);
            }
            Value::Array(a) => a[last.parse::<usize>().expect("index")] = new,
            other => panic!("cannot set {ptr} in {other}"),
        }
    }

    fn names(prefix: &str, n: usize) -> Value {
        Value::Object(
            (0..n)
                .map(|i| (format!("{prefix}{i}"), json!(true)))
                .collect(),
        )
    }

    type Case = (
        &'static str,
        Vec<(&'static str, Value)>,
        Option<(&'static str, &'static str)>,
    );

    fn cases() -> Vec<Case> {
        let many_addrs = |n: usize| {
            json!((0..n)
                .map(|i| format!("10.0.{}.{}/16", i / 200, i % 200 + 1))
                .collect::<Vec<_>>())
        };
        let many_routes = |n: usize| {
            json!((0..n)
                .map(|i| json!({"destination": format!("10.{}.{}.0/24", i / 250, i % 250), "scope": 253}))
                .collect::<Vec<_>>())
        };
        vec![
            // interface.name: dev_valid_name
            (
                "name ok",
                vec![("/interface/name", json!("eth_app-0"))],
                None,
            ),
            (
                "name 15 bytes",
                vec![("/interface/name", json!("a23456789012345"))],
                None,
            ),
            (
                "name empty means keep (DraNet)",
                vec![("/interface/name", json!(""))],
                None,
            ),
            (
                "name bang (DraNet's set)",
                vec![("/interface/name", json!("eth!"))],
                Some(("interface.name", "ASCII letters, digits")),
            ),
            (
                "name 16 bytes",
                vec![("/interface/name", json!("a234567890123456"))],
                Some(("interface.name", "at most 15 bytes")),
            ),
            (
                "name dot",
                vec![("/interface/name", json!("."))],
                Some(("interface.name", "not a valid interface name")),
            ),
            (
                "name dotdot",
                vec![("/interface/name", json!(".."))],
                Some(("interface.name", "not a valid interface name")),
            ),
            (
                "name slash",
                vec![("/interface/name", json!("a/b"))],
                Some(("interface.name", "'/'")),
            ),
            (
                "name colon",
                vec![("/interface/name", json!("eth0:1"))],
                Some(("interface.name", "':'")),
            ),
            (
                "name space",
                vec![("/interface/name", json!("a b"))],
                Some(("interface.name", "whitespace")),
            ),
            (
                "name tab",
                vec![("/interface/name", json!("a\tb"))],
                Some(("interface.name", "whitespace")),
            ),
            (
                "name nbsp byte",
                vec![("/interface/name", json!("eth\u{e0}"))],
                Some(("interface.name", "whitespace")),
            ),
            (
                "name non-ascii letter",
                vec![("/interface/name", json!("ethé"))],
                Some(("interface.name", "ASCII only")),
            ),
            (
                "name nul",
                vec![("/interface/name", json!("a\u{0}b"))],
                Some(("interface.name", "NUL")),
            ),
            (
                "name template",
                vec![("/interface/name", json!("net%d"))],
                Some(("interface.name", "template")),
            ),
            ("name absent", vec![("/interface/name", Value::Null)], None),
            // interface.addresses
            (
                "addr v6",
                vec![
                    ("/interface/addresses", json!(["2001:db8::1/128"])),
                    ("/routes", json!([])),
                ],
                None,
            ),
            (
                "addr no prefix",
                vec![("/interface/addresses/0", json!("192.0.2.10"))],
                Some(("interface.addresses[0]", "not a CIDR")),
            ),
            (
                "addr v4 /33",
                vec![("/interface/addresses/0", json!("192.0.2.10/33"))],
                Some(("interface.addresses[0]", "out of range for an IPv4")),
            ),
            (
                "addr v4 /32",
                vec![
                    ("/interface/addresses/0", json!("192.0.2.10/32")),
                    ("/routes", json!([])),
                ],
                None,
            ),
            (
                "addr v6 /129",
                vec![("/interface/addresses/1", json!("2001:db8::10/129"))],
                Some(("interface.addresses[1]", "at most /128")),
            ),
            (
                "addr bad ip",
                vec![("/interface/addresses/1", json!("2001:zz::1/64"))],
                Some(("interface.addresses[1]", "not an IPv4 or IPv6 address")),
            ),
            (
                "addr bad len",
                vec![("/interface/addresses/0", json!("192.0.2.10/x"))],
                Some(("interface.addresses[0]", "not a number")),
            ),
            (
                "addr dup",
                vec![(
                    "/interface/addresses",
                    json!(["192.0.2.10/24", "192.0.2.10/25"]),
                )],
                Some((
                    "interface.addresses[1]",
                    "already in interface.addresses[0]",
                )),
            ),
            (
                "addr unspecified",
                vec![
                    ("/interface/addresses", json!(["0.0.0.0/0"])),
                    ("/routes", json!([])),
                ],
                Some(("interface.addresses[0]", "unspecified")),
            ),
            (
                "addr multicast",
                vec![
                    ("/interface/addresses", json!(["ff02::1/64"])),
                    ("/routes", json!([])),
                ],
                Some(("interface.addresses[0]", "multicast")),
            ),
            (
                "addr 64",
                vec![
                    ("/interface/addresses", many_addrs(64)),
                    ("/routes", json!([])),
                ],
                None,
            ),
            (
                "addr 65",
                vec![
                    ("/interface/addresses", many_addrs(65)),
                    ("/routes", json!([])),
                ],
                Some(("interface.addresses", "at most 64")),
            ),
            // interface.mtu
            (
                "mtu 68 v4 only",
                vec![
                    ("/interface/mtu", json!(68)),
                    ("/interface/addresses", json!(["192.0.2.10/24"])),
                    ("/routes", json!([])),
                ],
                None,
            ),
            (
                "mtu 67",
                vec![("/interface/mtu", json!(67))],
                Some(("interface.mtu", "between 68 and 65535")),
            ),
            ("mtu 65535", vec![("/interface/mtu", json!(65535))], None),
            (
                "mtu 65536",
                vec![("/interface/mtu", json!(65536))],
                Some(("interface.mtu", "between 68 and 65535")),
            ),
            (
                "mtu 1279 with v6",
                vec![("/interface/mtu", json!(1279))],
                Some(("interface.mtu", "at least 1280")),
            ),
            (
                "mtu 1280 with v6",
                vec![("/interface/mtu", json!(1280))],
                None,
            ),
            // interface.hardwareAddr
            (
                "mac upper",
                vec![("/interface/hardwareAddr", json!("AA:BB:CC:DD:EE:F0"))],
                None,
            ),
            (
                "mac short",
                vec![("/interface/hardwareAddr", json!("02:00:00:00:00"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac long",
                vec![("/interface/hardwareAddr", json!("02:00:00:00:00:01:02"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac dashes (Go's ParseMAC)",
                vec![("/interface/hardwareAddr", json!("02-00-00-00-00-01"))],
                None,
            ),
            (
                "mac dots (Go's ParseMAC)",
                vec![("/interface/hardwareAddr", json!("0200.0000.0001"))],
                None,
            ),
            (
                "mac mixed separators",
                vec![("/interface/hardwareAddr", json!("02-00:00-00-00-01"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac eui-64",
                vec![("/interface/hardwareAddr", json!("02:00:00:00:00:00:00:01"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac not hex",
                vec![("/interface/hardwareAddr", json!("0g:00:00:00:00:01"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac one digit",
                vec![("/interface/hardwareAddr", json!("2:00:00:00:00:01"))],
                Some(("interface.hardwareAddr", "not a MAC address")),
            ),
            (
                "mac multicast",
                vec![("/interface/hardwareAddr", json!("01:00:5e:00:00:01"))],
                Some(("interface.hardwareAddr", "multicast (group)")),
            ),
            (
                "mac broadcast",
                vec![("/interface/hardwareAddr", json!("ff:ff:ff:ff:ff:ff"))],
                Some(("interface.hardwareAddr", "multicast (group)")),
            ),
            (
                "mac zero",
                vec![("/interface/hardwareAddr", json!("00:00:00:00:00:00"))],
                Some(("interface.hardwareAddr", "all zero")),
            ),
            // GSO / GRO sizes
            (
                "gso max",
                vec![("/interface/gsoMaxSize", json!(524280))],
                None,
            ),
            (
                "gso 0",
                vec![("/interface/gsoMaxSize", json!(0))],
                Some(("interface.gsoMaxSize", "greater than 0")),
            ),
            (
                "gso over",
                vec![("/interface/gsoMaxSize", json!(524281))],
                Some(("interface.gsoMaxSize", "at most 524280")),
            ),
            (
                "gro max",
                vec![("/interface/groMaxSize", json!(524280))],
                None,
            ),
            (
                "gro negative",
                vec![("/interface/groMaxSize", json!(-1))],
                Some(("interface.groMaxSize", "greater than 0")),
            ),
            (
                "gro over",
                vec![("/interface/groMaxSize", json!(600000))],
                Some(("interface.groMaxSize", "at most 524280")),
            ),
            (
                "gso4 max",
                vec![("/interface/gsoIPv4MaxSize", json!(524280))],
                None,
            ),
            (
                "gso4 0",
                vec![("/interface/gsoIPv4MaxSize", json!(0))],
                Some(("interface.gsoIPv4MaxSize", "greater than 0")),
            ),
            (
                "gso4 over",
                vec![("/interface/gsoIPv4MaxSize", json!(524281))],
                Some(("interface.gsoIPv4MaxSize", "at most 524280")),
            ),
            (
                "gro4 max",
                vec![("/interface/groIPv4MaxSize", json!(524280))],
                None,
            ),
            (
                "gro4 0",
                vec![("/interface/groIPv4MaxSize", json!(0))],
                Some(("interface.groIPv4MaxSize", "greater than 0")),
            ),
            (
                "gro4 over",
                vec![("/interface/groIPv4MaxSize", json!(524281))],
                Some(("interface.groIPv4MaxSize", "at most 524280")),
            ),
            // routes[].destination
            (
                "dest default",
                vec![("/routes/0/destination", json!("0.0.0.0/0"))],
                None,
            ),
            (
                "dest missing",
                vec![("/routes/0/destination", Value::Null)],
                Some(("routes[0].destination", "required")),
            ),
            (
                "dest empty",
                vec![("/routes/0/destination", json!(""))],
                Some(("routes[0].destination", "required")),
            ),
            (
                "dest not cidr",
                vec![("/routes/0/destination", json!("198.51.100.0"))],
                Some(("routes[0].destination", "not a CIDR")),
            ),
            (
                "dest host bits",
                vec![("/routes/0/destination", json!("198.51.100.1/24"))],
                Some((
                    "routes[0].destination",
                    "host bits set; the network is 198.51.100.0/24",
                )),
            ),
            // routes[].scope and gateway
            (
                "scope 1",
                vec![("/routes/1/scope", json!(1))],
                Some(("routes[1].scope", "must be 0 (universe")),
            ),
            (
                "scope 0 without gateway",
                vec![("/routes/1/scope", json!(0))],
                Some(("routes[1].gateway", "required when scope is 0")),
            ),
            (
                "scope 253 with gateway",
                vec![("/routes/1/gateway", json!("192.0.2.1"))],
                Some(("routes[1].gateway", "forbidden when scope is 253")),
            ),
            (
                "gateway other family",
                vec![("/routes/0/gateway", json!("2001:db8::1"))],
                Some(("routes[0].gateway", "is IPv6 but the destination is IPv4")),
            ),
            (
                "gateway not ip",
                vec![("/routes/0/gateway", json!("router"))],
                Some(("routes[0].gateway", "not an IPv4 or IPv6 address")),
            ),
            (
                "gateway prefix",
                vec![("/routes/0/gateway", json!("192.0.2.1/24"))],
                Some(("routes[0].gateway", "is a prefix")),
            ),
            (
                "gateway multicast",
                vec![("/routes/0/gateway", json!("224.0.0.1"))],
                Some(("routes[0].gateway", "not a unicast address")),
            ),
            (
                "gateway local",
                vec![("/routes/0/gateway", json!("192.0.2.10"))],
                Some(("routes[0].gateway", "one of interface.addresses")),
            ),
            (
                "gateway unreachable",
                vec![("/routes/0/gateway", json!("10.9.9.9"))],
                Some(("routes[0].gateway", "not reachable on the link")),
            ),
            (
                "gateway via link route",
                vec![("/routes/0/gateway", json!("203.0.113.1"))],
                None,
            ),
            (
                "gateway v6 link-local",
                vec![("/routes/2/gateway", json!("fe80::1"))],
                None,
            ),
            (
                "gateway anywhere without addresses",
                vec![
                    ("/interface/addresses", json!([])),
                    ("/routes/0/source", Value::Null),
                    ("/routes/0/gateway", json!("10.9.9.9")),
                ],
                None,
            ),
            // routes[].source
            (
                "source other address",
                vec![("/routes/0/source", json!("192.0.2.99"))],
                Some(("routes[0].source", "not one of interface.addresses")),
            ),
            (
                "source other family",
                vec![("/routes/0/source", json!("2001:db8::10"))],
                Some(("routes[0].source", "is IPv6 but the destination is IPv4")),
            ),
            (
                "source not ip",
                vec![("/routes/0/source", json!("me"))],
                Some(("routes[0].source", "not an IPv4 or IPv6 address")),
            ),
            (
                "source v6",
                vec![("/routes/2/source", json!("2001:db8::10"))],
                None,
            ),
            (
                "source free without addresses",
                vec![
                    ("/interface/addresses", json!([])),
                    ("/routes/0/source", json!("10.1.1.1")),
                ],
                None,
            ),
            // routes[].table
            ("table 100", vec![("/routes/0/table", json!(100))], None),
            ("table main", vec![("/routes/0/table", json!(254))], None),
            (
                "table 0 is main (DraNet)",
                vec![("/routes/0/table", json!(0))],
                None,
            ),
            (
                "table negative",
                vec![("/routes/0/table", json!(-1))],
                Some(("routes[0].table", "non-negative")),
            ),
            (
                "table above u32",
                vec![("/routes/0/table", json!(4294967296u64))],
                Some(("routes[0].table", "largest table")),
            ),
            (
                "table local",
                vec![("/routes/0/table", json!(255))],
                Some(("routes[0].table", "local table")),
            ),
            // duplicates and limits
            (
                "dup route",
                vec![("/routes/1/destination", json!("198.51.100.0/24"))],
                Some((
                    "routes[1].destination",
                    "routes[0] has the same destination and table",
                )),
            ),
            (
                "same dest other table",
                vec![
                    ("/routes/1/destination", json!("198.51.100.0/24")),
                    ("/routes/1/table", json!(100)),
                ],
                None,
            ),
            ("routes 1024", vec![("/routes", many_routes(1024))], None),
            (
                "routes 1025",
                vec![("/routes", many_routes(1025))],
                Some(("routes", "at most 1024")),
            ),
            // rules
            (
                "rule ok",
                vec![(
                    "/rules",
                    json!([{"priority": 100, "source": "192.0.2.0/24", "table": 100}]),
                )],
                None,
            ),
            (
                "rule priority 32768",
                vec![("/rules", json!([{"priority": 32768, "table": 100}]))],
                Some(("rules[0].priority", "between 0 and 32767")),
            ),
            (
                "rule priority negative",
                vec![("/rules", json!([{"priority": -1, "table": 100}]))],
                Some(("rules[0].priority", "between 0 and 32767")),
            ),
            (
                "rule without table",
                vec![(
                    "/rules",
                    json!([{"priority": 10, "destination": "198.51.100.0/24"}]),
                )],
                Some(("rules[0].table", "new, empty table")),
            ),
            (
                "rule table 0",
                vec![("/rules", json!([{"table": 0}]))],
                Some(("rules[0].table", "new, empty table")),
            ),
            (
                "rule table negative",
                vec![("/rules", json!([{"table": -1}]))],
                Some(("rules[0].table", "non-negative")),
            ),
            (
                "rule source not cidr",
                vec![("/rules", json!([{"source": "192.0.2.1", "table": 100}]))],
                Some(("rules[0].source", "not a CIDR")),
            ),
            (
                "rule destination host bits",
                vec![(
                    "/rules",
                    json!([{"destination": "198.51.100.1/24", "table": 100}]),
                )],
                Some(("rules[0].destination", "host bits set")),
            ),
            (
                "rule families differ",
                vec![(
                    "/rules",
                    json!([{"source": "192.0.2.0/24", "destination": "2001:db8::/32", "table": 100}]),
                )],
                Some(("rules[0].destination", "a rule has one family")),
            ),
            (
                "rule duplicate",
                vec![(
                    "/rules",
                    json!([{"priority": 5, "table": 100}, {"priority": 5, "table": 100}]),
                )],
                Some(("rules[1].priority", "duplicate rule: rules[0]")),
            ),
            (
                "rules with vrf",
                vec![
                    ("/interface/vrf", json!({"name": "vrf0"})),
                    ("/rules", json!([{"table": 100}])),
                ],
                Some(("rules", "not supported when interface.vrf")),
            ),
            // neighbors
            (
                "neighbor ok v4 and v6",
                vec![(
                    "/neighbors",
                    json!([{"destination": "192.0.2.1", "hardwareAddr": "02:00:00:00:00:02"},
                           {"destination": "2001:db8::1", "hardwareAddr": "02-00-00-00-00-03"}]),
                )],
                None,
            ),
            (
                "neighbor without destination",
                vec![("/neighbors", json!([{"hardwareAddr": "02:00:00:00:00:02"}]))],
                Some(("neighbors[0].destination", "required")),
            ),
            (
                "neighbor destination prefix",
                vec![(
                    "/neighbors",
                    json!([{"destination": "192.0.2.1/32", "hardwareAddr": "02:00:00:00:00:02"}]),
                )],
                Some(("neighbors[0].destination", "is a prefix")),
            ),
            (
                "neighbor multicast",
                vec![(
                    "/neighbors",
                    json!([{"destination": "224.0.0.1", "hardwareAddr": "02:00:00:00:00:02"}]),
                )],
                Some(("neighbors[0].destination", "not a unicast")),
            ),
            (
                "neighbor without mac",
                vec![("/neighbors", json!([{"destination": "192.0.2.1"}]))],
                Some(("neighbors[0].hardwareAddr", "required")),
            ),
            (
                "neighbor bad mac",
                vec![(
                    "/neighbors",
                    json!([{"destination": "192.0.2.1", "hardwareAddr": "zz"}]),
                )],
                Some(("neighbors[0].hardwareAddr", "not a MAC")),
            ),
            (
                "neighbor duplicate",
                vec![(
                    "/neighbors",
                    json!([{"destination": "192.0.2.1", "hardwareAddr": "02:00:00:00:00:02"},
                           {"destination": "192.0.2.1", "hardwareAddr": "02:00:00:00:00:03"}]),
                )],
                Some(("neighbors[1].destination", "already in neighbors[0]")),
            ),
            // interface: DraNet's dhcp, sysctls, vrf, disableEbpfPrograms
            (
                "dhcp with addresses",
                vec![("/interface/dhcp", json!(true))],
                Some(("interface.dhcp", "mutually exclusive")),
            ),
            (
                "dhcp false with addresses",
                vec![("/interface/dhcp", json!(false))],
                None,
            ),
            (
                "dhcp alone",
                vec![
                    ("/interface/dhcp", json!(true)),
                    ("/interface/addresses", json!([])),
                    ("/routes", json!([])),
                ],
                None,
            ),
            (
                "arpIgnore 8",
                vec![("/interface/arpIgnore", json!(8))],
                None,
            ),
            (
                "arpIgnore 4",
                vec![("/interface/arpIgnore", json!(4))],
                Some(("interface.arpIgnore", "0, 1, 2, 3, or 8")),
            ),
            (
                "arpAnnounce 3",
                vec![("/interface/arpAnnounce", json!(3))],
                Some(("interface.arpAnnounce", "between 0 and 2")),
            ),
            (
                "forwarding",
                vec![("/interface/forwarding", json!(true))],
                None,
            ),
            (
                "vrf ok",
                vec![("/interface/vrf", json!({"name": "vrf-blue", "table": 10}))],
                None,
            ),
            (
                "vrf without name",
                vec![("/interface/vrf", json!({"table": 10}))],
                Some(("interface.vrf.name", "cannot be empty")),
            ),
            (
                "vrf reserved table",
                vec![("/interface/vrf", json!({"name": "v", "table": 254}))],
                Some(("interface.vrf.table", "reserved")),
            ),
            (
                "vrf table 0",
                vec![("/interface/vrf", json!({"name": "v", "table": 0}))],
                Some(("interface.vrf.table", "positive")),
            ),
            (
                "vrf named like the interface",
                vec![("/interface/vrf", json!({"name": "net0"}))],
                Some(("interface.vrf.name", "also interface.name")),
            ),
            (
                "vrf with a route table",
                vec![
                    ("/interface/vrf", json!({"name": "v"})),
                    ("/routes/0/table", json!(100)),
                ],
                Some(("routes[0].table", "VRF's table")),
            ),
            (
                "disableEbpfPrograms in both places, agreeing",
                vec![
                    ("/disableEbpfPrograms", json!(true)),
                    ("/interface/disableEbpfPrograms", json!(true)),
                ],
                None,
            ),
            (
                "disableEbpfPrograms in both places, disagreeing",
                vec![
                    ("/disableEbpfPrograms", json!(false)),
                    ("/interface/disableEbpfPrograms", json!(true)),
                ],
                Some(("interface.disableEbpfPrograms", "same switch")),
            ),
            (
                "profile",
                vec![("/profile", json!("gpu-net"))],
                Some(("profile", "no provider plugins")),
            ),
            ("empty profile", vec![("/profile", json!(""))], None),
            // ethtool
            (
                "feature empty",
                vec![("/ethtool/features/", json!(true))],
                Some(("ethtool.features[\"\"]", "must not be empty")),
            ),
            (
                "feature 31 bytes",
                vec![(
                    "/ethtool/features/a234567890123456789012345678901",
                    json!(true),
                )],
                None,
            ),
            (
                "feature 32 bytes",
                vec![(
                    "/ethtool/features/a2345678901234567890123456789012",
                    json!(true),
                )],
                Some((
                    "ethtool.features[\"a2345678901234567890123456789012\"]",
                    "at most 31 bytes",
                )),
            ),
            (
                "feature control char",
                vec![("/ethtool/features/tx\u{7}", json!(true))],
                Some(("ethtool.features[\"tx\\u0007\"]", "printable")),
            ),
            (
                "feature non-ascii",
                vec![("/ethtool/features/tsö", json!(true))],
                Some(("ethtool.features[\"tsö\"]", "printable")),
            ),
            (
                "flag with space",
                vec![("/ethtool/privateFlags/link down on close", json!(true))],
                None,
            ),
            (
                "flag empty",
                vec![("/ethtool/privateFlags/", json!(false))],
                Some(("ethtool.privateFlags[\"\"]", "must not be empty")),
            ),
            (
                "flag 32 bytes",
                vec![(
                    "/ethtool/privateFlags/a2345678901234567890123456789012",
                    json!(true),
                )],
                Some((
                    "ethtool.privateFlags[\"a2345678901234567890123456789012\"]",
                    "at most 31 bytes",
                )),
            ),
            (
                "features 256",
                vec![("/ethtool/features", names("f", 256))],
                None,
            ),
            (
                "features 257",
                vec![("/ethtool/features", names("f", 257))],
                Some(("ethtool.features", "at most 256")),
            ),
            (
                "flags 64",
                vec![("/ethtool/privateFlags", names("p", 64))],
                None,
            ),
            (
                "flags 65",
                vec![("/ethtool/privateFlags", names("p", 65))],
                Some(("ethtool.privateFlags", "at most 64")),
            ),
        ]
    }

    #[test]
    fn base_config_is_valid() {
        let v = parse_parameters(&base(), "").expect("base is valid");
        assert_eq!(v.interface.name.as_deref(), Some("net0"));
        assert_eq!(v.interface.hardware_addr, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(v.interface.mtu, Some(1500));
        assert_eq!(
            v.interface.addresses[1],
            "2001:db8::10/64".parse::<IpNet>().unwrap()
        );
        assert_eq!(v.routes.len(), 3);
        assert_eq!(v.routes[0].gateway, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(v.routes[0].source, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(v.routes[1].scope, RouteScope::Link);
        assert_eq!(v.routes[1].scope.as_u8(), 253);
        assert_eq!(v.routes[0].table, None);
        assert_eq!(v.ethtool.features.get("tso"), Some(&false));
        assert_eq!(v.knobs, DataplaneKnobs::default());
    }

    #[test]
    fn every_rule_accepts_and_rejects() {
        let mut failures = Vec::new();
        for (name, edits, expected) in cases() {
            let mut v = base();
            for (ptr, value) in edits {
                set(&mut v, ptr, value);
            }
            let got = parse_parameters(&v, "");
            match (expected, got) {
                (None, Ok(_)) => {}
                (None, Err(e)) => failures.push(format!("{name}: expected valid, got {e}")),
                (Some((path, frag)), Ok(_)) => {
                    failures.push(format!("{name}: expected {path}: …{frag}…, got valid"))
                }
                (Some((path, frag)), Err(e)) => {
                    let ok = e.len() == 1
                        && e.errors[0].path == path
                        && e.errors[0].message.contains(frag);
                    if !ok {
                        failures.push(format!(
                            "{name}: expected exactly {path}: …{frag}…, got {e}"
                        ));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let cfg: NetworkConfig = serde_json::from_value(json!({
            "interface": {"name": "this-name-is-too-long", "addresses": ["192.0.2.10"], "mtu": 10},
            "routes": [
                {"destination": "198.51.100.0/24"},
                {"destination": "203.0.113.0/24", "scope": 253, "gateway": "192.0.2.1"}
            ]
        }))
        .unwrap();
        let e = validate(&cfg).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "interface.name",
                "interface.addresses[0]",
                "interface.mtu",
                "routes[0].gateway",
                "routes[1].gateway"
            ]
        );
        assert_eq!(
            e.errors[3].to_string(),
            "routes[0].gateway: required when scope is 0 (universe)"
        );
        assert!(e.to_string().starts_with("5 problems: interface.name: "));
    }

    #[test]
    fn empty_config_is_valid_with_default_knobs() {
        let v = validate(&NetworkConfig::default()).unwrap();
        assert_eq!(
            v,
            ValidConfig {
                knobs: DataplaneKnobs::default(),
                ..ValidConfig::default()
            }
        );
        assert!(v.knobs.enforce_routes && v.knobs.anti_spoofing && v.knobs.ingress_filter);
        assert!(
            !v.knobs.allow_multicast,
            "relaxations are off unless asked for"
        );
    }

    #[test]
    fn datapath_policy_has_addresses_routes_and_knobs() {
        let mut raw = base();
        set(&mut raw, "/dataplane", json!({"antiSpoofing": false}));
        let v = parse_parameters(&raw, "").unwrap();
        let p = v.datapath_policy();
        let s = |n: &[IpNet]| n.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(s(&p.addresses), ["192.0.2.10/24", "2001:db8::10/64"]);
        assert_eq!(
            s(&p.routes),
            ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48"]
        );
        assert!(!p.knobs.anti_spoofing);
        assert!(p.knobs.enforce_routes && p.knobs.ingress_filter && !p.knobs.allow_multicast);
    }

    #[test]
    fn valid_config_round_trips_through_json_with_a_readable_mac() {
        let v = parse_parameters(&base(), "").unwrap();
        let text = serde_json::to_value(&v).unwrap();
        assert_eq!(
            text.pointer("/interface/hardwareAddr"),
            Some(&json!("02:00:00:00:00:01"))
        );
        assert_eq!(text.pointer("/routes/1/scope"), Some(&json!("link")));
        let back: ValidConfig = serde_json::from_value(text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn dranet_fields_are_carried_parsed() {
        let mut raw = base();
        set(&mut raw, "/interface/arpIgnore", json!(2));
        set(&mut raw, "/interface/arpAnnounce", json!(1));
        set(&mut raw, "/interface/forwarding", json!(false));
        set(&mut raw, "/interface/disableEbpfPrograms", json!(true));
        set(
            &mut raw,
            "/rules",
            json!([{"source": "192.0.2.0/24", "table": 100}, {"table": 200, "priority": 7}]),
        );
        set(
            &mut raw,
            "/neighbors",
            json!([{"destination": "192.0.2.1", "hardwareAddr": "02-00-00-00-00-0A"}]),
        );
        let v = parse_parameters(&raw, "").unwrap();
        assert_eq!(v.interface.arp_ignore, Some(2));
        assert_eq!(v.interface.arp_announce, Some(1));
        assert_eq!(v.interface.forwarding, Some(false));
        assert!(
            v.disable_ebpf_programs,
            "interface.disableEbpfPrograms is the same switch"
        );
        assert_eq!(v.rules[0].priority, 0, "absent priority is 0, as in DraNet");
        assert_eq!(v.rules[0].families(), vec![IpFamily::V4]);
        assert_eq!(v.rules[1].families(), vec![IpFamily::V4, IpFamily::V6]);
        assert_eq!(v.neighbors[0].hardware_addr, [2, 0, 0, 0, 0, 0x0a]);
        assert!(!v.interface.dhcp);
        let back: ValidConfig = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn vrf_table_defaults_like_dranet() {
        // fnv32a("vrf-blue") % 1000 + 1000, computed by Go's hash/fnv.
        let t = vrf_default_table("vrf-blue");
        assert!((1000..2000).contains(&t));
        assert_eq!(vrf_default_table(""), 0x811c_9dc5 % 1000 + 1000);
        let mut raw = base();
        set(&mut raw, "/interface/vrf", json!({"name": "vrf-blue"}));
        let v = parse_parameters(&raw, "").unwrap();
        let vrf = v.interface.vrf.clone().unwrap();
        assert_eq!(vrf.table, t);
        assert!(
            v.routes.iter().all(|r| r.table == Some(t)),
            "every route goes into the VRF's table"
        );
    }

    #[test]
    fn rules_open_their_tables_in_the_datapath_policy_and_neighbours_open_nothing() {
        let mut raw = base();
        set(&mut raw, "/routes/0/table", json!(100));
        set(
            &mut raw,
            "/neighbors",
            json!([{"destination": "192.0.2.77", "hardwareAddr": "02:00:00:00:00:02"},
                   {"destination": "10.1.1.1", "hardwareAddr": "02:00:00:00:00:03"}]),
        );
        let v = parse_parameters(&raw, "").unwrap();
        let routes = |v: &ValidConfig| {
            v.datapath_policy()
                .routes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            routes(&v),
            ["203.0.113.0/24", "2001:db8:1::/48"],
            "table 100 is looked up by no rule, neighbours add nothing"
        );
        set(
            &mut raw,
            "/rules",
            json!([{"destination": "198.51.100.0/25", "table": 100}]),
        );
        let v = parse_parameters(&raw, "").unwrap();
        assert_eq!(
            routes(&v),
            ["198.51.100.0/25", "203.0.113.0/24", "2001:db8:1::/48"]
        );
    }

    #[test]
    fn mac_parsing_and_formatting() {
        assert_eq!(
            parse_mac("aa:BB:cc:dd:ee:ff"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(parse_mac(""), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:"), None);
        assert_eq!(format_mac(&[2, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
    }
}
