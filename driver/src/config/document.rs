//! Files that carry claim configs: a ResourceClaim, a ResourceClaimTemplate, a `List`
//! of them, or a bare [`NetworkConfig`](super::NetworkConfig); YAML (several documents
//! separated by `---`) or JSON.
//!
//! [`parse_documents`] finds this driver's opaque configs (`devices.config[].opaque`
//! whose `driver` is the driver name), validates each one with
//! [`parse_parameters`], checks that the requests a config names exist in the claim,
//! and reports every problem with its path from the document's root
//! (`spec.devices.config[0].opaque.parameters.interface.mtu`). Configs of other
//! drivers and documents of other kinds (a Pod next to its claim) are counted and
//! skipped. Values are handled generically as `serde_json::Value`; nothing here talks
//! to the API server.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::error::{index, join, FieldError};
use super::parameters::parse_parameters;
use super::validate::ValidConfig;

/// The file is neither JSON nor YAML.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not valid YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
}

/// What was found in one document (or one item of a `List`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentReport {
    /// 1-based position of the document in the file.
    pub document: usize,
    /// Path of this object inside the document: empty, or `items[i]` in a `List`.
    pub path: String,
    /// `ResourceClaim`, `ResourceClaimTemplate`, `NetworkConfig`, or the other kind.
    pub kind: String,
    /// `namespace/name`, `name`, or `None` for a bare config.
    pub name: Option<String>,
    /// Why the document was not checked (another kind); `None` when it was.
    pub skipped: Option<String>,
    /// This driver's configs, in document order.
    pub configs: Vec<ConfigReport>,
    /// Problems in the document outside any one config's parameters.
    pub errors: Vec<FieldError>,
    /// Opaque configs for other drivers, ignored.
    pub other_drivers: usize,
}

/// One of this driver's configs inside a document.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReport {
    /// Path of the config entry (`spec.devices.config[0]`; empty for a bare config).
    pub path: String,
    /// The requests it applies to; empty means every request of the claim.
    pub requests: Vec<String>,
    /// The parsed config, when its parameters are valid.
    pub config: Option<ValidConfig>,
    /// Every problem, with paths from the document root.
    pub errors: Vec<FieldError>,
}

impl ConfigReport {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

impl DocumentReport {
    /// No problem in the document or any of its configs (skipped documents are valid).
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty() && self.configs.iter().all(ConfigReport::is_valid)
    }

    /// Every problem of the document, configs included.
    pub fn problems(&self) -> impl Iterator<Item = &FieldError> {
        self.errors
            .iter()
            .chain(self.configs.iter().flat_map(|c| c.errors.iter()))
    }

    /// `ResourceClaim default/foo` — how the document is named to the user.
    pub fn title(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {n}", self.kind),
            None => self.kind.clone(),
        }
    }

    fn new(document: usize, path: &str, kind: &str, name: Option<String>) -> Self {
        Self {
            document,
            path: path.to_string(),
            kind: kind.to_string(),
            name,
            skipped: None,
            configs: Vec::new(),
            errors: Vec::new(),
            other_drivers: 0,
        }
    }
}

/// Every document of `text` (JSON, or YAML with `---` separators; empty YAML documents
/// are dropped), each checked for configs of `driver`.
pub fn parse_documents(text: &str, driver: &str) -> Result<Vec<DocumentReport>, DocumentError> {
    let values = read_values(text)?;
    let mut reports = Vec::new();
    for (i, value) in values.iter().enumerate() {
        check_value(value, i + 1, "", driver, &mut reports);
    }
    Ok(reports)
}

/// The documents of `text` as JSON values: JSON first, then (multi-document) YAML.
pub fn read_values(text: &str) -> Result<Vec<Value>, DocumentError> {
    let json_err = match serde_json::from_str::<Value>(text) {
        Ok(v) => return Ok(vec![v]),
        Err(e) => e,
    };
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        match serde::Deserialize::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => values.push(v),
            Err(e) => {
                let t = text.trim_start();
                return Err(if t.starts_with('{') || t.starts_with('[') {
                    DocumentError::Json(json_err)
                } else {
                    DocumentError::Yaml(e)
                });
            }
        }
    }
    Ok(values)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Checks one object at `path` of document `doc`, appending one report per object
