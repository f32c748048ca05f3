//! Restarting consumers when a Secret's data changes: the pod template gets
//! `kvsync.io/restartedAt` (what `kubectl rollout restart` does). Changes
//! within one window coalesce into one restart at the end of the window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::crd::{RolloutKind, RolloutTarget};

/// Pod template annotation set on restart.
pub const RESTARTED_AT: &str = "kvsync.io/restartedAt";

/// Pending restarts per binding (namespace/name).
#[derive(Default)]
pub struct RolloutQueue {
    pending: Mutex<HashMap<String, Instant>>,
}

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

impl RolloutQueue {
    /// Records a data change of `binding` (first change of a window starts it).
    pub fn changed(&self, binding: &str, now: Instant) {
        self.pending
            .lock()
            .expect("rollout queue")
            .entry(binding.to_string())
            .or_insert(now);
    }

    /// Whether `binding`'s restart is due; `Now` clears it.
    pub fn due(&self, binding: &str, window: Duration, now: Instant) -> RolloutDue {
        let mut pending = self.pending.lock().expect("rollout queue");
        match pending.get(binding) {
            None => RolloutDue::Nothing,
            Some(since) if now.duration_since(*since) >= window => {
                pending.remove(binding);
                RolloutDue::Now
            }
            Some(since) => RolloutDue::After(window - now.duration_since(*since)),
        }
    }

    /// Drops what is pending for `binding` (deleted).
    pub fn forget(&self, binding: &str) {
        self.pending.lock().expect("rollout queue").remove(binding);
    }
}

/// Annotates the target's pod template. `Ok(false)` when it does not exist.
pub async fn restart(
    client: &kube::Client,
    namespace: &str,
    target: &RolloutTarget,
    at: &str,
) -> Result<bool, kube::Error> {
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}});
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
        let q = RolloutQueue::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        assert_eq!(q.due("ns/b", w, t0), RolloutDue::Nothing);
        q.changed("ns/b", t0);
        q.changed("ns/b", t0 + Duration::from_secs(10)); // same window
        assert_eq!(
            q.due("ns/b", w, t0 + Duration::from_secs(10)),
            RolloutDue::After(Duration::from_secs(20))
        );
        assert_eq!(q.due("ns/b", w, t0 + w), RolloutDue::Now);
        assert_eq!(
            q.due("ns/b", w, t0 + w),
            RolloutDue::Nothing,
            "one restart for the window"
        );
    }
}
