//! Why a poller read failed, shared by every binding that asked for the same
//! thing (hence `Arc`: one failed GET is one error, seen by each of its readers).

use std::sync::Arc;
use std::time::Duration;

use crate::azure::keyvault::KeyVaultError;
use crate::plan::PlanError;
use crate::reason::Reason;

/// What went wrong between the poller and the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The request failed (vault, identity or network).
    #[error(transparent)]
    KeyVault(#[from] KeyVaultError),
    /// The vault did not answer within the time a reconcile waits; the
    /// request goes on in the background and fills the cache when it ends.
    #[error(
        "vault {vault} did not answer within {}s; kvsync keeps waiting for it in the background and retries — check the vault's health and the network path to it",
        .waited.as_secs_f32()
    )]
    Timeout {
        /// The vault's short name.
        vault: String,
        /// How long the reconcile waited.
        waited: Duration,
    },
}

impl VaultError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::KeyVault(e) => e.reason(),
            Self::Timeout { .. } => Reason::VaultTimeout,
        }
    }

    /// Whether trying again later may succeed without a change by a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::KeyVault(e) => e.is_transient(),
            Self::Timeout { .. } => true,
        }
    }

    /// Azure's `SecretNotFound`: the only answer that makes a secret missing.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Self::KeyVault(KeyVaultError::NotFound { .. }))
    }

    /// 403 `SecretDisabled`.
    pub(crate) fn is_disabled(&self) -> bool {
        matches!(self, Self::KeyVault(KeyVaultError::SecretDisabled { .. }))
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The vault or the identity failed for something the binding needs (a
    /// required pick, or the listing of a `select`), or did not answer in time.
    #[error(transparent)]
    Vault(Arc<VaultError>),
    /// The plan is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The values read so far already pass Kubernetes' Secret limit; the
    /// rest was not read (and what was read is not kept).
    #[error(
        "the Secret would pass Kubernetes' 1 MiB limit: the first {keys_read} of {keys_planned} keys already hold {bytes_at_least} bytes, so kvsync stopped reading — narrow the select with namePrefix or tags, or split the binding"
    )]
    TooLarge {
        /// Bytes of the keys read (key and value), more than the limit.
        bytes_at_least: usize,
        /// Keys read before stopping.
        keys_read: usize,
        /// Keys in the plan.
        keys_planned: usize,
    },
}

impl ReadError {
    /// The condition reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Vault(e) => e.reason(),
            Self::Plan(p) => p.reason(),
            Self::TooLarge { .. } => Reason::SecretTooLarge,
        }
    }

    /// Whether trying again later may succeed without a change by a person.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Vault(e) => e.is_transient(),
            Self::Plan(_) | Self::TooLarge { .. } => false,
        }
    }
}

impl From<KeyVaultError> for ReadError {
    fn from(e: KeyVaultError) -> Self {
        Self::Vault(Arc::new(e.into()))
    }
}
