//! Opaque parameters (a JSON value) into a [`ValidConfig`], with field paths.
//!
//! `serde` stops at the first problem and does not say where it is, so the raw value is
//! first walked against the [`NetworkConfig`] shape: every unknown field and every
//! value of the wrong type is reported with its path (`interface.mtuu: unknown field`).
//! Only a value of the right shape is deserialized and then [`validate`]d. JSON `null`
//! means "absent" for every optional field, as it does for the Kubernetes API.
//!
//! The shape here must follow `types.rs`; a test round-trips a fully populated
//! [`NetworkConfig`] through it to keep the two in step.

use serde_json::{Map, Value};

use super::error::{index, join, key, ConfigErrors, FieldError};
use super::types::NetworkConfig;
use super::validate::{validate, ValidConfig};

/// What a field may hold.
enum Shape {
    Object(&'static [(&'static str, Shape)]),
    List(&'static Shape),
    /// A map from names to booleans.
    BoolMap,
    Str,
    Bool,
    Int {
        min: i64,
        max: i64,
        what: &'static str,
    },
}

const INT32: Shape = Shape::Int {
    min: i32::MIN as i64,
    max: i32::MAX as i64,
    what: "a 32-bit integer",
};

/// Go's `int` (what DraNet declares table and priority numbers as); the ranges that
/// make sense are checked in `validate`, with messages naming them.
const INT64: Shape = Shape::Int {
    min: i64::MIN,
    max: i64::MAX,
    what: "a 64-bit integer",
};

const VRF: &[(&str, Shape)] = &[("name", Shape::Str), ("table", INT64)];

const INTERFACE: &[(&str, Shape)] = &[
    ("name", Shape::Str),
    ("addresses", Shape::List(&Shape::Str)),
    ("mtu", INT32),
    ("hardwareAddr", Shape::Str),
    ("gsoMaxSize", INT32),
    ("groMaxSize", INT32),
    ("gsoIPv4MaxSize", INT32),
    ("groIPv4MaxSize", INT32),
    ("dhcp", Shape::Bool),
    ("disableEbpfPrograms", Shape::Bool),
    ("forwarding", Shape::Bool),
    ("arpIgnore", INT32),
    ("arpAnnounce", INT32),
    ("vrf", Shape::Object(VRF)),
];

const RULE: &[(&str, Shape)] = &[
    ("priority", INT64),
    ("source", Shape::Str),
    ("destination", Shape::Str),
    ("table", INT64),
];

const NEIGHBOR: &[(&str, Shape)] = &[("destination", Shape::Str), ("hardwareAddr", Shape::Str)];

const ROUTE: &[(&str, Shape)] = &[
    ("destination", Shape::Str),
    ("gateway", Shape::Str),
    ("source", Shape::Str),
    (
        "scope",
        Shape::Int {
            min: 0,
            max: u8::MAX as i64,
            what: "0..=255",
        },
    ),
    ("table", INT64),
];

const ETHTOOL: &[(&str, Shape)] = &[
    ("features", Shape::BoolMap),
    ("privateFlags", Shape::BoolMap),
];

const DATAPLANE: &[(&str, Shape)] = &[
    ("enforceRoutes", Shape::Bool),
    ("antiSpoofing", Shape::Bool),
    ("ingressFilter", Shape::Bool),
    ("allowMulticast", Shape::Bool),
];

const NETWORK_CONFIG: Shape = Shape::Object(&[
    ("interface", Shape::Object(INTERFACE)),
    ("routes", Shape::List(&Shape::Object(ROUTE))),
    ("rules", Shape::List(&Shape::Object(RULE))),
    ("neighbors", Shape::List(&Shape::Object(NEIGHBOR))),
    ("ethtool", Shape::Object(ETHTOOL)),
    ("dataplane", Shape::Object(DATAPLANE)),
    ("disableEbpfPrograms", Shape::Bool),
    ("profile", Shape::Str),
]);

/// Parses and validates the opaque `parameters` of one config. Every path in the
/// error starts with `path_prefix` (e.g. `spec.devices.config[0].opaque.parameters`).
pub fn parse_parameters(value: &Value, path_prefix: &str) -> Result<ValidConfig, ConfigErrors> {
    let cfg = decode(value).map_err(|e| e.prefixed(path_prefix))?;
    validate(&cfg).map_err(|e| e.prefixed(path_prefix))
}

