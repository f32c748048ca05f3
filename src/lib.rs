//! kvsync: a Kubernetes operator that keeps native Secrets in step with Azure Key Vault.
//!
//! How the pieces relate (data flows left to right, a module never calls
//! one to its left):
//!
//! ```text
//!  controller ──▶ reconcile ──▶ plan ──▶ poller ──▶ render ──▶ apply ──▶ status
//!  (watches,       (one          (pure:   (index +   (pure:     (SSA of   (pure +
//!   leader,         binding)      keys)    azure)     data,      the       SSA on
//!   shard, sweep)                                     hash)      Secret)   /status)
//!       │                                     │
//!       ▼                                     ▼
//!  server (/metrics,               azure::{hosts, identity, keyvault}
//!   /healthz, /readyz)              (host guard, Entra ID, Key Vault REST)
//! ```
//!
//! - [`crd`]: the `VaultSecretBinding` resource and its validation.
//! - [`plan`]: which vault secret becomes which key (pure).
//! - [`poller`]: one per (vault, identity): a pure index of what the vault
//!   holds and who needs it, and the only code that talks to a vault.
//! - [`render`]: the Secret's data from what was read (pure), keyed by
//!   [`hashkey`]; [`apply`] writes it, [`status`] reports it, [`rollout`]
//!   restarts consumers; [`reason`] is the closed set of condition reasons.
//! - [`operator`] is `kvsync run`: one watch per kind (per namespace
//!   served), shared by the namespaced [`controller`] and the [`cluster`]
//!   binding controller, with [`leader`] election and [`shard`]ing;
//!   [`watch`] trims, filters and monitors watches for both.
//!   [`check`] is `kvsync check`; [`devvault`] stands in for Azure.

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
