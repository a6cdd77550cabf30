//! A fake Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1, JSON, no auth.
//!
//! It serves the objects the driver reads and writes — Nodes, Pods, Events (core and
//! `events.k8s.io/v1`), and `resource.k8s.io/v1` ResourceSlices, ResourceClaims (with the
//! `status` subresource), ResourceClaimTemplates and DeviceClasses — with get, list
//! (label and field selectors), create, update (409 on a stale `resourceVersion`),
//! patch (merge patch, and server-side apply that merges `status.devices` by
//! `(driver, pool, device)` keeping other managers' entries), delete, and `?watch=true`
//! streams of newline-delimited watch events that honour `resourceVersion`. Errors are
//! `Status` objects as the real server sends them.
//!
//! [`FakeApiServer::start`] also writes a kubeconfig pointing at it, so the driver
//! under test takes its ordinary kubeconfig path. Tests seed and inspect objects with
//! [`FakeApiServer::put`], [`FakeApiServer::get`], [`FakeApiServer::list`] and
//! [`FakeApiServer::delete`], or load YAML like `kubectl apply` would.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, oneshot};

/// One kind of object the fake server knows.
#[derive(Debug)]
struct ResourceType {
    kind: &'static str,
    plural: &'static str,
    /// `v1` or `<group>/<version>`.
    api_version: &'static str,
    namespaced: bool,
    /// Has a `status` subresource: writes to the main resource keep the stored status,
    /// writes to `/status` change only the status.
    status_subresource: bool,
}

const TYPES: &[ResourceType] = &[
    ResourceType {
        kind: "Node",
        plural: "nodes",
        api_version: "v1",
        namespaced: false,
        status_subresource: true,
    },
    ResourceType {
        kind: "Pod",
        plural: "pods",
        api_version: "v1",
        namespaced: true,
        status_subresource: true,
    },
    ResourceType {
        kind: "Event",
        plural: "events",
        api_version: "v1",
        namespaced: true,
        status_subresource: false,
    },
    ResourceType {
        kind: "Event",
        plural: "events",
        api_version: "events.k8s.io/v1",
        namespaced: true,
        status_subresource: false,
    },
    ResourceType {
        kind: "ResourceSlice",
        plural: "resourceslices",
        api_version: "resource.k8s.io/v1",
        namespaced: false,
        status_subresource: false,
    },
    ResourceType {
        kind: "ResourceClaim",
        plural: "resourceclaims",
        api_version: "resource.k8s.io/v1",
        namespaced: true,
        status_subresource: true,
    },
    ResourceType {
        kind: "ResourceClaimTemplate",
        plural: "resourceclaimtemplates",
        api_version: "resource.k8s.io/v1",
        namespaced: true,
        status_subresource: false,
    },
    ResourceType {
        kind: "DeviceClass",
        plural: "deviceclasses",
        api_version: "resource.k8s.io/v1",
        namespaced: false,
        status_subresource: false,
    },
];

fn type_index(kind_or_plural: &str) -> Option<usize> {
    let wanted = kind_or_plural.to_ascii_lowercase();
    TYPES
        .iter()
        .position(|t| t.kind.to_ascii_lowercase() == wanted || t.plural == wanted)
}

fn type_for(api_version: &str, plural: &str) -> Option<usize> {
    TYPES
        .iter()
        .position(|t| t.api_version == api_version && t.plural == plural)
}

fn type_of_object(object: &Value) -> Option<usize> {
    let kind = object.get("kind")?.as_str()?;
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    TYPES
        .iter()
        .position(|t| t.kind == kind && api_version.is_none_or(|v| v == t.api_version))
}

/// Errors of the programmatic API.
#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("object has no metadata.name")]
    NoName,
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("conflict: {0}")]
    Conflict(String),
}

#[derive(Clone, Debug)]
struct WatchEvent {
    type_idx: usize,
    kind: &'static str,
    rv: u64,
    object: Value,
    /// The object before a modification, to tell watchers whose selector it left.
    old: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    next_uid: u64,
    objects: Vec<BTreeMap<(String, String), Value>>,
    history: Vec<WatchEvent>,
    /// (type, namespace, name) → field manager → the `status.devices` keys it applied.
    managers: HashMap<(usize, String, String), BTreeMap<String, Vec<DeviceKey>>>,
    /// Every write refused by validation, as `code: message`.
    rejected: Vec<String>,
    /// The test sends invalid objects on purpose: refusals do not fail it.
    rejections_expected: bool,
    /// `status.devices[*]` fields every claim status write is refused for.
    refused_status_fields: Vec<String>,
}

