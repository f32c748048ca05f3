//! An in-memory stand-in for the Kubernetes API server, over plain HTTP on
//! 127.0.0.1, so that the real `kvsync run` (a child process, through a
//! kubeconfig) or a `kube::Client` in a test can run against it without a
//! cluster. It keeps the API's semantics that kvsync relies on: one global
//! resourceVersion counter, paged lists (`limit`/`continue`), watches from a
//! resourceVersion (with bookmarks, label-selector transitions and `410
//! Expired` once the history no longer reaches back), metadata-only lists,
//! watches and GETs (`as=PartialObjectMetadata[List]`), create / update /
//! delete / merge patch / server-side apply, the `/status` subresource,
//! `metadata.generation` for spec changes, finalizers and deletionTimestamp,
//! resourceVersion preconditions and the `Status` error bodies.
//!
//! Deliberately left out, because kvsync's scale bench does not need them:
//! field ownership beyond recording the manager's name (server-side apply
//! is a merge of the applied fields, so an apply never removes a field it
//! stopped setting), strategic merge by list keys (treated as a merge
//! patch), JSON patch (415), garbage collection by owner reference,
//! admission, validation and discovery. Pages after the first serve the
//! objects as they are now rather than a snapshot at the first page's
//! resourceVersion; the watch from that resourceVersion then repeats what
//! changed in between, which a reflector absorbs.
//!
//! Every request is counted by (verb, resource, subresource) with the verbs
//! of `apiserver_request_total`; the counts and the objects are readable in
//! process, and objects can be created in process (not counted) so that a
//! bench's setup is not its bottleneck.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

/// A kind of resource the stand-in serves.
#[derive(Debug)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// `metadata.generation` counts changes outside metadata and status.
    pub generation: bool,
    /// Has a `/status` subresource: writes to the resource keep the status,
    /// writes to `/status` keep everything else.
    pub status: bool,
}

impl ResourceType {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How the API server names the resource in messages: `secrets`,
    /// `vaultsecretbindings.kvsync.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn resource(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    generation: bool,
    status: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        generation,
        status,
    }
}

/// What is served. Plurals are unique here, so a plural names a resource.
pub static RESOURCES: &[ResourceType] = &[
    resource("", "v1", "namespaces", "Namespace", false, false, false),
    resource("", "v1", "secrets", "Secret", true, false, false),
    resource(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false,
    ),
    resource("", "v1", "configmaps", "ConfigMap", true, false, false),
    resource("events.k8s.io", "v1", "events", "Event", true, false, false),
    resource(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        false,
    ),
    resource(
        "kvsync.io",
        "v1alpha1",
        "vaultsecretbindings",
        "VaultSecretBinding",
        true,
        true,
        true,
    ),
    resource(
        "kvsync.io",
        "v1alpha1",
        "vaultaccesspolicies",
        "VaultAccessPolicy",
        false,
        true,
        false,
    ),
    resource(
        "kvsync.io",
        "v1alpha1",
        "clustervaultsecretbindings",
        "ClusterVaultSecretBinding",
        false,
        true,
        true,
    ),
    resource("apps", "v1", "deployments", "Deployment", true, true, true),
    resource(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        true,
        true,
    ),
    resource("apps", "v1", "daemonsets", "DaemonSet", true, true, true),
];

fn resource_index(plural: &str) -> usize {
    RESOURCES
        .iter()
        .position(|r| r.plural == plural)
        .unwrap_or_else(|| panic!("the API stand-in serves no resource {plural:?}"))
}

/// Events older than this many changes are forgotten: a watch from before
/// them gets `410 Expired`, as from a real API server's watch cache.
pub const DEFAULT_HISTORY: usize = 50_000;

/// One stored object, serialized once per write: lists and watches copy
/// bytes, and a superseded version lives only as long as the history
/// holds it.
struct Obj {
    rv: u64,
    body: Bytes,
    /// `metadata` alone, for metadata-only answers.
    meta: Bytes,
    labels: BTreeMap<String, String>,
}

type Key = (String, String);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    res: usize,
    key: Key,
    ty: ChangeType,
    obj: Arc<Obj>,
    /// Labels before the change (a modification), for selector transitions.
    prev_labels: Option<BTreeMap<String, String>>,
}

