//! Access to Azure: the vault host guard, the HTTPS client, Entra ID
//! credentials and the Key Vault secrets client. Nothing here knows about
//! Kubernetes resources beyond reading what a credential needs.

pub mod hosts;
pub mod http;
pub mod identity;
pub mod keyvault;
pub mod ratelimit;
pub mod retry;

use std::sync::{Arc, Weak};

use hosts::{HostError, VaultEndpoint, VaultHostPolicy};
use identity::{AzureEnvironment, Credential, TokenSource, TokenSources};
use keyvault::KeyVaultClient;
use retry::RetryPolicy;

/// Everything needed to reach Azure, shared by the whole operator: one HTTPS
/// client, the host guard, the environment, and one token source per identity.
pub struct AzureAccess {
    /// The HTTPS client (connection pool shared by every vault).
    pub http: reqwest::Client,
    /// The vault host guard.
    pub policy: VaultHostPolicy,
    /// The operator's Azure environment.
    pub env: AzureEnvironment,
    /// Retry policy of every call.
    pub retry: RetryPolicy,
    tokens: TokenSources,
    observer: Option<keyvault::RequestObserver>,
    /// One request budget per vault host, alive while a client uses it: a
    /// vault nobody reads any more (a typo'd or abandoned `vaultUrl`) leaves
    /// nothing behind.
    limiters: std::sync::Mutex<std::collections::HashMap<String, Weak<ratelimit::RateLimiter>>>,
}

impl AzureAccess {
    /// Builds the shared access.
    pub fn new(
        http: reqwest::Client,
        policy: VaultHostPolicy,
        env: AzureEnvironment,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            policy,
            env,
            retry,
            tokens: TokenSources::default(),
            observer: None,
            limiters: Default::default(),
        }
    }

    /// Reports every Key Vault request of the clients made from now on.
    pub fn with_observer(mut self, observer: keyvault::RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Checks a vault URL against the host guard. Call before resolving any
    /// identity: a refused URL must not cause a token request.
    pub fn endpoint(&self, vault_url: &str) -> Result<VaultEndpoint, HostError> {
        self.policy.check(vault_url)
    }

    /// The shared token source of `credential`.
    pub fn token_source(&self, credential: Credential) -> Arc<TokenSource> {
        self.tokens
            .get(credential, &self.env, &self.http, self.retry)
    }

    /// A client for `endpoint` signed in as `credential`. Every client of
    /// one vault shares that vault's request budget, whatever its identity,
    /// and reports its requests to the observer (metrics).
    pub fn client(&self, endpoint: VaultEndpoint, credential: Credential) -> KeyVaultClient {
        let limiter = {
            let mut limiters = self.limiters.lock().expect("limiters");
            limiters.retain(|_, l| l.strong_count() > 0);
            let key = endpoint.authority();
            match limiters.get(&key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(ratelimit::RateLimiter::default());
                    limiters.insert(key, Arc::downgrade(&l));
                    l
                }
            }
        };
        KeyVaultClient::new(
            self.http.clone(),
            endpoint,
            self.token_source(credential),
            self.retry,
        )
        .with_observer(self.observer.clone())
        .with_limiter(limiter)
    }

    /// Number of identities with a token source.
    pub fn identities(&self) -> usize {
        self.tokens.len()
    }

    /// Number of vaults with a live request budget.
    pub fn vaults(&self) -> usize {
        let limiters = self.limiters.lock().expect("limiters");
        limiters.values().filter(|l| l.strong_count() > 0).count()
    }
}
