//! One binding's reconcile: binding → plan → vault reads → rendered Secret →
//! apply → status (→ events, rollout). Every error a user can cause ends as a
//! `Ready=False` condition with a reason and a message; the Secret keeps its
//! last good data.

mod context;
mod notify;
mod rollout;
mod sync;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::apply::finalizer;
use crate::crd::VaultSecretBinding;
use crate::events::EventType;
use crate::reason::Reason;
use crate::status::{self, READY};
use context::{Force, key_of};
use notify::{publish, vault_name, warn_once};
use sync::{Failure, Job, SyncError, sync};

pub use context::{Context, SecretCache};

pub use crate::crd::names::{FORCE_SYNC_ANNOTATION, MERGE_FINALIZER as FINALIZER};

/// Failures of the Kubernetes API itself (not the user's to fix); the
/// controller retries them with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        "kube"
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `refreshInterval` of bindings that set none.
    pub default_refresh: Duration,
    /// Data changes within this window cause one rollout restart.
    pub rollout_window: Duration,
    /// Key of `status.dataHash`.
    pub hash_key: crate::hashkey::HashKey,
    /// A binding's force-sync bypasses the caches (shared with every other
    /// binding of its vault and identity) at most once per this long; a
    /// newer value waits for the rest of it, then is honoured.
    pub force_sync_cooldown: Duration,
    /// With nothing changed, `lastSyncTime` is written at most this often
    /// (zero: after every check).
    pub status_heartbeat: Duration,
    /// Reconciles running at once, per controller (`--concurrency`).
    pub concurrency: u16,
    /// `--access-policy`.
    pub access_policy: crate::policy::Mode,
}

/// The force-sync annotation's value as recorded in status: short values as
/// they are, long ones as a digest (status is not a place for 256 KiB).
pub fn force_sync_token(b: &VaultSecretBinding) -> Option<String> {
    let value = b.annotations().get(FORCE_SYNC_ANNOTATION)?;
    if value.len() <= 64 {
        return Some(value.clone());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let hex: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256:{hex}"))
}

/// Whether the binding carries a force-sync value it has not acted upon
/// (recorded in status, so it is honoured once, across restarts).
fn force_pending(b: &VaultSecretBinding) -> bool {
    let handled = b
        .status
        .as_ref()
        .and_then(|s| s.force_sync_handled.as_deref());
    force_sync_token(b).is_some_and(|t| Some(t.as_str()) != handled)
}

/// Whether `b`'s status says its current generation is in its Secret with
/// nothing due: no pending force-sync or rollout, the same target.
fn settled(b: &VaultSecretBinding) -> bool {
    let Some(s) = &b.status else { return false };
    let ready = s
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    ready
        && s.observed_generation == b.meta().generation
        && s.rollout_pending_since.is_none()
        && s.target_name.as_deref() == Some(b.spec.target_name(&b.name_any()))
        && !force_pending(b)
}

/// A deterministic spread in [0, interval/10) from the binding's uid, so that
/// a restart does not fire every binding at once.
pub fn jitter(uid: &str, interval: Duration) -> Duration {
    let digest = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let n = u64::from_le_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"));
    let span = (interval.as_millis() as u64 / 10).max(1);
    Duration::from_millis(n % span)
}

/// Backoff after `failures` consecutive failures: 5 s doubling, capped at the
/// refresh interval (and 5 min).
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(5).saturating_mul(1 << failures.saturating_sub(1).min(10));
    base.min(interval).min(Duration::from_secs(300))
}

/// Whether a failure means the binding may not (or cannot) read its vault
/// now, so the pollers must drop what they fetch for it.
fn stops_reading(f: &Failure) -> bool {
    matches!(
        f.reason,
        Reason::PolicyDenied
            | Reason::ClusterBindingMissing
            | Reason::InvalidSpec
            | Reason::VaultHostNotAllowed
            | Reason::IdentityMisconfigured
    )
}

pub(super) fn display_key(b: &VaultSecretBinding) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