/// (several for a `List`).
fn check_value(v: &Value, doc: usize, path: &str, driver: &str, out: &mut Vec<DocumentReport>) {
    let Value::Object(map) = v else {
        let mut r = DocumentReport::new(doc, path, "(unknown)", None);
        r.errors.push(FieldError::new(
            path,
            "expected an object: a ResourceClaim, a ResourceClaimTemplate or a NetworkConfig",
        ));
        out.push(r);
        return;
    };
    let kind = str_at(v, "/kind");
    let name = str_at(v, "/metadata/name")
        .map(str::to_string)
        .or_else(|| str_at(v, "/metadata/generateName").map(|g| format!("{g}*")))
        .map(|n| match str_at(v, "/metadata/namespace") {
            Some(ns) => format!("{ns}/{n}"),
            None => n,
        });

    match kind {
        None if !map.contains_key("apiVersion") && !map.contains_key("kind") => {
            let mut r = DocumentReport::new(doc, path, "NetworkConfig", None);
            let mut c = ConfigReport {
                path: path.to_string(),
                requests: Vec::new(),
                config: None,
                errors: Vec::new(),
            };
            match parse_parameters(v, path) {
                Ok(cfg) => c.config = Some(cfg),
                Err(e) => c.errors = e.errors,
            }
            r.configs.push(c);
            out.push(r);
        }
        Some("ResourceClaim") => {
            let mut r = DocumentReport::new(doc, path, "ResourceClaim", name);
            check_devices(
                v.pointer("/spec/devices"),
                &join(path, "spec.devices"),
                driver,
                &mut r,
            );
            out.push(r);
        }
        Some("ResourceClaimTemplate") => {
            let mut r = DocumentReport::new(doc, path, "ResourceClaimTemplate", name);
            check_devices(
                v.pointer("/spec/spec/devices"),
                &join(path, "spec.spec.devices"),
                driver,
                &mut r,
            );
            out.push(r);
        }
        Some(k) if k.ends_with("List") && map.get("items").is_some_and(Value::is_array) => {
            let items = map
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for (i, item) in items.enumerate() {
                check_value(item, doc, &index(&join(path, "items"), i), driver, out);
            }
        }
        other => {
            let kind = other.unwrap_or("(no kind)");
            let mut r = DocumentReport::new(doc, path, kind, name);
            r.skipped =
                Some("not a ResourceClaim, ResourceClaimTemplate or NetworkConfig".to_string());
            out.push(r);
        }
    }
}

/// Request names a config may refer to: every request, and `request/subrequest` for
/// the alternatives of a `firstAvailable` request.
fn request_names(devices: &Value) -> Option<BTreeSet<String>> {
    let requests = devices.get("requests")?.as_array()?;
    let mut names = BTreeSet::new();
    for r in requests {
        let Some(name) = r.get("name").and_then(Value::as_str) else {
            continue;
        };
        names.insert(name.to_string());
        let subs = r.get("firstAvailable").and_then(Value::as_array);
        for s in subs.into_iter().flatten() {
            if let Some(sub) = s.get("name").and_then(Value::as_str) {
                names.insert(format!("{name}/{sub}"));
            }
        }
    }
    Some(names)
}

/// The `devices` of a claim spec at `path`: each opaque config of `driver`.
fn check_devices(devices: Option<&Value>, path: &str, driver: &str, r: &mut DocumentReport) {
    let Some(devices) = devices.filter(|d| !d.is_null()) else {
        return;
    };
    if !devices.is_object() {
        r.errors.push(FieldError::new(path, "expected an object"));
        return;
    }
    let config_path = join(path, "config");
    let configs = match devices.get("config") {
        None | Some(Value::Null) => return,
        Some(Value::Array(c)) => c,
        Some(_) => {
            r.errors
                .push(FieldError::new(config_path, "expected a list"));
            return;
        }
    };
    let known_requests = request_names(devices);
    for (i, entry) in configs.iter().enumerate() {
        let at = index(&config_path, i);
        let Some(opaque) = entry.get("opaque").filter(|o| !o.is_null()) else {
            if !entry.is_object() {
                r.errors.push(FieldError::new(at, "expected an object"));
            }
            continue;
        };
        let opaque_path = join(&at, "opaque");
        if !opaque.is_object() {
            r.errors
                .push(FieldError::new(opaque_path, "expected an object"));
            continue;
        }
        match opaque.get("driver") {
            Some(Value::String(d)) if d == driver => {}
            Some(Value::String(_)) => {
                r.other_drivers += 1;
                continue;
            }
            _ => {
                r.errors.push(FieldError::new(
                    join(&opaque_path, "driver"),
                    "required: the name of the driver the parameters are for",
                ));
                continue;
            }
        }

        let mut c = ConfigReport {
            path: at.clone(),
            requests: Vec::new(),
            config: None,
            errors: Vec::new(),
        };
        let requests_path = join(&at, "requests");
        match entry.get("requests") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (j, req) in list.iter().enumerate() {
                    let req_path = index(&requests_path, j);
                    match req.as_str() {
                        None => c
                            .errors
                            .push(FieldError::new(req_path, "expected a string")),
                        Some(name) => {
                            if let Some(known) = &known_requests {
                                if !known.contains(name) {
                                    c.errors.push(FieldError::new(
                                        req_path,
                                        format!(
                                            "no request named {name:?} in {}",
                                            join(path, "requests")
                                        ),
                                    ));
                                }
                            }
                            c.requests.push(name.to_string());
                        }
                    }
                }
            }
            Some(_) => c
                .errors
                .push(FieldError::new(requests_path, "expected a list")),
        }

        let params_path = join(&opaque_path, "parameters");
        match opaque.get("parameters").filter(|p| !p.is_null()) {
            None => c.errors.push(FieldError::new(
                params_path,
                "required: the NetworkConfig for this driver",
            )),
            Some(p) => match parse_parameters(p, &params_path) {
                Ok(cfg) => c.config = Some(cfg),
                Err(e) => c.errors.extend(e),
            },
        }
        r.configs.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "netclaim.dev";

    fn docs(text: &str) -> Vec<DocumentReport> {
        parse_documents(text, DRIVER).expect("parses")
    }

    fn problems(d: &DocumentReport) -> Vec<String> {
        d.problems().map(ToString::to_string).collect()
    }

    const CLAIM: &str = r#"
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata:
  name: fast-net
  namespace: team-a
