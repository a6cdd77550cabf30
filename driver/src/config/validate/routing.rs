//! The routing parts of a claim's config: routes (scope, table, gateway reachable on
//! the link), policy routing rules, permanent neighbours and the VRF, each checked
//! with the path of the field it is about.

use std::collections::HashMap;

use super::*;

pub(super) fn check_rules(rules: &[RuleConfig], errs: &mut Problems) -> Vec<ValidRule> {
    if rules.len() > MAX_RULES {
        errs.add(
            "rules",
            format!("at most {MAX_RULES} rules, got {}", rules.len()),
        );
    }
    let mut out = Vec::new();
    let mut seen: HashMap<(u32, Option<IpNet>, Option<IpNet>, u32), usize> = HashMap::new();
    for (n, r) in rules.iter().take(MAX_RULES).enumerate() {
        let at = |field: &str| join(&index("rules", n), field);
        let before = errs.0.len();
        let priority = r.priority.unwrap_or(0);
        if !(0..=MAX_RULE_PRIORITY).contains(&priority) {
            errs.add(
                at("priority"),
                format!("must be an integer between 0 and {MAX_RULE_PRIORITY}, got {priority}"),
            );
        }
        let table = match r.table.map(table_number) {
            None | Some(Ok(None)) => {
                errs.add(
                    at("table"),
                    "required (1 or more): with table 0 the kernel looks up a new, empty table, so the rule would route nothing (DraNet accepts it)",
                );
                None
            }
            Some(Err(m)) => {
                errs.add(at("table"), m);
                None
            }
            Some(Ok(Some(t))) => Some(t),
        };
        let mut parse = |field: &str, v: &Option<String>| -> Option<IpNet> {
            let s = v.as_deref().filter(|s| !s.is_empty())?;
            parse_network(s).map_err(|m| errs.add(at(field), m)).ok()
        };
        let source = parse("source", &r.source);
        let destination = parse("destination", &r.destination);
        if let (Some(s), Some(d)) = (source, destination) {
            if s.addr().is_ipv4() != d.addr().is_ipv4() {
                errs.add(
                    at("destination"),
                    format!(
                        "{d} is {} but the source {s} is {}; a rule has one family",
                        family(d.addr()),
                        family(s.addr())
                    ),
                );
            }
        }
        if errs.0.len() != before {
            continue;
        }
        let (Some(table), Ok(priority)) = (table, u32::try_from(priority)) else {
            continue;
        };
        let key = (priority, source, destination, table);
        if let Some(first) = seen.get(&key) {
            errs.add(
                at("priority"),
                format!(
                    "duplicate rule: rules[{first}] has the same priority, selectors and table"
                ),
            );
            continue;
        }
        seen.insert(key, n);
        out.push(ValidRule {
            priority,
            source,
            destination,
            table,
        });
    }
    out
}

pub(super) fn check_neighbors(
    neighbors: &[NeighborConfig],
    errs: &mut Problems,
) -> Vec<ValidNeighbor> {
    if neighbors.len() > MAX_NEIGHBORS {
        errs.add(
            "neighbors",
            format!("at most {MAX_NEIGHBORS} neighbors, got {}", neighbors.len()),
        );
    }
    let mut out = Vec::new();
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    for (n, nb) in neighbors.iter().take(MAX_NEIGHBORS).enumerate() {
        let at = |field: &str| join(&index("neighbors", n), field);
        let destination = match nb.destination.as_deref().filter(|s| !s.is_empty()) {
            None => {
                errs.add(at("destination"), "required (an IP address)");
                None
            }
            Some(s) => match parse_ip(s) {
                Err(m) => {
                    errs.add(at("destination"), m);
                    None
                }
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                    errs.add(
                        at("destination"),
                        format!("{ip} is not a unicast address of a neighbour"),
                    );
                    None
                }
                Ok(ip) => Some(ip),
            },
        };
        let mac = match nb.hardware_addr.as_deref().filter(|s| !s.is_empty()) {
            None => {
                errs.add(at("hardwareAddr"), "required (a MAC address)");
                None
            }
            Some(s) => {
                let mac = parse_config_mac(s);
                if mac.is_none() {
                    errs.add(at("hardwareAddr"), format!("{s:?} is not a MAC address: expected six hex octets, e.g. 02:00:00:00:00:01"));
                }
                mac
            }
        };
        if let (Some(ip), Some(mac)) = (destination, mac) {
            if let Some(first) = seen.get(&ip) {
                errs.add(
                    at("destination"),
                    format!("duplicate neighbour {ip}: already in neighbors[{first}]"),
                );
                continue;
            }
            seen.insert(ip, n);
            out.push(ValidNeighbor {
                destination: ip,
                hardware_addr: mac,
            });
        }
    }
    out
}