/// Reconciles one binding.
pub async fn reconcile(b: Arc<VaultSecretBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = b.namespace().unwrap_or_default();
    let bindings: kube::Api<VaultSecretBinding> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let key = key_of(&b);
    let shown = display_key(&b);
    if !ctx.may_write() {
        // A standby: the leader reconciles; this replica is woken for every
        // binding when it becomes the leader.
        return Ok(Action::await_change());
    }

    if b.metadata.deletion_timestamp.is_some() {
        if finalizer::holds(&b) {
            finalizer::release(&ctx.client, &b).await?;
        }
        ctx.forget(&b);
        return Ok(Action::await_change());
    }
    // A binding kept for a ClusterVaultSecretBinding syncs the cluster
    // binding's spec and identity, whatever its own object says.
    let parent = match &ctx.clusters {
        Some(view) => view.parent_of(&b).await,
        None => Ok(None),
    };
    let b = match &parent {
        Ok(Some(p)) => {
            let mut own = Arc::unwrap_or_clone(b);
            own.spec = p.spec.clone();
            Arc::new(own)
        }
        _ => b,
    };
    finalizer::follow_policy(&ctx.client, &b).await?;

    let b = ctx.with_newest_status(b);
    let interval = b.spec.refresh_interval_or(ctx.settings.default_refresh);
    // After a start (or a takeover) a binding whose status says it is in
    // sync waits its uid jitter before the first check, so ten thousand of
    // them do not reach the vaults and the API server at once. A new,
    // changed, failing or force-synced binding goes at once.
    if ctx.first_look(&key) && settled(&b) && ctx.secret_untouched(&b) {
        return Ok(Action::requeue(jitter(
            &b.uid().unwrap_or_default(),
            interval,
        )));
    }
    let prev = b.status.as_ref();
    let generation = b.metadata.generation;
    let started = Instant::now();
    let force = ctx.force(&key, &b, started);
    // Recorded as handled only once acted upon: a deferred value stays due.
    let handled = match force {
        Force::Now => force_sync_token(&b),
        _ => prev.and_then(|p| p.force_sync_handled.clone()),
    };
    let result = sync(Job {
        binding: &b,
        ctx: &ctx,
        parent: &parent,
        interval,
        force: force == Force::Now,
        force_sync_handled: handled.clone(),
    })
    .await;
    let run = Run {
        ctx: &ctx,
        b: &b,
        bindings: &bindings,
        key: &key,
        shown: &shown,
        prev,
        interval,
        force,
        started,
        generation,
        handled,
    };
    match result {
        Ok(done) => on_synced(&run, done).await,
        Err(SyncError::User(f)) => on_failed(&run, f).await,
        Err(SyncError::Kube(e)) => Err(Error::Kube(e)),
        Err(SyncError::Standby) => Ok(Action::await_change()),
    }
}

/// One reconcile's context for what follows a sync.
struct Run<'a> {
    ctx: &'a Context,
    b: &'a VaultSecretBinding,
    bindings: &'a kube::Api<VaultSecretBinding>,
    key: &'a context::BindingKey,
    shown: &'a str,
    prev: Option<&'a crate::crd::VaultSecretBindingStatus>,
    interval: Duration,
    force: Force,
    started: Instant,
    generation: Option<i64>,
    handled: Option<String>,
}

/// After a sync: metrics, the Events it is worth, the status (when it
/// changed or a heartbeat is due) and when to look again.
async fn on_synced(run: &Run<'_>, done: sync::Synced) -> Result<Action, Error> {
    let Run {
        ctx,
        b,
        bindings,
        key,
        shown,
        prev,
        interval,
        force,
        started,
        ..
    } = *run;
    let (ns, name) = (&key.0, &key.1);
    ctx.failure_count(key, false);
    match done.status.conditions.first() {
        Some(c) if c.status == "False" => ctx.metrics.sync_failed(
            shown,
            Reason::parse(&c.reason).unwrap_or(Reason::SecretDisabled),
            started.elapsed(),
        ),
        _ => ctx.metrics.sync_succeeded(shown, started.elapsed()),
    }
    if done.written {
        ctx.metrics.secret_writes.inc();
    }
    ctx.metrics.set_secret_expiries(
        ns,
        name,
        done.status.secrets.iter().filter_map(|s| {
            s.expires
                .as_ref()
                .map(|e| (s.name.as_str(), e.0.as_second()))
        }),
    );
    if done.data_changed {
        let secret = b.spec.target_name(name).to_string();
        let note = format!(
            "{} Secret {secret}: {} key(s) from vault {}",
            if done.first { "wrote" } else { "updated" },
            done.status.secrets.len(),
            vault_name(&b.spec.vault_url)
        );
        publish(ctx, b, EventType::Normal, "Synced", note).await;
    } else if done.repaired {
        publish(
            ctx,
            b,
            EventType::Normal,
            "Repaired",
            format!(
                "put Secret {} back as the vault has it",
                b.spec.target_name(name)
            ),
        )
        .await;
    }
    if !done.ready {
        let c = &done.status.conditions[0];
        warn_once(
            ctx,
            b,
            prev,
            Reason::parse(&c.reason).unwrap_or(Reason::Synced),
            &c.message,
        )
        .await;
    }
    if status::needs_write(prev, &done.status, ctx.settings.status_heartbeat) && ctx.may_write() {
        ctx.write_status(bindings, b, &done.status).await?;
    }
    let mut next = interval + jitter(&b.uid().unwrap_or_default(), interval);
    if let Some(r) = done.requeue {
        next = next.min(r);
    }
    if let Force::After(wait) = force {
        next = next.min(wait);
    }
    Ok(Action::requeue(next))
}