type DeviceKey = (String, String, String);

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<WatchEvent>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Why a write failed, as an HTTP status.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// `details` beyond name/group/kind (the `causes` of a 422).
    causes: Vec<Value>,
}

impl ApiError {
    fn not_found(t: &ResourceType, name: &str) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", resource_name(t)),
            causes: Vec::new(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            causes: Vec::new(),
        }
    }
}

/// What kube-apiserver would refuse in this write, checked before anything is stored:
/// ResourceSlices on every write, a ResourceClaim's status when it changes (see
/// [`crate::validation`]). Refusals are also recorded for tests to read.
fn admit(
    store: &mut Store,
    t: &ResourceType,
    name: &str,
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let result = match t.kind {
        "ResourceSlice" => crate::validation::resource_slice(new, old),
        "ResourceClaim" if old.is_some_and(|o| o.get("status") != new.get("status")) => {
            crate::validation::resource_claim_status(new)
        }
        _ => return Ok(()),
    };
    // Fault injection: refuse status entries carrying a field the test named, as a
    // newer server with a stricter rule would.
    let result = result.map(|mut errors| {
        if t.kind == "ResourceClaim" {
            for field in &store.refused_status_fields {
                let entries = new.pointer("/status/devices").and_then(Value::as_array);
                for (i, e) in entries.into_iter().flatten().enumerate() {
                    if e.get(field).is_some_and(|v| !v.is_null()) {
                        errors.push(crate::validation::FieldError {
                            field: format!("status.devices[{i}].{field}"),
                            kind: crate::validation::ErrorType::Invalid,
                            body: "Invalid value: \"<value omitted>\": refused by test fault injection".into(),
                        });
                    }
                }
            }
        }
        errors
    });
    let err = match result {
        Ok(errors) if errors.is_empty() => return Ok(()),
        Ok(errors) => {
            let (message, details) = crate::validation::invalid_status(t.kind, name, &errors);
            let causes = details["causes"].as_array().cloned().unwrap_or_default();
            ApiError {
                code: StatusCode::UNPROCESSABLE_ENTITY,
                reason: "Invalid",
                message,
                causes,
            }
        }
        Err(decode) => ApiError::bad(format!("{}.resource.k8s.io {name:?}: {decode}", t.kind)),
    };
    store
        .rejected
        .push(format!("{}: {}", err.code.as_u16(), err.message));
    Err(err)
}

fn resource_name(t: &ResourceType) -> String {
    match t.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", t.plural),
        None => t.plural.to_owned(),
    }
}

impl Store {
    fn ensure(&mut self) {
        if self.objects.len() < TYPES.len() {
            self.objects.resize_with(TYPES.len(), BTreeMap::new);
        }
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, events: &broadcast::Sender<WatchEvent>, event: WatchEvent) {
        self.history.push(event.clone());
        let _ = events.send(event);
    }

