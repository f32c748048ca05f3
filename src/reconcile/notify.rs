//! What a reconcile tells people: Events on the binding (and a log line
//! for failures), each sent once — not again within `EVENT_REPEAT` — so a
//! status write that keeps failing does not repeat its warning on every
//! retry, nor a Secret edited in a loop its repair.

use std::time::{Duration, Instant};

use kube::Resource;

use super::context::{Context, key_of};
use super::display_key;
use crate::crd::{VaultSecretBinding, VaultSecretBindingStatus};
use crate::events::EventType;
use crate::reason::Reason;
use crate::status::READY;

/// A Warning event and a log line when the binding newly fails (or fails
/// for another reason): not on every retry.
pub(super) async fn warn_once(
    ctx: &Context,
    b: &VaultSecretBinding,
    prev: Option<&VaultSecretBindingStatus>,
    reason: Reason,
    message: &str,
) {
    let was = prev.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    // Another problem of the same kind (a second template error, say) is
    // news too; the same one is not (and events repeat at most every
    // EVENT_REPEAT anyway).
    let new_problem = was
        .is_none_or(|c| c.status != "False" || c.reason != reason.as_str() || c.message != message);
    if new_problem {
        tracing::warn!(binding = %display_key(b), reason = %reason, message = %message, "sync failed");
        publish(
            ctx,
            b,
            EventType::Warning,
            "SyncFailed",
            format!("{reason}: {message}"),
        )
        .await;
    }
}

pub(super) fn vault_name(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h.split('.').next().unwrap_or(h).to_string())
        })
        .unwrap_or_else(|| url.to_string())
}

/// See `BindingState::last_event`.
const EVENT_REPEAT: Duration = Duration::from_secs(600);

pub(super) async fn publish(
    ctx: &Context,
    b: &VaultSecretBinding,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (type_ == EventType::Warning, reason, &note).hash(&mut h);
        h.finish()
    };
    let now = Instant::now();
    let repeat = ctx.state(&key_of(b), |s| {
        let repeat = s
            .last_event
            .is_some_and(|(d, at)| d == digest && now.duration_since(at) < EVENT_REPEAT);
        if !repeat {
            s.last_event = Some((digest, now));
        }
        repeat
    });
    if repeat {
        return;
    }
    let regarding = b.object_ref(&());
    if let Err(e) = ctx
        .events
        .publish(regarding, type_, reason, "Sync", &note)
        .await
    {
        tracing::debug!(error = %e, "could not publish an event");
    }
}
