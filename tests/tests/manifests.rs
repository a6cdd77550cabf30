//! Offline checks of everything under `deploy/`: no cluster, no Docker.
//!
//! Every YAML document is deserialised into its k8s-openapi type (chosen by
//! `apiVersion`/`kind`) and must survive a strict round trip: serialised back to JSON,
//! every key path of the original document must still be there with the same value, so
//! a misspelt or misplaced field (which the API server would drop or reject) fails here
//! with its file, document index and path. On top of the schema:
//! * RBAC is exactly the least-privilege rule set of PROTOCOLS.md §5, no wildcards;
//! * the DaemonSet has the host mounts, probes, privileges and tolerations it needs;
//! * the DeviceClass selects netclaim.dev devices;
//! * every example's opaque config is a valid netclaim config, uses documentation
//!   address ranges, and every example claim is used by a Pod in the same file;
//! * `deploy/kind.yaml` is a kind cluster config with DRA and NRI switched on;
//! * every Kubernetes manifest validates against the OpenAPI schemas of every
//!   Kubernetes version the README supports, with `kubernetes-validate --strict`
//!   (PyPI, pinned; `cargo xtask setup` installs it into /opt/netclaim/venv).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const DRIVER: &str = "netclaim.dev";

/// One YAML document of a file under `deploy/`.
struct Doc {
    /// Path relative to the repository root, e.g. `deploy/netclaim.yaml`.
    file: String,
    /// 0-based index among the file's non-empty documents.
    index: usize,
    value: Value,
}

impl Doc {
    fn at(&self) -> String {
        format!("{} document {} ({})", self.file, self.index, self.title())
    }

    fn title(&self) -> String {
        format!(
            "{} {}",
            self.kind().unwrap_or("(no kind)"),
            self.value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("(no name)")
        )
    }

    fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(Value::as_str)
    }

    fn api_version(&self) -> Option<&str> {
        self.value.get("apiVersion").and_then(Value::as_str)
    }

    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: does not deserialise: {e}", self.at()))
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Every `.yaml`/`.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The non-empty documents of one YAML file.
fn read_docs(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = relative(path);
    let mut docs = Vec::new();
    for (n, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{file}: YAML document {n} does not parse: {e}"));
        if value.is_null() {
            continue;
        }
        let index = docs.len();
        docs.push(Doc {
            file: file.clone(),
            index,
            value,
        });
    }
    docs
}

/// The Kubernetes objects under `deploy/` (every YAML file but kind.yaml).
fn k8s_docs() -> Vec<Doc> {
    let files = yaml_files(&deploy_dir());
    assert!(!files.is_empty(), "no YAML files under deploy/");
    files
        .iter()
        .filter(|p| !is_kind_config(p))
        .flat_map(|p| read_docs(p))
        .collect()
}

fn is_kind_config(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()) == Some("kind.yaml")
}

/// Deserialises into `T`, serialises back, and returns the first path of `original`
/// that is missing or different in the round trip.
fn round_trip<T: DeserializeOwned + Serialize>(original: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(original.clone())
        .map_err(|e| format!("does not deserialise: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialise: {e}"))?;
    first_lost_path(original, &back, "")
}

/// Every key path of `orig` must exist in `back` with an equal leaf value. `null` in
/// the original means "absent" and may be dropped.
fn first_lost_path(orig: &Value, back: &Value, path: &str) -> Result<(), String> {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => first_lost_path(v, bv, &p)?,
                    None if v.is_null() => {}
                    None => {
                        return Err(format!("{p}: unknown field (dropped by the typed schema)"))
                    }
                }
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(b)) => {
            if o.len() != b.len() {
                return Err(format!("{path}: {} items became {}", o.len(), b.len()));
            }
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                first_lost_path(ov, bv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (o, b) if o == b => Ok(()),
        (o, b) => Err(format!("{path}: {o} came back as {b}")),
    }
}

fn check_schema(doc: &Doc) -> Result<(), String> {
    let result = match (doc.api_version(), doc.kind()) {
        (Some("v1"), Some("Namespace")) => round_trip::<Namespace>(&doc.value),
        (Some("v1"), Some("ServiceAccount")) => round_trip::<ServiceAccount>(&doc.value),
        (Some("v1"), Some("Pod")) => round_trip::<Pod>(&doc.value),
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
            round_trip::<ClusterRole>(&doc.value)
        }
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
            round_trip::<ClusterRoleBinding>(&doc.value)
        }
        (Some("apps/v1"), Some("DaemonSet")) => round_trip::<DaemonSet>(&doc.value),
        (Some("resource.k8s.io/v1"), Some("DeviceClass")) => round_trip::<DeviceClass>(&doc.value),
        (Some("resource.k8s.io/v1"), Some("ResourceClaim")) => {
            round_trip::<ResourceClaim>(&doc.value)
        }
        (Some("resource.k8s.io/v1"), Some("ResourceClaimTemplate")) => {
            round_trip::<ResourceClaimTemplate>(&doc.value)
        }
        (v, k) => Err(format!(
            "apiVersion {v:?} kind {k:?} is not one this test knows; add its type to check_schema"
        )),
    };
    result.map_err(|e| format!("{}: {e}", doc.at()))
}

#[test]
fn every_document_matches_its_typed_schema_exactly() {
    let docs = k8s_docs();
    let errors: Vec<String> = docs.iter().filter_map(|d| check_schema(d).err()).collect();
    assert!(errors.is_empty(), "schema problems:\n{}", errors.join("\n"));
    // Every object also has a name (kubectl apply needs one).
    for d in &docs {
        assert!(
            d.value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some(),
            "{}: no metadata.name",
            d.at()
        );
    }
}

#[test]
fn the_round_trip_check_catches_unknown_and_misplaced_fields() {
    let good = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": "x"},
        "spec": {"selectors": [{"cel": {"expression": "true"}}]}
    });
    round_trip::<DeviceClass>(&good).expect("a correct DeviceClass round-trips");

    let mut typo = good.clone();
    typo["spec"]["selectors"][0]["cel"]["expresion"] = Value::from("true");
    let err = round_trip::<DeviceClass>(&typo).expect_err("a misspelt field is caught");
    assert!(err.contains("spec.selectors[0].cel.expresion"), "{err}");

    // The v1beta1 shape (`deviceClassName` directly on the request) is not v1.
    let claim = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "x"},
        "spec": {"devices": {"requests": [{"name": "a", "deviceClassName": "netclaim.dev"}]}}
    });
    let err = round_trip::<ResourceClaim>(&claim).expect_err("v1beta1 request shape is caught");
    assert!(
        err.contains("spec.devices.requests[0].deviceClassName"),
        "{err}"
    );
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == Some(kind)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} under deploy/, found {}",
        found.len()
    );
    found[0]
}

#[test]
fn rbac_is_exactly_the_least_privilege_set() {
    let docs = k8s_docs();
    let role: ClusterRole = one(&docs, "ClusterRole").typed();
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty(),
            "empty rule: {rule:?}"
        );
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for s in [g, r, v] {
                        assert!(!s.contains('*'), "wildcard in ClusterRole rule {rule:?}");
                    }
                    assert!(
                        granted.insert((g.clone(), r.clone(), v.clone())),
                        "granted twice: {g}/{r} {v}"
                    );
                }
            }
        }
    }

    let mut want = BTreeSet::new();
    let mut add = |group: &str, resource: &str, verbs: &[&str]| {
        for v in verbs {
            want.insert((group.to_string(), resource.to_string(), v.to_string()));
        }
    };
    add(
        "resource.k8s.io",
        "resourceslices",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    );
    add(
        "resource.k8s.io",
        "resourceclaims",
        &["get", "list", "watch"],
    );
    add(
        "resource.k8s.io",
        "resourceclaims/status",
        &["patch", "update"],
    );
    add(
        "resource.k8s.io",
        "resourceclaims/driver",
        &["associated-node:patch", "associated-node:update"],
    );
    add("resource.k8s.io", "deviceclasses", &["get"]);
    add("", "nodes", &["get"]);
    // The same Event objects through either API group.
    add("", "events", &["create", "patch"]);
    add("events.k8s.io", "events", &["create", "patch"]);

    let extra: Vec<_> = granted.difference(&want).collect();
    let missing: Vec<_> = want.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "ClusterRole differs from the least-privilege set\n  extra:   {extra:?}\n  missing: {missing:?}"
    );

    // The binding ties that role to the DaemonSet's service account.
    let binding: ClusterRoleBinding = one(&docs, "ClusterRoleBinding").typed();
    let role_name = role.metadata.name.clone().unwrap_or_default();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role_name);
    let sa: ServiceAccount = one(&docs, "ServiceAccount").typed();
    let ds: DaemonSet = one(&docs, "DaemonSet").typed();
    let ns: Namespace = one(&docs, "Namespace").typed();
    let ns_name = ns.metadata.name.clone().unwrap_or_default();
    assert_eq!(ns_name, "netclaim");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns_name.as_str()));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns_name.as_str()));
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace.as_deref() == Some(ns_name.as_str())),
        "ClusterRoleBinding does not bind the ServiceAccount: {subjects:?}"
    );
    let pod = ds
        .spec
        .and_then(|s| s.template.spec)
        .expect("DaemonSet pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn daemonset_has_what_the_driver_needs_on_the_node() {
    let docs = k8s_docs();
    let ds: DaemonSet = one(&docs, "DaemonSet").typed();
    let spec = ds.spec.expect("DaemonSet spec");
    let pod = spec.template.spec.expect("pod template spec");

    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "no toleration for every taint: {tolerations:?}"
    );
    assert_eq!(pod.containers.len(), 1, "one container");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/netclaim/netclaim:latest"));
    // Not privileged: the two capabilities tests/tests/daemonset.rs shows are needed.
    let sc = c.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "privileged");
    let caps = sc.capabilities.clone().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "SYS_ADMIN".to_string()][..])
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );

    // NODE_NAME from the downward API, handed to --node-name.
    let env = c.env.clone().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME env");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args start with the subcommand: {args:?}"
    );
    for want in [
        "--node-name=$(NODE_NAME)",
        "--driver-name=netclaim.dev",
        "--metrics-address=0.0.0.0:9177",
        "--log-format=json",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "missing arg {want}: {args:?}"
        );
    }

    // Probes on the metrics port.
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no httpGet probe for {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        let port = serde_json::to_value(&get.port).expect("port");
        assert_eq!(port, Value::from(9177), "{path} probe port");
    }

    let resources = c.resources.as_ref().expect("resources");
    for (what, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let map = map
            .as_ref()
            .unwrap_or_else(|| panic!("no resources.{what}"));
        assert!(map.contains_key("memory"), "resources.{what}.memory");
    }
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("cpu")),
        "resources.requests.cpu"
    );

    // The seven host paths, each mounted at the same path with the right propagation.
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.clone(), h.path.clone()))
        })
        .collect();
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let want: [(&str, Option<&str>); 7] = [
        ("/var/lib/kubelet/plugins", None),
        ("/var/lib/kubelet/plugins_registry", None),
        ("/var/run/nri", None),
        ("/var/run/netns", Some("HostToContainer")),
        ("/sys/fs/bpf", None),
        ("/var/run/netclaim", None),
        ("/sys/fs/cgroup", None),
    ];
    assert_eq!(mounts.len(), want.len(), "no other mounts: {mounts:?}");
    for (host_path, propagation) in want {
        let volume = volumes
            .iter()
            .find(|(_, p)| p.as_str() == host_path)
            .map(|(n, _)| n)
            .unwrap_or_else(|| panic!("no hostPath volume for {host_path}: {volumes:?}"));
        let mount = mounts
            .iter()
            .find(|m| &m.name == volume)
            .unwrap_or_else(|| panic!("hostPath {host_path} (volume {volume}) is not mounted"));
        assert_eq!(
            mount.mount_path, host_path,
            "{host_path} is mounted at the same path"
        );
        assert_eq!(
            mount.mount_propagation.as_deref(),
            propagation,
            "mountPropagation of {host_path}"
        );
    }
}

/// The init container puts netclaim-cni into the node's CNI bin directory, with
/// nothing but that directory mounted and no capability.
#[test]
fn the_init_container_installs_the_cni_plugin_and_nothing_else() {
    let docs = k8s_docs();
    let ds: DaemonSet = one(&docs, "DaemonSet").typed();
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let inits = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(inits.len(), 1, "one init container: {inits:?}");
    let c = &inits[0];
    assert_eq!(c.image, pod.containers[0].image, "the driver's image");
    assert_eq!(
        c.args.as_deref(),
        Some(
            &[
                "install-cni".to_string(),
                "--bin-dir=/host/opt/cni/bin".to_string()
            ][..]
        )
    );
    let caps = c
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "the copy needs no capability"
    );
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].mount_path, "/host/opt/cni/bin");
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mounts[0].name)
        .expect("the mounted volume");
    assert_eq!(
        volume.host_path.map(|h| h.path).as_deref(),
        Some("/opt/cni/bin")
    );
}

#[test]
fn device_class_selects_the_drivers_devices() {
    let docs = k8s_docs();
    let class: DeviceClass = one(&docs, "DeviceClass").typed();
    assert_eq!(class.metadata.name.as_deref(), Some(DRIVER));
    let expressions: Vec<String> = class
        .spec
        .selectors
        .iter()
        .flatten()
        .filter_map(|s| s.cel.as_ref().map(|c| c.expression.clone()))
        .collect();
    assert!(
        expressions
            .iter()
            .any(|e| e.contains(&format!("device.driver == \"{DRIVER}\""))),
        "DeviceClass selector does not select driver {DRIVER}: {expressions:?}"
    );
}

/// Documentation and test ranges (RFC 5737, RFC 3849).
fn is_documentation(net: &IpNet) -> bool {
    const RANGES: [&str; 4] = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
    ];
    net.prefix_len() == 0
        || RANGES
            .iter()
            .any(|r| r.parse::<IpNet>().is_ok_and(|range| range.contains(net)))
}

/// The `spec.devices` of a claim or claim template document, with its path.
fn claim_devices(doc: &Doc) -> Option<(&Value, &'static str)> {
    match doc.kind() {
        Some("ResourceClaim") => doc
            .value
            .pointer("/spec/devices")
            .map(|d| (d, "spec.devices")),
        Some("ResourceClaimTemplate") => doc
            .value
            .pointer("/spec/spec/devices")
            .map(|d| (d, "spec.spec.devices")),
        _ => None,
    }
}

#[test]
fn example_configs_are_valid_netclaim_configs() {
    let examples = deploy_dir().join("examples");
    let files = yaml_files(&examples);
    assert!(
        files.len() >= 4,
        "expected the example files under deploy/examples/"
    );
    let mut problems = String::new();
    let mut configs = 0;
    let mut ifname_selector = false;
    let mut kinds_seen = BTreeSet::new();

    for file in &files {
        let docs = read_docs(file);
        let mut claims = BTreeSet::new();
        let mut templates = BTreeSet::new();
        let mut pods = Vec::new();
        for doc in &docs {
            kinds_seen.insert(doc.kind().unwrap_or("").to_string());
            let name = doc
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match doc.kind() {
                Some("ResourceClaim") => {
                    claims.insert(name);
                }
                Some("ResourceClaimTemplate") => {
                    templates.insert(name);
                }
                Some("Pod") => pods.push(doc.typed::<Pod>()),
                _ => {}
            }
            let Some((devices, base)) = claim_devices(doc) else {
                continue;
            };
            let requests: BTreeSet<&str> = devices
                .get("requests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("name").and_then(Value::as_str))
                .collect();
            let selectors = devices.to_string();
            ifname_selector |= selectors.contains(r#"device.attributes[\"netclaim.dev\"].ifName"#);
            for (i, config) in devices
                .get("config")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let path = format!("{base}.config[{i}]");
                for r in config
                    .get("requests")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let r = r.as_str().unwrap_or("");
                    if !requests.contains(r) {
                        let _ = writeln!(
                            problems,
                            "{}: {path}.requests names unknown request {r:?}",
                            doc.at()
                        );
                    }
                }
                let Some(opaque) = config.get("opaque") else {
                    continue;
                };
                if opaque.get("driver").and_then(Value::as_str) != Some(DRIVER) {
                    continue;
                }
                configs += 1;
                let params = opaque.get("parameters").cloned().unwrap_or(Value::Null);
                let ppath = format!("{path}.opaque.parameters");
                match netclaim::config::parse_parameters(&params, &ppath) {
                    Err(e) => {
                        let _ = writeln!(problems, "{}: {e}", doc.at());
                    }
                    Ok(valid) => {
                        let nets = valid
                            .interface
                            .addresses
                            .iter()
                            .copied()
                            .chain(valid.routes.iter().map(|r| r.destination))
                            .chain(
                                valid
                                    .routes
                                    .iter()
                                    .flat_map(|r| r.gateway.into_iter().chain(r.source))
                                    .map(IpNet::from),
                            );
                        for net in nets {
                            if !is_documentation(&net) {
                                let _ = writeln!(
                                    problems,
                                    "{}: {ppath}: {net} is not in a documentation range",
                                    doc.at()
                                );
                            }
                        }
                    }
                }
            }
        }

        // The driver's own document checker (what `netclaim validate` runs) agrees.
        let text = std::fs::read_to_string(file).expect("read example");
        let reports = netclaim::config::parse_documents(&text, DRIVER).expect("example parses");
        for r in reports.iter().filter(|r| !r.is_valid()) {
            for p in r.problems() {
                let _ = writeln!(problems, "{}: {}: {p}", relative(file), r.title());
            }
        }

        // Every claim and template of the file is used by a Pod of the file, and every
        // claim a Pod names is defined there.
        let rel = relative(file);
        if pods.is_empty() {
            let _ = writeln!(problems, "{rel}: no Pod uses the example");
        }
        let mut used_claims = BTreeSet::new();
        let mut used_templates = BTreeSet::new();
        for pod in &pods {
            for rc in pod
                .spec
                .as_ref()
                .and_then(|s| s.resource_claims.as_ref())
                .into_iter()
                .flatten()
            {
                if let Some(n) = &rc.resource_claim_name {
                    used_claims.insert(n.clone());
                }
                if let Some(n) = &rc.resource_claim_template_name {
                    used_templates.insert(n.clone());
                }
            }
        }
        if used_claims != claims || used_templates != templates {
            let _ = writeln!(
                problems,
                "{rel}: pods use claims {used_claims:?} templates {used_templates:?}, file defines claims {claims:?} templates {templates:?}"
            );
        }
    }
    assert!(problems.is_empty(), "example problems:\n{problems}");
    assert!(
        configs >= 4,
        "only {configs} netclaim configs in the examples"
    );
    assert!(
        ifname_selector,
        "no example selects a device by netclaim.dev/ifName"
    );
    assert!(
        kinds_seen.contains("ResourceClaimTemplate"),
        "no ResourceClaimTemplate example"
    );
}

#[test]
fn example_coverage_matches_the_documented_features() {
    // Each feature of the config format appears in at least one example.
    let mut all = String::new();
    for file in yaml_files(&deploy_dir().join("examples")) {
        all.push_str(&std::fs::read_to_string(file).expect("read example"));
    }
    for needle in [
        "addresses:",
        "routes:",
        "gateway:",
        "scope: 253",
        "table:",
        "ethtool:",
        "features:",
        "gsoMaxSize:",
        "hardwareAddr:",
        "enforceRoutes: true",
        "enforceRoutes: false",
        "ingressFilter: false",
        "allowMulticast: false",
        "disableEbpfPrograms: true",
        "resourceClaimTemplateName:",
    ] {
        assert!(all.contains(needle), "no example shows {needle:?}");
    }
}

#[test]
fn kind_config_enables_dra_and_nri() {
    let path = deploy_dir().join("kind.yaml");
    let docs = read_docs(&path);
    assert_eq!(docs.len(), 1, "kind.yaml has one document");
    let v = &docs[0].value;
    assert_eq!(v["kind"], "Cluster");
    assert_eq!(v["apiVersion"], "kind.x-k8s.io/v1alpha4");
    assert_eq!(v["featureGates"]["DynamicResourceAllocation"], true);
    assert_eq!(v["featureGates"]["ResourceHealthStatus"], true);
    assert_eq!(v["runtimeConfig"]["resource.k8s.io/v1"], "true");

    let patches: Vec<&str> = v["containerdConfigPatches"]
        .as_array()
        .expect("containerdConfigPatches")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let nri = patches
        .iter()
        .find(|p| p.contains(r#"[plugins."io.containerd.nri.v1.nri"]"#))
        .expect("a containerd patch for the NRI plugin");
    assert!(
        nri.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["disable", "=", "false"]),
        "the NRI patch does not set disable = false:\n{nri}"
    );

    let nodes = v["nodes"].as_array().expect("nodes");
    assert!(nodes.iter().any(|n| n["role"] == "worker"), "a worker node");
    for n in nodes {
        let image = n["image"].as_str().expect("node image pinned");
        assert!(image.starts_with("kindest/node:v1."), "{image}");
        let minor: u32 = image
            .trim_start_matches("kindest/node:v1.")
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .expect("node image version");
        assert!(
            minor >= 34,
            "{image}: resource.k8s.io/v1 needs Kubernetes >= 1.34"
        );
        let kubelet_gate = n["kubeadmConfigPatches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|p| {
                p.contains("kind: KubeletConfiguration") && p.contains("ResourceHealthStatus: true")
            });
        assert!(kubelet_gate, "node {n}: kubelet ResourceHealthStatus gate");
    }
}

#[test]
fn dockerfile_builds_ebpf_then_the_driver() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    assert!(froms[1].contains("debian:bookworm-slim"), "{froms:?}");
    for needle in [
        "llvm-22-dev",
        "rustc-web",
        "cargo-web",
        "rust-web-src",
        "bpf-linker@0.13.0",
        "--features llvm-22",
        "/opt/netclaim/bpf-linker",
        "cargo xtask build-ebpf",
        "cargo build --release --locked -p netclaim",
        "iproute2",
        r#"ENTRYPOINT ["/usr/local/bin/netclaim"]"#,
        "/usr/local/bin/netclaim-cni",
        r#"CMD ["run"]"#,
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    let ebpf = text.find("cargo xtask build-ebpf").unwrap_or(usize::MAX);
    let driver = text.find("cargo build --release").unwrap_or(0);
    assert!(
        ebpf < driver,
        "the eBPF object must exist before the driver is built"
    );
}

/// `kubernetes-validate` as `cargo xtask setup` installs it (override with
/// `NETCLAIM_KUBERNETES_VALIDATE`).
fn validator() -> PathBuf {
    std::env::var_os("NETCLAIM_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/netclaim/venv/bin/kubernetes-validate"))
}

/// The Kubernetes versions netclaim supports: from the README's minimum (1.34, the
/// first with `resource.k8s.io/v1`) to the newest schemas kubernetes-validate 1.37.0
/// carries.
const SUPPORTED: [&str; 4] = ["1.34.0", "1.35.0", "1.36.0", "1.37.0"];

/// Runs the validator over `files` for `version`: `Err` with its report when it
/// rejects anything or cannot find a schema (a WARN line: an object it did not check).
fn validate(files: &[PathBuf], version: &str) -> Result<(), String> {
    let bin = validator();
    let out = std::process::Command::new(&bin)
        .args(["--kubernetes-version", version, "--strict", "--quiet"])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo xtask setup`, which installs kubernetes-validate 1.37.0)",
                bin.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN") || l.contains("Traceback"))
        .collect();
    if out.status.success() && problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Kubernetes {version} ({}): {}",
            out.status,
            if problems.is_empty() {
                text.trim().to_string()
            } else {
                problems.join("\n")
            }
        ))
    }
}