/// After a failure the user can fix (or wait out): the condition, a
/// warning once, and a retry with backoff.
async fn on_failed(run: &Run<'_>, f: Failure) -> Result<Action, Error> {
    let Run {
        ctx,
        b,
        bindings,
        key,
        shown,
        prev,
        interval,
        force,
        started,
        generation,
        ref handled,
    } = *run;
    let (ns, name) = (&key.0, &key.1);
    if stops_reading(&f) {
        // Its vault must not keep being read (nor its identity used)
        // for it: a binding allowed before is denied now, say.
        ctx.pollers.forget(&ObjectRef::new(name).within(ns));
    }
    let failures = ctx.failure_count(key, true);
    ctx.metrics.sync_failed(shown, f.reason, started.elapsed());
    warn_once(ctx, b, prev, f.reason, &f.message).await;
    let new_status = status::failed(
        prev,
        generation,
        f.reason,
        &f.message,
        handled.clone(),
        status::now(),
    );
    if status::needs_write(prev, &new_status, ctx.settings.status_heartbeat) && ctx.may_write() {
        ctx.write_status(bindings, b, &new_status).await?;
    }
    let mut wait = if f.transient {
        backoff(failures, interval)
    } else {
        backoff(failures.max(3), interval)
    };
    if let Force::After(w) = force {
        wait = wait.min(w);
    }
    Ok(Action::requeue(
        wait + jitter(&b.uid().unwrap_or_default(), wait),
    ))
}

/// Requeue after an infrastructure error.
pub fn error_policy(b: Arc<VaultSecretBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.failure_count(&key_of(&b), true);
    ctx.metrics
        .reconcile_error(crate::metrics::ReconcileErrorKind::Kube);
    tracing::warn!(binding = %display_key(&b), error = %error, "reconcile failed");
    let interval = b.spec.refresh_interval_or(ctx.settings.default_refresh);
    Action::requeue(backoff(n, interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::VaultSecretBindingStatus;

    #[test]
    fn jitter_is_deterministic_and_within_a_tenth() {
        let i = Duration::from_secs(300);
        assert_eq!(jitter("uid-1", i), jitter("uid-1", i));
        assert_ne!(jitter("uid-1", i), jitter("uid-2", i));
        for n in 0..200 {
            assert!(jitter(&format!("u{n}"), i) < Duration::from_secs(30));
        }
    }

    fn with_force(annotation: Option<&str>, handled: Option<&str>) -> VaultSecretBinding {
        let mut b: VaultSecretBinding = serde_yaml::from_str(
            "apiVersion: kvsync.io/v1alpha1\nkind: VaultSecretBinding\nmetadata: {name: b, namespace: ns}\nspec: {vaultUrl: 'https://v.vault.azure.net', secrets: [{name: a}]}\n",
        )
        .unwrap();
        if let Some(a) = annotation {
            b.metadata.annotations =
                Some([(FORCE_SYNC_ANNOTATION.to_string(), a.to_string())].into());
        }
        b.status = Some(VaultSecretBindingStatus {
            force_sync_handled: handled.map(str::to_string),
            ..Default::default()
        });
        b
    }

    #[test]
    fn a_force_sync_value_is_honoured_once_as_recorded_in_status() {
        assert!(!force_pending(&with_force(None, None)));
        assert!(force_pending(&with_force(Some("1"), None)));
        assert!(
            !force_pending(&with_force(Some("1"), Some("1"))),
            "handled before a restart"
        );
        assert!(force_pending(&with_force(Some("2"), Some("1"))));
        let long = "x".repeat(10_000);
        let token = force_sync_token(&with_force(Some(&long), None)).unwrap();
        assert!(token.starts_with("sha256:") && token.len() < 64);
        assert!(!force_pending(&with_force(Some(&long), Some(&token))));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let i = Duration::from_secs(300);
        assert_eq!(backoff(1, i), Duration::from_secs(5));
        assert_eq!(backoff(2, i), Duration::from_secs(10));
        assert_eq!(backoff(20, i), Duration::from_secs(300));
        assert_eq!(
            backoff(20, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
