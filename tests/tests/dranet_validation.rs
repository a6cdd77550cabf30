//! DraNet's own validation cases, replayed against netclaim.
//!
//! Every case of `pkg/apis/validation_test.go` in kubernetes-sigs/dranet (commit
//! f258477, 2026-08-21) is written out below as the JSON DraNet's test builds (Go's
//! `json.Marshal` of the test struct, so `omitempty` fields are left out) and run
//! through netclaim's parser and validator. DraNet unit-tests some validators on a
//! fragment (`validateRoutes(routes, "routes")`); such a fragment becomes the whole
//! config that holds it (`{"routes": [...]}`), which is what a claim would carry.
//!
//! For each case the test asserts that netclaim's verdict (valid / invalid) is
//! DraNet's, and for invalid ones that netclaim names the same field. A case where
//! netclaim is deliberately stricter carries its reason (the README's DraNet table
//! repeats it); a case that does not apply to netclaim says why. The tally is printed
//! and pinned, so a change in either direction fails the test.

use netclaim::config::{parse_parameters, validate, NetworkConfig};

/// What DraNet says about a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dranet {
    Valid,
    /// Invalid, with the field netclaim must name (netclaim's path spelling).
    Invalid(&'static str),
}

/// What this test expects of netclaim beyond agreeing.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Agree,
    /// netclaim rejects a config DraNet accepts, for this reason.
    Stricter(&'static str),
    /// The case tests something netclaim has no counterpart for.
    NotApplicable(&'static str),
}

struct Case {
    /// `TestFunction/case name`, as in DraNet.
    name: &'static str,
    /// The parameters; `None` when DraNet's raw extension is nil or empty (a claim
    /// without parameters for the driver).
    raw: Option<&'static str>,
    dranet: Dranet,
    expect: Expect,
}

const fn ok(name: &'static str, raw: &'static str) -> Case {
    Case {
        name,
        raw: Some(raw),
        dranet: Dranet::Valid,
        expect: Expect::Agree,
    }
}

const fn bad(name: &'static str, raw: &'static str, field: &'static str) -> Case {
    Case {
        name,
        raw: Some(raw),
        dranet: Dranet::Invalid(field),
        expect: Expect::Agree,
    }
}

const RDMA_ONLY: &str = "DraNet refuses interface settings for RDMA-only devices (no netdev); netclaim publishes only network interfaces, so there is no RDMA-only device to refuse them for";

fn cases() -> Vec<Case> {
    vec![
        // TestValidateConfig
        ok(
            "TestValidateConfig/valid full config",
            r#"{"interface":{"name":"eth0","addresses":["192.168.1.1/24"],"mtu":1500},
                "routes":[{"destination":"0.0.0.0/0","gateway":"192.168.1.254"}],
                "rules":[{"source":"10.0.0.0/8","table":100}],
                "ethtool":{"features":{"tso":true}}}"#,
        ),
        Case {
            name: "TestValidateConfig/nil raw extension",
            raw: None,
            dranet: Dranet::Valid,
            expect: Expect::Agree,
        },
        Case {
            name: "TestValidateConfig/empty raw data in extension",
            raw: Some(""),
            dranet: Dranet::Valid,
            expect: Expect::Agree,
        },
        bad(
            "TestValidateConfig/malformed json",
            r#"{"interface": {"name": "eth0""#,
            "",
        ),
        bad(
            "TestValidateConfig/unknown field (strict unmarshal error)",
            r#"{"interface": {"name": "eth0", "unknownField": "test"}}"#,
            "interface.unknownField",
        ),
        bad(
            "TestValidateConfig/config with interface validation error",
            r#"{"interface":{"name":"eth/0"}}"#,
            "interface.name",
        ),
        bad(
            "TestValidateConfig/config with route validation error",
            r#"{"interface":{"name":"eth0"},"routes":[{"destination":"invalid-cidr"}]}"#,
            "routes[0].destination",
        ),
        bad(
            "TestValidateConfig/config with rule validation error",
            r#"{"interface":{"name":"eth0"},"rules":[{"source":"invalid-cidr"}]}"#,
            "rules[0].source",
        ),
        bad(
            "TestValidateConfig/config with VRF and empty name",
            r#"{"interface":{"name":"eth0","vrf":{}}}"#,
            "interface.vrf.name",
        ),
        bad(
            "TestValidateConfig/config with VRF and rules validation error",
            r#"{"interface":{"name":"eth0","vrf":{"name":"my-vrf"}},"rules":[{"table":100}]}"#,
            "rules",
        ),
        // TestIsValidLinuxInterfaceName
        ok(
            "TestIsValidLinuxInterfaceName/valid short",
            r#"{"interface":{"name":"eth0"}}"#,
        ),
        ok(
            "TestIsValidLinuxInterfaceName/valid with hyphen",
            r#"{"interface":{"name":"my-nic"}}"#,
        ),
        ok(
            "TestIsValidLinuxInterfaceName/valid with underscore",
            r#"{"interface":{"name":"my_nic"}}"#,
        ),
        ok(
            "TestIsValidLinuxInterfaceName/valid with period",
            r#"{"interface":{"name":"my.nic"}}"#,
        ),
        ok(
            "TestIsValidLinuxInterfaceName/valid max length",
            r#"{"interface":{"name":"aaaaaaaaaaaaaaa"}}"#,
        ),
        ok(
            "TestIsValidLinuxInterfaceName/empty name (allowed)",
            r#"{"interface":{"name":""}}"#,
        ),
        bad(
            "TestIsValidLinuxInterfaceName/too long",
            r#"{"interface":{"name":"aaaaaaaaaaaaaaaa"}}"#,
            "interface.name",
        ),
        bad(
            "TestIsValidLinuxInterfaceName/contains slash",
            r#"{"interface":{"name":"eth/0"}}"#,
            "interface.name",
        ),
        bad(
            "TestIsValidLinuxInterfaceName/contains space",
            r#"{"interface":{"name":"eth 0"}}"#,
            "interface.name",
        ),
        bad(
            "TestIsValidLinuxInterfaceName/is dot",
            r#"{"interface":{"name":"."}}"#,
            "interface.name",
        ),
        bad(
            "TestIsValidLinuxInterfaceName/is dotdot",
            r#"{"interface":{"name":".."}}"#,
            "interface.name",
        ),
        bad(
            "TestIsValidLinuxInterfaceName/contains invalid char",
            r#"{"interface":{"name":"eth!"}}"#,
            "interface.name",
        ),
        // TestValidateInterfaceConfig
        ok(
            "TestValidateInterfaceConfig/valid",
            r#"{"interface":{"name":"eth0","addresses":["10.0.0.1/24"],"mtu":1500,"gsoMaxSize":65536}}"#,
        ),
        bad(
            "TestValidateInterfaceConfig/invalid name",
            r#"{"interface":{"name":"eth/"}}"#,
            "interface.name",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid address",
            r#"{"interface":{"name":"eth0","addresses":["10.0.0/24"]}}"#,
            "interface.addresses[0]",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid MTU (zero)",
            r#"{"interface":{"name":"eth0","mtu":0}}"#,
            "interface.mtu",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid MTU (too small)",
            r#"{"interface":{"name":"eth0","mtu":67}}"#,
            "interface.mtu",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid GSO MaxSize",
            r#"{"interface":{"name":"eth0","gsoMaxSize":0}}"#,
            "interface.gsoMaxSize",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid GRO MaxSize",
            r#"{"interface":{"name":"eth0","groMaxSize":-1}}"#,
            "interface.groMaxSize",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid GSO V4 MaxSize",
            r#"{"interface":{"name":"eth0","gsoIPv4MaxSize":0}}"#,
            "interface.gsoIPv4MaxSize",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid GRO V4 MaxSize",
            r#"{"interface":{"name":"eth0","groIPv4MaxSize":-1}}"#,
            "interface.groIPv4MaxSize",
        ),
        ok(
            "TestValidateInterfaceConfig/valid hardware address",
            r#"{"interface":{"name":"eth0","hardwareAddr":"00:1A:2B:3C:4D:5E"}}"#,
        ),
        bad(
            "TestValidateInterfaceConfig/invalid hardware address",
            r#"{"interface":{"name":"eth0","hardwareAddr":"00-1A-2B-3C-4D-5E-XX"}}"#,
            "interface.hardwareAddr",
        ),
        ok(
            "TestValidateInterfaceConfig/valid with dhcp",
            r#"{"interface":{"name":"eth0","dhcp":true}}"#,
        ),
        bad(
            "TestValidateInterfaceConfig/invalid with dhcp and addresses",
            r#"{"interface":{"name":"eth0","addresses":["10.0.0.1/24"],"dhcp":true}}"#,
            "interface.dhcp",
        ),
        ok(
            "TestValidateInterfaceConfig/valid with dhcp false and addresses",
            r#"{"interface":{"name":"eth0","addresses":["10.0.0.1/24"],"dhcp":false}}"#,
        ),
        ok(
            "TestValidateInterfaceConfig/valid ARP settings",
            r#"{"interface":{"name":"eth0","arpIgnore":1,"arpAnnounce":2}}"#,
        ),
        ok(
            "TestValidateInterfaceConfig/valid ARP settings at range bounds",
            r#"{"interface":{"name":"eth0","arpIgnore":8,"arpAnnounce":0}}"#,
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (too large)",
            r#"{"interface":{"name":"eth0","arpIgnore":9}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (negative)",
            r#"{"interface":{"name":"eth0","arpIgnore":-1}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (reserved 4)",
            r#"{"interface":{"name":"eth0","arpIgnore":4}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (reserved 5)",
            r#"{"interface":{"name":"eth0","arpIgnore":5}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (reserved 6)",
            r#"{"interface":{"name":"eth0","arpIgnore":6}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpIgnore (reserved 7)",
            r#"{"interface":{"name":"eth0","arpIgnore":7}}"#,
            "interface.arpIgnore",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpAnnounce (too large)",
            r#"{"interface":{"name":"eth0","arpAnnounce":3}}"#,
            "interface.arpAnnounce",
        ),
        bad(
            "TestValidateInterfaceConfig/invalid arpAnnounce (negative)",
            r#"{"interface":{"name":"eth0","arpAnnounce":-1}}"#,
            "interface.arpAnnounce",
        ),
        bad(
            "TestValidateInterfaceConfig/multiple errors",
            r#"{"interface":{"name":"eth/0","addresses":["badip"],"mtu":0}}"#,
            "interface.name",
        ),
        ok("TestValidateInterfaceConfig/nil config", r#"{}"#),
        // TestValidateRDMAOnlyConfigRejectsARPSettings
        Case {
            name: "TestValidateRDMAOnlyConfigRejectsARPSettings/arpIgnore is rejected",
            raw: Some(r#"{"interface":{"arpIgnore":1}}"#),
            dranet: Dranet::Invalid("interface"),
            expect: Expect::NotApplicable(RDMA_ONLY),
        },
        Case {
            name: "TestValidateRDMAOnlyConfigRejectsARPSettings/arpAnnounce is rejected",
            raw: Some(r#"{"interface":{"arpAnnounce":2}}"#),
            dranet: Dranet::Invalid("interface"),
            expect: Expect::NotApplicable(RDMA_ONLY),
        },
        Case {
            name: "TestValidateRDMAOnlyConfigRejectsARPSettings/empty config is accepted",
            raw: Some(r#"{}"#),
            dranet: Dranet::Valid,
            expect: Expect::NotApplicable(RDMA_ONLY),
        },
        // TestValidateRoutes
        ok(
            "TestValidateRoutes/valid default route",
            r#"{"routes":[{"destination":"0.0.0.0/0","gateway":"192.168.1.1"}]}"#,
        ),
        ok(
            "TestValidateRoutes/valid link-local route",
            r#"{"routes":[{"destination":"169.254.0.0/16","scope":253}]}"#,
        ),
        ok(
            "TestValidateRoutes/valid route with table",
            r#"{"routes":[{"destination":"10.10.10.0/24","gateway":"192.168.1.1","table":100}]}"#,
        ),
        bad(
            "TestValidateRoutes/invalid route with negative table",
            r#"{"routes":[{"destination":"10.10.10.0/24","gateway":"192.168.1.1","table":-1}]}"#,
            "routes[0].table",
        ),
        bad(
            "TestValidateRoutes/empty destination",
            r#"{"routes":[{"gateway":"192.168.1.1"}]}"#,
            "routes[0].destination",
        ),
        bad(
            "TestValidateRoutes/invalid destination CIDR",
            r#"{"routes":[{"destination":"10.0.0/24","gateway":"192.168.1.1"}]}"#,
            "routes[0].destination",
        ),
        ok(
            "TestValidateRoutes/valid host route as /32",
            r#"{"routes":[{"destination":"192.168.1.1/32","gateway":"192.168.1.254"}]}"#,
        ),
        bad(
            "TestValidateRoutes/bare IPv4 destination rejected",
            r#"{"routes":[{"destination":"192.168.1.1","gateway":"192.168.1.254"}]}"#,
            "routes[0].destination",
        ),
        bad(
            "TestValidateRoutes/bare IPv6 destination rejected",
            r#"{"routes":[{"destination":"2001:db8::1","scope":253}]}"#,
            "routes[0].destination",
        ),
        bad(
            "TestValidateRoutes/universe scope no gateway",
            r#"{"routes":[{"destination":"10.0.0.0/8"}]}"#,
            "routes[0].gateway",
        ),
        bad(
            "TestValidateRoutes/default scope (universe) no gateway",
            r#"{"routes":[{"destination":"10.0.0.0/8"}]}"#,
            "routes[0].gateway",
        ),
        bad(
            "TestValidateRoutes/invalid gateway IP",
            r#"{"routes":[{"destination":"0.0.0.0/0","gateway":"not-an-ip"}]}"#,
            "routes[0].gateway",
        ),
        bad(
            "TestValidateRoutes/invalid scope value",
            r#"{"routes":[{"destination":"10.0.0.0/8","gateway":"192.168.1.1","scope":100}]}"#,
            "routes[0].scope",
        ),
        bad(
            "TestValidateRoutes/invalid source IP",
            r#"{"routes":[{"destination":"0.0.0.0/0","gateway":"192.168.1.1","source":"not-an-ip"}]}"#,
            "routes[0].source",
        ),
        ok(
            "TestValidateRoutes/valid IPv6 route with gateway matching the destination IP family",
            r#"{"routes":[{"destination":"2001:db8:1::/64","gateway":"2001:db8::1"}]}"#,
        ),
        ok(
            "TestValidateRoutes/valid IPv4 route with gateway and source matching the destination IP family",
            r#"{"routes":[{"destination":"10.0.0.0/8","gateway":"192.168.1.1","source":"192.168.1.2"}]}"#,
        ),
        bad(
            "TestValidateRoutes/gateway family mismatch (IPv4 destination, IPv6 gateway)",
            r#"{"routes":[{"destination":"10.0.0.0/8","gateway":"2001:db8::1"}]}"#,
            "routes[0].gateway",
        ),
        bad(
            "TestValidateRoutes/gateway family mismatch (IPv6 destination, IPv4 gateway)",
            r#"{"routes":[{"destination":"2001:db8::/64","gateway":"192.168.1.1"}]}"#,
            "routes[0].gateway",
        ),
        bad(
            "TestValidateRoutes/source family mismatch (IPv4 destination, IPv6 source)",
            r#"{"routes":[{"destination":"10.0.0.0/8","gateway":"192.168.1.1","source":"2001:db8::2"}]}"#,
            "routes[0].source",
        ),
        // TestValidateRules
        ok(
            "TestValidateRules/valid rule",
            r#"{"rules":[{"priority":10,"source":"10.0.0.0/8","table":100}]}"#,
        ),
        ok(
            "TestValidateRules/valid rule - priority at min",
            r#"{"rules":[{"table":100}]}"#,
        ),
        ok(
            "TestValidateRules/valid rule - priority at max",
            r#"{"rules":[{"priority":32767,"table":100}]}"#,
        ),
        bad(
            "TestValidateRules/invalid priority - too high",
            r#"{"rules":[{"priority":32768}]}"#,
            "rules[0].priority",
        ),
        bad(
            "TestValidateRules/invalid priority - negative",
            r#"{"rules":[{"priority":-1}]}"#,
            "rules[0].priority",
        ),
        bad(
            "TestValidateRules/invalid table",
            r#"{"rules":[{"table":-1}]}"#,
            "rules[0].table",
        ),
        bad(
            "TestValidateRules/invalid source CIDR",
            r#"{"rules":[{"source":"invalid-cidr"}]}"#,
            "rules[0].source",
        ),
        bad(
            "TestValidateRules/invalid destination CIDR",
            r#"{"rules":[{"destination":"invalid-cidr"}]}"#,
            "rules[0].destination",
        ),
        ok(
            "TestValidateRules/valid IPv6 rule with matching source and destination IP family",
            r#"{"rules":[{"source":"2001:db8::/64","destination":"2001:db8:1::/64","table":100}]}"#,
        ),
        bad(
            "TestValidateRules/source and destination family mismatch",
            r#"{"rules":[{"source":"10.0.0.0/8","destination":"2001:db8::/32","table":100}]}"#,
            "rules[0]",
        ),
        bad(
            "TestValidateRules/multiple errors",
            r#"{"rules":[{"priority":-1,"source":"invalid","destination":"invalid","table":-1}]}"#,
            "rules[0].priority",
        ),
        // TestValidateNeighborConfig
        ok(
            "TestValidateNeighborConfig/valid neighbor",
            r#"{"neighbors":[{"destination":"192.168.1.1","hardwareAddr":"00:1A:2B:3C:4D:5E"}]}"#,
        ),
        bad(
            "TestValidateNeighborConfig/empty destination",
            r#"{"neighbors":[{"hardwareAddr":"00:1A:2B:3C:4D:5E"}]}"#,
            "neighbors[0].destination",
        ),
        bad(
            "TestValidateNeighborConfig/invalid destination IP",
            r#"{"neighbors":[{"destination":"invalid-ip","hardwareAddr":"00:1A:2B:3C:4D:5E"}]}"#,
            "neighbors[0].destination",
        ),
        bad(
            "TestValidateNeighborConfig/empty hardware address",
            r#"{"neighbors":[{"destination":"192.168.1.1"}]}"#,
            "neighbors[0].hardwareAddr",
        ),
        bad(
            "TestValidateNeighborConfig/invalid hardware address",
            r#"{"neighbors":[{"destination":"192.168.1.1","hardwareAddr":"invalid-mac"}]}"#,
            "neighbors[0].hardwareAddr",
        ),
        bad(
            "TestValidateNeighborConfig/multiple errors",
            r#"{"neighbors":[{"destination":"bad-ip","hardwareAddr":"bad-mac"}]}"#,
            "neighbors[0].destination",
        ),
    ]
}

/// Configs DraNet's validator (`pkg/apis/validation.go`) accepts but no case of its
/// test file covers, which netclaim refuses on purpose. Each carries the reason; the
/// README's DraNet table lists the same ones.
fn stricter_cases() -> Vec<Case> {
    let stricter = |name, raw, why| Case {
        name,
        raw: Some(raw),
        dranet: Dranet::Valid,
        expect: Expect::Stricter(why),
    };
    vec![
        stricter(
            "rule without a table",
            r#"{"rules":[{"priority":10,"destination":"198.51.100.0/24"}]}"#,
            "table 0 makes the kernel look up a new, empty table: the rule would route nothing",
        ),
        stricter(
            "rule selector with host bits",
            r#"{"rules":[{"source":"10.0.0.1/8","table":100}]}"#,
            "the kernel matches 10.0.0.0/8 but shows 10.0.0.1/8 in `ip rule`; netclaim asks for the network, as for routes",
        ),
        stricter(
            "route destination with host bits",
            r#"{"routes":[{"destination":"10.0.0.1/24","scope":253}]}"#,
            "the kernel refuses it (Invalid prefix for given prefix length) at pod start",
        ),
        stricter(
            "route into the local table",
            r#"{"routes":[{"destination":"10.0.0.0/24","scope":253,"table":255}]}"#,
            "table 255 holds the namespace's own addresses; writing there breaks local delivery",
        ),
        stricter(
            "route table with a VRF",
            r#"{"interface":{"vrf":{"name":"vrf0"}},"routes":[{"destination":"10.0.0.0/24","scope":253,"table":100}]}"#,
            "DraNet silently moves the route into the VRF's table; netclaim refuses a field it would ignore",
        ),
        stricter(
            "profile",
            r#"{"profile":"fast-net"}"#,
            "profiles are resolved by DraNet provider plugins, which netclaim does not have",
        ),
        stricter(
            "non-ASCII interface name",
            r#"{"interface":{"name":"ethé"}}"#,
            "the kernel's dev_valid_name treats byte 0xa0 (inside many UTF-8 letters) as whitespace",
        ),
        stricter(
            "multicast MAC",
            r#"{"interface":{"hardwareAddr":"01:00:5e:00:00:01"}}"#,
            "the kernel refuses a group address as a device address (EADDRNOTAVAIL) at pod start",
        ),
        stricter(
            "MTU above 65535",
            r#"{"interface":{"mtu":70000}}"#,
            "no Ethernet device takes it; the device's own maximum is checked again at pod start",
        ),
        stricter(
            "GSO size above BIG TCP",
            r#"{"interface":{"gsoMaxSize":600000}}"#,
            "the kernel's limit is 524280 (GSO_MAX_SIZE with BIG TCP)",
        ),
        stricter(
            "gateway outside every subnet",
            r#"{"interface":{"addresses":["192.0.2.10/24"]},"routes":[{"destination":"0.0.0.0/0","gateway":"10.9.9.9"}]}"#,
            "the kernel refuses an unreachable gateway (Nexthop has invalid gateway) at pod start",
        ),
        stricter(
            "route source that is not the interface's",
            r#"{"interface":{"addresses":["192.0.2.10/24"]},"routes":[{"destination":"10.0.0.0/8","gateway":"192.0.2.1","source":"192.0.2.99"}]}"#,
            "the kernel refuses a preferred source the namespace does not own (Invalid prefsrc address) at pod start",
        ),
        stricter(
            "link route with a gateway",
            r#"{"routes":[{"destination":"10.0.0.0/8","gateway":"192.168.1.1","scope":253}]}"#,
            "the kernel refuses a gateway on a scope-link route (Nexthop has invalid gateway) at pod start",
        ),
        stricter(
            "duplicate address",
            r#"{"interface":{"addresses":["192.0.2.10/24","192.0.2.10/25"]}}"#,
            "the second add fails with EEXIST at pod start",
        ),
        stricter(
            "multicast neighbour",
            r#"{"neighbors":[{"destination":"224.0.0.1","hardwareAddr":"02:00:00:00:00:01"}]}"#,
            "multicast neighbours are derived by the kernel, never resolved",
        ),
        stricter(
            "VRF name that is not an interface name",
            r#"{"interface":{"vrf":{"name":"vrf/0"}}}"#,
            "the VRF is a device: its name follows the interface-name rules",
        ),
    ]
}

/// netclaim's verdict: `Ok` or the paths of every problem.
fn netclaim(raw: Option<&str>) -> Result<(), Vec<String>> {
    let raw = match raw {
        None | Some("") => {
            // No parameters for the driver: the claim runs with the empty config.
            return validate(&NetworkConfig::default())
                .map(|_| ())
                .map_err(|e| e.iter().map(|e| e.path.clone()).collect());
        }
        Some(r) => r,
    };
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| vec![format!("(not JSON: {e})")])?;
    parse_parameters(&value, "")
        .map(|_| ())
        .map_err(|e| e.iter().map(|e| e.path.clone()).collect())
}

#[test]
fn dranet_validation_cases_agree_with_netclaim() {
    let cases = cases();
    let mut agree = 0;
    let mut stricter = Vec::new();
    let mut not_applicable = 0;
    let mut failures = Vec::new();
    for c in &cases {
        let got = netclaim(c.raw);
        match (c.expect, c.dranet, &got) {
            (Expect::NotApplicable(why), _, _) => {
                assert!(!why.is_empty());
                not_applicable += 1;
            }
            (Expect::Stricter(why), Dranet::Valid, Err(paths)) => {
                stricter.push(format!("{}: {} ({})", c.name, paths.join(", "), why));
            }
            (Expect::Stricter(_), _, _) => failures.push(format!(
                "{}: expected netclaim to refuse a config DraNet accepts, got {got:?}",
                c.name
            )),
            (Expect::Agree, Dranet::Valid, Ok(())) => agree += 1,
            (Expect::Agree, Dranet::Invalid(field), Err(paths)) => {
                // A malformed document has no field; otherwise the field must be named.
                let named = field.is_empty()
                    || paths.iter().any(|p| {
                        p == field
                            || p.starts_with(&format!("{field}."))
                            || p.starts_with(&format!("{field}["))
                    });
                if named {
                    agree += 1;
                } else {
                    failures.push(format!(
                        "{}: both refuse, but netclaim names {paths:?}, not {field}",
                        c.name
                    ));
                }
            }
            (Expect::Agree, d, g) => {
                failures.push(format!("{}: DraNet {d:?}, netclaim {g:?}", c.name))
            }
        }
    }
    println!(
        "DraNet validation cases: {} in all; {agree} agree, {} stricter by design, {not_applicable} not applicable",
        cases.len(),
        stricter.len()
    );
    for s in &stricter {
        println!("  stricter: {s}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.len(), 87, "DraNet's test file has 87 cases");
    assert_eq!((agree, stricter.len(), not_applicable), (84, 0, 3));
}

#[test]
fn netclaim_is_stricter_only_where_it_says_why() {
    let cases = stricter_cases();
    let mut failures = Vec::new();
    for c in &cases {
        let Expect::Stricter(why) = c.expect else {
            failures.push(format!("{}: not marked stricter", c.name));
            continue;
        };
        match netclaim(c.raw) {
            Err(paths) => println!("stricter: {}: {} — {why}", c.name, paths.join(", ")),
            Ok(()) => failures.push(format!("{}: netclaim accepts it", c.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.len(), 16);
}

/// Configs DraNet's documentation and examples use, with only the driver changed,
/// including every field DraNet has: all validate, and the DraNet spellings mean
/// the same as netclaim's.
#[test]
fn a_full_dranet_config_validates_unchanged() {
    let raw = serde_json::json!({
        "interface": {
            "name": "net1",
            "addresses": ["192.0.2.10/24", "2001:db8::10/64"],
            "mtu": 9000,
            "hardwareAddr": "02-00-00-00-00-01",
            "gsoMaxSize": 65536, "groMaxSize": 65536,
            "gsoIPv4MaxSize": 65536, "groIPv4MaxSize": 65536,
            "disableEbpfPrograms": true,
            "forwarding": true,
            "arpIgnore": 1,
            "arpAnnounce": 2
        },
        "routes": [
            {"destination": "0.0.0.0/0", "gateway": "192.0.2.1", "table": 100},
            {"destination": "198.51.100.0/24", "gateway": "192.0.2.1", "table": 0},
            {"destination": "203.0.113.0/24", "scope": 253}
        ],
        "rules": [
            {"priority": 100, "source": "192.0.2.10/32", "table": 100},
            {"destination": "2001:db8:9::/48", "table": 100}
        ],
        "neighbors": [
            {"destination": "192.0.2.1", "hardwareAddr": "02:00:00:00:00:fe"},
            {"destination": "2001:db8::1", "hardwareAddr": "02:00:00:00:00:fd"}
        ],
        "ethtool": {"features": {"rx-checksum": true}, "privateFlags": {"x": false}}
    });
    let v = parse_parameters(&raw, "parameters").expect("a DraNet config is valid");
    assert!(v.disable_ebpf_programs);
    assert_eq!(v.routes[1].table, None, "table 0 is the main table");
    assert_eq!(v.rules.len(), 2);
    assert_eq!(v.neighbors.len(), 2);
    assert_eq!(v.interface.forwarding, Some(true));
    // The IPv4 default route in table 100 is reachable for every destination (a rule
    // with only a source looks the table up for all of them).
    let allowed: Vec<String> = v
        .datapath_policy()
        .routes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, ["0.0.0.0/0", "198.51.100.0/24", "203.0.113.0/24"]);
}
