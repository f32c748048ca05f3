//! The binding's status: computed purely from the outcome of a sync, then
//! written with server-side apply on the status subresource only when it changed
//! (beyond `lastSyncTime`, which is refreshed at most every half interval).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::crd::{VaultSecretBinding, VaultSecretBindingStatus};
use crate::reason::Reason;
use crate::render::Rendered;

/// Condition type: the Secret holds what the binding asks for.
pub const READY: &str = "Ready";
/// Condition type: a synced secret expires within 7 days (or has expired).
pub const EXPIRING_SOON: &str = "ExpiringSoon";
/// Condition type: every rollout target exists.
pub const ROLLOUT_READY: &str = "RolloutTargetsFound";

/// A condition with `lastTransitionTime` carried over when its status is unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.as_str().to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Everything a successful sync reports.
pub struct SyncReport<'a> {
    /// What was rendered.
    pub rendered: &'a Rendered,
    /// Whether the Secret's data changed now.
    pub data_changed: bool,
    /// Vault short name.
    pub vault: &'a str,
    /// Target Secret name.
    pub target: &'a str,
    /// Rollout targets that do not exist.
    pub missing_rollout: &'a [String],
    /// Optional keys that could not be read, with why.
    pub optional_failures: &'a [(String, String)],
    /// A rollout restart still due (first unrolled change).
    pub rollout_pending_since: Option<Time>,
    /// Why the last due rollout restart failed (it is retried).
    pub rollout_error: Option<&'a str>,
    /// The force-sync annotation value acted upon.
    pub force_sync_handled: Option<String>,
    /// The Secret's resourceVersion as written or found in sync.
    pub secret_resource_version: Option<String>,
}

/// The Ready message of a sync: what is in the Secret, what was kept, left
/// out or unreadable, and a failed restart.
fn synced_message(report: &SyncReport<'_>) -> String {
    let r = report.rendered;
    let mut message = format!(
        "{} secret(s) from vault {} are in Secret {}",
        r.synced.len(),
        report.vault,
        report.target
    );
    if !r.kept.is_empty() {
        message.push_str(&format!(
            "; kept the last value of disabled: {}",
            r.kept.join(", ")
        ));
    }
    if !r.skipped.is_empty() {
        let why: Vec<String> = r
            .skipped
            .iter()
            .map(|(k, w)| format!("{k} ({w})"))
            .collect();
        message.push_str(&format!("; left out: {}", why.join(", ")));
    }
    if !report.optional_failures.is_empty() {
        let why: Vec<String> = report
            .optional_failures
            .iter()
            .map(|(n, w)| format!("{n}: {w}"))
            .collect();
        message.push_str(&format!(
            "; optional secrets unreadable (their keys keep the last value: {}): {}",
            if r.kept_unreadable.is_empty() {
                "none held one".to_string()
            } else {
                r.kept_unreadable.join(", ")
            },
            why.join("; ")
        ));
    }
    if let Some(e) = report.rollout_error {
        message.push_str(&format!("; rollout restart failed, retrying: {e}"));
    }
    message
}

/// `ExpiringSoon`: the synced secrets that expire within 7 days, or have.
fn expiring_soon(
    prev_conditions: &[Condition],
    expiring: &[crate::render::Expiry],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let now_secs = now.0.as_second();
    if expiring.is_empty() {
        condition(
            prev_conditions,
            EXPIRING_SOON,
            false,
            Reason::NoneExpiring,
            "no synced secret expires within 7 days".into(),
            generation,
            now,
        )
    } else {
        let expired = expiring.iter().any(|e| e.expires <= now_secs);
        let list: Vec<String> = expiring
            .iter()
            .map(|e| {
                let when = Timestamp::from_second(e.expires)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                format!(
                    "{} {} {when}",
                    e.name,
                    if e.expires <= now_secs {
                        "expired"
                    } else {
                        "expires"
                    }
                )
            })
            .collect();
        condition(
            prev_conditions,
            EXPIRING_SOON,
            true,
            if expired {
                Reason::SecretExpired
            } else {
                Reason::SecretExpiring
            },
            format!(
                "{}: set a new version or a later expiry in the vault",
                list.join(", ")
            ),
            generation,
            now,
        )
    }
}

