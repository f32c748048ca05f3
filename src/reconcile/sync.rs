//! One binding's sync, as named steps that each return a typed result:
//!
//! ```text
//!  authorize ─▶ read ─▶ compare ─▶ write ─▶ restart ─▶ report
//!  (prepare:    (poller,  (render,   (rollout    (rollout   (status)
//!   policy on    certs     the        intent,     targets,
//!   the plan,    off the   Secret as  policy on   rollout.rs)
//!   identity)    runtime)  it is)     the read,
//!                                     apply, retire)
//! ```
//!
//! Every error a user can cause is a [`UserError`] (a condition reason and
//! whether waiting may fix it), so each step ends in `?`; the Kubernetes
//! API's own failures are retried by the controller; a replica that lost
//! the Lease stops writing (`Standby`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::display_key;
use crate::apply;
use crate::certificate::Conversions;
use crate::cluster::view::{Parent, ParentError};
use crate::crd::names;
use crate::crd::{
    TargetPolicy, VaultSecretBinding, VaultSecretBindingSpec, VaultSecretBindingStatus,
};
use crate::poller::{ReadError, ReadResult};
use crate::prepare::{Inputs, Judge, PrepareError, Prepared, prepare};
use crate::reason::Reason;
use crate::render::{RenderError, RenderInput, Rendered, render};
use crate::status::{self, SyncReport};

/// An error the user can cause (or wait out): it becomes the binding's
/// condition.
pub(super) trait UserError: std::fmt::Display {
    /// The condition reason.
    fn reason(&self) -> Reason;
    /// Whether trying again later may succeed without a change by a person.
    fn is_transient(&self) -> bool {
        false
    }
}

impl UserError for PrepareError {
    fn reason(&self) -> Reason {
        PrepareError::reason(self)
    }
    fn is_transient(&self) -> bool {
        PrepareError::is_transient(self)
    }
}

impl UserError for ReadError {
    fn reason(&self) -> Reason {
        ReadError::reason(self)
    }
    fn is_transient(&self) -> bool {
        ReadError::is_transient(self)
    }
}

impl UserError for ParentError {
    fn reason(&self) -> Reason {
        ParentError::reason(self)
    }
    fn is_transient(&self) -> bool {
        ParentError::is_transient(self)
    }
}

impl UserError for RenderError {
    fn reason(&self) -> Reason {
        RenderError::reason(self)
    }
}

impl UserError for apply::ApplyError {
    fn reason(&self) -> Reason {
        apply::ApplyError::reason(self)
    }
}

/// A failure the user can fix (or wait out), as a condition.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) reason: Reason,
    pub(super) message: String,
    pub(super) transient: bool,
}

/// Why a sync ended without a report.
pub(super) enum SyncError {
    /// The user's to fix, or to wait out: a condition.
    User(Failure),
    /// The Kubernetes API failed: retried with backoff.
    Kube(kube::Error),
    /// Leadership was lost during the sync: write nothing more.
    Standby,
}

impl<E: UserError> From<E> for SyncError {
    fn from(e: E) -> Self {
        failure(&e)
    }
}

/// The condition for `e`.
fn failure(e: &dyn UserError) -> SyncError {
    SyncError::User(Failure {
        reason: e.reason(),
        message: e.to_string(),
        transient: e.is_transient(),
    })
}

impl From<kube::Error> for SyncError {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

/// A refused write of the target Secret: the user's to fix when it has a
/// reason, otherwise the API's failure (retried).
fn write_error(e: apply::WriteError) -> SyncError {
    if let apply::WriteError::Kube(k) = e {
        return SyncError::Kube(k);
    }
    SyncError::User(Failure {
        reason: e.reason().unwrap_or(Reason::SecretRejected),
        message: e.to_string(),
        transient: false,
    })
}

/// What a sync did, for the reconcile to publish and record.
pub(super) struct Synced {
    /// False when the Secret was written but lacks something (SecretDisabled).
    pub(super) ready: bool,
    pub(super) status: VaultSecretBindingStatus,
    pub(super) data_changed: bool,
    pub(super) first: bool,
    pub(super) written: bool,
    /// Written because the Secret had drifted (not a vault or spec change).
    pub(super) repaired: bool,
    pub(super) requeue: Option<Duration>,
}

/// One sync's inputs.
pub(super) struct Job<'a> {
    pub(super) binding: &'a VaultSecretBinding,
    pub(super) ctx: &'a Context,
    /// The cluster binding a kept binding belongs to.
    pub(super) parent: &'a Result<Option<Parent>, ParentError>,
    pub(super) interval: Duration,
    /// Read everything anew (force-sync).
    pub(super) force: bool,
    pub(super) force_sync_handled: Option<String>,
}

