//! kvsync: a Kubernetes operator that keeps native Secrets in step with Azure Key Vault.

pub mod apply;
pub mod azure;
pub mod check;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod devvault;
pub mod duration;
pub mod hashkey;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod poller;
pub mod reason;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod server;
pub mod shard;
pub mod status;
pub mod value;