#[test]
fn every_manifest_validates_against_the_supported_kubernetes_schemas() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    assert!(
        readme.contains("Kubernetes ≥ 1.34"),
        "the README no longer says Kubernetes ≥ 1.34: update SUPPORTED"
    );
    let out = std::process::Command::new(validator())
        .arg("--version")
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.37.0");
    // kind.yaml is kind's own config, not a Kubernetes object (kind_config_enables_dra_and_nri).
    let files: Vec<PathBuf> = yaml_files(&deploy_dir())
        .into_iter()
        .filter(|p| !is_kind_config(p))
        .collect();
    assert!(files.len() >= 5, "deploy/ manifests: {files:?}");
    let errors: Vec<String> = SUPPORTED
        .iter()
        .filter_map(|v| validate(&files, v).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The schema check rejects what the API server would: the DaemonSet of deploy/ with
/// a misplaced field and a wrongly typed one, and an object kind it has no schema for.
#[test]
fn the_schema_check_rejects_a_broken_manifest() {
    let docs = k8s_docs();
    let mut ds = one(&docs, "DaemonSet").value.clone();
    let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
    c["securityContext"]["privilegd"] = Value::from(true);
    c["terminationMessagePolicy"] = Value::from(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, serde_yaml::to_string(&ds).expect("yaml")).expect("write");
    let err = validate(std::slice::from_ref(&broken), "1.34.0").expect_err("broken DaemonSet");
    assert!(err.contains("privilegd"), "{err}");

    let mut typed = one(&docs, "DaemonSet").value.clone();
    typed["spec"]["template"]["spec"]["hostNetwork"] = Value::from("sometimes");
    std::fs::write(&broken, serde_yaml::to_string(&typed).expect("yaml")).expect("write");
    let err = validate(std::slice::from_ref(&broken), "1.37.0").expect_err("string hostNetwork");
    assert!(err.contains("hostNetwork"), "{err}");

    // resource.k8s.io/v1 does not exist before 1.34: its objects have no schema there.
    let class = deploy_dir().join("netclaim.yaml");
    let err = validate(std::slice::from_ref(&class), "1.31.0").expect_err("v1 DeviceClass on 1.31");
    assert!(
        err.contains("deviceclass") || err.contains("DeviceClass"),
        "{err}"
    );

    // The unchanged file passes (the failures above are the edits).
    validate(std::slice::from_ref(&class), "1.34.0").expect("deploy/netclaim.yaml");
}
