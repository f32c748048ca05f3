//! A binding's `spec.identity` to a [`Credential`]: first the ids
//! ([`Resolved`], what a VaultAccessPolicy judges), then what is secret
//! (a client secret from its Secret), read in the binding's namespace only.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;

use super::environment::{IdKind, Origin, checked_id, first_id};
use super::{
    AssertionSource, AzureEnvironment, CLIENT_ID_ANNOTATION, Credential, IdentityError,
    TENANT_ID_ANNOTATION,
};
use crate::crd::VaultIdentity;
use crate::value::SecretValue;

impl AzureEnvironment {
    /// Resolves a binding's `spec.identity` in `namespace` to a credential.
    /// ServiceAccounts and Secrets are read in that namespace only.
    pub async fn resolve(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: &kube::Client,
    ) -> Result<Credential, IdentityError> {
        self.resolve_cached(identity, namespace, kube, None).await
    }

    /// [`Self::resolve`], taking a ServiceAccount's annotations from `cache`
    /// when it holds the ServiceAccount; one it does not hold (not listed
    /// yet, just created, or absent) is read.
    pub async fn resolve_cached(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: &kube::Client,
        cache: Option<&ServiceAccountCache>,
    ) -> Result<Credential, IdentityError> {
        self.resolve_ids(identity, namespace, Some(kube), cache)
            .await?
            .load(Some(kube))
            .await
    }

    /// The first half of [`Self::resolve_cached`]: which identity, client
    /// and tenant a binding's `spec.identity` comes to (the ServiceAccount's
    /// annotations read), before anything secret is loaded — what a
    /// VaultAccessPolicy judges. `kube` is needed only for ServiceAccounts
    /// and client secrets.
    pub async fn resolve_ids(
        &self,
        identity: Option<&VaultIdentity>,
        namespace: &str,
        kube: Option<&kube::Client>,
        cache: Option<&ServiceAccountCache>,
    ) -> Result<Resolved, IdentityError> {
        let Some(id) = identity else {
            return self.operator_credential(None, None).map(Resolved::Ready);
        };
        if let Some(mi) = &id.managed_identity {
            let client_id = mi
                .client_id
                .as_deref()
                .map(|c| {
                    checked_id(
                        c,
                        IdKind::Client,
                        Origin::Spec("spec.identity.managedIdentity.clientId"),
                    )
                })
                .transpose()?;
            return Ok(Resolved::Ready(Credential::ManagedIdentity { client_id }));
        }
        if let Some(sa_name) = &id.service_account_name {
            let kube = kube.ok_or_else(no_cluster)?;
            let annotations = match cached_annotations(cache, namespace, sa_name) {
                Some(annotations) => annotations,
                None => {
                    let api: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
                    api.get_metadata_opt(sa_name)
                        .await
                        .map_err(|e| IdentityError::Kubernetes {
                            action: format!("cannot read ServiceAccount {namespace}/{sa_name}"),
                            detail: e.to_string(),
                        })?
                        .ok_or_else(|| IdentityError::ServiceAccountNotFound {
                            namespace: namespace.into(),
                            name: sa_name.clone(),
                        })?
                        .metadata
                        .annotations
                        .unwrap_or_default()
                }
            };
            let annotation = |a| annotations.get(a).map(String::as_str);
            let client_id = first_id(
                IdKind::Client,
                [
                    (
                        id.client_id.as_deref(),
                        Origin::Spec("spec.identity.clientId"),
                    ),
                    (
                        annotation(CLIENT_ID_ANNOTATION),
                        Origin::Annotation(CLIENT_ID_ANNOTATION, namespace, sa_name),
                    ),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingClientId {
                namespace: namespace.into(),
                name: sa_name.clone(),
            })?;
            let tenant_id = first_id(
                IdKind::Tenant,
                [
                    (
                        id.tenant_id.as_deref(),
                        Origin::Spec("spec.identity.tenantId"),
                    ),
                    (
                        annotation(TENANT_ID_ANNOTATION),
                        Origin::Annotation(TENANT_ID_ANNOTATION, namespace, sa_name),
                    ),
                    (self.tenant_id.as_deref(), Origin::Env("AZURE_TENANT_ID")),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingTenant {
                who: format!("ServiceAccount {namespace}/{sa_name}"),
            })?;
            return Ok(Resolved::Ready(Credential::ClientAssertion {
                tenant_id,
                client_id,
                assertion: AssertionSource::ServiceAccount {
                    client: kube.clone(),
                    namespace: namespace.into(),
                    name: sa_name.clone(),
                },
            }));
        }
        if let Some(r) = &id.client_secret_ref {
            // Both ids are checked before the Secret is read: a bad tenant
            // must not even cause the client secret to be loaded.
            let client_id = id
                .client_id
                .as_deref()
                .map(|c| checked_id(c, IdKind::Client, Origin::Spec("spec.identity.clientId")))
                .transpose()?
                .ok_or_else(|| IdentityError::Refused {
                    who: "the service principal".into(),
                    code: "missing client id".into(),
                    description: "spec.identity.clientSecretRef needs spec.identity.clientId"
                        .into(),
                    hint: String::new(),
                })?;
            let tenant_id = first_id(
                IdKind::Tenant,
                [
                    (
                        id.tenant_id.as_deref(),
                        Origin::Spec("spec.identity.tenantId"),
                    ),
                    (self.tenant_id.as_deref(), Origin::Env("AZURE_TENANT_ID")),
                ],
            )?
            .ok_or_else(|| IdentityError::MissingTenant {
                who: format!("service principal {client_id}"),
            })?;
            return Ok(Resolved::ClientSecret {
                tenant_id,
                client_id,
                namespace: namespace.into(),
                secret: r.clone(),
            });
        }
        self.operator_credential(id.client_id.as_deref(), id.tenant_id.as_deref())
            .map(Resolved::Ready)
    }
}

/// A binding's identity as resolved before anything secret is loaded: what a
/// VaultAccessPolicy judges (its kind, client and tenant), then
/// [`Resolved::load`]ed into a [`Credential`].
#[derive(Debug, Clone)]
pub enum Resolved {
    /// Nothing left to load.
    Ready(Credential),
    /// A service principal whose client secret is still in its Secret.
    ClientSecret {
        /// The Entra tenant to sign in to, already checked.
        tenant_id: String,
        /// The service principal's client id, already checked.
        client_id: String,
        /// The binding's namespace, the only one the Secret is read from.
        namespace: String,
        /// The Secret and key (`spec.identity.clientSecretRef`) that hold
        /// the client secret.
        secret: crate::crd::SecretKeyRef,
    },
}

fn no_cluster() -> IdentityError {
    IdentityError::Kubernetes {
        action: "this identity is read from the cluster".into(),
        detail: "no kubeconfig was found".into(),
    }
}

impl Resolved {
    /// The tenant the credential signs in to (`None`: a managed identity,
    /// whose tenant is the node's).
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Self::Ready(Credential::ClientAssertion { tenant_id, .. })
            | Self::Ready(Credential::ClientSecret { tenant_id, .. })
            | Self::ClientSecret { tenant_id, .. } => Some(tenant_id),
            Self::Ready(Credential::ManagedIdentity { .. }) => None,
        }
    }