/// Status after a successful sync.
pub fn synced(
    prev: Option<&VaultSecretBindingStatus>,
    generation: Option<i64>,
    report: &SyncReport<'_>,
    now: Time,
) -> VaultSecretBindingStatus {
    let empty = Vec::new();
    let prev_conditions = prev.map(|p| &p.conditions).unwrap_or(&empty);
    let r = report.rendered;
    let message = synced_message(report);
    let ready = match r.disabled_message() {
        // The Secret holds what can be read; it still lacks a disabled one.
        Some(why) => condition(
            prev_conditions,
            READY,
            false,
            Reason::SecretDisabled,
            format!("{why}; {message}"),
            generation,
            &now,
        ),
        None => condition(
            prev_conditions,
            READY,
            true,
            Reason::Synced,
            message,
            generation,
            &now,
        ),
    };
    let mut conditions = vec![ready];
    conditions.push(expiring_soon(
        prev_conditions,
        &r.expiring,
        generation,
        &now,
    ));
    if !report.missing_rollout.is_empty() {
        conditions.push(condition(
            prev_conditions,
            ROLLOUT_READY,
            false,
            Reason::TargetMissing,
            format!(
                "rollout targets not found in this namespace: {}",
                report.missing_rollout.join(", ")
            ),
            generation,
            &now,
        ));
    } else if prev_conditions.iter().any(|c| c.type_ == ROLLOUT_READY) {
        conditions.push(condition(
            prev_conditions,
            ROLLOUT_READY,
            true,
            Reason::Found,
            "every rollout target exists".into(),
            generation,
            &now,
        ));
    }
    VaultSecretBindingStatus {
        observed_generation: generation,
        conditions,
        secrets: r.synced.clone(),
        secret_count: Some(r.synced.len() as i32),
        last_sync_time: Some(now.clone()),
        last_change_time: if report.data_changed {
            Some(now)
        } else {
            prev.and_then(|p| p.last_change_time.clone())
        },
        data_hash: Some(r.hash.clone()),
        rollout_pending_since: report.rollout_pending_since.clone(),
        force_sync_handled: report.force_sync_handled.clone(),
        target_name: Some(report.target.to_string()),
        secret_resource_version: report.secret_resource_version.clone(),
    }
}

/// Status after a failure: `Ready=False` with the reason; what is in the
/// Secret (versions, hash, times, a pending rollout) is left as it was, and
/// `observedGeneration` is NOT advanced: the generation was not applied, so
/// the next successful sync still applies it (a changed policy, labels or
/// rollout targets).
pub fn failed(
    prev: Option<&VaultSecretBindingStatus>,
    generation: Option<i64>,
    reason: Reason,
    message: &str,
    force_sync_handled: Option<String>,
    now: Time,
) -> VaultSecretBindingStatus {
    let mut status = prev.cloned().unwrap_or_default();
    let ready = condition(
        &status.conditions,
        READY,
        false,
        reason,
        message.to_string(),
        generation,
        &now,
    );
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    if force_sync_handled.is_some() {
        status.force_sync_handled = force_sync_handled;
    }
    status
}

/// Whether `new` must be written: anything but `lastSyncTime` differs, or
/// the written `lastSyncTime` is `heartbeat` old (`--status-heartbeat`;
/// zero: after every check). An unchanged binding thus costs the API server
/// one status write per heartbeat, not one per refresh.
pub fn needs_write(
    prev: Option<&VaultSecretBindingStatus>,
    new: &VaultSecretBindingStatus,
    heartbeat: Duration,
) -> bool {
    let Some(prev) = prev else { return true };
    let mut a = prev.clone();
    let mut b = new.clone();
    let (ta, tb) = (a.last_sync_time.take(), b.last_sync_time.take());
    if a != b {
        return true;
    }
    match (ta, tb) {
        (Some(old), Some(new)) => {
            // A clock behind the previous writer's (after a failover) gives a
            // negative age: that is "not yet", not "long ago".
            let age = new.0.as_second().saturating_sub(old.0.as_second());
            age >= 0 && age as u64 >= heartbeat.as_secs().max(1)
        }
        (None, None) => false,
        _ => true,
    }
}

