//! The VaultSecretBindings as the cluster-binding controller needs them,
//! fed by their watch (pure: `apply` an event, ask questions): the bindings
//! kept for each cluster binding, whole (their status is what the cluster
//! binding reports), and of every other binding only the Secret it writes
//! (what a cluster binding must not take from it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::crd::VaultSecretBinding;
use crate::crd::cluster::PARENT_ANNOTATION;

/// Namespace → binding name → the Secret it writes.
type Targets = HashMap<String, HashMap<String, String>>;
/// Cluster binding → namespace → the binding kept for it there.
type Children = HashMap<String, BTreeMap<String, Arc<VaultSecretBinding>>>;

/// What the watch of every VaultSecretBinding holds for the cluster
/// bindings.
#[derive(Debug, Default)]
pub struct BindingIndex {
    own: Targets,
    children: Children,
    /// A re-list in progress: what it brought so far (swapped in at its end,
    /// so bindings deleted while the watch was down disappear).
    relist: Option<(Targets, Children)>,
    listed: bool,
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

/// Who `b` concerns.
pub fn concerns(b: &VaultSecretBinding) -> Concerns {
    match b.annotations().get(PARENT_ANNOTATION) {
        Some(parent) if *parent == b.name_any() => Concerns::Child(parent.clone()),
        _ => Concerns::Own {
            namespace: b.namespace().unwrap_or_default(),
            name: b.name_any(),
            target: b.spec.target_name(&b.name_any()).to_string(),
        },
    }
}

fn insert(own: &mut Targets, children: &mut Children, b: &VaultSecretBinding) {
    let ns = b.namespace().unwrap_or_default();
    remove(own, children, b);
    match concerns(b) {
        Concerns::Child(parent) => {
            children
                .entry(parent)
                .or_default()
                .insert(ns, Arc::new(b.clone()));
        }
        Concerns::Own { name, target, .. } => {
            own.entry(ns).or_default().insert(name, target);
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
    /// Takes in one watch event.
    pub fn apply(&mut self, event: &watcher::Event<VaultSecretBinding>) {
        match event {
            watcher::Event::Init => self.relist = Some(Default::default()),
            watcher::Event::InitApply(b) => {
                if let Some((own, children)) = self.relist.as_mut() {
                    insert(own, children, b);
                }
            }
            watcher::Event::InitDone => {
                if let Some((own, children)) = self.relist.take() {
                    self.own = own;
                    self.children = children;
                }
                self.listed = true;
            }
            watcher::Event::Apply(b) => insert(&mut self.own, &mut self.children, b),
            watcher::Event::Delete(b) => remove(&mut self.own, &mut self.children, b),
        }
    }

    /// Whether a complete listing is held.
    pub fn listed(&self) -> bool {
        self.listed
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