/// DraNet's default VRF table: FNV-1a (32 bit) of the name, mod 1000, plus 1000, so
/// interfaces naming the same VRF share its table.
pub fn vrf_default_table(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 1000 + VRF_TABLE_OFFSET
}

pub(super) fn check_vrf(
    v: &VrfConfig,
    iface_name: Option<&str>,
    errs: &mut Problems,
) -> Option<ValidVrf> {
    let before = errs.0.len();
    let name = match v.name.as_deref().filter(|n| !n.is_empty()) {
        None => {
            errs.add("interface.vrf.name", "cannot be empty: name the VRF device");
            None
        }
        Some(n) => match check_ifname(n) {
            Err(m) => {
                errs.add("interface.vrf.name", m);
                None
            }
            Ok(()) if Some(n) == iface_name => {
                errs.add(
                    "interface.vrf.name",
                    format!("{n:?} is also interface.name; the VRF is a separate device"),
                );
                None
            }
            Ok(()) => Some(n.to_string()),
        },
    };
    let table = match v.table {
        None => name.as_deref().map(vrf_default_table),
        Some(t) if t <= 0 => {
            errs.add(
                "interface.vrf.table",
                format!("must be a positive integer, got {t}"),
            );
            None
        }
        Some(t) if (253..=255).contains(&t) => {
            errs.add(
                "interface.vrf.table",
                format!("cannot use reserved table ID {t} (default, main, local)"),
            );
            None
        }
        Some(t) => match u32::try_from(t) {
            Ok(t) => Some(t),
            Err(_) => {
                errs.add(
                    "interface.vrf.table",
                    format!("{t} is above the kernel's largest table number"),
                );
                None
            }
        },
    };
    if errs.0.len() != before {
        return None;
    }
    Some(ValidVrf {
        name: name?,
        table: table?,
    })
}

