//! The Merge finalizer: a binding with `policy: Merge` writes keys into a
//! Secret it does not own, so Kubernetes' garbage collection cannot remove
//! them. The finalizer holds the binding until its keys (its own field
//! manager's fields) are released from the shared Secret; a binding whose
//! policy moves away from Merge gives them back the same way.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::crd::{TargetPolicy, VaultSecretBinding};

use crate::crd::names::MERGE_FINALIZER as FINALIZER;

/// Whether `b` carries the finalizer.
pub fn holds(b: &VaultSecretBinding) -> bool {
    b.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds the finalizer to a Merge binding before it writes anything. (A
/// binding whose policy moved away from Merge keeps it until its new
/// Secret is written: the sync then calls [`release`].)
pub async fn follow_policy(
    client: &kube::Client,
    b: &VaultSecretBinding,
) -> Result<(), kube::Error> {
    if b.spec.policy() != TargetPolicy::Merge || holds(b) {
        return Ok(());
    }
    let bindings: Api<VaultSecretBinding> =
        Api::namespaced(client.clone(), &b.namespace().unwrap_or_default());
    let mut finalizers = b.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": b.resource_version()}});
    bindings
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Releases the binding's keys from the shared Secret, then the finalizer
/// (on deletion, or when the policy is no longer Merge).
pub async fn release(client: &kube::Client, b: &VaultSecretBinding) -> Result<(), kube::Error> {
    let ns = b.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let target = b.spec.target_name(&b.name_any()).to_string();
    super::release_fields(&secrets, &target, &super::merge_field_manager(b)).await?;
    let bindings: Api<VaultSecretBinding> = Api::namespaced(client.clone(), &ns);
    let mut current = b.clone();
    for _ in 0..3 {
        let finalizers: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": current.resource_version()}});
        match bindings
            .patch(
                &b.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            // The binding changed since it was read (its own status write
            // in this very sync, say): read it again, keep others'
            // finalizers as they are now.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                match bindings.get_opt(&b.name_any()).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    // Changed under us three times: the finalizer stays, and the next
    // reconcile (the binding changed, so there is one) removes it.
    tracing::warn!(binding = %b.name_any(), "could not remove the Merge finalizer: the binding kept changing");
    Ok(())
}
