//! What a namespace's binding kept for a ClusterVaultSecretBinding syncs
//! with: the cluster binding's spec and identity, looked up by the name in
//! its annotation — never what the binding object itself says, which anyone
//! who may edit bindings in the namespace can write.

use futures::FutureExt;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::VaultSecretBinding;
use crate::crd::VaultSecretBindingSpec;
use crate::crd::cluster::ClusterVaultSecretBinding;
use crate::crd::names::PARENT_ANNOTATION;
use crate::policy::view::{ViewError, namespace_labels};
use crate::reason::Reason;

/// The cluster binding a namespace's binding is kept for.
#[derive(Debug, Clone)]
pub struct Parent {
    /// The cluster binding's name.
    pub name: String,
    /// Its spec as the namespace's binding syncs it (identity included).
    pub spec: VaultSecretBindingSpec,
    /// Where its ServiceAccount or client secret Secret is read (`None`:
    /// it reads neither).
    pub identity_namespace: Option<String>,
}

/// Why a binding that claims a cluster binding may not sync.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// No cluster binding of that name selects the namespace.
    #[error(
        "this VaultSecretBinding says ClusterVaultSecretBinding {parent} keeps it ({PARENT_ANNOTATION}), but {why}; nothing is read for it. Delete it, or remove the annotation to make it a binding of the namespace's own"
    )]
    Missing {
        /// The name the annotation gives.
        parent: String,
        /// What is wrong.
        why: String,
    },
    /// The cluster bindings or namespaces are not listed yet.
    #[error(
        "ClusterVaultSecretBindings are not listed yet (is the ClusterVaultSecretBinding CRD installed, and may the operator list clustervaultsecretbindings?); nothing is read for this binding until they are"
    )]
    NotListed,
    /// The namespace's labels could not be read.
    #[error(transparent)]
    Namespace(ViewError),
}

impl ParentError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        Reason::ClusterBindingMissing
    }

    /// Whether waiting may fix it.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Missing { .. })
    }
}

/// The cluster bindings and namespace labels as the watches hold them.
#[derive(Clone)]
pub struct ClusterView {
    bindings: Store<ClusterVaultSecretBinding>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    client: kube::Client,
}

impl ClusterView {
    /// From the stores the watches fill.
    pub fn new(
        bindings: Store<ClusterVaultSecretBinding>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        client: kube::Client,
    ) -> Self {
        Self {
            bindings,
            namespaces,
            client,
        }
    }

    /// The cluster binding `b` is kept for: `Ok(None)` for a binding of the
    /// namespace's own (no annotation). A binding claiming one must carry
    /// its name, and the cluster binding must exist and select the
    /// namespace: a forged claim gets at most what the cluster binding
    /// writes into that namespace anyway.
    pub async fn parent_of(&self, b: &VaultSecretBinding) -> Result<Option<Parent>, ParentError> {
        let Some(claimed) = b.annotations().get(PARENT_ANNOTATION) else {
            return Ok(None);
        };
        let missing = |why: String| ParentError::Missing {
            parent: claimed.clone(),
            why,
        };
        if *claimed != b.name_any() {
            return Err(missing(format!(
                "kvsync names the bindings it keeps like their cluster binding, and this one is named {}",
                b.name_any()
            )));
        }
        // Not listed yet (a start, the CRD or RBAC missing): retried, without
        // holding a reconcile worker.
        let listed = self.bindings.wait_until_ready().now_or_never().is_some()
            && self.namespaces.wait_until_ready().now_or_never().is_some();
        if !listed {
            return Err(ParentError::NotListed);
        }
        let parent = self
            .bindings
            .get(&ObjectRef::new(claimed))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| missing("no such cluster binding exists".into()))?;
        // Made by kvsync for this very cluster binding: a claim written by
        // hand (which cannot carry the owner's uid by accident) gets nothing.
        let uid = parent.uid().unwrap_or_default();
        if !b
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
        {
            return Err(missing(
                "kvsync did not make it for that cluster binding (no owner reference to it)".into(),
            ));
        }
        if let Err(e) = parent.spec.validate() {
            return Err(missing(format!("its spec is invalid ({e})")));
        }
        let ns = b.namespace().unwrap_or_default();
        let labels = namespace_labels(&self.namespaces, &self.client, &ns)
            .await
            .map_err(ParentError::Namespace)?;
        if !parent.spec.selects(&ns, &labels) {
            return Err(missing(format!("it does not select namespace {ns}")));
        }
        let (spec, identity_namespace) = parent.spec.binding_spec();
        Ok(Some(Parent {
            name: claimed.clone(),
            spec,
            identity_namespace,
        }))
    }
}
