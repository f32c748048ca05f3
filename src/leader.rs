//! `--leader-elect`: which replica may write, decided on a coordination.k8s.io
//! Lease with `kube-lease-manager`.
//!
//! The crate acquires, renews and releases the Lease; this module adds what an
//! operator that writes Secrets needs on top, because the crate's own
//! `watch()` keeps saying "leader" while renewals fail or hang:
//!
//! - **Fail safe.** We are leader only while the API server has *confirmed*,
//!   within the last `renew_deadline`, that the Lease is ours with a fresh
//!   `renewTime`. Every Lease the API server returns (our renewals, the
//!   crate's reads, our polls) is observed on the way back to the crate; when
//!   no confirmation arrives in time the flag drops by itself, long before the
//!   Lease expires for the others (`lease_duration - renew_deadline` is the
//!   margin for clock skew). A response naming another holder drops it at once.
//! - **Fast failover.** A standby polls the Lease every retry period, so a
//!   Lease released on shutdown (holder cleared) is taken in seconds; the
//!   crate alone would sleep until the old holder's expiry.
//! - **Release on shutdown.** The flag goes false first, then the Lease is
//!   released (the crate clears `holderIdentity`, `renewTime`, `acquireTime`
//!   and `leaseDurationSeconds`), bounded by `renew_deadline` so SIGTERM
//!   handling never hangs.
//!
//! RBAC: `get`, `create` and `patch` on `leases` in the Lease's namespace.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::client::Body;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// What `/readyz` reports about this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the Lease: reconciles and writes.
    Leader,
    /// Keeps its caches warm, never writes.
    Standby,
}

impl From<bool> for Role {
    fn from(leader: bool) -> Self {
        if leader { Role::Leader } else { Role::Standby }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        })
    }
}

/// Where the Lease is, who we are, and how long a claim lasts.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the operator's own, `POD_NAMESPACE`).
    pub namespace: String,
    /// e.g. [`crate::shard::Shard::lease_name`]`("kvsync")`.
    pub lease_name: String,
    /// Unique among replicas: see [`LeaderConfig::identity_from_env`].
    pub identity: String,
    /// How long others wait after the last renewal before taking over
    /// (whole seconds, the Lease's unit; at least 3 s).
    pub lease_duration: Duration,
    /// How long the leader goes without a confirmed renewal before it stops
    /// writing (at least 2 s, below `lease_duration`).
    pub renew_deadline: Duration,
}

/// A leader-election configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaderError {
    /// The renew deadline is under 2 s or not below the lease duration, so
    /// a leader could lose the Lease while it still writes.
    #[error(
        "leader election: lease duration {lease:?} and renew deadline {renew:?} do not fit: \
         need renew deadline >= 2s and lease duration > renew deadline (e.g. 15s and 10s)"
    )]
    Timing {
        /// The configured lease duration.
        lease: Duration,
        /// The configured renew deadline.
        renew: Duration,
    },
    /// The Lease's namespace, its name or this replica's identity is empty.
    #[error("leader election: the Lease namespace, name and identity must not be empty")]
    Empty,
}

impl LeaderConfig {
    /// `POD_NAME` (stable and readable in `kubectl get lease`), else the
    /// hostname plus 6 random hex digits so two processes on one machine
    /// (tests, `cargo run` twice) never share an identity.
    pub fn identity_from_env() -> String {
        let hostname = std::env::var("HOSTNAME").ok().or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        });
        identity_from(std::env::var("POD_NAME").ok(), hostname)
    }

    /// The crate's parameters, derived so that the leader renews every
    /// `renew_deadline / 2` (two attempts before it steps down) and a standby
    /// looks at the Lease at least every 2 s.
    fn timing(&self) -> Result<Timing, LeaderError> {
        if self.namespace.is_empty() || self.lease_name.is_empty() || self.identity.is_empty() {
            return Err(LeaderError::Empty);
        }
        let (lease, renew) = (self.lease_duration.as_secs(), self.renew_deadline.as_secs());
        if renew < 2 || lease <= renew {
            return Err(LeaderError::Timing {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        let cadence = renew / 2;
        Ok(Timing {
            duration: lease,
            grace: lease - cadence,
            retry: Duration::from_secs(cadence.min(2)),
        })
    }

    fn lease_path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}",
            self.namespace, self.lease_name
        )
    }
}

