//! The operator's HTTP endpoint: `/metrics`, `/healthz` and `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Consecutive failures after which a watch that had synced counts as
/// failing: one failed attempt retried within a second is a blip (a
/// connection reset), two in a row is a watch that keeps failing.
pub const FAILURES_BEFORE_NOT_READY: u32 = 2;

/// How long a failing watch must stay quiet to count as working again. A
/// watch that resumes after failures delivers nothing until something
/// changes (kube's watcher reports no "resumed" event), so silence is the
/// only sign of recovery in a quiet cluster. 120 s is the span after which
/// kube's watcher itself resets its backoff, and more than its longest
/// retry delay (30 s, jittered), so a failure that keeps coming back keeps
/// readiness down.
pub const QUIET_RECOVERY: Duration = Duration::from_secs(120);

/// Readiness of the operator: ready when every watch registered here (two per
/// controller, one controller per `--namespace`) has delivered its initial
/// listing and none keeps failing, and it is not shutting down. Until then
/// the caches the reconciles read are incomplete, so a "ready" would claim
/// work that is not being done. Liveness (`/healthz`) does not depend on it.
pub struct Health {
    watches: Mutex<Vec<Arc<WatchState>>>,
    stopping: AtomicBool,
    quiet_recovery: Duration,
    /// "leader" / "standby" with `--leader-elect`, shown by `/readyz`.
    role: Mutex<Option<&'static str>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(QUIET_RECOVERY)
    }
}

struct WatchState {
    name: String,
    listed: AtomicBool,
    failures: AtomicU32,
    last_failure: Mutex<Option<Instant>>,
}

impl WatchState {
    fn keeps_failing(&self, quiet_recovery: Duration) -> Option<u32> {
        let failures = self.failures.load(Ordering::Relaxed);
        let recent = self
            .last_failure
            .lock()
            .expect("last failure")
            .is_some_and(|t| t.elapsed() < quiet_recovery);
        (failures >= FAILURES_BEFORE_NOT_READY && recent).then_some(failures)
    }
}

/// The handle one watch reports through.
#[derive(Clone)]
pub struct WatchHealth(Arc<WatchState>);

impl Health {
    /// Health whose failing watches count as working again after
    /// `quiet_recovery` without a failure ([`QUIET_RECOVERY`] by default).
    pub fn new(quiet_recovery: Duration) -> Self {
        Self {
            watches: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            quiet_recovery,
            role: Mutex::new(None),
        }
    }

    /// Records this replica's role (leader election): a standby is ready —
    /// its caches are warm — and `/readyz` says which it is.
    pub fn set_role(&self, role: &'static str) {
        *self.role.lock().expect("role") = Some(role);
    }

    /// The `/readyz` body when ready: `ready`, or `ready (leader)`.
    pub fn ready_text(&self) -> String {
        match *self.role.lock().expect("role") {
            Some(role) => format!("ready ({role})\n"),
            None => "ready\n".to_string(),
        }
    }

    /// Registers a watch named `name` (shown by `/readyz` while it holds
    /// readiness back); the operator is not ready until it has listed.
    pub fn watch(&self, name: impl Into<String>) -> WatchHealth {
        let state = Arc::new(WatchState {
            name: name.into(),
            listed: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            last_failure: Mutex::new(None),
        });
        self.watches.lock().expect("watches").push(state.clone());
        WatchHealth(state)
    }

