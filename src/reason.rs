//! Condition reasons: one closed set, used by status, `kvsync check`, events,
//! metrics and the README's troubleshooting table. Each serialises as the
//! string users see in `kubectl get vsb` (its variant name).

use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Why a binding is (or is not) Ready, as a closed set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The string in conditions, events and metric labels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// The Secret holds what the binding asks for.
    Synced,
    /// A field of the spec is invalid.
    InvalidSpec,
    /// `vaultUrl` is not https or not a Key Vault host.
    VaultHostNotAllowed,
    /// A VaultAccessPolicy does not allow the vault, a secret or the
    /// identity (or, under `--access-policy enforce`, none selects the namespace).
    PolicyDenied,
    /// The identity is not configured (annotation, tenant, ServiceAccount, client secret).
    IdentityMisconfigured,
    /// Entra ID refused the identity, or the vault refused its token.
    AuthenticationFailed,
    /// Entra ID, IMDS or the TokenRequest API could not be reached.
    IdentityUnavailable,
    /// The identity lacks secrets/get.
    VaultForbidden,
    /// The identity lacks secrets/list and the binding needs a listing.
    ListForbidden,
    /// The vault's firewall refused the client address.
    VaultNetworkRefused,
    /// DNS, connect, TLS or timeout towards the vault.
    VaultUnreachable,
    /// The vault did not answer within the time a reconcile waits.
    VaultTimeout,
    /// The vault answered 429 beyond the retry budget.
    VaultThrottled,
    /// The vault answered 5xx beyond the retry budget.
    VaultUnavailable,
    /// The vault rejected a request as malformed.
    VaultBadRequest,
    /// The vault answered something that is not the Key Vault API.
    InvalidVaultResponse,
    /// A required secret or pinned version does not exist.
    SecretNotFound,
    /// A required secret is disabled and cannot be kept.
    SecretDisabled,
    /// Two vault secrets map to one key.
    KeyCollision,
    /// A key is not valid in a Secret.
    InvalidKey,
    /// The data would pass Kubernetes' 1 MiB limit.
    SecretTooLarge,
    /// A Secret of the target name exists and kvsync does not manage it.
    SecretNotManaged,
    /// Another binding writes that Secret.
    SecretOwnedByOtherBinding,
    /// `policy: Merge` needs an existing Secret.
    MergeTargetMissing,
    /// `policy: Merge` would take a key another field manager owns.
    MergeConflict,
    /// `target.type` differs from the existing Secret's type.
    SecretTypeMismatch,
    /// The API server rejected the Secret (validation, immutability, a webhook).
    SecretRejected,
    /// A certificate's backing secret is not a usable certificate (not
    /// exportable, no key, wrong content, a chain that does not fit).
    CertificateInvalid,
    /// A `target.template` failed (syntax, an undefined name, a helper's
    /// input, its size or run time); the message names the key and line.
    TemplateError,
    /// ExpiringSoon=False: nothing expires within 7 days.
    NoneExpiring,
    /// ExpiringSoon=True: a synced secret expires within 7 days.
    SecretExpiring,
    /// ExpiringSoon=True: a synced secret has expired.
    SecretExpired,
    /// RolloutTargetsFound=False: a rollout target does not exist.
    TargetMissing,
    /// RolloutTargetsFound=True.
    Found,
    /// A ClusterVaultSecretBinding leaves a namespace alone: a binding of
    /// the namespace's own writes the same Secret (or has the same name).
    ClusterBindingConflict,
    /// A binding claims to be kept for a ClusterVaultSecretBinding that does
    /// not exist or does not select its namespace.
    ClusterBindingMissing,
    /// The API server refused the binding kvsync keeps for a
    /// ClusterVaultSecretBinding in a namespace (RBAC, a namespace being
    /// deleted, a webhook).
    BindingRejected,
    /// A ClusterVaultSecretBinding: some selected namespaces failed.
    NamespacesFailed,
    /// A ClusterVaultSecretBinding: some selected namespaces are not synced
    /// with its current generation yet.
    NamespacesPending,
}

impl Reason {
    /// The reason for `s`, when it is one.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_string() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
        assert_eq!(Reason::ListForbidden.to_string(), "ListForbidden");
    }
}
