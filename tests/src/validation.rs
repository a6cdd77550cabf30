//! What kube-apiserver (v1.34, `resource.k8s.io/v1`) refuses, for the fake API server.
//!
//! The fake server stores what netclaim writes; a real one validates every
//! ResourceSlice and every ResourceClaim status write and answers 422 with a `Status`
//! naming each field. This module is that validation, written from the upstream rules
//! (`pkg/apis/resource/validation/validation.go`, limits from `k8s.io/api`
//! `resource/v1/types.go`, messages from apimachinery's `util/validation/field`); each
//! rule cites its upstream function. Objects are first decoded into their k8s-openapi
//! types, and fields the schema does not declare are refused.
//!
//! Independent of netclaim: nothing here is shared with the driver.

use std::net::IpAddr;

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::{json, Value};

/// `ResourceSliceMaxDevices`.
pub const MAX_DEVICES: usize = 128;
/// `ResourceSliceMaxAttributesAndCapacitiesPerDevice`.
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
/// `DeviceAttributeMaxValueLength`.
pub const MAX_ATTRIBUTE_VALUE: usize = 64;
/// `DeviceMaxDomainLength`, `DeviceMaxIDLength`.
pub const MAX_DOMAIN: usize = 63;
pub const MAX_ID: usize = 32;
/// `DriverNameMaxLength`, `PoolNameMaxLength`.
pub const MAX_DRIVER: usize = 63;
pub const MAX_POOL: usize = 253;
/// `AllocatedDeviceStatusMaxConditions`, `AllocatedDeviceStatusDataMaxLength`.
pub const MAX_CONDITIONS: usize = 8;
pub const MAX_DATA: usize = 10 * 1024;
/// `NetworkDeviceDataMaxIPs`, `…InterfaceNameMaxLength`, `…HardwareAddressMaxLength`.
pub const MAX_IPS: usize = 16;
pub const MAX_INTERFACE_NAME: usize = 256;
pub const MAX_HARDWARE_ADDRESS: usize = 128;

/// `field.ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Invalid,
    Required,
    Duplicate,
    TooLong,
    TooMany,
    NotSupported,
}

/// One `field.Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: ErrorType,
    /// The already rendered body after the type's prefix.
    pub body: String,
}

impl FieldError {
    fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: ErrorType::Invalid,
            body: format!("Invalid value: {value:?}: {}", detail.into()),
        }
    }
    fn required(field: impl Into<String>, detail: &str) -> Self {
        let body = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            kind: ErrorType::Required,
            body,
        }
    }
    fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: ErrorType::TooLong,
            body: format!("Too long: may not be more than {max} bytes"),
        }
    }
    fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: ErrorType::TooMany,
            body: format!("Too many: {actual}: must have at most {max} items"),
        }
    }
    fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            kind: ErrorType::Duplicate,
            body: format!("Duplicate value: {value:?}"),
        }
    }
    fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            kind: ErrorType::NotSupported,
            body: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    /// The `causes[].reason` of this error.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::NotSupported => "FieldValueNotSupported",
        }
    }
}

/// The 422 `Status` message and details (`errors.NewInvalid`).
pub fn invalid_status(kind: &str, name: &str, errors: &[FieldError]) -> (String, Value) {
    let entries: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.body))
        .collect();
    let mut unique: Vec<String> = Vec::new();
    for e in entries {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    let aggregate = if unique.len() == 1 {
        unique[0].clone()
    } else {
        format!("[{}]", unique.join(", "))
    };
    let message = format!("{kind}.resource.k8s.io {name:?} is invalid: {aggregate}");
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({"reason": e.reason(), "message": e.body, "field": e.field}))
        .collect();
    let details = json!({"name": name, "group": "resource.k8s.io", "kind": kind, "causes": causes});
    (message, details)
}