    /// The credential, reading a client secret from its Secret (in the
    /// binding's namespace only).
    pub async fn load(self, kube: Option<&kube::Client>) -> Result<Credential, IdentityError> {
        match self {
            Self::Ready(credential) => Ok(credential),
            Self::ClientSecret {
                tenant_id,
                client_id,
                namespace,
                secret: r,
            } => {
                let kube = kube.ok_or_else(no_cluster)?;
                let api: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
                let secret = api
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| IdentityError::Kubernetes {
                        action: format!("cannot read Secret {namespace}/{}", r.name),
                        detail: e.to_string(),
                    })?;
                let missing = || IdentityError::ClientSecretMissing {
                    namespace: namespace.clone(),
                    name: r.name.clone(),
                    key: r.key.clone(),
                };
                let bytes = secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(&r.key))
                    .ok_or_else(missing)?;
                let text = String::from_utf8(bytes.0).map_err(|_| missing())?;
                Ok(Credential::ClientSecret {
                    tenant_id,
                    client_id,
                    secret: SecretValue::new(text.trim_end_matches(['\r', '\n'])),
                })
            }
        }
    }
}

/// ServiceAccounts' metadata, kept by a watch: their annotations are all
/// kvsync reads of them.
pub type ServiceAccountCache =
    kube::runtime::reflector::Store<kube::core::PartialObjectMeta<ServiceAccount>>;

/// The annotations of `namespace/name` when `cache` has a complete listing
/// that holds it.
fn cached_annotations(
    cache: Option<&ServiceAccountCache>,
    namespace: &str,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    use futures::FutureExt;
    let cache = cache?;
    cache.wait_until_ready().now_or_never()?.ok()?;
    let sa = cache.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))?;
    Some(sa.metadata.annotations.clone().unwrap_or_default())
}
