//! Access to Azure: the vault host guard, the HTTPS client, Entra ID
//! credentials and the Key Vault secrets client. Nothing here knows about
//! Kubernetes resources beyond reading what a credential needs.

pub mod hosts;
pub mod http;
pub mod identity;
pub mod keyvault;
pub mod retry;