    /// Creates `object` (whose namespace is already set); 409 if it exists.
    fn create(
        &mut self,
        events: &broadcast::Sender<WatchEvent>,
        idx: usize,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        self.ensure();
        let t = &TYPES[idx];
        let ns = meta_str(&object, "namespace");
        let mut name = meta_str(&object, "name");
        if name.is_empty() {
            let prefix = meta_str(&object, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::bad(
                    "metadata.name or metadata.generateName is required",
                ));
            }
            self.next_uid += 1;
            name = format!("{prefix}{:05x}", self.next_uid);
        }
        if self.objects[idx].contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError {
                code: StatusCode::CONFLICT,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", resource_name(t)),
                causes: Vec::new(),
            });
        }
        set_type(&mut object, t);
        admit(self, t, &name, &object, None)?;
        let rv = self.bump();
        self.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
        let meta = metadata_mut(&mut object);
        meta.insert("name".into(), json!(name));
        if t.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.entry("uid").or_insert_with(|| json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!("2025-01-01T00:00:00Z"));
        self.objects[idx].insert((ns, name), object.clone());
        self.record(
            events,
            WatchEvent {
                type_idx: idx,
                kind: "ADDED",
                rv,
                object: object.clone(),
                old: None,
            },
        );
        Ok(object)
    }

    /// Stores a new version of an existing object.
    fn replace(
        &mut self,
        events: &broadcast::Sender<WatchEvent>,
        idx: usize,
        key: (String, String),
        mut object: Value,
    ) -> Result<Value, ApiError> {
        self.ensure();
        let t = &TYPES[idx];
        let Some(old) = self.objects[idx].get(&key).cloned() else {
            return Err(ApiError::not_found(t, &key.1));
        };
        if object == old {
            return Ok(old);
        }
        set_type(&mut object, t);
        admit(self, t, &key.1, &object, Some(&old))?;
        let rv = self.bump();
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = object.get("spec") != old.get("spec");
        let meta = metadata_mut(&mut object);
        meta.insert("name".into(), json!(key.1));
        if t.namespaced {
            meta.insert("namespace".into(), json!(key.0));
        }
        for field in ["uid", "creationTimestamp"] {
            if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                meta.insert(field.into(), v.clone());
            }
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        self.objects[idx].insert(key, object.clone());
        self.record(
            events,
            WatchEvent {
                type_idx: idx,
                kind: "MODIFIED",
                rv,
                object: object.clone(),
                old: Some(old),
            },
        );
        Ok(object)
    }

    fn remove(
        &mut self,
        events: &broadcast::Sender<WatchEvent>,
        idx: usize,
        key: &(String, String),
    ) -> Option<Value> {
        self.ensure();
        let mut object = self.objects[idx].remove(key)?;
        self.managers.remove(&(idx, key.0.clone(), key.1.clone()));
        let rv = self.bump();
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(
            events,
            WatchEvent {
                type_idx: idx,
                kind: "DELETED",
                rv,
                object: object.clone(),
                old: None,
            },
        );
        Some(object)
    }
}

fn set_type(object: &mut Value, t: &ResourceType) {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(t.api_version));
        map.insert("kind".into(), json!(t.kind));
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let map = match object.as_object_mut() {
        Some(map) => map,
        None => unreachable!("made an object above"),
    };
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta.as_object_mut() {
        Some(meta) => meta,
        None => unreachable!("made an object above"),
    }
}

fn meta_str(object: &Value, field: &str) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(target) = target.as_object_mut() {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn device_key(entry: &Value) -> DeviceKey {
    let s = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (s("driver"), s("pool"), s("device"))
}

/// Server-side apply of `applied` by `manager` onto `current` (which may be empty).
/// Objects merge key by key; lists are replaced, except `status.devices`, which is a
/// map keyed by (driver, pool, device): the manager's entries are replaced, entries it
/// applied before and no longer applies are removed, others' entries stay.
fn apply(
    current: &mut Value,
    applied: &Value,
    owned: &mut BTreeMap<String, Vec<DeviceKey>>,
    manager: &str,
) {
    let mut applied = applied.clone();
    let devices = applied
        .get_mut("status")
        .and_then(|s| s.as_object_mut())
        .and_then(|s| s.remove("devices"));
    deep_merge(current, &applied);
    if let Some(Value::Array(new_entries)) = devices {
        let previously = owned.remove(manager).unwrap_or_default();
        let new_keys: Vec<DeviceKey> = new_entries.iter().map(device_key).collect();
        let status = current
            .as_object_mut()
            .map(|o| o.entry("status").or_insert_with(|| json!({})));
        if let Some(Value::Object(status)) = status {
            let list = status.entry("devices").or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            if let Value::Array(list) = list {
                list.retain(|e| {
                    let key = device_key(e);
                    // Drop what this manager applied before and no longer applies.
                    !previously.contains(&key) || new_keys.contains(&key)
                });
                for entry in new_entries {
                    let key = device_key(&entry);
                    match list.iter_mut().find(|e| device_key(e) == key) {
                        Some(existing) => *existing = entry,
                        None => list.push(entry),
                    }
                }
            }
        }
        owned.insert(manager.to_owned(), new_keys);
    }
}

fn deep_merge(target: &mut Value, overlay: &Value) {
    match (target, overlay) {
        (Value::Object(target), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, overlay) => *target = overlay.clone(),
    }
}

// ---------------------------------------------------------------- selectors

#[derive(Debug)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits on commas outside parentheses.
fn split_selector(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_selector(s: &str) -> Vec<Requirement> {
    split_selector(s)
        .into_iter()
        .map(|part| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest))
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest))
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.trim().into())
            }
        })
        .collect()
}