/// A write, as the stand-in's observer sees it (called while the store is
/// locked: the observer must not call back into the [`ApiServer`]).
pub struct Write<'a> {
    /// `create`, `update`, `patch`, `apply`, `delete`.
    pub verb: &'static str,
    pub resource: &'static str,
    /// `""` or `status`.
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The object after the write (the last state, when deleted).
    pub object: &'a Value,
    pub deleted: bool,
}

type Observer = Arc<dyn Fn(&Write) + Send + Sync>;

struct Store {
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Obj>>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    counts: BTreeMap<(String, String, String), u64>,
    observer: Option<Observer>,
}

struct Inner {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    bookmark_every: Duration,
}

/// A served stand-in. Dropping it stops it (and every open watch).
pub struct ApiServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// An API error: the `Status` body and its code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String, details: Option<Value>) -> Self {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        Self { code, body }
    }

    fn details(res: &ResourceType, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": res.plural});
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        d
    }

    fn not_found(res: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
            Some(Self::details(res, name)),
        )
    }

    fn already_exists(res: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
            Some(Self::details(res, name)),
        )
    }

    fn conflict(res: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
            Some(Self::details(res, name)),
        )
    }

    fn modified(res: &ResourceType, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message, None)
    }

    fn invalid(res: &ResourceType, name: &str, message: String) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {message}", res.kind),
            Some(Self::details(res, name)),
        )
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()).boxed())
        .expect("valid response")
}

fn error_response(e: ApiError) -> Response<Body> {
    full(e.code, e.body.to_string())
}

fn now_rfc3339() -> String {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("now is a valid time")
        .to_string()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system random");
    b
}

fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("an object")
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers_empty(obj: &Value) -> bool {
    meta(obj)["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty())
}

/// The object without what the server maintains, to tell a change from a
/// no-op (which keeps the resourceVersion and sends no event, as the real
/// API server does).
fn content(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

/// Everything but metadata and status: what `metadata.generation` counts.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn record_manager(obj: &mut Value, manager: &str, operation: &str, api_version: &str, sub: &str) {
    let m = meta_mut(obj);
    let entries = m
        .entry("managedFields")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entries.is_array() {
        *entries = Value::Array(Vec::new());
    }
    let list = entries.as_array_mut().expect("an array");
    let same = |e: &Value| {
        e["manager"] == manager
            && e["operation"] == operation
            && e["subresource"].as_str().unwrap_or("") == sub
    };
    list.retain(|e| !same(e));
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if !sub.is_empty() {
        entry["subresource"] = json!(sub);
    }
    list.push(entry);
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        let mut reqs = Vec::new();
        for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let bad = || format!("unable to parse requirement: {p:?}");
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(p.to_string())
            } else {
                return Err(bad());
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// `metadata.name` / `metadata.namespace` field selectors, all the API
/// server supports on every resource.
#[derive(Debug, Clone, Default)]
struct FieldSelector(Vec<(bool, bool, String)>); // (is_name, equal, value)

impl FieldSelector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector: {p:?}"));
            };
            let is_name = match field.trim() {
                "metadata.name" => true,
                "metadata.namespace" => false,
                other => {
                    return Err(format!("field label not supported: {other}"));
                }
            };
            reqs.push((is_name, equal, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    fn matches(&self, key: &Key) -> bool {
        self.0.iter().all(|(is_name, equal, v)| {
            let field = if *is_name { &key.1 } else { &key.0 };
            (field == v) == *equal
        })
    }
}

/// Which objects a list or watch is about.
struct Filter {
    res: usize,
    namespace: Option<String>,
    labels: Selector,
    fields: FieldSelector,
}

impl Filter {
    fn scope(&self, key: &Key) -> bool {
        self.namespace.as_ref().is_none_or(|ns| &key.0 == ns) && self.fields.matches(key)
    }
}

impl Store {
    /// Records a change: a new resourceVersion, the stored bytes, an event.
    /// `obj` None deletes (`last` is the state it is deleted in).
    fn commit(&mut self, res: usize, key: Key, mut obj: Value, ty: ChangeType) -> (Value, u64) {
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let stored = Arc::new(Obj {
            rv,
            body: Bytes::from(serde_json::to_vec(&obj).expect("json")),
            meta: Bytes::from(serde_json::to_vec(meta(&obj)).expect("json")),
            labels: labels_of(&obj),
        });
        let prev = match ty {
            ChangeType::Deleted => self.objects[res].remove(&key),
            _ => self.objects[res].insert(key.clone(), stored.clone()),
        };
        self.history.push_back(Arc::new(Change {
            rv,
            res,
            key,
            ty,
            obj: stored,
            prev_labels: prev.map(|p| p.labels.clone()),
        }));
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        (obj, rv)
    }

    fn get_value(&self, res: usize, key: &Key) -> Option<Value> {
        self.objects[res]
            .get(key)
            .map(|o| serde_json::from_slice(&o.body).expect("stored json"))
    }

    fn observe(&self, w: &Write) {
        if let Some(o) = &self.observer {
            o(w);
        }
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects[resource_index("namespaces")].contains_key(&(String::new(), ns.to_string()))
    }

    /// POST (or an in-process create).
    fn create(
        &mut self,
        res: usize,
        ns: &str,
        mut obj: Value,
        manager: Option<(&str, &'static str)>,
        over_http: bool,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[res];
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body is not a JSON object".into(),
            ));
        }
        let body_ns = meta(&obj)["namespace"].as_str().unwrap_or("").to_string();
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let mut name = meta(&obj)["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            match meta(&obj)["generateName"].as_str() {
                Some(prefix) => {
                    let suffix: String = random_bytes::<5>()
                        .iter()
                        .map(|b| (b'a' + b % 26) as char)
                        .collect();
                    name = format!("{prefix}{suffix}");
                }
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name: Required value: name or generateName is required".into(),
                    ));
                }
            }
        }
        if over_http
            && meta(&obj)["resourceVersion"]
                .as_str()
                .is_some_and(|v| !v.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        if rt.namespaced && !self.namespace_exists(ns) {
            return Err(ApiError::not_found(
                &RESOURCES[resource_index("namespaces")],
                ns,
            ));
        }
        let key = (
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        if self.objects[res].contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if over_http && rt.status {
            // The status of a resource with a status subresource is the
            // controller's to write, through /status.
            obj.as_object_mut().expect("an object").remove("status");
        }
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.remove("deletionTimestamp");
        m.remove("managedFields");
        if rt.generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        let verb = match manager {
            Some((manager, operation)) => {
                record_manager(&mut obj, manager, operation, &rt.api_version(), "");
                if operation == "Apply" {
                    "apply"
                } else {
                    "create"
                }
            }
            None => "create",
        };
        let (obj, _) = self.commit(res, key.clone(), obj, ChangeType::Added);
        self.observe(&Write {
            verb,
            resource: rt.plural,
            subresource: "",
            namespace: &key.0,
            name: &key.1,
            object: &obj,
            deleted: false,
        });
        Ok(obj)
    }

    /// A write to an existing object: `new` is what the request asks the
    /// object to become. Applies the subresource rules, keeps what the
    /// server owns, bumps generation for spec changes, deletes the object
    /// when its last finalizer goes while it is being deleted, and makes a
    /// no-op a no-op.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        verb: &'static str,
        res: usize,
        key: &Key,
        old: &Value,
        mut new: Value,
        sub: &str,
        manager: &str,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[res];
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body is not a JSON object".into(),
            ));
        }
        if sub == "status" {
            let mut kept = old.clone();
            kept["status"] = new["status"].clone();
            if kept["status"].is_null() {
                kept.as_object_mut().expect("an object").remove("status");
            }
            new = kept;
        } else if rt.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("an object").remove("status");
                }
            }
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        let old_meta = meta(old).clone();
        let m = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        match old_meta.get("managedFields") {
            Some(v) => m.insert("managedFields".into(), v.clone()),
            None => m.remove("managedFields"),
        };
        let old_generation = old_meta["generation"].as_i64();
        match old_generation {
            Some(g) => m.insert("generation".into(), json!(g)),
            None => m.remove("generation"),
        };
        if rt.generation && spec_part(old) != spec_part(&new) {
            let g = old_generation.unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        if content(&new) == content(old) {
            return Ok(old.clone());
        }
        record_manager(&mut new, manager, operation, &rt.api_version(), sub);
        let deleting = !meta(&new)["deletionTimestamp"].is_null();
        let ty = if deleting && finalizers_empty(&new) {
            ChangeType::Deleted
        } else {
            ChangeType::Modified
        };
        let (new, _) = self.commit(res, key.clone(), new, ty);
        self.observe(&Write {
            verb,
            resource: rt.plural,
            subresource: sub,
            namespace: &key.0,
            name: &key.1,
            object: &new,
            deleted: ty == ChangeType::Deleted,
        });
        Ok(new)
    }

    fn delete(&mut self, res: usize, key: &Key, options: &Value) -> Result<Value, ApiError> {
        let rt = &RESOURCES[res];
        let Some(old) = self.get_value(res, key) else {
            return Err(ApiError::not_found(rt, &key.1));
        };
        let pre = &options["preconditions"];
        if let Some(uid) = pre["uid"].as_str() {
            let have = meta(&old)["uid"].as_str().unwrap_or("");
            if uid != have {
                return Err(ApiError::conflict(
                    rt,
                    &key.1,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = pre["resourceVersion"].as_str() {
            let have = meta(&old)["resourceVersion"].as_str().unwrap_or("");
            if rv != have {
                return Err(ApiError::conflict(
                    rt,
                    &key.1,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        if !finalizers_empty(&old) {
            if !meta(&old)["deletionTimestamp"].is_null() {
                return Ok(old);
            }
            let mut new = old.clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(g + 1));
            }
            let (new, _) = self.commit(res, key.clone(), new, ChangeType::Modified);
            self.observe(&Write {
                verb: "delete",
                resource: rt.plural,
                subresource: "",
                namespace: &key.0,
                name: &key.1,
                object: &new,
                deleted: false,
            });
            return Ok(new);
        }
        let (last, _) = self.commit(res, key.clone(), old, ChangeType::Deleted);
        self.observe(&Write {
            verb: "delete",
            resource: rt.plural,
            subresource: "",
            namespace: &key.0,
            name: &key.1,
            object: &last,
            deleted: true,
        });
        Ok(last)
    }
}

/// A parsed request path.
struct Route {
    res: usize,
    namespace: Option<String>,
    name: Option<String>,
    sub: String,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if find(plural).is_some_and(|i| RESOURCES[i].namespaced) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, ""),
        [p, n] => (*p, Some(n.to_string()), ""),
        [p, n, s] => (*p, Some(n.to_string()), *s),
        _ => return None,
    };
    let res = find(plural)?;
    let rt = &RESOURCES[res];
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return None;
    }
    if !(sub.is_empty() || sub == "status" && rt.status) {
        return None;
    }
    Some(Route {
        res,
        namespace,
        name,
        sub: sub.to_string(),
    })
}

fn metadata_view(obj: &Obj) -> Vec<u8> {
    let mut out = Vec::with_capacity(obj.meta.len() + 80);
    out.extend_from_slice(
        br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
    );
    out.extend_from_slice(&obj.meta);
    out.push(b'}');
    out
}

fn event_line(ty: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(br#"","object":"#);
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    ns: String,
    name: String,
}

impl Inner {
    fn notify(&self) {
        let rv = self.store.lock().expect("store").rv;
        self.changed.send_replace(rv);
    }

    fn list(
        &self,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
        metadata_only: bool,
    ) -> Result<Vec<u8>, ApiError> {
        let rt = &RESOURCES[filter.res];
        let cont = match cont.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Continue>(&b).ok())
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid".into()))?,
            ),
        };
        let store = self.store.lock().expect("store");
        let rv = cont.as_ref().map(|c| c.rv).unwrap_or(store.rv);
        let start = match &cont {
            Some(c) => Bound::Excluded((c.ns.clone(), c.name.clone())),
            None => Bound::Unbounded,
        };
        let mut items: Vec<u8> = Vec::new();
        let mut n = 0;
        let mut last: Option<&Key> = None;
        let mut more = false;
        for (key, obj) in store.objects[filter.res].range((start, Bound::Unbounded)) {
            if !filter.scope(key) || !filter.labels.matches(&obj.labels) {
                continue;
            }
            if limit.is_some_and(|l| n == l) {
                more = true;
                break;
            }
            if n > 0 {
                items.push(b',');
            }
            if metadata_only {
                items.extend_from_slice(&metadata_view(obj));
            } else {
                items.extend_from_slice(&obj.body);
            }
            n += 1;
            last = Some(key);
        }
        // The token names the last item served: the next page starts after it.
        let token = match (more, last) {
            (true, Some(k)) => Some(
                URL_SAFE_NO_PAD.encode(
                    serde_json::to_vec(&Continue {
                        rv,
                        ns: k.0.clone(),
                        name: k.1.clone(),
                    })
                    .expect("json"),
                ),
            ),
            _ => None,
        };
        drop(store);
        let (kind, api_version) = if metadata_only {
            (
                "PartialObjectMetadataList".to_string(),
                "meta.k8s.io/v1".to_string(),
            )
        } else {
            (format!("{}List", rt.kind), rt.api_version())
        };
        let mut list_meta = json!({"resourceVersion": rv.to_string()});
        if let Some(t) = token {
            list_meta["continue"] = json!(t);
        }
        let mut out = Vec::with_capacity(items.len() + 200);
        out.extend_from_slice(
            format!(
                r#"{{"kind":"{kind}","apiVersion":"{api_version}","metadata":{list_meta},"items":["#
            )
            .as_bytes(),
        );
        out.extend_from_slice(&items);
        out.extend_from_slice(b"]}");
        Ok(out)
    }
}