/// The [`NetworkConfig`] in `value`, or every unknown field and wrong type (paths
/// relative to `value`). No semantic checks.
pub fn decode(value: &Value) -> Result<NetworkConfig, ConfigErrors> {
    let mut errors = Vec::new();
    if !value.is_object() {
        errors.push(FieldError::new(
            "",
            format!(
                "expected an object (a NetworkConfig), got {}",
                describe(value)
            ),
        ));
    } else {
        check(value, &NETWORK_CONFIG, "", &mut errors);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    serde_json::from_value(without_nulls(value)).map_err(|e| ConfigErrors {
        errors: vec![FieldError::new("", e.to_string())],
    })
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn check(v: &Value, shape: &Shape, path: &str, errs: &mut Vec<FieldError>) {
    let wrong = |expected: &str, errs: &mut Vec<FieldError>| {
        errs.push(FieldError::new(
            path,
            format!("expected {expected}, got {}", describe(v)),
        ))
    };
    match shape {
        Shape::Object(fields) => {
            let Value::Object(map) = v else {
                return wrong("an object", errs);
            };
            for (name, value) in map {
                let at = join(path, name);
                match fields.iter().find(|(f, _)| f == name) {
                    None => errs.push(FieldError::new(at, unknown_field(name, fields))),
                    Some(_) if value.is_null() => {}
                    Some((_, s)) => check(value, s, &at, errs),
                }
            }
        }
        Shape::List(item) => {
            let Value::Array(items) = v else {
                return wrong("a list", errs);
            };
            for (i, value) in items.iter().enumerate() {
                check(value, item, &index(path, i), errs);
            }
        }
        Shape::BoolMap => {
            let Value::Object(map) = v else {
                return wrong("an object of name: true|false", errs);
            };
            for (name, value) in map {
                if !value.is_boolean() {
                    errs.push(FieldError::new(
                        key(path, name),
                        format!("expected true or false, got {}", describe(value)),
                    ));
                }
            }
        }
        Shape::Str => {
            if !v.is_string() {
                wrong("a string", errs)
            }
        }
        Shape::Bool => {
            if !v.is_boolean() {
                wrong("true or false", errs)
            }
        }
        Shape::Int { min, max, what } => {
            let Value::Number(n) = v else {
                return wrong("an integer", errs);
            };
            let in_range = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (*min..=*max).contains(&i),
                (None, Some(_)) => false, // above i64::MAX
                (None, None) => return wrong("an integer", errs),
            };
            if !in_range {
                errs.push(FieldError::new(
                    path,
                    format!("{n} is out of range for {what}"),
                ));
            }
        }
    }
}

fn unknown_field(name: &str, fields: &[(&str, Shape)]) -> String {
    let closest = fields
        .iter()
        .map(|(f, _)| {
            (
                edit_distance(&name.to_ascii_lowercase(), &f.to_ascii_lowercase()),
                *f,
            )
        })
        .min();
    match closest {
        Some((d, f)) if d <= 2 => format!("unknown field; did you mean {f:?}?"),
        _ => {
            let known: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
            format!("unknown field; known fields are {}", known.join(", "))
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = above;
        }
    }
    row[b.len()]
}

/// `value` with every `null` object member removed (null means absent).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::types::{
        EthtoolConfig, InterfaceConfig, NeighborConfig, RouteConfig, RuleConfig, VrfConfig,
    };
    use crate::datapath::DataplaneKnobs;

    fn problems(v: Value, prefix: &str) -> Vec<String> {
        match parse_parameters(&v, prefix) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let got = problems(
            json!({
                "interface": {"name": "net0", "mtuu": 1500},
                "routes": [{"destination": "10.0.0.0/8", "gateway": "10.0.0.1"}, {"dest": "x"}],
                "ethtool": {"feature": {}},
                "dataplane": {"antiSpoof": false},
                "colour": "blue"
            }),
            "spec.devices.config[0].opaque.parameters",
        );
        assert_eq!(
            got,
            vec![
                "spec.devices.config[0].opaque.parameters.colour: unknown field; known fields are interface, routes, rules, neighbors, ethtool, dataplane, disableEbpfPrograms, profile",
                "spec.devices.config[0].opaque.parameters.dataplane.antiSpoof: unknown field; known fields are enforceRoutes, antiSpoofing, ingressFilter, allowMulticast",
                "spec.devices.config[0].opaque.parameters.ethtool.feature: unknown field; did you mean \"features\"?",
                "spec.devices.config[0].opaque.parameters.interface.mtuu: unknown field; did you mean \"mtu\"?",
                "spec.devices.config[0].opaque.parameters.routes[1].dest: unknown field; known fields are destination, gateway, source, scope, table",
            ]
        );
    }

    #[test]
    fn wrong_types_are_reported_with_their_paths() {
        let got = problems(
            json!({
                "interface": {"mtu": "1500", "addresses": "192.0.2.1/24", "gsoMaxSize": 1.5},
                "routes": [{"destination": "10.0.0.0/8", "scope": 300, "table": "main"}],
                "ethtool": {"features": {"tso": "off"}},
                "disableEbpfPrograms": "yes"
            }),
            "",
        );
        assert_eq!(
            got,
            vec![
                "disableEbpfPrograms: expected true or false, got a string",
                "ethtool.features[\"tso\"]: expected true or false, got a string",
                "interface.addresses: expected a list, got a string",
                "interface.gsoMaxSize: expected an integer, got a fractional number",
                "interface.mtu: expected an integer, got a string",
                "routes[0].scope: 300 is out of range for 0..=255",
                "routes[0].table: expected an integer, got a string",
            ]
        );
        assert_eq!(
            problems(json!({"interface": {"mtu": 4294967296u64}}), ""),
            vec!["interface.mtu: 4294967296 is out of range for a 32-bit integer"]
        );
        assert_eq!(
            problems(json!({"routes": [null]}), ""),
            vec!["routes[0]: expected an object, got null"]
        );
    }

    #[test]
    fn parameters_must_be_an_object() {
        assert_eq!(
            problems(json!(["interface"]), "p"),
            vec!["p: expected an object (a NetworkConfig), got a list"]
        );
        assert_eq!(
            problems(json!("x"), ""),
            vec!["(root): expected an object (a NetworkConfig), got a string"]
        );
    }

    #[test]
    fn null_means_absent() {
        let v = parse_parameters(
            &json!({"interface": {"name": null, "addresses": null}, "routes": null, "ethtool": null, "dataplane": null}),
            "",
        )
        .unwrap();
        assert_eq!(v.interface.name, None);
        assert!(v.routes.is_empty());
        assert_eq!(v.knobs, DataplaneKnobs::default());
    }

    #[test]
    fn semantic_paths_carry_the_prefix() {
        assert_eq!(
            problems(
                json!({"routes": [{"destination": "10.0.0.0/8"}]}),
                "spec.devices.config[2].opaque.parameters"
            ),
            vec!["spec.devices.config[2].opaque.parameters.routes[0].gateway: required when scope is 0 (universe)"]
        );
    }

    /// Every field the serde types know is in the shape, and the shape accepts what
    /// serde writes: keeps this file in step with `types.rs`.
    #[test]
    fn shape_matches_the_serde_types() {
        let full = NetworkConfig {
            interface: InterfaceConfig {
                name: Some("net0".into()),
                addresses: vec!["192.0.2.10/24".into()],
                mtu: Some(1500),
                hardware_addr: Some("02:00:00:00:00:01".into()),
                gso_max_size: Some(65536),
                gro_max_size: Some(65536),
                gso_ipv4_max_size: Some(65536),
                gro_ipv4_max_size: Some(65536),
                dhcp: Some(false),
                disable_ebpf_programs: Some(true),
                forwarding: Some(true),
                arp_ignore: Some(1),
                arp_announce: Some(2),
                vrf: Some(VrfConfig {
                    name: Some("vrf0".into()),
                    table: Some(1001),
                }),
            },
            routes: vec![RouteConfig {
                destination: Some("198.51.100.0/24".into()),
                gateway: Some("192.0.2.1".into()),
                source: Some("192.0.2.10".into()),
                scope: 0,
                table: Some(100),
            }],
            rules: vec![RuleConfig {
                priority: Some(100),
                source: Some("192.0.2.0/24".into()),
                destination: Some("198.51.100.0/24".into()),
                table: Some(100),
            }],
            neighbors: vec![NeighborConfig {
                destination: Some("192.0.2.1".into()),
                hardware_addr: Some("02:00:00:00:00:02".into()),
            }],
            ethtool: Some(EthtoolConfig {
                features: [("tso".to_string(), true)].into(),
                private_flags: [("flag".to_string(), false)].into(),
            }),
            dataplane: Some(DataplaneKnobs::default()),
            disable_ebpf_programs: Some(true),
            profile: Some("p".into()),
        };
        let v = serde_json::to_value(&full).unwrap();
        assert_eq!(decode(&v).unwrap(), full);

        fn keys(v: &Value, path: &str, out: &mut Vec<String>) {
            if let Value::Object(m) = v {
                for (k, v) in m {
                    let p = join(path, k);
                    if !path.ends_with("features") && !path.ends_with("privateFlags") {
                        out.push(p.clone());
                    }
                    keys(v, &p, out);
                }
            } else if let Value::Array(a) = v {
                for x in a {
                    keys(x, path, out);
                }
            }
        }
        let mut serde_keys = Vec::new();
        keys(&v, "", &mut serde_keys);
        let mut shape_keys = Vec::new();
        fn walk(shape: &Shape, path: &str, out: &mut Vec<String>) {
            match shape {
                Shape::Object(fields) => {
                    for (k, s) in *fields {
                        let p = join(path, k);
                        out.push(p.clone());
                        walk(s, &p, out);
                    }
                }
                Shape::List(item) => walk(item, path, out),
                _ => {}
            }
        }
        walk(&NETWORK_CONFIG, "", &mut shape_keys);
        serde_keys.sort();
        shape_keys.sort();
        assert_eq!(serde_keys, shape_keys);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("mtuu", "mtu"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("gateway", "gateway"), 0);
    }
}
