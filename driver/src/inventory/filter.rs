//! The `--filter` CEL expression: which of the not-excluded links are published.
//!
//! The expression sees the same `device` a DeviceClass selector sees:
//! `device.driver` (the driver name) and `device.attributes[<domain>][<name>]`, e.g.
//! `device.attributes["netclaim.dev"].kind == "veth"`. Versions are plain strings here.
//! `device.capacity` is an empty map. An expression that does not evaluate to a bool,
//! or fails (a missing attribute, an unsupported construct), excludes the device and
//! the error is reported. Without a filter every not-excluded link is published.

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc};

use cel_interpreter::{Context, Program, Value};

use super::device::{AttrValue, Device};

/// A filter that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter {expression:?}: does not compile: {message}")]
    Compile { expression: String, message: String },
    #[error("filter {expression:?} on device {device}: {message}")]
    Evaluate {
        expression: String,
        device: String,
        message: String,
    },
}

/// A compiled `--filter` expression.
#[derive(Clone)]
pub struct DeviceFilter {
    expression: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for DeviceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeviceFilter")
            .field(&self.expression)
            .finish()
    }
}

impl DeviceFilter {
    pub fn new(expression: &str) -> Result<Self, FilterError> {
        let compiled = std::panic::catch_unwind(|| Program::compile(expression));
        let program = match compiled {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(FilterError::Compile {
                    expression: expression.to_string(),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(FilterError::Compile {
                    expression: expression.to_string(),
                    message: "the CEL parser panicked".into(),
                })
            }
        };
        Ok(Self {
            expression: expression.to_string(),
            program: Arc::new(program),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether `device` (as published by `driver`) passes the filter.
    pub fn matches(&self, driver: &str, device: &Device) -> Result<bool, FilterError> {
        let err = |message: String| FilterError::Evaluate {
            expression: self.expression.clone(),
            device: device.name.clone(),
            message,
        };
        let mut ctx = Context::default();
        ctx.add_variable_from_value("device", device_value(driver, device));
        // The interpreter has `todo!()`s for constructs it does not support.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.program.execute(&ctx)))
            .map_err(|_| err("the CEL interpreter panicked (unsupported expression)".into()))?;
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(err(format!("evaluates to {other:?}, not a bool"))),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// The CEL `device` value: `{driver, attributes: {domain: {name: value}}, capacity: {}}`.
fn device_value(driver: &str, device: &Device) -> Value {
    let mut domains: HashMap<String, HashMap<String, Value>> = HashMap::new();
    for (qualified, v) in &device.attributes {
        let (domain, name) = match qualified.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n.to_string()),
            None => (driver.to_string(), qualified.clone()),
        };
        let v = match v {
            AttrValue::String(s) | AttrValue::Version(s) => Value::from(s.as_str()),
            AttrValue::Int(i) => Value::Int(*i),
            AttrValue::Bool(b) => Value::Bool(*b),
        };
        domains.entry(domain).or_default().insert(name, v);
    }
    let attributes: HashMap<String, Value> = domains
        .into_iter()
        .map(|(d, m)| (d, Value::from(m)))
        .collect();
    let mut top: HashMap<String, Value> = HashMap::new();
    top.insert("driver".into(), Value::from(driver));
    top.insert("attributes".into(), Value::from(attributes));
    top.insert(
        "capacity".into(),
        Value::from(HashMap::<String, Value>::new()),
    );
    Value::from(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device {
            name: "veth0".into(),
            ifname: "veth0".into(),
            ifindex: 3,
            attributes: [
                (
                    "netclaim.dev/ifName".to_string(),
                    AttrValue::String("veth0".into()),
                ),
                (
                    "netclaim.dev/kind".to_string(),
                    AttrValue::String("veth".into()),
                ),
                ("netclaim.dev/mtu".to_string(), AttrValue::Int(1500)),
                ("netclaim.dev/virtual".to_string(), AttrValue::Bool(true)),
            ]
            .into(),
            carrier_lost: false,
        }
    }

    #[test]
    fn selector_shape() {
        let d = dev();
        let t = |e: &str| {
            DeviceFilter::new(e)
                .unwrap()
                .matches("netclaim.dev", &d)
                .unwrap()
        };
        assert!(t(r#"device.driver == "netclaim.dev""#));
        assert!(t(r#"device.attributes["netclaim.dev"].kind == "veth""#));
        assert!(t(r#"device.attributes["netclaim.dev"]["mtu"] >= 1500"#));
        assert!(t(
            r#"device.attributes["netclaim.dev"].ifName.startsWith("veth")"#
        ));
        assert!(!t(r#"device.attributes["netclaim.dev"].virtual == false"#));
    }

    #[test]
    fn errors_are_reported() {
        assert!(DeviceFilter::new("device.attributes[").is_err());
        let d = dev();
        let f =
            DeviceFilter::new(r#"device.attributes["netclaim.dev"].pciAddress == "x""#).unwrap();
        assert!(f.matches("netclaim.dev", &d).is_err());
        let f = DeviceFilter::new("1 + 1").unwrap();
        assert!(f.matches("netclaim.dev", &d).is_err());
    }
}