pub(super) fn check_routes(
    routes: &[RouteConfig],
    iface: &ValidInterface,
    addresses_ok: bool,
    errs: &mut Problems,
) -> Vec<ValidRoute> {
    if routes.len() > MAX_ROUTES {
        errs.add(
            "routes",
            format!("at most {MAX_ROUTES} routes, got {}", routes.len()),
        );
    }
    let routes = &routes[..routes.len().min(MAX_ROUTES)];

    // Destinations of well-formed link routes: gateways may be reached through them.
    let link_nets: Vec<IpNet> = routes
        .iter()
        .filter(|r| r.scope == RouteScope::Link.as_u8())
        .filter_map(|r| r.destination.as_deref().and_then(|d| parse_cidr(d).ok()))
        .collect();

    let mut out = Vec::with_capacity(routes.len());
    let mut seen: HashMap<(IpNet, u32), usize> = HashMap::new();
    for (n, r) in routes.iter().enumerate() {
        let at = |field: &str| join(&index("routes", n), field);
        let before = errs.0.len();

        let destination = match r.destination.as_deref() {
            None | Some("") => {
                errs.add(
                    at("destination"),
                    "required (a CIDR, e.g. 0.0.0.0/0 or 10.0.0.0/8)",
                );
                None
            }
            Some(s) => match parse_cidr(s) {
                Err(m) => {
                    errs.add(at("destination"), m);
                    None
                }
                Ok(net) if net.addr() != net.network() => {
                    errs.add(
                        at("destination"),
                        format!("{s} has host bits set; the network is {}", net.trunc()),
                    );
                    None
                }
                Ok(net) => Some(net),
            },
        };

        let scope = match r.scope {
            0 => Some(RouteScope::Universe),
            253 => Some(RouteScope::Link),
            other => {
                errs.add(
                    at("scope"),
                    format!("must be 0 (universe, through a gateway) or 253 (link), got {other}"),
                );
                None
            }
        };

        let mut gateway = None;
        match (r.gateway.as_deref().filter(|g| !g.is_empty()), scope) {
            (None, Some(RouteScope::Universe)) => {
                errs.add(at("gateway"), "required when scope is 0 (universe)")
            }
            (Some(_), Some(RouteScope::Link)) => errs.add(
                at("gateway"),
                "forbidden when scope is 253 (link): a link route has no gateway",
            ),
            (Some(g), _) => match parse_ip(g) {
                Err(m) => errs.add(at("gateway"), m),
                Ok(ip) => {
                    gateway = check_gateway(ip, destination, iface, addresses_ok, &link_nets)
                        .map_err(|m| errs.add(at("gateway"), m))
                        .ok();
                }
            },
            (None, _) => {}
        }

        let mut source = None;
        if let Some(s) = r.source.as_deref().filter(|s| !s.is_empty()) {
            match parse_ip(s) {
                Err(m) => errs.add(at("source"), m),
                Ok(ip) => match destination {
                    Some(d) if d.addr().is_ipv4() != ip.is_ipv4() => errs.add(
                        at("source"),
                        format!(
                            "{ip} is {} but the destination is {}",
                            family(ip),
                            family(d.addr())
                        ),
                    ),
                    _ if addresses_ok
                        && !iface.addresses.is_empty()
                        && !iface.addresses.iter().any(|a| a.addr() == ip) =>
                    {
                        errs.add(
                            at("source"),
                            format!("{ip} is not one of interface.addresses"),
                        )
                    }
                    _ => source = Some(ip),
                },
            }
        }

        let table = match r.table.map(table_number) {
            None => None,
            Some(Err(m)) => {
                errs.add(at("table"), m);
                None
            }
            Some(Ok(Some(RT_TABLE_LOCAL))) => {
                errs.add(
                    at("table"),
                    "255 is the kernel's local table, which holds this host's own addresses; use another table",
                );
                None
            }
            // 0 is "unset" (the main table), as in DraNet.
            Some(Ok(t)) => t,
        };

        if let Some(d) = destination {
            let k = (d, table.unwrap_or(RT_TABLE_MAIN));
            if let Some(first) = seen.get(&k) {
                errs.add(
                    at("destination"),
                    format!("duplicate route to {d}: routes[{first}] has the same destination and table"),
                );
            } else {
                seen.insert(k, n);
            }
        }

        if errs.0.len() == before {
            if let (Some(destination), Some(scope)) = (destination, scope) {
                out.push(ValidRoute {
                    destination,
                    gateway,
                    source,
                    scope,
                    table,
                });
            }
        }
    }
    out
}

/// A universe route's gateway: same family as the destination, a usable unicast
/// address, not local, and reachable on the link when the claim sets addresses.
fn check_gateway(
    ip: IpAddr,
    destination: Option<IpNet>,
    iface: &ValidInterface,
    addresses_ok: bool,
    link_nets: &[IpNet],
) -> Result<IpAddr, String> {
    if let Some(d) = destination {
        if d.addr().is_ipv4() != ip.is_ipv4() {
            return Err(format!(
                "{ip} is {} but the destination is {}",
                family(ip),
                family(d.addr())
            ));
        }
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{ip} is not a unicast address"));
    }
    if iface.addresses.iter().any(|a| a.addr() == ip) {
        return Err(format!(
            "{ip} is one of interface.addresses; a gateway must be another host"
        ));
    }
    let link_local_v6 = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    if addresses_ok
        && !iface.addresses.is_empty()
        && !link_local_v6
        && !iface.addresses.iter().any(|a| a.contains(&ip))
        && !link_nets.iter().any(|n| n.contains(&ip))
    {
        return Err(format!(
            "{ip} is not reachable on the link: it is outside every subnet of interface.addresses and every scope-253 route"
        ));
    }
    Ok(ip)
}