    /// Marks the operator as shutting down: not ready from now on.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else what holds readiness back, one line each.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down\n".into());
        }
        let watches = self.watches.lock().expect("watches");
        if watches.is_empty() {
            return Err("starting\n".into());
        }
        let mut why = String::new();
        for w in watches.iter() {
            let failures = w.failures.load(Ordering::Relaxed);
            if !w.listed.load(Ordering::Relaxed) {
                why.push_str(&format!("waiting for the initial listing of {}", w.name));
                if failures > 0 {
                    why.push_str(&format!(" (attempts failed: {failures}; see the log)"));
                }
                why.push('\n');
            } else if let Some(failures) = w.keeps_failing(self.quiet_recovery) {
                why.push_str(&format!(
                    "the watch of {} keeps failing (attempts failed: {failures}; see the log)\n",
                    w.name
                ));
            }
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

impl WatchHealth {
    /// The watch delivered a complete listing (`watcher::Event::InitDone`).
    pub fn listed(&self) {
        self.0.listed.store(true, Ordering::Relaxed);
        self.0.failures.store(0, Ordering::Relaxed);
    }

    /// The watch delivered an event: it works again.
    pub fn delivered(&self) {
        self.0.failures.store(0, Ordering::Relaxed);
    }

    /// An attempt to list or watch failed (the watcher retries with backoff).
    pub fn failed(&self) {
        *self.0.last_failure.lock().expect("last failure") = Some(Instant::now());
        self.0.failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn answer(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn metrics_answer(metrics: &crate::metrics::Metrics) -> Response<Full<Bytes>> {
    Response::builder()
        .status(200)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(metrics.encode())))
        .expect("valid response")
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let health = health.clone();
                let metrics = metrics.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(match req.uri().path() {
                        "/metrics" => metrics_answer(&metrics),
                        "/healthz" => answer(200, "ok\n"),
                        "/readyz" => match health.readiness() {
                            Ok(()) => answer(200, health.ready_text()),
                            Err(why) => answer(503, why),
                        },
                        _ => answer(404, "not found\n"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_every_watch_has_listed() {
        let health = Health::default();
        assert_eq!(health.readiness(), Err("starting\n".into()));
        let bindings = health.watch("bindings in namespace a");
        let secrets = health.watch("secrets in namespace a");
        let other = health.watch("bindings in namespace b");
        bindings.listed();
        secrets.listed();
        let why = health.readiness().unwrap_err();
        assert_eq!(
            why,
            "waiting for the initial listing of bindings in namespace b\n"
        );
        other.listed();
        assert!(health.is_ready());
    }

    #[test]
    fn a_watch_that_keeps_failing_makes_it_not_ready_until_it_delivers() {
        let health = Health::default();
        let w = health.watch("bindings in all namespaces");
        w.failed();
        assert!(
            health
                .readiness()
                .unwrap_err()
                .contains("(attempts failed: 1; see the log)")
        );
        w.listed();
        assert!(health.is_ready());
        w.failed();
        assert!(health.is_ready(), "one failed attempt is a blip");
        w.failed();
        assert_eq!(
            health.readiness(),
            Err("the watch of bindings in all namespaces keeps failing (attempts failed: 2; see the log)\n".into())
        );
        w.delivered();
        assert!(health.is_ready());
    }

    #[test]
    fn a_failing_watch_that_stays_quiet_counts_as_recovered() {
        // A resumed watch delivers nothing until something changes.
        let health = Health::new(Duration::ZERO);
        let w = health.watch("secrets in all namespaces");
        w.listed();
        w.failed();
        w.failed();
        assert!(health.is_ready(), "no failure within the (zero) quiet span");
        let health = Health::new(Duration::from_secs(3600));
        let w = health.watch("secrets in all namespaces");
        w.listed();
        w.failed();
        w.failed();
        assert!(!health.is_ready());
    }

    #[test]
    fn readyz_names_the_role_with_leader_election() {
        let health = Health::new(Duration::ZERO);
        assert_eq!(health.ready_text(), "ready\n");
        health.set_role("standby");
        assert_eq!(health.ready_text(), "ready (standby)\n");
        health.set_role("leader");
        assert_eq!(health.ready_text(), "ready (leader)\n");
    }

    #[test]
    fn shutting_down_is_not_ready() {
        let health = Health::default();
        health.watch("bindings in all namespaces").listed();
        assert!(health.is_ready());
        health.set_stopping();
        assert_eq!(health.readiness(), Err("shutting down\n".into()));
    }
}
