//! Tokens per identity: a [`TokenSource`] caches one token per scope,
//! refreshes it ahead of expiry, lets one request be in flight and answers
//! a failure from the cache for a while; [`TokenSources`] shares one source
//! per identity among every binding that uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::super::retry::RetryPolicy;
use super::{
    AzureEnvironment, Credential, FAILURE_CACHE_TTL, IdentityError, MAX_TOKEN_LIFETIME,
    MIN_TOKEN_LIFETIME,
};
use crate::value::SecretValue;

/// An access token and when to stop using it.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token.
    pub token: SecretValue,
    /// When Entra says it expires.
    pub expires_at: SystemTime,
    pub(super) refresh_at: SystemTime,
}

impl AccessToken {
    /// A token valid for `lifetime`, clamped to
    /// [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`].
    pub fn new(token: SecretValue, lifetime: Duration) -> Self {
        let lifetime = lifetime.clamp(MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
        let now = SystemTime::now();
        // Refresh ahead of expiry: 5 minutes early, or at half-life for short tokens.
        let margin = Duration::from_secs(300).min(lifetime / 2);
        let expires_at = now.checked_add(lifetime).unwrap_or(now);
        Self {
            token,
            expires_at,
            refresh_at: expires_at.checked_sub(margin).unwrap_or(now),
        }
    }

    fn fresh(&self) -> bool {
        SystemTime::now() < self.refresh_at
    }
}

/// A failed token request and how long to answer with it.
pub(super) struct Failure {
    pub(super) error: IdentityError,
    pub(super) retry_after: Option<Duration>,
}

impl From<IdentityError> for Failure {
    fn from(error: IdentityError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// What a [`TokenSource`] remembers per scope.
#[derive(Default)]
struct TokenCache {
    tokens: HashMap<String, AccessToken>,
    /// Recent failures and until when they are answered from here.
    failures: HashMap<String, (IdentityError, Instant)>,
}

/// Turns a credential into access tokens; cached per scope, one request in
/// flight at a time.
pub struct TokenSource {
    pub(super) credential: Credential,
    pub(super) env: AzureEnvironment,
    pub(super) http: reqwest::Client,
    pub(super) retry: RetryPolicy,
    /// Per identity, so holding it across the token request makes callers of
    /// this identity wait for the one request, and no other identity waits.
    cache: tokio::sync::Mutex<TokenCache>,
    requests: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    /// A token source for `credential`.
    pub fn new(
        credential: Credential,
        env: AzureEnvironment,
        http: reqwest::Client,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            credential,
            env,
            http,
            retry,
            cache: tokio::sync::Mutex::new(TokenCache::default()),
            requests: Default::default(),
        }
    }

    /// The credential behind this source.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// Who this is, for messages.
    pub fn describe(&self) -> String {
        self.credential.describe()
    }

    /// Token requests sent so far (cache misses).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A token for `scope`, from the cache while it is fresh. A failure is
    /// answered from the cache for [`FAILURE_CACHE_TTL`] (or the endpoint's
    /// `Retry-After`), so a refusing Entra ID sees one request per identity,
    /// not one per reader.
    pub async fn token(&self, scope: &str) -> Result<AccessToken, IdentityError> {
        // Holding the lock across the request makes concurrent callers wait
        // for the one request instead of sending their own.
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.tokens.get(scope).filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        let now = Instant::now();
        if let Some((e, _)) = cache.failures.get(scope).filter(|(_, until)| *until > now) {
            return Err(e.clone());
        }
        cache.failures.remove(scope);
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch(scope).await {
            Ok(token) => {
                cache.tokens.insert(scope.to_string(), token.clone());
                Ok(token)
            }
            Err(f) => {
                let ttl = f
                    .retry_after
                    .unwrap_or(FAILURE_CACHE_TTL)
                    .min(self.retry.max_retry_after);
                if let Some(until) = Instant::now().checked_add(ttl) {
                    cache
                        .failures
                        .insert(scope.to_string(), (f.error.clone(), until));
                }
                Err(f.error)
            }
        }
    }

    /// Drops the cached token (and failure) for `scope`, after the vault
    /// refused the token.
    pub async fn invalidate(&self, scope: &str) {
        let mut cache = self.cache.lock().await;
        cache.tokens.remove(scope);
        cache.failures.remove(scope);
    }
}

/// Shares one [`TokenSource`] per identity among all bindings. It holds weak
/// references: a source lives as long as some client uses it, so the source
/// of a rotated client secret (a new key) or of a deleted binding's identity
/// goes with its last client. The lock guards the map only, never I/O.
#[derive(Default)]
pub struct TokenSources {
    sources: Mutex<HashMap<String, Weak<TokenSource>>>,
}

impl TokenSources {
    /// The source for `credential`, created on first use.
    pub fn get(
        &self,
        credential: Credential,
        env: &AzureEnvironment,
        http: &reqwest::Client,
        retry: RetryPolicy,
    ) -> Arc<TokenSource> {
        let key = credential.key();
        let mut map = self.sources.lock().expect("token source registry lock");
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(source) = map.get(&key).and_then(Weak::upgrade) {
            return source;
        }
        let source = Arc::new(TokenSource::new(
            credential,
            env.clone(),
            http.clone(),
            retry,
        ));
        map.insert(key, Arc::downgrade(&source));
        source
    }

    /// How many identities have a source some client still uses.
    pub fn len(&self) -> usize {
        let mut map = self.sources.lock().expect("token source registry lock");
        map.retain(|_, w| w.strong_count() > 0);
        map.len()
    }

    /// True when no identity has a source yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