fn identity_from(pod_name: Option<String>, hostname: Option<String>) -> String {
    if let Some(pod) = pod_name.filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = hostname
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kvsync".into());
    let mut suffix = [0u8; 3];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .expect("the system random source works");
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{hex}")
}

struct Timing {
    /// `leaseDurationSeconds`.
    duration: u64,
    /// The crate renews at `renewTime + duration - grace`.
    grace: u64,
    /// Standby poll period and pause after an error.
    retry: Duration,
}

/// Starts electing in the background. The receiver is true exactly while this
/// replica may write; the task ends after `shutdown` resolves (or every
/// receiver is dropped) and the Lease is released — await it before exiting.
pub fn start(
    client: kube::Client,
    cfg: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(watch::Receiver<bool>, JoinHandle<()>), LeaderError> {
    let timing = cfg.timing()?;
    let (tx, rx) = watch::channel(false);
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let client = observing(client, cfg.lease_path(), seen_tx);
    let elector = Elector {
        api: Api::namespaced(client.clone(), &cfg.namespace),
        client,
        cfg,
        timing,
        tx,
        seen,
        holder: false,
        seen_holder: None,
        confirmed_until: None,
    };
    Ok((rx, tokio::spawn(elector.run(Box::pin(shutdown)))))
}

/// A Lease the API server returned, and when we asked.
struct Seen {
    asked_at: Instant,
    holder: Option<String>,
    renew_time: Option<SystemTime>,
}

/// A client that passes every request through and reports each Lease read
/// back from our Lease's URL, so confirmations need no extra requests.
fn observing(
    client: kube::Client,
    path: String,
    seen: mpsc::UnboundedSender<Seen>,
) -> kube::Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: Request<Body>| {
        let (client, path, seen) = (client.clone(), path.clone(), seen.clone());
        async move {
            let ours = request.uri().path() == path;
            let asked_at = Instant::now();
            let response = client.send(request).await?;
            if !ours || !response.status().is_success() {
                return Ok::<_, kube::Error>(response);
            }
            let (parts, body) = response.into_parts();
            let bytes = body.collect_bytes().await?;
            if let Ok(lease) = serde_json::from_slice::<Lease>(&bytes) {
                let spec = lease.spec.unwrap_or_default();
                let _ = seen.send(Seen {
                    asked_at,
                    holder: spec.holder_identity,
                    renew_time: spec.renew_time.map(|t| t.0.into()),
                });
            }
            Ok(Response::from_parts(parts, Body::from(bytes)))
        }
    });
    kube::Client::new(service, namespace)
}

enum Exit {
    Shutdown,
    /// Start over with a fresh manager (its state is stale) after `delay`.
    Rebuild {
        delay: Duration,
    },
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Elector {
    client: kube::Client,
    api: Api<Lease>,
    cfg: LeaderConfig,
    timing: Timing,
    tx: watch::Sender<bool>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// What the manager last said.
    holder: bool,
    /// The holder named by the last Lease the API server returned.
    seen_holder: Option<String>,
    /// Until when the last confirmation lets us write.
    confirmed_until: Option<Instant>,
}

impl Elector {
    async fn run(mut self, mut shutdown: Shutdown) {
        let mut delay = Duration::ZERO;
        loop {
            // A new manager starts as "not holder": standby until it says otherwise.
            self.holder = false;
            self.publish(self.leading());
            let built = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = self.tx.closed() => break,
                built = self.build(delay) => built,
            };
            let manager = match built {
                Ok(manager) => manager,
                Err(e) => {
                    tracing::warn!(lease = %self.cfg.lease_name, error = %e, "leader election: cannot read or create the Lease; standby until it works");
                    delay = self.timing.retry;
                    continue;
                }
            };
            match self.follow(&manager, &mut shutdown).await {
                Exit::Shutdown => {
                    self.publish(false);
                    self.release(&manager).await;
                    return;
                }
                Exit::Rebuild { delay: d } => delay = d,
            }
        }
        // Shut down with no manager (rebuilding after an error): if the API
        // server last said the Lease is ours, a fresh manager releases it
        // rather than leaving the standbys to wait for its expiry.
        self.publish(false);
        if self.seen_ours() {
            let fresh = timeout(self.cfg.renew_deadline, self.build(Duration::ZERO));
            if let Ok(Ok(manager)) = fresh.await {
                self.release(&manager).await;
            }
        }
    }

