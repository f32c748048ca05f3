#![warn(missing_docs)]
//! kvsync: a Kubernetes operator that keeps native Secrets in step with Azure Key Vault.
//!
//! How the pieces relate. Arrows point the way the imports go: a module
//! uses the ones below it, never one above.
//!
//! ```text
//!  main ─▶ operator (kvsync run: the one wiring) ─▶ watch (one watch per kind, shared)
//!             │                                        │
//!             ├─▶ controller (namespaced bindings) ◀───┤
//!             └─▶ cluster (ClusterVaultSecretBindings: fanout, index, view)
//!                    │
//!                    ▼
//!  reconcile/ (one binding: mod → context → sync → rollout, notify)
//!    sync: authorize ─▶ read ─▶ compare ─▶ write ─▶ restart ─▶ report
//!           │           │        │          │         │          │
//!           ▼           ▼        ▼          ▼         ▼          ▼
//!        prepare      poller   render     apply     rollout    status
//!        (validate,   (index,  (template, (SSA,     (patch     (conditions,
//!         host guard,  fair,    shape,     finalizer) restartedAt) SSA on /status)
//!         plan,        pins)    certificate)
//!         policy,       │
//!         identity)     ▼
//!                     azure (hosts, identity/, keyvault, http, ratelimit, retry)
//!
//!  check (kvsync check): prepare ─▶ poller ─▶ certificate ─▶ render, the same path
//!  beneath all: crd (resource types, names, matching, validate), reason, value, duration
//!  beside: server (/metrics, /healthz, /readyz), metrics, leader, shard, events,
//!          hashkey, versions, devvault (the stand-in for Azure)
//! ```
//!
//! - [`crd`]: the resources, their validation, [`crd::names`] (every name
//!   kvsync writes on other objects) and [`crd::matching`] (globs and label
//!   selectors).
//! - [`plan`]: every read a binding makes, for which key and from which
//!   field (pure) — the one source of truth that [`policy`], [`poller`],
//!   [`check`] and holding in [`render`] all judge.
//! - [`prepare`]: the front half of a sync, shared by the reconcile and
//!   [`check`]: validate, host guard, plan, identity, policy, credential.
//! - [`poller`]: one per (vault, identity): a pure index of what the vault
//!   holds and who needs it, and the only code that talks to a vault;
//!   reads stop at the Secret limit, namespaces get fair shares.
//! - [`render`]: the Secret's data from what was read (pure; [`template`],
//!   [`shape`], [`certificate`]), keyed by [`hashkey`]; [`apply`] writes it,
//!   [`status`] reports it, [`rollout`] restarts consumers; [`reason`] is
//!   the closed set of condition reasons.
//! - [`operator`] is `kvsync run`: one watch per kind (per namespace
//!   served), shared by the namespaced [`controller`] and the [`cluster`]
//!   binding controller, with [`leader`] election and [`shard`]ing;
//!   [`watch`] trims, filters and monitors watches for both.
//!   [`check`] is `kvsync check`; [`devvault`] stands in for Azure.
//!
//! Following one answer — a binding's vault refuses a secret with 403:
//! [`azure::keyvault`] classifies the response (`Forbidden`/`ForbiddenByRbac`,
//! with the Azure error code) → [`poller`] records the failure on that name
//! only (`poller/index.rs`; other bindings' names are untouched) → the
//! binding's read (`reconcile/sync.rs`, step `read`) fails with the name's
//! [`reason`], or, for an optional or selected name, the key keeps its value
//! (`render.rs`, `Fetched::Unavailable`; a template that could read it holds,
//! `template/dependencies.rs`) → `reconcile/mod.rs` writes the condition
//! ([`status`]) and one Warning event (`reconcile/notify.rs`) and retries
//! with backoff.

pub mod apply;
pub mod azure;
pub mod certificate;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod devvault;
pub mod duration;
pub mod events;
pub mod fetched;
pub mod hashkey;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod policy;
pub mod poller;
pub mod prepare;
pub mod reason;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod server;
pub mod shape;
pub mod shard;
pub mod status;
pub mod template;
pub mod value;
pub mod versions;
pub mod watch;
