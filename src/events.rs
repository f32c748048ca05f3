//! Kubernetes Events about bindings (`events.k8s.io/v1`), sent as they
//! happen and kept nowhere.
//!
//! kube's `Recorder` keeps every event it sent for six minutes (to turn a
//! repeat into a series) and scans that cache on every send: after a first
//! sync of 10,000 bindings that is 10,000 cached Events (tens of MiB) and
//! 10,000 scans of it. kvsync emits an event only when something changed (a
//! write, a repair, a new problem; see `reconcile`), so repeats are rare and
//! a series buys nothing worth that memory.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// The `note` field's limit (the API server refuses longer ones).
const NOTE_MAX: usize = 1024;
/// The part of an event's name taken from its object's name.
const NAME_PREFIX_MAX: usize = 200;
/// The `reportingInstance` field's limit.
const INSTANCE_MAX: usize = 128;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something went as it should.
    Normal,
    /// Something a user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Sends events on behalf of one controller instance.
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    controller: String,
    instance: String,
}

impl Events {
    /// Events reported by `controller` (e.g. `kvsync`) from `instance` (the
    /// pod's name; the controller's name when unknown).
    pub fn new(client: kube::Client, controller: &str, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| controller.to_string());
        Self {
            client,
            controller: controller.to_string(),
            instance: truncate(&instance, INSTANCE_MAX).to_string(),
        }
    }

    /// Sends one event about `regarding` (which must be namespaced).
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = self.event(regarding, type_, reason, action, note, Timestamp::now());
        Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }

    /// The Event object (pure, for tests).
    pub fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
        now: Timestamp,
    ) -> Event {
        // Within the 253 characters of a name, whatever the object's.
        let name = format!(
            "{}.{:x}",
            truncate(
                regarding.name.as_deref().unwrap_or("kvsync"),
                NAME_PREFIX_MAX
            ),
            now.as_nanosecond()
        );
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.as_str().to_string()),
            reason: Some(reason.to_string()),
            action: Some(action.to_string()),
            note: Some(truncate(note, NOTE_MAX).to_string()),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regarding() -> ObjectReference {
        ObjectReference {
            api_version: Some("kvsync.io/v1alpha1".into()),
            kind: Some("VaultSecretBinding".into()),
            name: Some("app".into()),
            namespace: Some("ci".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_event_names_its_object_reporter_and_time() {
        let events = Events::new(
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap(),
            "kvsync",
            Some("kvsync-0".into()),
        );
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let e = events.event(
            regarding(),
            EventType::Warning,
            "SyncFailed",
            "Sync",
            "no",
            now,
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(
            e.metadata.name,
            Some(format!("app.{:x}", now.as_nanosecond()))
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("SyncFailed"));
        assert_eq!(e.action.as_deref(), Some("Sync"));
        assert_eq!(e.reporting_controller.as_deref(), Some("kvsync"));
        assert_eq!(e.reporting_instance.as_deref(), Some("kvsync-0"));
        assert_eq!(e.regarding, Some(regarding()));
        assert_eq!(e.event_time, Some(MicroTime(now)));
    }

    #[tokio::test]
    async fn notes_and_instances_are_cut_to_what_the_api_server_accepts() {
        let long = "é".repeat(1000);
        let cut = truncate(&long, NOTE_MAX);
        assert!(cut.len() <= NOTE_MAX && cut.len() >= NOTE_MAX - 1);
        assert!(long.starts_with(cut));
        assert_eq!(truncate("short", NOTE_MAX), "short");
        let events = Events::new(
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap(),
            "kvsync",
            Some("x".repeat(300)),
        );
        assert_eq!(events.instance.len(), INSTANCE_MAX);
        let mut long = regarding();
        long.name = Some("b".repeat(253));
        let name = events
            .event(
                long,
                EventType::Normal,
                "Synced",
                "Sync",
                "n",
                Timestamp::now(),
            )
            .metadata
            .name
            .unwrap();
        assert!(name.len() <= 253, "{}", name.len());
    }
}
