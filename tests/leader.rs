//! Leader election against an in-memory Lease endpoint: each replica's kube
//! client reaches a tower-test handle served by one shared fake that keeps a
//! single Lease with the API server's semantics kube-lease-manager relies on
//! (create, GET, merge-style PATCH where `null` removes a field, and a
//! server-side-apply conflict when another holder is already set). Faults
//! (failing or hanging writes) are switched on per test.
//!
//! Real time, short Leases: the crate measures expiry on the wall clock, so
//! tokio's paused time would not move it. Every wait is on a condition
//! (`wait_for`) bounded by a timeout that only fires when the test fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kvsync::leader::{self, LeaderConfig};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const NS: &str = "kvsync-system";
const LEASE: &str = "kvsync";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Pending = tower_test::mock::SendResponse<Response<Body>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    FailNextWrite,
    FailWrites,
    HangWrites,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Call {
    replica: &'static str,
    method: String,
    /// The replica's leader flag when the request arrived.
    leader_then: Option<bool>,
    /// The Lease's holder after the request.
    holder_after: Option<String>,
}

#[derive(Default)]
struct State {
    lease: Option<Value>,
    calls: Vec<Call>,
    fault: Option<Fault>,
    hung: Vec<Pending>,
    flags: HashMap<&'static str, watch::Receiver<bool>>,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<State>>,
    served: Arc<watch::Sender<usize>>,
}

impl Fake {
    fn new(lease_spec: Option<Value>) -> Self {
        let lease = lease_spec.map(lease_object);
        Fake {
            state: Arc::new(Mutex::new(State {
                lease,
                ..State::default()
            })),
            served: Arc::new(watch::channel(0).0),
        }
    }

    fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = Some(fault);
    }

    fn spec(&self) -> Value {
        let state = self.state.lock().unwrap();
        state.lease.as_ref().expect("the Lease exists")["spec"].clone()
    }

    fn set_spec(&self, spec: Value) {
        self.state.lock().unwrap().lease = Some(lease_object(spec));
    }

    fn calls(&self, replica: &str) -> Vec<Call> {
        let state = self.state.lock().unwrap();
        state
            .calls
            .iter()
            .filter(|c| c.replica == replica)
            .cloned()
            .collect()
    }

    /// Waits until `replica` has made at least `n` requests.
    async fn wait_calls(&self, replica: &str, n: usize) {
        let mut served = self.served.subscribe();
        within(
            Duration::from_secs(10),
            served.wait_for(|_| self.calls(replica).len() >= n),
        )
        .await
        .unwrap();
    }

    /// A replica named `replica`, electing with `cfg(replica)`.
    fn replica(&self, replica: &'static str, lease: u64, renew: u64) -> Replica {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        tokio::spawn(self.clone().serve(replica, handle));
        let (stop, stopped) = oneshot::channel::<()>();
        let cfg = LeaderConfig {
            namespace: NS.into(),
            lease_name: LEASE.into(),
            identity: replica.into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
        };
        let (leader, task) = leader::start(client, cfg, async {
            let _ = stopped.await;
        })
        .expect("valid timing");
        self.state
            .lock()
            .unwrap()
            .flags
            .insert(replica, leader.clone());
        Replica {
            leader,
            task,
            stop: Some(stop),
        }
    }

    async fn serve(self, replica: &'static str, mut handle: Handle) {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let apply = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let mut state = self.state.lock().unwrap();
            let leader_then = state.flags.get(replica).map(|f| *f.borrow());
            if method == "PATCH" {
                match state.fault {
                    Some(Fault::HangWrites) => {
                        state.hung.push(send);
                        continue;
                    }
                    Some(Fault::FailNextWrite) => {
                        state.fault = None;
                        send.send_response(status(500, "InternalError"));
                        continue;
                    }
                    Some(Fault::FailWrites) => {
                        send.send_response(status(500, "InternalError"));
                        continue;
                    }
                    _ => {}
                }
            }
            let response = answer(&mut state.lease, &method, &path, apply, &body);
            let holder_after = state
                .lease
                .as_ref()
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from));
            state.calls.push(Call {
                replica,
                method,
                leader_then,
                holder_after,
            });
            drop(state);
            send.send_response(response);
            self.served.send_modify(|n| *n += 1);
        }
    }
}

