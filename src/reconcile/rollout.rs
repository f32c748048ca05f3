//! Rollout execution: restarting a binding's `spec.rollout` targets once
//! its Secret's data changed, coalesced over `--rollout-window`. What is due
//! lives in `status.rolloutPendingSince` (written before the Secret
//! changes), so an operator restart or a failed patch never drops it; a
//! patch that keeps failing (RBAC, a webhook) is retried with backoff. The
//! patches themselves are [`crate::rollout`]'s.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::context::{Context, key_of};
use super::{backoff, display_key};
use crate::crd::{VaultSecretBinding, VaultSecretBindingSpec};
use crate::rollout::{self as targets, RolloutDue};

/// What became of the rollout this sync.
pub(super) struct Restarts {
    /// Still due (a restart to come, or one that failed).
    pub(super) pending: Option<Time>,
    /// When to look again (the window's end, or the failed patch's backoff).
    pub(super) requeue: Option<Duration>,
    /// Targets that do not exist (`Kind/name`).
    pub(super) missing: Vec<String>,
    /// The last patch that failed, for the condition.
    pub(super) error: Option<String>,
}

/// Restarts `spec.rollout` when the restart `pending` is due.
pub(super) async fn execute(
    ctx: &Context,
    b: &VaultSecretBinding,
    spec: &VaultSecretBindingSpec,
    pending: Option<Time>,
    spec_changed: bool,
    interval: Duration,
    now: &Time,
) -> Result<Restarts, kube::Error> {
    let mut done = Restarts {
        pending,
        requeue: None,
        missing: Vec::new(),
        error: None,
    };
    if spec.rollout.is_empty() {
        return Ok(done);
    }
    let ns = b.namespace().unwrap_or_default();
    let since = done.pending.as_ref().map(|t| t.0.as_second());
    match targets::due(since, ctx.settings.rollout_window, now.0.as_second()) {
        RolloutDue::Now => {
            let at = k8s_openapi::jiff::Timestamp::now().to_string();
            let mut failed = None;
            for t in &spec.rollout {
                match targets::restart(&ctx.client, &ns, t, &at).await {
                    Ok(true) => {
                        tracing::info!(binding = %display_key(b), kind = ?t.kind, target = %t.name, "restarted rollout target");
                    }
                    Ok(false) => done.missing.push(format!("{:?}/{}", t.kind, t.name)),
                    Err(e) => failed = Some(format!("{:?}/{}: {e}", t.kind, t.name)),
                }
            }
            let key = key_of(b);
            if failed.is_some() {
                // Kept pending: a later reconcile tries again, backing off
                // (5 s doubling) so a patch that can never succeed is not
                // hammered.
                let n = ctx.state(&key, |s| {
                    s.rollout_failures = s.rollout_failures.saturating_add(1);
                    s.rollout_failures
                });
                done.requeue = Some(backoff(n, interval));
                done.error = failed;
            } else {
                ctx.state(&key, |s| s.rollout_failures = 0);
                done.pending = None;
            }
            let missing = done.missing.clone();
            ctx.state(&key, |s| s.rollout_missing = Some(missing));
        }
        RolloutDue::After(d) => {
            done.requeue = Some(d);
            done.missing = missing_targets(ctx, b, spec_changed).await?;
        }
        RolloutDue::Nothing => {
            done.missing = missing_targets(ctx, b, spec_changed).await?;
        }
    }
    Ok(done)
}

/// Rollout targets that do not exist. Looked up when the spec changed or
/// was never looked at; otherwise the last answer stands (a restart looks
/// again), so a steady binding costs no API reads for it.
async fn missing_targets(
    ctx: &Context,
    b: &VaultSecretBinding,
    spec_changed: bool,
) -> Result<Vec<String>, kube::Error> {
    let key = key_of(b);
    if !spec_changed && let Some(known) = ctx.state(&key, |s| s.rollout_missing.clone()) {
        return Ok(known);
    }
    let ns = b.namespace().unwrap_or_default();
    let mut missing = Vec::new();
    for t in &b.spec.rollout {
        if !targets::exists(&ctx.client, &ns, t).await? {
            missing.push(format!("{:?}/{}", t.kind, t.name));
        }
    }
    ctx.state(&key, |s| s.rollout_missing = Some(missing.clone()));
    Ok(missing)
}