/// Fields of `sent` that the typed round trip did not keep: not in the schema.
fn undeclared(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, v) in s {
                let p = format!("{path}.{key}");
                match k.get(key) {
                    Some(kv) => undeclared(v, kv, &p, out),
                    // Explicit nulls and empty values are dropped by the round trip.
                    None if v.is_null() || v == &json!({}) || v == &json!([]) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (v, kv)) in s.iter().zip(k).enumerate() {
                undeclared(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `object` into `T` the way the server's schema does: a type mismatch or a
/// field the schema does not declare is an error (server-side apply's behaviour).
pub fn decode_strict<T>(object: &Value) -> Result<T, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let kept = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut extra = Vec::new();
    undeclared(object, &kept, "", &mut extra);
    if let Some(first) = extra.first() {
        return Err(format!("{first}: field not declared in schema"));
    }
    Ok(typed)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `validateDriverName` (`corevalidation.ValidateCSIDriverName`).
fn driver_name(field: &str, v: &str, out: &mut Vec<FieldError>) {
    if v.is_empty() {
        out.push(FieldError::required(field, ""));
    }
    if v.len() > MAX_DRIVER {
        out.push(FieldError::too_long(field, MAX_DRIVER));
    }
    if !is_dns_subdomain(&v.to_lowercase()) {
        out.push(FieldError::invalid(field, v, SUBDOMAIN_MSG));
    }
}

/// `validatePoolName`.
fn pool_name(field: &str, v: &str, out: &mut Vec<FieldError>) {
    if v.is_empty() {
        out.push(FieldError::required(field, ""));
        return;
    }
    if v.len() > MAX_POOL {
        out.push(FieldError::too_long(field, MAX_POOL));
    }
    for part in v.split('/') {
        if !is_dns_subdomain(part) {
            out.push(FieldError::invalid(field, part, SUBDOMAIN_MSG));
        }
    }
}

/// `validateDeviceName` (`ValidateDNS1123Label`).
fn device_name(field: &str, v: &str, out: &mut Vec<FieldError>) {
    if v.len() > 63 {
        out.push(FieldError::invalid(
            field,
            v,
            "must be no more than 63 characters",
        ));
    } else if !is_dns_label(v) {
        out.push(FieldError::invalid(field, v, LABEL_MSG));
    }
}

/// `validateQualifiedName` + `validateCIdentifier` for attribute and capacity keys.
fn qualified_key(field: &str, key: &str, out: &mut Vec<FieldError>) {
    if key.is_empty() {
        out.push(FieldError::required(field, "name required"));
        return;
    }
    let id = match key.split_once('/') {
        Some((domain, id)) => {
            if domain.is_empty() {
                out.push(FieldError::required(field, "the domain must not be empty"));
            } else {
                driver_name(field, domain, out);
            }
            if id.is_empty() {
                out.push(FieldError::required(field, "the name must not be empty"));
                return;
            }
            id
        }
        None => key,
    };
    if id.len() > MAX_ID {
        out.push(FieldError::too_long(field, MAX_ID));
    }
    let b = id.as_bytes();
    let c_ident = (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !c_ident {
        out.push(FieldError::invalid(
            field,
            id,
            "a valid C identifier must start with alphabetic character or '_', followed by a string of alphanumeric characters or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName', regex used for validation is '[A-Za-z_][A-Za-z0-9_]*')",
        ));
    }
}

/// semver.org 2.0.0, as `validateDeviceAttributeVersionValue` requires.
fn is_semver(v: &str) -> bool {
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    let (core, build) = match v.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| {
            p.split('.')
                .all(|id| ident(id) && (!id.bytes().all(|c| c.is_ascii_digit()) || numeric(id)))
        })
        && build.is_none_or(|b| b.split('.').all(ident))
}

/// `ValidateResourceSlice` / `ValidateResourceSliceUpdate` (→ `validateResourceSliceSpec`,
/// `validateDevice`, `validateDeviceAttribute`).
pub fn resource_slice(new: &Value, old: Option<&Value>) -> Result<Vec<FieldError>, String> {
    decode_strict::<ResourceSlice>(new)?;
    let mut out = Vec::new();
    let spec = new.get("spec").cloned().unwrap_or(Value::Null);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    driver_name("spec.driver", &s(&spec, "driver"), &mut out);
    let pool = spec.get("pool").cloned().unwrap_or(Value::Null);
    pool_name("spec.pool.name", &s(&pool, "name"), &mut out);
    // validateResourcePool
    if pool
        .get("resourceSliceCount")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        <= 0
    {
        let v = pool.get("resourceSliceCount").cloned().unwrap_or(json!(0));
        out.push(FieldError {
            field: "spec.pool.resourceSliceCount".into(),
            kind: ErrorType::Invalid,
            body: format!("Invalid value: {v}: must be greater than zero"),
        });
    }
    if pool.get("generation").and_then(Value::as_i64).unwrap_or(0) < 0 {
        out.push(FieldError::invalid(
            "spec.pool.generation",
            &pool["generation"].to_string(),
            "must be greater than or equal to zero",
        ));
    }
    // validateResourceSliceSpec: exactly one node selection.
    let mut set = Vec::new();
    if let Some(n) = spec.get("nodeName").and_then(Value::as_str) {
        set.push("`nodeName`");
        if n.is_empty() {
            out.push(FieldError::invalid(
                "spec.nodeName",
                n,
                "must be either unset or set to a non-empty string",
            ));
        } else if !is_dns_subdomain(n) {
            out.push(FieldError::invalid("spec.nodeName", n, SUBDOMAIN_MSG));
        }
    }
    if let Some(sel) = spec.get("nodeSelector").filter(|v| !v.is_null()) {
        set.push("`nodeSelector`");
        let terms = sel.get("nodeSelectorTerms").and_then(Value::as_array);
        if terms.map_or(0, Vec::len) != 1 {
            out.push(FieldError {
                field: "spec.nodeSelector.nodeSelectorTerms".into(),
                kind: ErrorType::Invalid,
                body: format!(
                    "Invalid value: {}: must have exactly one node selector term",
                    sel.get("nodeSelectorTerms").cloned().unwrap_or(Value::Null)
                ),
            });
        }
    }
    for flag in ["allNodes", "perDeviceNodeSelection"] {
        if let Some(b) = spec.get(flag).and_then(Value::as_bool) {
            set.push(if flag == "allNodes" {
                "`allNodes`"
            } else {
                "`perDeviceNodeSelection`"
            });
            if !b {
                out.push(FieldError {
                    field: format!("spec.{flag}"),
                    kind: ErrorType::Invalid,
                    body: "Invalid value: false: must be either unset or set to true".into(),
                });
            }
        }
    }
    const ONE_OF: &str =
        "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required";
    match set.len() {
        0 => out.push(FieldError::required("spec", ONE_OF)),
        1 => {}
        _ => out.push(FieldError::invalid(
            "spec",
            &format!("{{{}}}", set.join(", ")),
            format!("{ONE_OF}, but multiple fields are set"),
        )),
    }
    // Devices: validateSet(..., ResourceSliceMaxDevices, validateDevice, name key).
    let devices = spec
        .get("devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let path = format!("spec.devices[{i}]");
        let name = s(d, "name");
        device_name(&format!("{path}.name"), &name, &mut out);
        if names.contains(&name) {
            out.push(FieldError::duplicate(format!("{path}.name"), &name));
        }
        names.push(name);
        let attrs = d.get("attributes").and_then(Value::as_object);
        let caps = d.get("capacity").and_then(Value::as_object);
        let total = attrs.map_or(0, |a| a.len()) + caps.map_or(0, |c| c.len());
        if total > MAX_ATTRIBUTES_AND_CAPACITIES {
            out.push(FieldError {
                field: path.clone(),
                kind: ErrorType::Invalid,
                body: format!("Invalid value: {total}: the total number of attributes and capacities must not exceed {MAX_ATTRIBUTES_AND_CAPACITIES}"),
            });
        }
        for (key, value) in attrs.into_iter().flatten() {
            let field = format!("{path}.attributes[{key}]");
            qualified_key(&field, key, &mut out);
            let given: Vec<&str> = ["int", "bool", "string", "version"]
                .into_iter()
                .filter(|k| value.get(*k).is_some_and(|v| !v.is_null()))
                .collect();
            match given.len() {
                0 => out.push(FieldError::required(
                    &field,
                    "exactly one value must be specified",
                )),
                1 => {}
                _ => out.push(FieldError {
                    field: field.clone(),
                    kind: ErrorType::Invalid,
                    body: format!("Invalid value: {value}: exactly one value must be specified"),
                }),
            }
            if let Some(sv) = value.get("string").and_then(Value::as_str) {
                if sv.len() > MAX_ATTRIBUTE_VALUE {
                    out.push(FieldError::too_long(
                        format!("{field}.string"),
                        MAX_ATTRIBUTE_VALUE,
                    ));
                }
            }
            if let Some(vv) = value.get("version").and_then(Value::as_str) {
                if !is_semver(vv) {
                    out.push(FieldError::invalid(
                        format!("{field}.version"),
                        vv,
                        "must be a string compatible with semver.org spec 2.0.0",
                    ));
                }
                if vv.len() > MAX_ATTRIBUTE_VALUE {
                    out.push(FieldError::too_long(
                        format!("{field}.version"),
                        MAX_ATTRIBUTE_VALUE,
                    ));
                }
            }
        }
        for key in caps.into_iter().flatten().map(|(k, _)| k) {
            qualified_key(&format!("{path}.capacity[{key}]"), key, &mut out);
        }
    }
    if devices.len() > MAX_DEVICES {
        out.push(FieldError::too_many(
            "spec.devices",
            devices.len(),
            MAX_DEVICES,
        ));
    }
    // ValidateResourceSliceUpdate: immutable fields.
    if let Some(old) = old {
        for (field, pointer) in [
            ("spec.pool.name", "/spec/pool/name"),
            ("spec.driver", "/spec/driver"),
            ("spec.nodeName", "/spec/nodeName"),
        ] {
            let (was, now) = (old.pointer(pointer), new.pointer(pointer));
            if was != now {
                out.push(FieldError {
                    field: field.into(),
                    kind: ErrorType::Invalid,
                    body: format!(
                        "Invalid value: {}: field is immutable",
                        now.cloned().unwrap_or(Value::Null)
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// `validation.IsValidInterfaceAddress` (apimachinery `util/validation/ip.go`): an
/// address with a prefix length, written exactly as Go prints it. Host bits are fine;
/// an IPv4-mapped IPv6 address must be written as IPv4.
pub fn interface_address(v: &str) -> Result<(), String> {
    const FORM: &str = "must be a valid address in CIDR form, (e.g. 10.9.8.7/24 or 2001:db8::1/64)";
    let (addr, len) = v.split_once('/').ok_or(FORM)?;
    let ip: IpAddr = addr.parse().map_err(|_| FORM)?;
    if len.is_empty() || !len.bytes().all(|c| c.is_ascii_digit()) {
        return Err(FORM.into());
    }
    let mut bits: u32 = len.parse().map_err(|_| FORM)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(FORM.into());
    }
    let printed = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                if bits > 32 {
                    bits -= 96;
                }
                v4.to_string()
            }
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    let canonical = format!("{printed}/{bits}");
    if canonical != v {
        return Err(format!("must be in canonical form ({canonical:?})"));
    }
    Ok(())
}

/// `metav1validation.ValidateLabelName`: an optional DNS-subdomain prefix and a name.
fn is_label_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let b = name.as_bytes();
    let name_ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// `metav1validation.ValidateCondition`'s reason rule.
fn is_condition_reason(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && (b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':'))
}

/// `ValidateResourceClaimStatusUpdate` (→ `validateResourceClaimStatusUpdate`,
/// `validateDeviceStatus`, `validateNetworkDeviceData`, `validateRawExtension`,
/// `metav1validation.ValidateConditions`) for `status.devices`.
pub fn resource_claim_status(new: &Value) -> Result<Vec<FieldError>, String> {
    decode_strict::<ResourceClaim>(new)?;
    let mut out = Vec::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let allocated: Vec<(String, String, String, String)> = new
        .pointer("/status/allocation/devices/results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            (
                s(r, "driver"),
                s(r, "pool"),
                s(r, "device"),
                s(r, "shareID"),
            )
        })
        .collect();
    let entries = new
        .pointer("/status/devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seen = Vec::new();
    for (i, d) in entries.iter().enumerate() {
        let path = format!("status.devices[{i}]");
        let id = (
            s(d, "driver"),
            s(d, "pool"),
            s(d, "device"),
            s(d, "shareID"),
        );
        driver_name(&format!("{path}.driver"), &id.0, &mut out);
        pool_name(&format!("{path}.pool"), &id.1, &mut out);
        device_name(&format!("{path}.device"), &id.2, &mut out);
        if !allocated.contains(&id) {
            out.push(FieldError {
                field: path.clone(),
                kind: ErrorType::Invalid,
                body: "Invalid value: {\"Driver\":{},\"Pool\":{},\"Device\":{},\"ShareID\":{}}: must be an allocated device in the claim".into(),
            });
        }
        if seen.contains(&id) {
            out.push(FieldError {
                field: format!("{path}.deviceID"),
                kind: ErrorType::Duplicate,
                body: "Duplicate value: {\"Driver\":{},\"Pool\":{},\"Device\":{},\"ShareID\":{}}"
                    .into(),
            });
        }
        seen.push(id);
        conditions(&path, d, &mut out);
        if let Some(data) = d.get("data").filter(|v| !v.is_null()) {
            let raw = serde_json::to_string(data).map_err(|e| e.to_string())?;
            if raw.len() > MAX_DATA {
                out.push(FieldError::too_long(format!("{path}.data"), MAX_DATA));
            } else if !data.is_object() {
                out.push(FieldError::invalid(
                    format!("{path}.data"),
                    "<value omitted>",
                    "must be a valid JSON object",
                ));
            }
        }
        if let Some(nd) = d.get("networkData").filter(|v| !v.is_null()) {
            network_data(&format!("{path}.networkData"), nd, &mut out);
        }
    }
    Ok(out)
}

fn conditions(path: &str, d: &Value, out: &mut Vec<FieldError>) {
    let list = d
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.len() > MAX_CONDITIONS {
        out.push(FieldError::too_many(
            format!("{path}.conditions"),
            list.len(),
            MAX_CONDITIONS,
        ));
    }
    let mut types = Vec::new();
    for (j, c) in list.iter().enumerate() {
        let p = format!("{path}.conditions[{j}]");
        let get = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let ty = get("type");
        if types.contains(&ty) {
            out.push(FieldError::duplicate(format!("{p}.type"), &ty));
        }
        if !is_label_name(&ty) {
            out.push(FieldError::invalid(
                format!("{p}.type"),
                &ty,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
        types.push(ty);
        let status = get("status");
        if !matches!(status.as_str(), "True" | "False" | "Unknown") {
            out.push(FieldError::not_supported(
                format!("{p}.status"),
                &status,
                &["False", "True", "Unknown"],
            ));
        }
        if get("lastTransitionTime").is_empty() {
            out.push(FieldError::required(format!("{p}.lastTransitionTime"), ""));
        }
        let reason = get("reason");
        if reason.is_empty() {
            out.push(FieldError::required(format!("{p}.reason"), ""));
        } else {
            if reason.len() > 1024 {
                out.push(FieldError::too_long(format!("{p}.reason"), 1024));
            }
            if !is_condition_reason(&reason) {
                out.push(FieldError::invalid(
                    format!("{p}.reason"),
                    &reason,
                    "a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName',  or 'ReasonA,ReasonB',  or 'ReasonA:ReasonB', regex used for validation is '[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?')",
                ));
            }
        }
        if get("message").len() > 32768 {
            out.push(FieldError::too_long(format!("{p}.message"), 32768));
        }
        if c.get("observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            < 0
        {
            out.push(FieldError::invalid(
                format!("{p}.observedGeneration"),
                &c["observedGeneration"].to_string(),
                "must be greater than or equal to zero",
            ));
        }
    }
}

fn network_data(path: &str, nd: &Value, out: &mut Vec<FieldError>) {
    let get = |k: &str| nd.get(k).and_then(Value::as_str).unwrap_or("");
    if get("interfaceName").len() > MAX_INTERFACE_NAME {
        out.push(FieldError::too_long(
            format!("{path}.interfaceName"),
            MAX_INTERFACE_NAME,
        ));
    }
    if get("hardwareAddress").len() > MAX_HARDWARE_ADDRESS {
        out.push(FieldError::too_long(
            format!("{path}.hardwareAddress"),
            MAX_HARDWARE_ADDRESS,
        ));
    }
    let ips: Vec<String> = nd
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    let mut seen: Vec<&String> = Vec::new();
    for (k, ip) in ips.iter().enumerate() {
        if let Err(detail) = interface_address(ip) {
            out.push(FieldError::invalid(format!("{path}.ips[{k}]"), ip, detail));
        }
        if seen.contains(&ip) {
            out.push(FieldError::duplicate(format!("{path}.ips[{k}]"), ip));
        }
        seen.push(ip);
    }
    if ips.len() > MAX_IPS {
        out.push(FieldError::too_many(
            format!("{path}.ips"),
            ips.len(),
            MAX_IPS,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_interface_addresses() {
        assert!(interface_address("192.0.2.5/24").is_ok());
        assert!(interface_address("2001:db8::1/64").is_ok());
        assert_eq!(
            interface_address("::ffff:192.0.2.31/120"),
            Err("must be in canonical form (\"192.0.2.31/24\")".into())
        );
        assert!(interface_address("2001:DB8::1/64").is_err());
        assert!(interface_address("2001:0db8::1/64").is_err());
        assert!(interface_address("192.0.2.5").is_err());
        assert!(interface_address("192.0.2.5/33").is_err());
        assert!(interface_address("fe80::1%eth0/64").is_err());
    }

    #[test]
    fn status_rules_name_their_fields() {
        let ips: Vec<String> = (0..17).map(|i| format!("192.0.2.{i}/24")).collect();
        let claim = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "c", "namespace": "default"},
            "spec": {},
            "status": {
                "allocation": {"devices": {"results": [
                    {"request": "r", "driver": "netclaim.dev", "pool": "n1", "device": "eth1"}]}},
                "devices": [{
                    "driver": "netclaim.dev", "pool": "n1", "device": "eth1",
                    "conditions": [{"type": "Ready", "status": "Maybe", "reason": "not ok",
                                    "lastTransitionTime": "2025-01-01T00:00:00Z", "message": ""}],
                    "data": {"big": "x".repeat(MAX_DATA)},
                    "networkData": {"interfaceName": "net1", "ips": ips}
                }, {"driver": "netclaim.dev", "pool": "n1", "device": "eth2"}]
            }
        });
        let errors = resource_claim_status(&claim).expect("decodes");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"status.devices[0].conditions[0].status"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"status.devices[0].conditions[0].reason"),
            "{fields:?}"
        );
        assert!(fields.contains(&"status.devices[0].data"), "{fields:?}");
        assert!(
            fields.contains(&"status.devices[0].networkData.ips"),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"status.devices[1]"),
            "not allocated: {fields:?}"
        );
        let (message, details) = invalid_status("ResourceClaim", "c", &errors);
        assert!(message.starts_with("ResourceClaim.resource.k8s.io \"c\" is invalid: ["));
        assert_eq!(
            details["causes"].as_array().map(Vec::len),
            Some(errors.len())
        );
    }

    #[test]
    fn slice_rules_name_their_fields() {
        let devices: Vec<Value> = (0..130)
            .map(|i| {
                json!({"name": format!("d{}", i % 129), "attributes": {
                    "netclaim.dev/ifName": {"string": "x".repeat(65)},
                    "netclaim.dev/kernel": {"version": "6.18"},
                    "bad key!": {"bool": true}
                }})
            })
            .collect();
        let slice = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": "s"},
            "spec": {"driver": "netclaim.dev", "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 0},
                     "nodeName": "n1", "allNodes": true, "devices": devices}
        });
        let errors = resource_slice(&slice, None).expect("decodes");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "spec.pool.resourceSliceCount",
            "spec",
            "spec.devices",
            "spec.devices[129].name",
            "spec.devices[0].attributes[netclaim.dev/ifName].string",
            "spec.devices[0].attributes[netclaim.dev/kernel].version",
            "spec.devices[0].attributes[bad key!]",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let unknown = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": "s"}, "spec": {"driver": "netclaim.dev", "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1}, "devicez": [{"name": "d"}]}});
        assert!(resource_slice(&unknown, None)
            .unwrap_err()
            .contains(".spec.devicez"));
    }
}