/// Where a watch starts.
struct WatchStart {
    /// Events after this resourceVersion; `None`: the current objects as
    /// ADDED first (`resourceVersion` unset or "0").
    from: Option<u64>,
    /// `sendInitialEvents=true`: the current objects, then a bookmark
    /// annotated `k8s.io/initial-events-end`.
    initial_events: bool,
}

impl Inner {
    /// The current objects a watch reports as ADDED, and the resourceVersion
    /// they are as of.
    fn initial(&self, filter: &Filter, metadata_only: bool) -> (Vec<Bytes>, u64) {
        let store = self.store.lock().expect("store");
        let lines = store.objects[filter.res]
            .iter()
            .filter(|(k, o)| filter.scope(k) && filter.labels.matches(&o.labels))
            .map(|(_, o)| {
                if metadata_only {
                    event_line("ADDED", &metadata_view(o))
                } else {
                    event_line("ADDED", &o.body)
                }
            })
            .collect();
        (lines, store.rv)
    }

    /// The events after `cursor` that `filter` sees (with a label selector,
    /// an object that starts or stops matching is ADDED or DELETED), and the
    /// resourceVersion scanned up to; `Err` when the history no longer
    /// reaches back to `cursor`.
    fn events_after(
        &self,
        filter: &Filter,
        cursor: u64,
        metadata_only: bool,
    ) -> Result<(Vec<Bytes>, u64), ApiError> {
        let store = self.store.lock().expect("store");
        if cursor >= store.rv {
            return Ok((Vec::new(), cursor));
        }
        let first = store.history.front().map(|c| c.rv).unwrap_or(store.rv + 1);
        if cursor + 1 < first {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {cursor} ({})", first - 1),
                None,
            ));
        }
        let skip = (cursor + 1 - first) as usize;
        let mut lines = Vec::new();
        for c in store.history.iter().skip(skip) {
            if c.res != filter.res || !filter.scope(&c.key) {
                continue;
            }
            let now = filter.labels.matches(&c.obj.labels);
            let before = c
                .prev_labels
                .as_ref()
                .is_some_and(|l| filter.labels.matches(l));
            let ty = match (c.ty, before, now) {
                (ChangeType::Added, _, true) => "ADDED",
                (ChangeType::Modified, true, true) => "MODIFIED",
                (ChangeType::Modified, false, true) => "ADDED",
                (ChangeType::Modified, true, false) => "DELETED",
                (ChangeType::Deleted, true, _) => "DELETED",
                _ => continue,
            };
            let object = if metadata_only {
                metadata_view(&c.obj)
            } else {
                c.obj.body.to_vec()
            };
            lines.push(event_line(ty, &object));
        }
        Ok((lines, store.rv))
    }

    fn bookmark(&self, res: usize, rv: u64, metadata_only: bool, initial_end: bool) -> Bytes {
        let rt = &RESOURCES[res];
        let (kind, api_version) = if metadata_only {
            (
                "PartialObjectMetadata".to_string(),
                "meta.k8s.io/v1".to_string(),
            )
        } else {
            (rt.kind.to_string(), rt.api_version())
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
        event_line("BOOKMARK", obj.to_string().as_bytes())
    }
}

