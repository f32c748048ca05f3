//! What the vault said about one planned key: the poller's answer to a
//! read, which the certificates are converted from and the Secret is
//! rendered from. Below [`crate::poller`], [`crate::certificate`] and
//! [`crate::render`], so that none of them imports another for it.

use crate::reason::Reason;
use crate::value::SecretValue;

/// What the vault said about one planned key.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The value and its version's attributes.
    Value {
        /// What goes under the planned key.
        value: SecretValue,
        /// The version read, reported in `status.secrets`.
        version: String,
        /// When that version was last updated (unix seconds), for `status.secrets`.
        updated: Option<i64>,
        /// When it expires (unix seconds), which `onExpired` and
        /// `ExpiringSoon` act on.
        expires: Option<i64>,
    },
    /// The secret (version) is disabled.
    Disabled,
    /// No such secret or version (Azure's `SecretNotFound`).
    Missing,
    /// An optional pick could not be read for a reason other than not found
    /// or disabled (403, firewall, 5xx, Entra refusal): its key keeps its
    /// current value, like KeepLast, and the condition says why.
    Unavailable {
        /// Why, as a condition reason.
        reason: Reason,
        /// What happened, for the condition (never a value).
        message: String,
    },
}
