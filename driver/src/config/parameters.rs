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

const INTERFACE: &[(&str, Shape)] = &[
    ("name", Shape::Str),
    ("addresses", Shape::List(&Shape::Str)),
    ("mtu", INT32),
    ("hardwareAddr", Shape::Str),
    ("gsoMaxSize", INT32),
    ("groMaxSize", INT32),
    ("gsoIPv4MaxSize", INT32),
    ("groIPv4MaxSize", INT32),
];

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
    (
        "table",
        Shape::Int {
            min: 0,
            max: u32::MAX as i64,
            what: "a 32-bit unsigned integer",
        },
    ),
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
    ("ethtool", Shape::Object(ETHTOOL)),
    ("dataplane", Shape::Object(DATAPLANE)),
    ("disableEbpfPrograms", Shape::Bool),
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