/// Writes the status with server-side apply on the status subresource
/// (field manager `kvsync`): fields kvsync no longer sets, such as the
/// `secrets` of a binding that now syncs none, are removed, which a merge
/// patch would leave behind.
pub async fn write(
    api: &Api<VaultSecretBinding>,
    name: &str,
    status: &VaultSecretBindingStatus,
) -> Result<(), kube::Error> {
    use kube::Resource;
    let patch = serde_json::json!({
        "apiVersion": VaultSecretBinding::api_version(&()),
        "kind": VaultSecretBinding::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(crate::crd::names::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Now, as a Kubernetes time (whole seconds, as the API server stores it).
pub fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).expect("now is a valid time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let first = condition(
            &[],
            READY,
            true,
            Reason::Synced,
            "a".into(),
            Some(1),
            &t(100),
        );
        let again = condition(
            std::slice::from_ref(&first),
            READY,
            true,
            Reason::Synced,
            "b".into(),
            Some(1),
            &t(200),
        );
        assert_eq!(again.last_transition_time, t(100));
        let flipped = condition(
            &[again],
            READY,
            false,
            Reason::VaultForbidden,
            "c".into(),
            Some(1),
            &t(300),
        );
        assert_eq!(flipped.last_transition_time, t(300));
    }

    #[test]
    fn failure_keeps_what_is_in_the_secret() {
        let prev = VaultSecretBindingStatus {
            observed_generation: Some(1),
            data_hash: Some("sha256:abc".into()),
            last_sync_time: Some(t(100)),
            rollout_pending_since: Some(t(90)),
            ..Default::default()
        };
        let s = failed(
            Some(&prev),
            Some(2),
            Reason::VaultUnreachable,
            "down",
            Some("again".into()),
            t(200),
        );
        assert_eq!(
            s.observed_generation,
            Some(1),
            "generation 2 was not applied: the next success must still apply it"
        );
        assert_eq!(s.conditions[0].observed_generation, Some(2));
        assert_eq!(
            s.rollout_pending_since,
            Some(t(90)),
            "a due restart survives"
        );
        assert_eq!(s.force_sync_handled.as_deref(), Some("again"));
        assert_eq!(s.data_hash.as_deref(), Some("sha256:abc"));
        assert_eq!(s.last_sync_time, Some(t(100)));
        assert_eq!(s.conditions[0].reason, "VaultUnreachable");
        assert_eq!(s.conditions[0].status, "False");
    }

    #[test]
    fn a_last_sync_time_ahead_of_our_clock_is_not_rewritten_every_time() {
        let a = VaultSecretBindingStatus {
            last_sync_time: Some(t(2000)),
            ..Default::default()
        };
        let mut b = a.clone();
        b.last_sync_time = Some(t(1990));
        assert!(!needs_write(Some(&a), &b, Duration::from_secs(300)));
    }

    #[test]
    fn only_last_sync_time_changing_is_written_once_per_heartbeat() {
        let heartbeat = Duration::from_secs(900);
        let a = VaultSecretBindingStatus {
            last_sync_time: Some(t(1000)),
            data_hash: Some("h".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        b.last_sync_time = Some(t(1000 + 600));
        assert!(!needs_write(Some(&a), &b, heartbeat), "two 5m checks later");
        b.last_sync_time = Some(t(1000 + 900));
        assert!(needs_write(Some(&a), &b, heartbeat), "a heartbeat later");
        b.last_sync_time = Some(t(1060));
        b.data_hash = Some("other".into());
        assert!(
            needs_write(Some(&a), &b, heartbeat),
            "any other change at once"
        );
        b.data_hash = a.data_hash.clone();
        assert!(
            needs_write(Some(&a), &b, Duration::ZERO),
            "heartbeat 0: every check"
        );
        b.last_sync_time = a.last_sync_time.clone();
        assert!(
            !needs_write(Some(&a), &b, Duration::ZERO),
            "nothing changed at all"
        );
    }
}