/// Streams a watch until `timeout`, the client going away or `shutdown`.
#[allow(clippy::too_many_arguments)]
async fn run_watch(
    inner: Arc<Inner>,
    filter: Filter,
    start: WatchStart,
    metadata_only: bool,
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changed = inner.changed.subscribe();
    changed.borrow_and_update();
    let mut cursor = match start.from {
        Some(rv) if !start.initial_events => rv,
        _ => {
            let (lines, rv) = inner.initial(&filter, metadata_only);
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if start.initial_events
                && tx
                    .send(inner.bookmark(filter.res, rv, metadata_only, true))
                    .await
                    .is_err()
            {
                return;
            }
            rv
        }
    };
    loop {
        match inner.events_after(&filter, cursor, metadata_only) {
            Ok((lines, upto)) => {
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                cursor = upto;
            }
            Err(e) => {
                let _ = tx
                    .send(event_line("ERROR", e.body.to_string().as_bytes()))
                    .await;
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(inner.bookmark_every), if bookmarks => {
                if tx.send(inner.bookmark(filter.res, cursor, metadata_only, false)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shutdown.changed() => return,
        }
    }
}

fn query_map(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn parse_body(bytes: &[u8], yaml: bool) -> Result<Value, ApiError> {
    let parsed = if yaml {
        serde_json::from_slice(bytes)
            .or_else(|_| serde_yaml::from_slice::<Value>(bytes).map_err(|e| e.to_string()))
    } else {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// The verb of `apiserver_request_total`.
fn verb_of(
    method: &Method,
    named: bool,
    query: &BTreeMap<String, String>,
    content_type: &str,
) -> &'static str {
    match *method {
        Method::GET if named => "get",
        Method::GET if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            "watch"
        }
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH if content_type.starts_with("application/apply-patch") => "apply",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn handle(
    inner: Arc<Inner>,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error_response(ApiError::bad_request(
                "unreadable body".into(),
            )));
        }
    };
    let Some(route) = route(parts.uri.path()) else {
        return Ok(error_response(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        )));
    };
    let query = query_map(&parts.uri);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let verb = verb_of(&parts.method, route.name.is_some(), &query, &content_type);
    let rt = &RESOURCES[route.res];
    {
        let mut store = inner.store.lock().expect("store");
        *store
            .counts
            .entry((verb.to_string(), rt.plural.to_string(), route.sub.clone()))
            .or_default() += 1;
    }
    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
        parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .unwrap_or("unknown")
            .to_string()
    });
    let ns = route.namespace.clone().unwrap_or_default();
    let result: Result<Response<Body>, ApiError> = (|| {
        let filter = || -> Result<Filter, ApiError> {
            Ok(Filter {
                res: route.res,
                namespace: route.namespace.clone(),
                labels: Selector::parse(
                    query.get("labelSelector").map(String::as_str).unwrap_or(""),
                )
                .map_err(ApiError::bad_request)?,
                fields: FieldSelector::parse(
                    query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                )
                .map_err(ApiError::bad_request)?,
            })
        };
        let key = || {
            (
                if rt.namespaced {
                    ns.clone()
                } else {
                    String::new()
                },
                route.name.clone().unwrap_or_default(),
            )
        };
        match verb {
            "get" => {
                let store = inner.store.lock().expect("store");
                let obj = store.objects[route.res]
                    .get(&key())
                    .ok_or_else(|| ApiError::not_found(rt, &key().1))?;
                Ok(full(
                    200,
                    if metadata_only {
                        metadata_view(obj)
                    } else {
                        obj.body.to_vec()
                    },
                ))
            }
            "list" => {
                let limit = query
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .filter(|l| *l > 0);
                let body = inner.list(
                    &filter()?,
                    limit,
                    query.get("continue").map(String::as_str),
                    metadata_only,
                )?;
                Ok(full(200, body))
            }
            "watch" => {
                let from = query
                    .get("resourceVersion")
                    .filter(|v| !v.is_empty() && *v != "0")
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            ApiError::bad_request(format!("invalid resource version: {v}"))
                        })
                    })
                    .transpose()?;
                let start = WatchStart {
                    from,
                    initial_events: query.get("sendInitialEvents").map(String::as_str)
                        == Some("true"),
                };
                let timeout = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(1800);
                let bookmarks =
                    query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
                let (tx, rx) = mpsc::channel::<Bytes>(64);
                tokio::spawn(run_watch(
                    inner.clone(),
                    filter()?,
                    start,
                    metadata_only,
                    bookmarks,
                    Duration::from_secs(timeout),
                    tx,
                    shutdown.clone(),
                ));
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                Ok(Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .expect("valid response"))
            }
            "create" => {
                let obj = parse_body(&bytes, false)?;
                let mut store = inner.store.lock().expect("store");
                let created =
                    store.create(route.res, &ns, obj, Some((&manager, "Update")), true)?;
                Ok(full(201, created.to_string()))
            }
            "update" => {
                let new = parse_body(&bytes, false)?;
                let mut store = inner.store.lock().expect("store");
                let k = key();
                let old = store
                    .get_value(route.res, &k)
                    .ok_or_else(|| ApiError::not_found(rt, &k.1))?;
                match meta(&new)["resourceVersion"].as_str() {
                    None | Some("") => {
                        return Err(ApiError::invalid(
                            rt,
                            &k.1,
                            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update".into(),
                        ));
                    }
                    Some(rv) if Some(rv) != meta(&old)["resourceVersion"].as_str() => {
                        return Err(ApiError::modified(rt, &k.1));
                    }
                    _ => {}
                }
                let written = store.write(
                    "update", route.res, &k, &old, new, &route.sub, &manager, "Update",
                )?;
                Ok(full(200, written.to_string()))
            }
            "patch" | "apply" => {
                let apply = verb == "apply";
                if !apply
                    && !content_type.starts_with("application/merge-patch+json")
                    && !content_type.starts_with("application/strategic-merge-patch+json")
                {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the API stand-in does not support patch type {content_type:?}"),
                        None,
                    ));
                }
                if apply && !query.contains_key("fieldManager") {
                    return Err(ApiError::bad_request(
                        "PATCH /: fieldManager is required for apply requests".into(),
                    ));
                }
                let patch = parse_body(&bytes, apply)?;
                if !patch.is_object() {
                    return Err(ApiError::bad_request(
                        "the patch is not a JSON object".into(),
                    ));
                }
                let mut store = inner.store.lock().expect("store");
                let k = key();
                let wanted_rv = meta(&patch)["resourceVersion"].as_str().map(str::to_string);
                let Some(old) = store.get_value(route.res, &k) else {
                    if apply && route.sub.is_empty() {
                        if wanted_rv.is_some() {
                            return Err(ApiError::modified(rt, &k.1));
                        }
                        let mut obj = patch;
                        let m = meta_mut(&mut obj);
                        m.insert("name".into(), json!(k.1));
                        let created =
                            store.create(route.res, &ns, obj, Some((&manager, "Apply")), true)?;
                        return Ok(full(201, created.to_string()));
                    }
                    return Err(ApiError::not_found(rt, &k.1));
                };
                if let Some(rv) = &wanted_rv
                    && Some(rv.as_str()) != meta(&old)["resourceVersion"].as_str()
                {
                    return Err(ApiError::modified(rt, &k.1));
                }
                let mut new = old.clone();
                merge(&mut new, &patch);
                let operation = if apply { "Apply" } else { "Update" };
                let written = store.write(
                    verb, route.res, &k, &old, new, &route.sub, &manager, operation,
                )?;
                Ok(full(200, written.to_string()))
            }
            "delete" => {
                let options = if bytes.is_empty() {
                    Value::Null
                } else {
                    parse_body(&bytes, false)?
                };
                let mut store = inner.store.lock().expect("store");
                let last = store.delete(route.res, &key(), &options)?;
                Ok(full(200, last.to_string()))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".to_string(),
                None,
            )),
        }
    })();
    if matches!(verb, "create" | "update" | "patch" | "apply" | "delete") {
        inner.notify();
    }
    Ok(result.unwrap_or_else(error_response))
}