    async fn build(&self, delay: Duration) -> kube_lease_manager::Result<LeaseManager> {
        sleep(delay).await;
        LeaseManagerBuilder::new(self.client.clone(), &self.cfg.lease_name)
            .with_namespace(&self.cfg.namespace)
            .with_identity(&self.cfg.identity)
            .with_duration(self.timing.duration)
            .with_grace(self.timing.grace)
            .build()
            .await
    }

    /// Drives the manager and the confirmations until shutdown or until the
    /// manager must be rebuilt. The manager's `changed()` is never cancelled
    /// mid-way except on exit: it may be between two writes of an acquisition.
    async fn follow(&mut self, manager: &LeaseManager, shutdown: &mut Shutdown) -> Exit {
        let mut changed = pin!(manager.changed());
        let retry = self.timing.retry;
        let mut poll = tokio::time::interval_at(Instant::now() + retry, retry);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.publish(self.leading());
            let deadline = self.confirmed_until.filter(|_| self.holder);
            tokio::select! {
                biased;
                () = &mut *shutdown => return Exit::Shutdown,
                () = self.tx.closed() => return Exit::Shutdown,
                Some(seen) = self.seen.recv() => self.note(seen),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.confirmed_until = None;
                }
                result = changed.as_mut() => match result {
                    Ok(holder) => {
                        self.holder = holder;
                        changed.set(manager.changed());
                    }
                    Err(e) => {
                        tracing::warn!(lease = %self.cfg.lease_name, error = %e, "leader election: Lease request failed");
                        return Exit::Rebuild { delay: self.timing.retry };
                    }
                },
                // Only while the manager sleeps on another's claim: polling
                // while it acquires could cut an acquisition in half.
                _ = poll.tick(), if !self.holder && self.seen_other() => {
                    if self.lease_is_free().await {
                        return Exit::Rebuild { delay: Duration::ZERO };
                    }
                }
            }
        }
    }

    /// A standby's look at the Lease: released means the manager, asleep
    /// until the old holder's expiry, should start over now. (An expired
    /// claim needs no poll: the manager wakes exactly at its expiry.)
    async fn lease_is_free(&self) -> bool {
        let get = timeout(self.timing.retry, self.api.get_opt(&self.cfg.lease_name));
        matches!(get.await, Ok(Ok(Some(lease))) if lease.spec.as_ref().is_none_or(|s| s.holder_identity.is_none()))
    }

    fn seen_ours(&self) -> bool {
        self.seen_holder.as_deref() == Some(self.cfg.identity.as_str())
    }

    fn seen_other(&self) -> bool {
        self.seen_holder.is_some() && !self.seen_ours()
    }

    fn note(&mut self, seen: Seen) {
        self.seen_holder = seen.holder;
        self.confirmed_until = match (self.seen_ours(), seen.renew_time) {
            (true, Some(renewed)) => {
                let deadline = self.cfg.renew_deadline;
                // Two bounds, the earlier wins: the deadline from when we
                // asked (the API server confirmed no earlier than that), and
                // from the Lease's own renewTime (a Lease left by a previous
                // process with our name is ours, but stale).
                let left = (renewed + deadline)
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Some((seen.asked_at + deadline).min(Instant::now() + left))
            }
            _ => None,
        };
    }

    fn leading(&self) -> bool {
        self.holder && self.confirmed_until.is_some_and(|t| t > Instant::now())
    }

    fn publish(&self, leader: bool) {
        let changed = self.tx.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
        if changed {
            tracing::info!(lease = %self.cfg.lease_name, identity = %self.cfg.identity, role = %Role::from(leader), "leader election");
        }
    }

    async fn release(&self, manager: &LeaseManager) {
        if !(self.holder || self.seen_ours()) {
            return;
        }
        match timeout(self.cfg.renew_deadline, manager.release()).await {
            Ok(Ok(())) => {
                tracing::info!(lease = %self.cfg.lease_name, "leader election: Lease released")
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.cfg.lease_name, error = %e, "leader election: release failed; the Lease expires by itself")
            }
            Err(_) => {
                tracing::warn!(lease = %self.cfg.lease_name, "leader election: release timed out; the Lease expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease: u64, renew: u64) -> LeaderConfig {
        LeaderConfig {
            namespace: "kvsync".into(),
            lease_name: "kvsync".into(),
            identity: "pod-a".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
        }
    }

    #[test]
    fn role_reads_as_readyz_says_it() {
        assert_eq!(Role::Leader.to_string(), "leader");
        assert_eq!(Role::Standby.to_string(), "standby");
        assert_eq!(Role::from(true), Role::Leader);
        assert_eq!(Role::from(false), Role::Standby);
    }

    #[test]
    fn identity_is_the_pod_name_else_hostname_and_random_suffix() {
        assert_eq!(
            identity_from(Some("kvsync-7d9f-x".into()), Some("h".into())),
            "kvsync-7d9f-x"
        );
        let a = identity_from(None, Some("laptop".into()));
        let b = identity_from(Some(String::new()), Some("laptop".into()));
        for id in [&a, &b] {
            let suffix = id.strip_prefix("laptop-").expect(id);
            assert_eq!(suffix.len(), 6);
            assert!(suffix.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(a, b);
        assert!(identity_from(None, None).starts_with("kvsync-"));
    }

    #[test]
    fn timing_renews_twice_per_deadline_and_polls_at_most_every_two_seconds() {
        let t = cfg(15, 10).timing().unwrap();
        assert_eq!(
            (t.duration, t.grace, t.retry),
            (15, 10, Duration::from_secs(2))
        );
        let t = cfg(3, 2).timing().unwrap();
        assert_eq!(
            (t.duration, t.grace, t.retry),
            (3, 2, Duration::from_secs(1))
        );
    }

    #[test]
    fn timing_that_cannot_be_safe_is_refused() {
        for (lease, renew) in [(10, 10), (10, 12), (3, 1), (2, 1)] {
            assert!(
                matches!(cfg(lease, renew).timing(), Err(LeaderError::Timing { .. })),
                "{lease}/{renew}"
            );
        }
        let mut c = cfg(15, 10);
        c.identity.clear();
        assert_eq!(c.timing().err(), Some(LeaderError::Empty));
    }
}

/// The changes of `leader` (with leader election): `true` each time this
/// replica takes the Lease, `false` each time it loses it; nothing without
/// leader election (`None`).
pub fn changes(
    leader: Option<tokio::sync::watch::Receiver<bool>>,
) -> impl futures::Stream<Item = bool> + Send {
    futures::stream::unfold((leader, false), |(leader, was)| async move {
        let mut rx = leader?;
        let mut was = was;
        loop {
            let now = *rx.borrow_and_update();
            if now != was {
                return Some((now, (Some(rx), now)));
            }
            was = now;
            rx.changed().await.ok()?;
        }
    })
}

#[cfg(test)]
mod changes_tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn changes_yield_each_gain_and_loss_and_nothing_without_election() {
        assert_eq!(
            super::changes(None).collect::<Vec<_>>().await,
            Vec::<bool>::new()
        );
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut seen = Box::pin(super::changes(Some(rx)));
        tx.send(true).unwrap();
        assert_eq!(seen.next().await, Some(true));
        tx.send(false).unwrap();
        assert_eq!(seen.next().await, Some(false));
        tx.send(true).unwrap();
        assert_eq!(seen.next().await, Some(true));
        drop(tx);
        assert_eq!(seen.next().await, None, "ends with the election");
    }
}