struct Replica {
    leader: watch::Receiver<bool>,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Replica {
    async fn wait_leader(&mut self, leader: bool, within_time: Duration) {
        within(within_time, self.leader.wait_for(|l| *l == leader))
            .await
            .unwrap_or_else(|_| panic!("leader flag never became {leader}"));
    }

    /// SIGTERM: signals shutdown and waits for the task (release included).
    async fn shut_down(mut self) -> watch::Receiver<bool> {
        let _ = self.stop.take().unwrap().send(());
        within(Duration::from_secs(10), self.task).await.unwrap();
        self.leader
    }
}

async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("condition not met within {limit:?}"))
}

fn lease_object(spec: Value) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": NS, "resourceVersion": "1"},
        "spec": spec,
    })
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("fake: {reason}"), "reason": reason, "code": code,
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// The API server's answer for the one Lease.
fn answer(
    lease: &mut Option<Value>,
    method: &str,
    path: &str,
    apply: bool,
    body: &Value,
) -> Response<Body> {
    let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let item = format!("{collection}/{LEASE}");
    match (method, path) {
        ("GET", p) if p == item => match lease {
            Some(l) => ok(200, l),
            None => status(404, "NotFound"),
        },
        ("POST", p) if p == collection => {
            if lease.is_some() {
                return status(409, "AlreadyExists");
            }
            let spec = body.get("spec").cloned().unwrap_or(json!({}));
            *lease = Some(lease_object(spec));
            ok(201, lease.as_ref().unwrap())
        }
        ("PATCH", p) if p == item => {
            let Some(l) = lease else {
                return status(404, "NotFound");
            };
            let current = l["spec"]["holderIdentity"].as_str();
            let wanted = body["spec"]["holderIdentity"].as_str();
            // Server-side apply without force: another manager's value is a conflict.
            if apply && current.is_some() && wanted.is_some() && current != wanted {
                return status(409, "Conflict");
            }
            merge(&mut l["spec"], &body["spec"]);
            ok(200, l)
        }
        _ => status(404, "NotFound"),
    }
}

/// JSON merge patch (RFC 7386): what strategic merge does for the Lease's scalars.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn micro_time(t: SystemTime) -> String {
    Timestamp::try_from(t).unwrap().to_string()
}

fn parse_time(v: &Value) -> SystemTime {
    v.as_str().unwrap().parse::<Timestamp>().unwrap().into()
}

fn held_by(holder: &str, renewed: SystemTime, duration: u64) -> Value {
    json!({
        "holderIdentity": holder,
        "acquireTime": micro_time(renewed),
        "renewTime": micro_time(renewed),
        "leaseDurationSeconds": duration,
        "leaseTransitions": 4,
    })
}

#[tokio::test]
async fn absent_lease_is_created_and_this_replica_leads() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 3, 2);
    a.wait_leader(true, Duration::from_secs(5)).await;

    let spec = fake.spec();
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 3);
    assert!(fake.calls("pod-a").iter().any(|c| c.method == "POST"));
    a.shut_down().await;
}

#[tokio::test]
async fn lease_held_by_another_keeps_this_replica_standby_and_writes_nothing() {
    let fake = Fake::new(Some(held_by("pod-b", SystemTime::now(), 30)));
    let a = fake.replica("pod-a", 3, 2);
    // Startup reads plus two standby polls (1 s apart): it has looked, and kept looking.
    fake.wait_calls("pod-a", 4).await;
    assert!(!*a.leader.borrow());
    assert!(
        !a.leader.has_changed().unwrap(),
        "it never led, not even briefly"
    );

    let leader = a.shut_down().await;
    assert!(!*leader.borrow());
    let calls = fake.calls("pod-a");
    assert!(calls.iter().all(|c| c.method == "GET"), "{calls:?}");
    assert_eq!(fake.spec()["holderIdentity"], "pod-b");
}

#[tokio::test]
async fn expired_claim_of_another_is_taken_over_after_its_expiry() {
    let renewed = SystemTime::now() - Duration::from_secs(2);
    let fake = Fake::new(Some(held_by("pod-b", renewed, 3)));
    let mut a = fake.replica("pod-a", 3, 2);
    a.wait_leader(true, Duration::from_secs(8)).await;

    let spec = fake.spec();
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseTransitions"], 5);
    let acquired = parse_time(&spec["acquireTime"]);
    assert!(
        acquired >= renewed + Duration::from_secs(3),
        "took over before pod-b's claim expired"
    );
    a.shut_down().await;
}