/// The binding as it was read: what the vault holds for its plan.
struct Read {
    result: ReadResult,
    certificates: Conversions,
}

/// The Secret as it should be, against the Secret as it is.
struct Compared {
    rendered: Rendered,
    /// What to write; `None` when the Secret is as it should be.
    desired: Option<Secret>,
    first: bool,
    data_changed: bool,
    spec_changed: bool,
    secret_version: Option<String>,
}

/// Syncs one binding: the steps in order.
pub(super) async fn sync(job: Job<'_>) -> Result<Synced, SyncError> {
    let b = job.binding;
    let (prepared, judge) = authorize(&job).await?;
    let read = read(&job, &prepared).await?;
    let compared = compare(&job, &prepared.spec, &read).await?;
    let now = status::now();
    let (pending, secret_version) = write(&job, &prepared, judge, &read, &compared, &now).await?;
    let restart = super::rollout::execute(
        job.ctx,
        b,
        &prepared.spec,
        pending,
        compared.spec_changed,
        job.interval,
        &now,
    )
    .await?;
    let target = prepared.spec.target_name(&b.name_any()).to_string();
    let status = status::synced(
        b.status.as_ref(),
        b.meta().generation,
        &SyncReport {
            rendered: &compared.rendered,
            data_changed: compared.data_changed,
            vault: &prepared.endpoint.name,
            target: &target,
            missing_rollout: &restart.missing,
            optional_failures: &read.result.optional_failures,
            rollout_pending_since: restart.pending,
            rollout_error: restart.error.as_deref(),
            force_sync_handled: job.force_sync_handled,
            secret_resource_version: secret_version,
        },
        now,
    );
    let written = compared.desired.is_some();
    Ok(Synced {
        ready: compared.rendered.disabled_unkept.is_empty(),
        status,
        data_changed: compared.data_changed,
        first: compared.first,
        written,
        repaired: written && !compared.data_changed && !compared.spec_changed,
        requeue: restart.requeue,
    })
}

/// Authorize: the spec valid, the vault host allowed, the policies' verdict
/// on the plan and the identity, the credential — nothing read yet.
async fn authorize<'a>(job: &Job<'a>) -> Result<(Prepared<'a>, Judge<'a>), SyncError> {
    let b = job.binding;
    let ctx = job.ctx;
    let ns = b.namespace().unwrap_or_default();
    let parent = job.parent.as_ref().map_err(|e| failure(e))?;
    // VaultAccessPolicies govern what a namespace's own bindings may use;
    // a cluster binding is the platform team's, and is not theirs to limit.
    let judge = match (parent, ctx.policies.as_ref()) {
        (None, Some(view)) => Judge::View(view),
        _ => Judge::Nobody,
    };
    let identity_namespace = parent
        .as_ref()
        .and_then(|p| p.identity_namespace.as_deref())
        .unwrap_or(&ns);
    let prepared = prepare(&Inputs {
        spec: &b.spec,
        namespace: &ns,
        identity_namespace,
        access: &ctx.access,
        kube: Some(&ctx.client),
        service_accounts: ctx.service_accounts.as_ref(),
        judge,
    })
    .await?;
    Ok((prepared, judge))
}

/// Read: the plan's values through the (vault, identity) poller, and the
/// certificates among them converted.
async fn read(job: &Job<'_>, prepared: &Prepared<'_>) -> Result<Read, SyncError> {
    let b = job.binding;
    let ctx = job.ctx;
    let endpoint = &prepared.endpoint;
    let credential = &prepared.credential;
    let poller = ctx
        .pollers
        .get(endpoint.base.as_str(), &credential.key(), || {
            ctx.access.client(endpoint.clone(), credential.clone())
        });
    // Name and namespace only: the pollers keep a copy per secret used, and
    // a resourceVersion or uid in each would be dead weight.
    let objref = ObjectRef::new(&b.name_any()).within(&b.namespace().unwrap_or_default());
    ctx.pollers.forget_elsewhere(&objref, &poller);
    if job.force {
        tracing::info!(binding = %display_key(b), "force-sync: checking the vault now");
    }
    let result = poller
        .read(Some(&objref), &prepared.spec, job.interval, job.force)
        .await?;
    // Certificates convert off the runtime, once per version (costly PFX).
    let certificates =
        crate::certificate::prepare(endpoint.base.as_str(), &result.plan, &result.fetched).await;
    Ok(Read {
        result,
        certificates,
    })
}