fn matches(reqs: &[Requirement], lookup: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => lookup(k).as_deref() == Some(v.as_str()),
        Requirement::NotEq(k, v) => lookup(k).as_deref() != Some(v.as_str()),
        Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => !lookup(k).is_some_and(|x| vs.contains(&x)),
        Requirement::Exists(k) => lookup(k).is_some(),
        Requirement::NotExists(k) => lookup(k).is_none(),
    })
}

/// What a list or watch asked for.
#[derive(Debug, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    fn from_query(namespace: Option<String>, query: &HashMap<String, String>) -> Self {
        Self {
            namespace,
            labels: query
                .get("labelSelector")
                .map(|s| parse_selector(s))
                .unwrap_or_default(),
            fields: query
                .get("fieldSelector")
                .map(|s| parse_selector(s))
                .unwrap_or_default(),
        }
    }

    fn accepts(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if &meta_str(object, "namespace") != ns {
                return false;
            }
        }
        let labels = object.pointer("/metadata/labels");
        matches(&self.labels, |k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        }) && matches(&self.fields, |path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            match object.pointer(&pointer) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => Some(String::new()),
                Some(other) => Some(other.to_string()),
            }
        })
    }
}

// ---------------------------------------------------------------- HTTP

/// A request path split into its parts.
#[derive(Debug)]
struct Target {
    type_idx: usize,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    let type_idx = type_for(&api_version, plural)?;
    if TYPES[type_idx].namespaced != namespace.is_some() && name.is_some() {
        return None;
    }
    Some(Target {
        type_idx,
        namespace,
        name,
        subresource,
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(err: ApiError, t: Option<&ResourceType>, name: Option<&str>) -> Response {
    let mut details = match t {
        Some(t) => json!({
            "name": name.unwrap_or_default(),
            "group": t.api_version.split_once('/').map(|(g, _)| g).unwrap_or(""),
            "kind": t.plural,
        }),
        None => json!({}),
    };
    if !err.causes.is_empty() {
        details["causes"] = Value::Array(err.causes);
        if let Some(t) = t {
            details["kind"] = json!(t.kind);
        }
    }
    status_response(err.code, err.reason, &err.message, details)
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(target) = parse_path(uri.path()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
            json!({}),
        );
    };
    let t = &TYPES[target.type_idx];
    let name = target.name.clone();
    let result = match (&method, &target.name) {
        (&Method::GET, None) => {
            let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let filter = Filter::from_query(target.namespace.clone(), &query);
            if watch {
                return watch_response(&shared, target.type_idx, filter, &query);
            }
            Ok((StatusCode::OK, list(&shared, target.type_idx, &filter)))
        }
        (&Method::GET, Some(name)) => {
            let mut store = shared.lock();
            store.ensure();
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            match store.objects[target.type_idx].get(&key) {
                Some(object) => Ok((StatusCode::OK, object.clone())),
                None => Err(ApiError::not_found(t, name)),
            }
        }
        (&Method::POST, None) => parse_body(&body, &headers).and_then(|mut object| {
            if let Some(ns) = &target.namespace {
                metadata_mut(&mut object).insert("namespace".into(), json!(ns));
            }
            let mut store = shared.lock();
            store
                .create(&shared.events, target.type_idx, object)
                .map(|o| (StatusCode::CREATED, o))
        }),
        (&Method::PUT, Some(name)) => parse_body(&body, &headers)
            .and_then(|object| update(&shared, &target, name, object))
            .map(|o| (StatusCode::OK, o)),
        (&Method::PATCH, Some(name)) => patch(&shared, &target, name, &headers, &query, &body),
        (&Method::DELETE, Some(name)) => {
            let mut store = shared.lock();
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            match store.remove(&shared.events, target.type_idx, &key) {
                Some(object) => Ok((StatusCode::OK, object)),
                None => Err(ApiError::not_found(t, name)),
            }
        }
        _ => Err(ApiError {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported on {}", uri.path()),
            causes: Vec::new(),
        }),
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(err) => error_response(err, Some(t), name.as_deref()),
    }
}

fn parse_body(body: &Bytes, headers: &HeaderMap) -> Result<Value, ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let parsed = if content_type.contains("yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad(format!("cannot decode the body: {e}")))
}

fn list(shared: &Shared, idx: usize, filter: &Filter) -> Value {
    let mut store = shared.lock();
    store.ensure();
    let t = &TYPES[idx];
    let items: Vec<Value> = store.objects[idx]
        .values()
        .filter(|o| filter.accepts(o))
        .cloned()
        .collect();
    json!({
        "apiVersion": t.api_version,
        "kind": format!("{}List", t.kind),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    })
}

/// PUT: the whole object (or only its status on `/status`); 409 on a stale version.
fn update(shared: &Shared, target: &Target, name: &str, object: Value) -> Result<Value, ApiError> {
    let t = &TYPES[target.type_idx];
    let mut store = shared.lock();
    store.ensure();
    let key = (
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    );
    let Some(current) = store.objects[target.type_idx].get(&key).cloned() else {
        return Err(ApiError::not_found(t, name));
    };
    let sent_rv = meta_str(&object, "resourceVersion");
    let current_rv = meta_str(&current, "resourceVersion");
    if !sent_rv.is_empty() && sent_rv != current_rv {
        return Err(ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource_name(t)
            ),
            causes: Vec::new(),
        });
    }
    let new = combine(t, target.subresource.as_deref(), &current, object)?;
    store.replace(&shared.events, target.type_idx, key, new)
}