impl ApiServer {
    /// Serves an empty API (no namespaces) on 127.0.0.1 and a free port.
    pub async fn start() -> Self {
        Self::start_with(DEFAULT_HISTORY, Duration::from_secs(10)).await
    }

    /// With a watch history of `history` changes and a bookmark on every
    /// watch after `bookmark_every` without events.
    pub async fn start_with(history: usize, bookmark_every: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (changed, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                rv: 0,
                objects: RESOURCES.iter().map(|_| BTreeMap::new()).collect(),
                history: VecDeque::new(),
                history_cap: history,
                counts: BTreeMap::new(),
                observer: None,
            }),
            changed,
            bookmark_every,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let serving = inner.clone();
        let task = tokio::spawn(async move {
            let mut stop = shutdown_rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let inner = serving.clone();
                let conn_stop = shutdown_rx.clone();
                tokio::spawn(async move {
                    let mut stop = conn_stop.clone();
                    let service = hyper::service::service_fn(move |req| {
                        handle(inner.clone(), conn_stop.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            inner,
            shutdown,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: no TLS, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\n\
             users:\n- name: stand-in\n  user: {{}}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: default\n\
             current-context: stand-in\n",
            self.url()
        )
    }

    /// A kube client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client")
    }

    /// Calls `f` for every write from now on (see [`Write`]).
    pub fn observe(&self, f: impl Fn(&Write) + Send + Sync + 'static) {
        self.inner.store.lock().expect("store").observer = Some(Arc::new(f));
    }

    /// Creates a namespace in process.
    pub fn create_namespace(&self, name: &str) {
        self.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .expect("namespace created");
    }

    /// Creates an object in process, with the API's create semantics (uid,
    /// resourceVersion, generation, 409 when it exists, 404 without its
    /// namespace), but not counted as a request, and keeping a status it
    /// is given. The resource comes from the object's `kind`.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = RESOURCES
            .iter()
            .position(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("the API stand-in serves no kind {kind:?}"));
        let ns = meta(&obj)["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let created = self
            .inner
            .store
            .lock()
            .expect("store")
            .create(res, &ns, obj, None, false);
        self.inner.notify();
        created
    }

    /// Creates many objects in process under one lock (a bench's setup);
    /// `each` is called right after each one is stored.
    pub fn create_all(&self, objs: impl IntoIterator<Item = Value>, mut each: impl FnMut(&Value)) {
        let mut store = self.inner.store.lock().expect("store");
        for obj in objs {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let res = RESOURCES
                .iter()
                .position(|r| r.kind == kind)
                .unwrap_or_else(|| panic!("the API stand-in serves no kind {kind:?}"));
            let ns = meta(&obj)["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let created = store.create(res, &ns, obj, None, false).expect("created");
            each(&created);
        }
        drop(store);
        self.inner.notify();
    }

    /// The object `plural` `namespace`/`name`, as a GET would answer.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resource_index(plural);
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        self.inner
            .store
            .lock()
            .expect("store")
            .get_value(res, &(ns.to_string(), name.to_string()))
    }

    /// How many objects of `plural` there are.
    pub fn len(&self, plural: &str) -> usize {
        self.inner.store.lock().expect("store").objects[resource_index(plural)].len()
    }

    /// Every object of `plural`, in (namespace, name) order.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        let store = self.inner.store.lock().expect("store");
        store.objects[resource_index(plural)]
            .values()
            .map(|o| serde_json::from_slice(&o.body).expect("stored json"))
            .collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().expect("store").rv
    }

    /// Requests by (verb, resource, subresource) since start or the last reset.
    pub fn counts(&self) -> BTreeMap<(String, String, String), u64> {
        self.inner.store.lock().expect("store").counts.clone()
    }

    /// Requests of `verb` on `resource`/`subresource` (`""`: the resource).
    pub fn count(&self, verb: &str, resource: &str, subresource: &str) -> u64 {
        self.inner
            .store
            .lock()
            .expect("store")
            .counts
            .get(&(
                verb.to_string(),
                resource.to_string(),
                subresource.to_string(),
            ))
            .copied()
            .unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.inner.store.lock().expect("store").counts.clear();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}
