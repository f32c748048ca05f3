//! The VaultSecretBindings as the cluster-binding controller needs them,
//! fed by their watch (pure: `apply` an event, ask questions): the bindings
//! kept for each cluster binding, whole (their status is what the cluster
//! binding reports), and of every other binding only the Secret it writes
//! (what a cluster binding must not take from it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::crd::VaultSecretBinding;
use crate::crd::cluster::PARENT_ANNOTATION;

/// Namespace → binding name → the Secret it writes.
type Targets = HashMap<String, HashMap<String, String>>;
/// Cluster binding → namespace → the binding kept for it there.
type Children = HashMap<String, BTreeMap<String, Arc<VaultSecretBinding>>>;
/// One watch's state: a re-list in progress (what it brought so far), and
/// whether it listed once.
type WatchState = (Option<(Targets, Children)>, bool);

/// What the watches of the VaultSecretBindings hold for the cluster
/// bindings: one watch of every namespace, or (with `--namespace`) one per
/// namespace served, each re-listing on its own.
#[derive(Debug, Default)]
pub struct BindingIndex {
    own: Targets,
    children: Children,
    /// Per watch (`None`: all namespaces): a re-list in progress and what
    /// it brought so far (swapped in at its end, so bindings deleted while
    /// the watch was down disappear), and whether it listed once.
    watches: HashMap<Option<String>, WatchState>,
}

/// Who a binding event concerns, for the controller's triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concerns {
    /// A binding kept for this cluster binding.
    Child(String),
    /// A namespace's own binding writing this Secret in this namespace.
    Own {
        /// The binding's namespace.
        namespace: String,
        /// The binding's name.
        name: String,
        /// The Secret it writes.
        target: String,
    },
}

/// Whether `b` is one kvsync made for cluster binding `parent`: named like
/// it, annotated with its name and owned by a ClusterVaultSecretBinding of
/// that name (the uid is checked where the cluster binding is known). A
/// claim made by hand is a binding of the namespace's own.
pub fn kept_for(b: &VaultSecretBinding) -> Option<&str> {
    let parent = b.annotations().get(PARENT_ANNOTATION)?;
    let owned = b.owner_references().iter().any(|o| {
        o.kind == "ClusterVaultSecretBinding" && o.name == *parent && o.controller == Some(true)
    });
    (*parent == b.name_any() && owned).then_some(parent.as_str())
}

/// Who `b` concerns.
pub fn concerns(b: &VaultSecretBinding) -> Concerns {
    match kept_for(b) {
        Some(parent) => Concerns::Child(parent.to_string()),
        None => Concerns::Own {
            namespace: b.namespace().unwrap_or_default(),
            name: b.name_any(),
            target: b.spec.target_name(&b.name_any()).to_string(),
        },
    }
}

/// What of a kept binding its cluster binding reports: a change elsewhere
/// (a heartbeat's lastSyncTime, an annotation) is no reason to decide again.
fn reported(b: &VaultSecretBinding) -> impl PartialEq + use<> {
    let st = b.status.as_ref();
    let ready = st
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == crate::status::READY)
        })
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    (
        b.meta().generation,
        b.uid(),
        b.meta().deletion_timestamp.is_some(),
        b.owner_references().first().map(|o| o.uid.clone()),
        st.and_then(|s| s.observed_generation),
        ready,
        st.map(|s| {
            s.secrets
                .iter()
                .map(|x| (x.name.clone(), x.version.clone()))
                .collect::<Vec<_>>()
        }),
        b.spec.clone(),
        // names:
        b.annotations()
            .get(crate::reconcile::FORCE_SYNC_ANNOTATION)
            .cloned(),
    )
}

fn insert(own: &mut Targets, children: &mut Children, b: &VaultSecretBinding) -> bool {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let before_own = own.get(&ns).and_then(|n| n.get(&name)).cloned();
    let before_child = children
        .get(&name)
        .and_then(|c| c.get(&ns))
        .map(|c| reported(c));
    remove(own, children, b);
    match concerns(b) {
        Concerns::Child(parent) => {
            let changed = before_child.is_none_or(|r| r != reported(b));
            children
                .entry(parent)
                .or_default()
                .insert(ns, Arc::new(b.clone()));
            changed || before_own.is_some()
        }
        Concerns::Own { name, target, .. } => {
            let changed = before_own.as_ref() != Some(&target) || before_child.is_some();
            own.entry(ns).or_default().insert(name, target);
            changed
        }
    }
}

/// Removes `b` whatever it was before (a child that lost its annotation
/// becomes a binding of its own, and the other way round).
fn remove(own: &mut Targets, children: &mut Children, b: &VaultSecretBinding) {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    if let Some(names) = own.get_mut(&ns) {
        names.remove(&name);
        if names.is_empty() {
            own.remove(&ns);
        }
    }
    if let Some(by_ns) = children.get_mut(&name) {
        by_ns.remove(&ns);
        if by_ns.is_empty() {
            children.remove(&name);
        }
    }
}

impl BindingIndex {
    /// An index fed by one watch per entry of `scopes` (`None`: all
    /// namespaces).
    pub fn new(scopes: impl IntoIterator<Item = Option<String>>) -> Self {
        Self {
            watches: scopes.into_iter().map(|s| (s, (None, false))).collect(),
            ..Default::default()
        }
    }

    /// Takes in one event of the watch of `scope`; true when it changed
    /// something a cluster binding decides or reports by (a re-list's end
    /// always counts: what it dropped shows only there).
    pub fn apply(
        &mut self,
        scope: Option<&str>,
        event: &watcher::Event<VaultSecretBinding>,
    ) -> bool {
        let key = scope.map(str::to_string);
        match event {
            watcher::Event::Init => {
                self.watches.entry(key).or_default().0 = Some(Default::default());
                false
            }
            watcher::Event::InitApply(b) => {
                if let Some((own, children)) = self.watches.entry(key).or_default().0.as_mut() {
                    insert(own, children, b);
                }
                false
            }
            watcher::Event::InitDone => {
                let entry = self.watches.entry(key).or_default();
                entry.1 = true;
                if let Some((own, children)) = entry.0.take() {
                    // Replaces what this watch covers, nothing else.
                    let covers = |ns: &str| scope.is_none_or(|s| s == ns);
                    self.own.retain(|ns, _| !covers(ns));
                    for by_ns in self.children.values_mut() {
                        by_ns.retain(|ns, _| !covers(ns));
                    }
                    self.children.retain(|_, by_ns| !by_ns.is_empty());
                    self.own.extend(own);
                    for (parent, by_ns) in children {
                        self.children.entry(parent).or_default().extend(by_ns);
                    }
                }
                true
            }
            watcher::Event::Apply(b) => insert(&mut self.own, &mut self.children, b),
            watcher::Event::Delete(b) => {
                remove(&mut self.own, &mut self.children, b);
                true
            }
        }
    }

    /// Whether every watch has listed once.
    pub fn listed(&self) -> bool {
        !self.watches.is_empty() && self.watches.values().all(|(_, listed)| *listed)
    }

    /// The bindings kept for cluster binding `parent`, by namespace.
    pub fn children_of(&self, parent: &str) -> BTreeMap<String, Arc<VaultSecretBinding>> {
        self.children.get(parent).cloned().unwrap_or_default()
    }

    /// The namespace's own bindings: name → the Secret each writes.
    pub fn own_in(&self, namespace: &str) -> HashMap<String, String> {
        self.own.get(namespace).cloned().unwrap_or_default()
    }
}
