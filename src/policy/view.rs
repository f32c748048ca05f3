//! The policies and namespace labels as the operator's watches hold them,
//! and the decision for one binding from them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Denial, Mode, NameFilter, Policies, Policy, Request};
use crate::crd::policy::VaultAccessPolicy;

/// How long a decision waits for the first listings.
const LISTED_WITHIN: Duration = Duration::from_secs(10);

/// Why no decision could be made (transient: retried).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The policies or namespaces have not been listed yet.
    #[error(
        "VaultAccessPolicies and namespaces are not listed yet (is the VaultAccessPolicy CRD installed, and may the operator list vaultaccesspolicies and namespaces?); nothing is read until they are"
    )]
    NotListed,
    /// The namespace could not be read.
    #[error("namespace {namespace} could not be read to match VaultAccessPolicies: {source}")]
    Namespace {
        /// The namespace.
        namespace: String,
        /// Why.
        source: kube::Error,
    },
}

/// What a binding is decided by.
#[derive(Clone)]
pub struct PolicyView {
    /// The mode (`--access-policy`).
    pub mode: Mode,
    policies: Store<VaultAccessPolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    client: kube::Client,
}

impl PolicyView {
    /// From the stores the watches fill.
    pub fn new(
        mode: Mode,
        policies: Store<VaultAccessPolicy>,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        client: kube::Client,
    ) -> Self {
        Self {
            mode,
            policies,
            namespaces,
            client,
        }
    }

    /// The policies now.
    pub fn policies(&self) -> Policies {
        Policies::new(
            self.policies
                .state()
                .iter()
                .map(|p| Policy {
                    name: p.name_any(),
                    spec: p.spec.clone(),
                })
                .collect(),
        )
    }

    /// Decides for `request` in `namespace`: `Ok(Ok(filter))` allowed,
    /// `Ok(Err(denial))` denied, `Err` undecided (retry).
    pub async fn decide(
        &self,
        namespace: &str,
        request: &Request<'_>,
    ) -> Result<Result<NameFilter, Denial>, ViewError> {
        let listed = async {
            self.policies.wait_until_ready().await.ok()?;
            self.namespaces.wait_until_ready().await.ok()
        };
        tokio::time::timeout(LISTED_WITHIN, listed)
            .await
            .ok()
            .flatten()
            .ok_or(ViewError::NotListed)?;
        let labels = namespace_labels(&self.namespaces, &self.client, namespace).await?;
        Ok(self
            .policies()
            .decide(self.mode, namespace, &labels, request))
    }
}

/// The labels of `namespace`, from `store` or, when the watch has not
/// brought it yet (created a moment ago), read: its labels decide, so they
/// are never assumed to be none.
pub async fn namespace_labels(
    store: &Store<PartialObjectMeta<Namespace>>,
    client: &kube::Client,
    namespace: &str,
) -> Result<std::collections::BTreeMap<String, String>, ViewError> {
    Ok(match store.get(&ObjectRef::new(namespace)) {
        Some(ns) => ns.labels().clone(),
        None => Api::<PartialObjectMeta<Namespace>>::all(client.clone())
            .get_metadata(namespace)
            .await
            .map_err(|source| ViewError::Namespace {
                namespace: namespace.to_string(),
                source,
            })?
            .labels()
            .clone(),
    })
}