#[tokio::test]
async fn shutdown_reports_standby_then_releases_the_lease() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 3, 2);
    a.wait_leader(true, Duration::from_secs(5)).await;

    let leader = a.shut_down().await;
    assert!(!*leader.borrow());
    // kube-lease-manager's release: holderIdentity, renewTime, acquireTime and
    // leaseDurationSeconds removed, so any standby may take it at once.
    let spec = fake.spec();
    for field in [
        "holderIdentity",
        "renewTime",
        "acquireTime",
        "leaseDurationSeconds",
    ] {
        assert!(spec.get(field).is_none(), "{field} left in {spec}");
    }
    let calls = fake.calls("pod-a");
    let release = calls
        .iter()
        .rfind(|c| c.method == "PATCH")
        .expect("a release");
    assert_eq!(release.holder_after, None);
    assert_eq!(
        release.leader_then,
        Some(false),
        "the flag drops before the release"
    );
}

#[tokio::test]
async fn a_standby_takes_a_released_lease_within_seconds_not_the_lease_duration() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 10, 6);
    a.wait_leader(true, Duration::from_secs(5)).await;
    let mut b = fake.replica("pod-b", 10, 6);
    // b has read the Lease and polled it once: it is asleep on a's claim.
    fake.wait_calls("pod-b", 3).await;
    assert!(!*b.leader.borrow());

    let released = Instant::now();
    a.shut_down().await;
    b.wait_leader(true, Duration::from_secs(5)).await;
    let failover = released.elapsed();
    eprintln!("failover after release: {failover:?}");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert_eq!(fake.spec()["holderIdentity"], "pod-b");
    b.shut_down().await;
}

#[tokio::test]
async fn two_replicas_never_lead_at_once() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 3, 2);
    let mut b = fake.replica("pod-b", 3, 2);
    let (mut fa, mut fb) = (a.leader.clone(), b.leader.clone());
    let both = tokio::spawn(async move {
        loop {
            if *fa.borrow_and_update() && *fb.borrow_and_update() {
                return true;
            }
            tokio::select! {
                r = fa.changed() => if r.is_err() { return false },
                r = fb.changed() => if r.is_err() { return false },
            }
        }
    });
    within(Duration::from_secs(8), async {
        tokio::select! {
            _ = a.leader.wait_for(|l| *l) => {},
            _ = b.leader.wait_for(|l| *l) => {},
        }
    })
    .await;
    let standby = if *a.leader.borrow() { "pod-b" } else { "pod-a" };
    let seen = fake.calls(standby).len();
    // The standby keeps polling (two more requests) while the leader renews.
    fake.wait_calls(standby, seen + 2).await;
    a.shut_down().await;
    b.shut_down().await;
    assert!(!both.await.unwrap(), "both replicas led at once");
}

#[tokio::test]
async fn failing_renewals_stop_the_leader_before_the_lease_expires() {
    for fault in [Fault::FailWrites, Fault::HangWrites] {
        let fake = Fake::new(None);
        let mut a = fake.replica("pod-a", 3, 2);
        a.wait_leader(true, Duration::from_secs(5)).await;
        let renewed = parse_time(&fake.spec()["renewTime"]);

        fake.fault(fault);
        a.wait_leader(false, Duration::from_secs(5)).await;
        let stepped_down = SystemTime::now();
        assert!(
            stepped_down < renewed + Duration::from_secs(3),
            "still leader when the Lease expired for the others"
        );
        a.shut_down().await;
    }
}

#[tokio::test]
async fn a_lease_taken_by_another_stops_the_leader() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 3, 2);
    a.wait_leader(true, Duration::from_secs(5)).await;

    fake.set_spec(held_by("pod-b", SystemTime::now(), 30));
    a.wait_leader(false, Duration::from_secs(3)).await;
    let leader = a.shut_down().await;
    assert!(!*leader.borrow());
    assert_eq!(
        fake.spec()["holderIdentity"],
        "pod-b",
        "never releases another's claim"
    );
}

#[tokio::test]
async fn shutdown_while_recovering_from_an_error_still_releases_the_lease() {
    let fake = Fake::new(None);
    let mut a = fake.replica("pod-a", 3, 2);
    a.wait_leader(true, Duration::from_secs(5)).await;

    // One renewal fails: in doubt, it steps down and rebuilds after a pause.
    fake.fault(Fault::FailNextWrite);
    a.wait_leader(false, Duration::from_secs(3)).await;
    a.shut_down().await;
    assert!(
        fake.spec().get("holderIdentity").is_none(),
        "{}",
        fake.spec()
    );
}