/// Keeps the parts of `current` a write to this (sub)resource may not change.
fn combine(
    t: &ResourceType,
    subresource: Option<&str>,
    current: &Value,
    mut new: Value,
) -> Result<Value, ApiError> {
    match subresource {
        None => {
            if t.status_subresource {
                if let Some(map) = new.as_object_mut() {
                    match current.get("status") {
                        Some(status) => map.insert("status".into(), status.clone()),
                        None => map.remove("status"),
                    };
                }
            }
            Ok(new)
        }
        Some("status") if t.status_subresource => {
            let mut out = current.clone();
            if let (Some(out), Some(status)) = (out.as_object_mut(), new.get_mut("status")) {
                out.insert("status".into(), status.take());
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::bad(format!(
            "{} has no subresource {other:?}",
            t.plural
        ))),
    }
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<(StatusCode, Value), ApiError> {
    let t = &TYPES[target.type_idx];
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let patch = parse_body(body, headers)?;
    let mut store = shared.lock();
    store.ensure();
    let key = (
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    );
    let current = store.objects[target.type_idx].get(&key).cloned();
    if content_type.starts_with("application/apply-patch") {
        let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad("fieldManager is required for apply patch"));
        };
        let owner_key = (target.type_idx, key.0.clone(), key.1.clone());
        let mut owned = store.managers.remove(&owner_key).unwrap_or_default();
        let result = match current {
            None if target.subresource.is_none() => {
                let mut object = json!({});
                apply(&mut object, &patch, &mut owned, manager);
                let meta = metadata_mut(&mut object);
                meta.insert("name".into(), json!(name));
                if let Some(ns) = &target.namespace {
                    meta.insert("namespace".into(), json!(ns));
                }
                store
                    .create(&shared.events, target.type_idx, object)
                    .map(|o| (StatusCode::CREATED, o))
            }
            None => Err(ApiError::not_found(t, name)),
            Some(current) => {
                let mut applied = current.clone();
                let mut patch = patch;
                if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                apply(&mut applied, &patch, &mut owned, manager);
                combine(t, target.subresource.as_deref(), &current, applied)
                    .and_then(|new| store.replace(&shared.events, target.type_idx, key, new))
                    .map(|o| (StatusCode::OK, o))
            }
        };
        if result.is_ok() {
            store.managers.insert(owner_key, owned);
        }
        return result;
    }
    if content_type.starts_with("application/json-patch") {
        return Err(ApiError {
            code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "UnsupportedMediaType",
            message: "the fake API server supports merge and apply patches only".into(),
            causes: Vec::new(),
        });
    }
    // Merge patch (strategic merge patch is treated the same).
    let Some(current) = current else {
        return Err(ApiError::not_found(t, name));
    };
    let sent_rv = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !sent_rv.is_empty() && sent_rv != meta_str(&current, "resourceVersion") {
        return Err(ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!("the object {name} has been modified"),
            causes: Vec::new(),
        });
    }
    let mut patched = current.clone();
    merge_patch(&mut patched, &patch);
    let new = combine(t, target.subresource.as_deref(), &current, patched)?;
    store
        .replace(&shared.events, target.type_idx, key, new)
        .map(|o| (StatusCode::OK, o))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(
    shared: &Arc<Shared>,
    idx: usize,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response {
    let since: Option<u64> = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && v.as_str() != "0")
        .and_then(|v| v.parse().ok());
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3600));
    let (replay, mut rx, rv_now) = {
        let mut store = shared.lock();
        store.ensure();
        let rx = shared.events.subscribe();
        let mut replay = Vec::new();
        match since {
            Some(since) if !initial_events => {
                for e in store
                    .history
                    .iter()
                    .filter(|e| e.type_idx == idx && e.rv > since)
                {
                    if let Some(line) = event_line(&filter, e) {
                        replay.push(line);
                    }
                }
            }
            _ => {
                for object in store.objects[idx].values().filter(|o| filter.accepts(o)) {
                    replay.push(watch_line("ADDED", object));
                }
            }
        }
        if initial_events {
            let t = &TYPES[idx];
            replay.push(watch_line(
                "BOOKMARK",
                &json!({
                    "apiVersion": t.api_version,
                    "kind": t.kind,
                    "metadata": {
                        "resourceVersion": store.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }),
            ));
        }
        (replay, rx, store.rv)
    };
    let live = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if event.type_idx != idx || event.rv <= rv_now {
                        continue;
                    }
                    if let Some(line) = event_line(&filter, &event) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    });
    let stream = futures::stream::iter(replay)
        .chain(live)
        .take_until(tokio::time::sleep(timeout))
        .map(Ok::<_, Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The line a watcher with `filter` gets for `event`, if any (an object leaving the
/// selector is a DELETED for that watcher).
fn event_line(filter: &Filter, event: &WatchEvent) -> Option<Bytes> {
    let now = filter.accepts(&event.object);
    let before = event.old.as_ref().is_some_and(|o| filter.accepts(o));
    match (event.kind, before, now) {
        ("MODIFIED", false, true) => Some(watch_line("ADDED", &event.object)),
        ("MODIFIED", true, false) => Some(watch_line("DELETED", &event.object)),
        (_, _, true) => Some(watch_line(event.kind, &event.object)),
        _ => None,
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Bytes> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(f(tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    AbortOnDrop { stream, task }
}

struct AbortOnDrop<S> {
    stream: S,
    task: tokio::task::JoinHandle<()>,
}

impl<S: futures::Stream + Unpin> futures::Stream for AbortOnDrop<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<S> Drop for AbortOnDrop<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- handle

/// A running fake API server. Dropping it stops the server and removes its kubeconfig.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    dir: PathBuf,
    kubeconfig: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeApiServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), None).await
    }

    /// Starts on `addr`, writing the kubeconfig to `kubeconfig` (or a fresh temporary
    /// directory).
    pub async fn start_on(addr: SocketAddr, kubeconfig: Option<PathBuf>) -> std::io::Result<Self> {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = server.await {
                tracing::error!("fake API server stopped: {err}");
            }
        });
        let dir = std::env::temp_dir().join(format!(
            "netclaim-fake-apiserver-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = kubeconfig.unwrap_or_else(|| dir.join("kubeconfig"));
        std::fs::write(&kubeconfig, kubeconfig_text(&format!("http://{addr}")))?;
        Ok(Self {
            shared,
            addr,
            dir,
            kubeconfig,
            stop: Some(stop),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client built the way the driver builds one: from the kubeconfig file.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates or replaces an object (its `kind`, and `apiVersion` where two types
    /// share a kind, pick the type). Returns the stored object.
    pub fn put(&self, object: Value) -> Result<Value, FakeApiError> {
        let idx = type_of_object(&object).ok_or_else(|| {
            FakeApiError::UnknownKind(
                object
                    .get("kind")
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
            )
        })?;
        let t = &TYPES[idx];
        let name = meta_str(&object, "name");
        if name.is_empty() {
            return Err(FakeApiError::NoName);
        }
        let mut ns = meta_str(&object, "namespace");
        let mut object = object;
        if t.namespaced && ns.is_empty() {
            ns = "default".into();
            metadata_mut(&mut object).insert("namespace".into(), json!(ns));
        }
        if !t.namespaced {
            ns.clear();
        }
        let mut store = self.shared.lock();
        store.ensure();
        let key = (ns, name);
        let result = if store.objects[idx].contains_key(&key) {
            store.replace(&self.shared.events, idx, key, object)
        } else {
            store.create(&self.shared.events, idx, object)
        };
        result.map_err(|e| FakeApiError::Conflict(e.message))
    }

    /// The object, if it exists. `kind` is a kind (`ResourceClaim`) or a plural
    /// (`resourceclaims`); `namespace` is ignored for cluster-scoped kinds.
    /// Every write the server refused as kube-apiserver would (422, or 400 for a body
    /// that does not decode into its type), as `code: message`, oldest first.
    pub fn rejections(&self) -> Vec<String> {
        self.shared.lock().rejected.clone()
    }

    /// Declares that this test writes invalid objects on purpose. Otherwise any
    /// refused write fails the test when the server is dropped.
    pub fn expect_rejections(&self) {
        self.shared.lock().rejections_expected = true;
    }

    /// Fault injection: from now on, refuse (422) every claim status write whose
    /// `status.devices[*]` entries carry `field`. Implies [`Self::expect_rejections`].
    pub fn refuse_status_field(&self, field: &str) {
        let mut store = self.shared.lock();
        store.rejections_expected = true;
        store.refused_status_fields.push(field.to_string());
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let idx = type_index(kind)?;
        let ns = if TYPES[idx].namespaced { namespace } else { "" };
        let mut store = self.shared.lock();
        store.ensure();
        store.objects[idx]
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of a kind.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let Some(idx) = type_index(kind) else {
            return Vec::new();
        };
        let mut store = self.shared.lock();
        store.ensure();
        store.objects[idx].values().cloned().collect()
    }

    /// Deletes an object; returns it if it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let idx = type_index(kind)?;
        let ns = if TYPES[idx].namespaced { namespace } else { "" };
        let mut store = self.shared.lock();
        store.remove(&self.shared.events, idx, &(ns.to_owned(), name.to_owned()))
    }

    /// Puts every document of a multi-document YAML text.
    pub fn load_yaml(&self, text: &str) -> Result<Vec<Value>, FakeApiError> {
        let mut out = Vec::new();
        for document in serde_yaml::Deserializer::from_str(text) {
            let value = <Value as serde::Deserialize>::deserialize(document)?;
            if value.is_null() {
                continue;
            }
            out.push(self.put(value)?);
        }
        Ok(out)
    }

    /// [`FakeApiServer::load_yaml`] of a file.
    pub fn load_yaml_file(&self, path: &Path) -> Result<Vec<Value>, FakeApiError> {
        let text = std::fs::read_to_string(path).map_err(|source| FakeApiError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.load_yaml(&text)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // A write a real kube-apiserver would refuse fails the test that made it,
        // unless the test set out to make one.
        let store = self.shared.lock();
        if !store.rejected.is_empty() && !store.rejections_expected && !std::thread::panicking() {
            let list = store.rejected.join("\n  ");
            drop(store);
            panic!("the fake API server refused writes a real one would refuse too:\n  {list}");
        }
    }
}

/// A kubeconfig for `server` with no credentials.
pub fn kubeconfig_text(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "x", "tier": "db"}}, "spec": {"nodeName": "n1", "driver": "d"}});
        let f = |l: &str, fs: &str| {
            Filter {
                namespace: None,
                labels: parse_selector(l),
                fields: parse_selector(fs),
            }
            .accepts(&obj)
        };
        assert!(f("app=x", "spec.nodeName=n1"));
        assert!(f("app in (x,y),!missing", "spec.driver==d"));
        assert!(!f("app notin (x)", ""));
        assert!(!f("", "spec.nodeName=n2"));
        assert!(f("tier", "spec.nodeName!=n2"));
    }

    #[test]
    fn apply_keeps_other_managers_device_entries() {
        let mut owned = BTreeMap::new();
        let mut obj = json!({"status": {"devices": [{"driver": "other", "pool": "p", "device": "d", "data": 1}]}});
        apply(
            &mut obj,
            &json!({"status": {"devices": [
                {"driver": "me", "pool": "p", "device": "a"},
                {"driver": "me", "pool": "p", "device": "b"}
            ]}}),
            &mut owned,
            "me",
        );
        assert_eq!(obj["status"]["devices"].as_array().map(Vec::len), Some(3));
        apply(
            &mut obj,
            &json!({"status": {"devices": [{"driver": "me", "pool": "p", "device": "b", "x": 2}]}}),
            &mut owned,
            "me",
        );
        let devices = obj["status"]["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0]["driver"], "other");
        assert_eq!(devices[1]["x"], 2);
    }
}
