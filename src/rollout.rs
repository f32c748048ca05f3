//! Restarting consumers when a Secret's data changes: the pod template gets
//! `kvsync.io/restartedAt` (what `kubectl rollout restart` does). Changes
//! within one window coalesce into one restart at the end of the window;
//! the pending restart is recorded in the binding's status.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::crd::names::RESTARTED_AT_ANNOTATION;
use crate::crd::{RolloutKind, RolloutTarget};

/// What to do about a binding's rollout now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutDue {
    /// Nothing pending.
    Nothing,
    /// Restart now.
    Now,
    /// Restart after this long.
    After(Duration),
}

/// Whether a restart pending since `pending_since` (unix seconds, from
/// `status.rolloutPendingSince`) is due at `now`. The first change of a
/// window starts it; later changes in the window ride along. Kept in the
/// binding's status rather than in memory, so an operator restart or a
/// failed patch inside the window never drops the restart.
pub fn due(pending_since: Option<i64>, window: Duration, now: i64) -> RolloutDue {
    let Some(since) = pending_since else {
        return RolloutDue::Nothing;
    };
    let elapsed = Duration::from_secs(now.saturating_sub(since).max(0) as u64);
    if elapsed >= window {
        RolloutDue::Now
    } else {
        RolloutDue::After(window - elapsed)
    }
}

/// Annotates the target's pod template. `Ok(false)` when it does not exist.
pub async fn restart(
    client: &kube::Client,
    namespace: &str,
    target: &RolloutTarget,
    at: &str,
) -> Result<bool, kube::Error> {
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: at}}}}});
    let params = PatchParams::default();
    let result = match target.kind {
        RolloutKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(&target.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        RolloutKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(&target.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        RolloutKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(&target.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Which targets exist (for the condition), without changing them.
pub async fn exists(
    client: &kube::Client,
    namespace: &str,
    target: &RolloutTarget,
) -> Result<bool, kube::Error> {
    let found = match target.kind {
        RolloutKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .get_metadata_opt(&target.name)
            .await?
            .is_some(),
        RolloutKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get_metadata_opt(&target.name)
            .await?
            .is_some(),
        RolloutKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .get_metadata_opt(&target.name)
            .await?
            .is_some(),
    };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_in_a_window_coalesce_into_one_restart_at_its_end() {
        let w = Duration::from_secs(30);
        assert_eq!(due(None, w, 100), RolloutDue::Nothing);
        assert_eq!(
            due(Some(100), w, 110),
            RolloutDue::After(Duration::from_secs(20))
        );
        assert_eq!(due(Some(100), w, 130), RolloutDue::Now);
        assert_eq!(
            due(Some(100), w, 10_000),
            RolloutDue::Now,
            "late (after a restart): now"
        );
        assert_eq!(
            due(Some(200), w, 100),
            RolloutDue::After(w),
            "a clock behind the recorded time waits a full window"
        );
    }
}