spec:
  devices:
    requests:
    - name: nic
      exactly:
        deviceClassName: netclaim.dev
    - name: alt
      firstAvailable:
      - name: big
        deviceClassName: netclaim.dev
    config:
    - requests: [nic]
      opaque:
        driver: netclaim.dev
        parameters:
          interface:
            name: net0
            addresses: ["192.0.2.10/24"]
            mtu: 9000
          routes:
          - destination: 198.51.100.0/24
            gateway: 192.0.2.1
    - requests: [alt/big]
      opaque:
        driver: gpu.example.com
        parameters: {anything: goes}
    - opaque:
        driver: netclaim.dev
        parameters:
          interface: {name: net1}
"#;

    #[test]
    fn claim_configs_of_this_driver_are_validated() {
        let d = docs(CLAIM);
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!(d.title(), "ResourceClaim team-a/fast-net");
        assert!(d.is_valid(), "{:?}", problems(d));
        assert_eq!(d.other_drivers, 1, "the gpu config is ignored");
        assert_eq!(d.configs.len(), 2);
        assert_eq!(d.configs[0].path, "spec.devices.config[0]");
        assert_eq!(d.configs[0].requests, ["nic"]);
        let cfg = d.configs[0].config.as_ref().expect("valid config");
        assert_eq!(cfg.interface.mtu, Some(9000));
        assert_eq!(d.configs[1].path, "spec.devices.config[2]");
        assert!(d.configs[1].requests.is_empty());
    }

    #[test]
    fn claim_problems_carry_the_path_from_the_document_root() {
        let text = CLAIM
            .replace("mtu: 9000", "mtuu: 9000")
            .replace(
                "interface: {name: net1}",
                "interface: {name: net1}\n          routes: [{destination: 10.0.0.0/8}]",
            )
            .replace("requests: [nic]", "requests: [nic, nope]");
        let d = &docs(&text)[0];
        assert!(!d.is_valid());
        assert_eq!(
            problems(d),
            vec![
                "spec.devices.config[0].requests[1]: no request named \"nope\" in spec.devices.requests",
                "spec.devices.config[0].opaque.parameters.interface.mtuu: unknown field; did you mean \"mtu\"?",
                "spec.devices.config[2].opaque.parameters.routes[0].gateway: required when scope is 0 (universe)",
            ]
        );
        // The valid-looking second config is still reported on its own.
        assert!(d.configs[0].config.is_none());
    }

    #[test]
    fn template_configs_are_under_spec_spec() {
        let text = r#"{
          "apiVersion": "resource.k8s.io/v1beta1",
          "kind": "ResourceClaimTemplate",
          "metadata": {"name": "per-pod", "namespace": "default"},
          "spec": {"spec": {"devices": {
            "requests": [{"name": "nic", "deviceClassName": "netclaim.dev"}],
            "config": [{"requests": ["nic"], "opaque": {"driver": "netclaim.dev",
              "parameters": {"interface": {"hardwareAddr": "01:00:00:00:00:01"}}}}]
          }}}
        }"#;
        let d = &docs(text)[0];
        assert_eq!(d.title(), "ResourceClaimTemplate default/per-pod");
        assert_eq!(
            problems(d),
            vec!["spec.spec.devices.config[0].opaque.parameters.interface.hardwareAddr: 01:00:00:00:00:01 is a multicast (group) address; the lowest bit of the first octet must be clear"]
        );
    }

    #[test]
    fn bare_config_paths_start_at_the_root() {
        let d = docs("interface:\n  mtu: 20\nroutes:\n- destination: 10.0.0.0/8\n  scope: 253\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].title(), "NetworkConfig");
        assert_eq!(d[0].configs.len(), 1);
        assert_eq!(d[0].configs[0].path, "");
        assert_eq!(
            problems(&d[0]),
            vec!["interface.mtu: must be between 68 and 65535, got 20 (the device's own maximum is checked when it is configured)"]
        );
        let ok = docs(r#"{"interface": {"name": "net0"}}"#);
        assert!(ok[0].is_valid());
    }

    #[test]
    fn multi_document_yaml_names_each_document() {
        let text = format!(
            "{CLAIM}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: team-a}}\n---\n---\ninterface: {{name: \"a/b\"}}\n"
        );
        let d = docs(&text);
        let titles: Vec<(usize, String)> = d.iter().map(|d| (d.document, d.title())).collect();
        assert_eq!(
            titles,
            vec![
                (1, "ResourceClaim team-a/fast-net".to_string()),
                (2, "Pod team-a/p".to_string()),
                (3, "NetworkConfig".to_string()),
            ]
        );
        assert!(d[0].is_valid());
        assert!(d[1].skipped.is_some() && d[1].is_valid());
        assert_eq!(
            problems(&d[2]),
            vec!["interface.name: \"a/b\" contains '/'; interface names may not"]
        );
    }

    #[test]
    fn configs_of_other_drivers_are_ignored() {
        let text = CLAIM.replace("driver: netclaim.dev", "driver: other.example.com");
        let d = &docs(&text)[0];
        assert!(d.configs.is_empty());
        assert_eq!(d.other_drivers, 3);
        assert!(d.is_valid());
        // ... and checked when the driver name matches.
        let d = &parse_documents(&text, "other.example.com").unwrap()[0];
        assert_eq!(d.configs.len(), 2);
        assert_eq!(d.other_drivers, 1);
    }

    #[test]
    fn lists_are_checked_item_by_item() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"kind": "ResourceClaim", "metadata": {"name": "a"}, "spec": {"devices": {"config": [
                {"opaque": {"driver": "netclaim.dev", "parameters": {"interface": {"mtu": 1}}}}]}}},
            {"kind": "ConfigMap", "metadata": {"name": "b"}}
        ]}"#;
        let d = docs(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "items[0]");
        assert_eq!(
            problems(&d[0])[0].split(':').next(),
            Some("items[0].spec.devices.config[0].opaque.parameters.interface.mtu")
        );
        assert!(d[1].skipped.is_some());
    }

    #[test]
    fn malformed_claims_are_problems_not_panics() {
        let cases = [
            ("spec: {devices: {config: 3}}", "spec.devices.config: expected a list"),
            ("spec: {devices: [1]}", "spec.devices: expected an object"),
            ("spec: {devices: {config: [7]}}", "spec.devices.config[0]: expected an object"),
            ("spec: {devices: {config: [{opaque: 1}]}}", "spec.devices.config[0].opaque: expected an object"),
            ("spec: {devices: {config: [{opaque: {parameters: {}}}]}}", "spec.devices.config[0].opaque.driver: required"),
            ("spec: {devices: {config: [{opaque: {driver: netclaim.dev}}]}}", "spec.devices.config[0].opaque.parameters: required"),
            ("spec: {devices: {config: [{requests: nic, opaque: {driver: netclaim.dev, parameters: {}}}]}}", "spec.devices.config[0].requests: expected a list"),
            ("spec: {devices: {config: [{opaque: {driver: netclaim.dev, parameters: [1]}}]}}", "spec.devices.config[0].opaque.parameters: expected an object (a NetworkConfig), got a list"),
        ];
        for (spec, want) in cases {
            let text = format!("kind: ResourceClaim\nmetadata: {{name: x}}\n{spec}\n");
            let d = docs(&text);
            let got = problems(&d[0]);
            assert!(
                got.iter().any(|p| p.starts_with(want)),
                "{spec}: want {want}, got {got:?}"
            );
        }
        let d = docs("- 1\n- 2\n");
        assert_eq!(problems(&d[0]), vec!["(root): expected an object: a ResourceClaim, a ResourceClaimTemplate or a NetworkConfig"]);
    }

    #[test]
    fn claims_without_configs_are_valid() {
        let d = docs("kind: ResourceClaim\nmetadata: {generateName: pod-nic-}\nspec: {devices: {requests: [{name: nic}]}}\n");
        assert_eq!(d[0].title(), "ResourceClaim pod-nic-*");
        assert!(d[0].is_valid() && d[0].configs.is_empty());
    }

    #[test]
    fn unparseable_files_are_typed_errors() {
        assert!(matches!(
            parse_documents("{\"a\": ", DRIVER),
            Err(DocumentError::Json(_))
        ));
        assert!(matches!(
            parse_documents("a: [1,\n", DRIVER),
            Err(DocumentError::Yaml(_))
        ));
        assert!(parse_documents("", DRIVER).unwrap().is_empty());
    }
}