/// The Secret's data rendered over `current` (what KeepLast keeps from).
fn render_over(
    job: &Job<'_>,
    spec: &VaultSecretBindingSpec,
    read: &Read,
    current: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Rendered, SyncError> {
    let previous = job
        .binding
        .status
        .as_ref()
        .map(|s| s.secrets.as_slice())
        .unwrap_or(&[]);
    Ok(render(&RenderInput {
        plan: &read.result.plan,
        fetched: &read.result.fetched,
        current,
        previous,
        on_disabled: spec.on_disabled,
        on_expired: spec.on_expired,
        now: k8s_openapi::jiff::Timestamp::now().as_second(),
        hash_key: &job.ctx.settings.hash_key,
        template: spec.template(),
        certificates: &read.certificates,
    })?)
}

fn data_of(current: &Option<Secret>) -> Option<BTreeMap<String, Vec<u8>>> {
    current
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
}

/// Compare: render, and decide whether the Secret needs a write. Steady
/// state reads no Secret: the metadata watch says it is still the version
/// this binding last wrote or found in sync, and the vault data renders to
/// the same hash.
async fn compare(
    job: &Job<'_>,
    spec: &VaultSecretBindingSpec,
    read: &Read,
) -> Result<Compared, SyncError> {
    let b = job.binding;
    let ctx = job.ctx;
    let ns = b.namespace().unwrap_or_default();
    let target = spec.target_name(&b.name_any()).to_string();
    let prev = b.status.clone().unwrap_or_default();
    // Not yet applied: a generation is observed only once a sync of it
    // succeeded, so a change after a failed sync is still applied.
    let spec_changed = prev.observed_generation != b.meta().generation;
    let untouched = !spec_changed
        && prev.target_name.as_deref() == Some(target.as_str())
        && prev.secret_resource_version.is_some()
        && ctx.secret_version(&ns, &target) == prev.secret_resource_version
        && !crate::render::uses_current(&read.result.fetched);
    if untouched {
        let rendered = render_over(job, spec, read, None)?;
        if prev.data_hash.as_deref() == Some(rendered.hash.as_str()) {
            return Ok(Compared {
                rendered,
                desired: None,
                first: false,
                data_changed: false,
                spec_changed,
                secret_version: prev.secret_resource_version.clone(),
            });
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = secrets.get_opt(&target).await?;
    apply::check_ownership(b, current.as_ref())?;
    if spec.policy() == TargetPolicy::Merge
        && let Some(owned) = current.as_ref().filter(|c| apply::written_as_owner(b, c))
    {
        let rendered = render_over(job, spec, read, data_of(&current).as_ref())?;
        take_over_for_merge(job, &secrets, &target, &rendered, owned).await?;
        current = secrets.get_opt(&target).await?;
    }
    let current_data = data_of(&current);
    let rendered = render_over(job, spec, read, current_data.as_ref())?;
    let previous_keys: Vec<String> = prev.secrets.iter().map(|s| s.key.clone()).collect();
    let desired = apply::desired(b, &rendered);
    let write = !apply::in_sync(&desired, current.as_ref())
        || apply::has_stale_keys(&previous_keys, &desired, current.as_ref())
        || spec_changed;
    // A different hash alone is not a change: the hash key (or its scheme)
    // may have changed. The data must also differ from what the Secret holds.
    let data_changed = prev.data_hash.as_deref() != Some(rendered.hash.as_str())
        && data_differs(&rendered.data, current_data.as_ref(), &previous_keys);
    Ok(Compared {
        rendered,
        desired: write.then_some(desired),
        first: prev.data_hash.is_none(),
        data_changed,
        spec_changed,
        secret_version: current.and_then(|c| c.metadata.resource_version),
    })
}

/// Owner/Orphan -> Merge: give up what kvsync wrote as the Secret's owner
/// (its owner reference above all, or deleting the binding would
/// garbage-collect a Secret others now share) — but only after Merge holds
/// its keys: first the merge manager takes the keys at the values the
/// Secret has (the same values, so they are shared with kvsync's own
/// manager, never a conflict with it), then kvsync's owner fields are
/// released. A key someone else owns is a conflict before anything is
/// written; a Merge apply that is refused (a webhook) leaves the Secret as
/// it was.
async fn take_over_for_merge(
    job: &Job<'_>,
    secrets: &Api<Secret>,
    target: &str,
    rendered: &Rendered,
    owned: &Secret,
) -> Result<(), SyncError> {
    let b = job.binding;
    let merge_manager = apply::field_manager(b);
    let (keys, managers) = apply::foreign_keys(
        owned,
        rendered.data.keys().cloned(),
        &[names::FIELD_MANAGER, &merge_manager],
    );
    if !keys.is_empty() {
        return Err(write_error(apply::WriteError::MergeConflict {
            name: target.to_string(),
            keys,
            managers,
        }));
    }
    let taken = apply::taken_over(b, rendered, owned);
    if !job.ctx.may_write() {
        return Err(SyncError::Standby);
    }
    apply::apply(secrets, &taken, &merge_manager, false)
        .await
        .map_err(write_error)?;
    apply::release_owner_fields(secrets, target, owned.type_.as_deref()).await?;
    Ok(())
}

/// Write: the due rollout recorded first (so a crash between the two never
/// loses the restart), the read plan judged again (a policy may have
/// changed meanwhile), the Secret applied, and only then a renamed
/// target's old Secret retired. Returns the pending rollout and the
/// Secret's resourceVersion.
async fn write(
    job: &Job<'_>,
    prepared: &Prepared<'_>,
    judge: Judge<'_>,
    read: &Read,
    compared: &Compared,
    now: &Time,
) -> Result<(Option<Time>, Option<String>), SyncError> {
    let b = job.binding;
    let ctx = job.ctx;
    let spec = &prepared.spec;
    let ns = b.namespace().unwrap_or_default();
    let prev = b.status.clone().unwrap_or_default();
    let write = compared.desired.is_some();
    // Rollout: only for changes after the first sync.
    let mut pending = prev.rollout_pending_since.clone();
    if spec.rollout.is_empty() {
        pending = None;
    }
    if !ctx.may_write() {
        return Err(SyncError::Standby);
    }
    if !spec.rollout.is_empty()
        && compared.data_changed
        && !compared.first
        && pending.is_none()
        && write
    {
        pending = Some(now.clone());
        let mut intent = prev.clone();
        intent.rollout_pending_since = pending.clone();
        let bindings: Api<VaultSecretBinding> = Api::namespaced(ctx.client.clone(), &ns);
        ctx.write_status(&bindings, b, &intent).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut secret_version = compared.secret_version.clone();
    if let Some(desired) = &compared.desired {
        prepared.judge_read(judge, &ns, &read.result.plan).await?;
        let force_apply = spec.policy() != TargetPolicy::Merge;
        let written = apply::apply(&secrets, desired, &apply::field_manager(b), force_apply)
            .await
            .map_err(write_error)?;
        secret_version = written.metadata.resource_version;
    }
    // target.name changed: what was written under the old name goes, now
    // that the new Secret is written (or was already in sync).
    let name = b.name_any();
    let target = spec.target_name(&name);
    if let Some(old) = prev.target_name.as_deref().filter(|old| *old != target) {
        // Not after the Lease was lost meanwhile: the next leader may have
        // written that name again.
        if !ctx.may_write() {
            return Err(SyncError::Standby);
        }
        apply::retire_target(&secrets, b, old).await?;
    }
    if spec.policy() != TargetPolicy::Merge && apply::finalizer::holds(b) {
        if !ctx.may_write() {
            return Err(SyncError::Standby);
        }
        // Merge -> Owner/Orphan: the shared Secret keeps the binding's keys
        // until the new Secret is written; now they go, and the finalizer.
        apply::finalizer::release(&ctx.client, b).await?;
    }
    Ok((pending, secret_version))
}

/// Whether the rendered data differs from what the Secret holds for our
/// keys (values, and keys we wrote before that are now gone).
fn data_differs(
    rendered: &BTreeMap<String, crate::value::SecretValue>,
    current: Option<&BTreeMap<String, Vec<u8>>>,
    previous_keys: &[String],
) -> bool {
    let Some(current) = current else { return true };
    rendered
        .iter()
        .any(|(k, v)| current.get(k).map(Vec::as_slice) != Some(v.as_bytes()))
        || previous_keys
            .iter()
            .any(|k| !rendered.contains_key(k) && current.contains_key(k))
}
