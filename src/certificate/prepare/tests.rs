//! Where conversion runs and how often: off the calling task, once per
//! (vault, name, version), failures too.
//!
//! The cache and the pool are process-wide and tests run in parallel: each
//! test reads its own vault URL, and counts conversions by vault.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::*;
use crate::crd::{CertificateFormat, OnDisabled, OnExpired};
use crate::devvault::testcerts::{TestChain, make_chain};
use crate::hashkey::HashKey;
use crate::render::{RenderInput, render};

static RUNS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Called for every conversion started on the pool.
pub(super) fn count(vault: &str) {
    *RUNS
        .lock()
        .unwrap()
        .entry(vault.to_string())
        .or_default() += 1;
}

/// Conversions started for `vault` so far.
fn runs(vault: &str) -> usize {
    RUNS.lock().unwrap().get(vault).copied().unwrap_or(0)
}

/// Conversions run on this thread (`convert`'s own counter).
fn on_this_thread() -> usize {
    super::super::CONVERSIONS.with(|n| n.get())
}

fn chain() -> TestChain {
    make_chain("Prepare Root", "Prepare CA", "prepare.example.test").unwrap()
}

fn cert_plan(keys: &[(&str, &str)]) -> Plan {
    Plan {
        keys: keys
            .iter()
            .map(|(key, secret)| PlannedKey {
                key: key.to_string(),
                secret: secret.to_string(),
                version: None,
                optional: false,
                certificate: Some(CertificateFormat::Tls),
            })
            .collect(),
    }
}

fn fetched(key: &str, value: &SecretValue, version: &str) -> BTreeMap<String, Fetched> {
    let value = Fetched::Value {
        value: value.clone(),
        version: version.to_string(),
        updated: None,
        expires: None,
    };
    [(key.to_string(), value)].into()
}

fn rendered(
    plan: &Plan,
    fetched: &BTreeMap<String, Fetched>,
    certificates: &Conversions,
) -> Result<crate::render::Rendered, crate::render::RenderError> {
    render(&RenderInput {
        plan,
        fetched,
        current: None,
        previous: &[],
        on_disabled: OnDisabled::KeepLast,
        on_expired: OnExpired::Sync,
        now: 1_800_000_000,
        hash_key: &HashKey::new(b"test-key"),
        template: None,
        certificates,
    })
}

/// A PFX that costs the whole key-derivation budget and still converts
/// (to a refusal: two keys, found only after every derivation): a SHA-256
/// MAC and three AES-256 parts (two shrouded keys, the certificates), each
/// at the most iterations one derivation may have. 4 × 100,000 = 400,000.
fn budget_maximal_pfx(chain: &TestChain) -> SecretValue {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let der = |pem: &str| super::super::pem::blocks(pem).unwrap().remove(0).der;
    let certs: Vec<Certificate> = [&chain.leaf_pem, &chain.intermediate_pem, &chain.root_pem]
        .iter()
        .map(|pem| Certificate::from_der(&der(pem)).unwrap())
        .collect();
    let mut store = KeyStore::new();
    for (alias, key_pem) in [("a", chain.leaf_key_pem.clone()), ("b", other_key_pem())] {
        let key = PrivateKey::from_der(&der(&key_pem)).unwrap();
        store.add_entry(
            alias,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(alias, key, certs.clone())),
        );
    }
    let pfx = store
        .writer("")
        .mac_iterations(super::super::pfx::MAX_ITERATIONS)
        .encryption_iterations(super::super::pfx::MAX_ITERATIONS)
        .write()
        .unwrap();
    SecretValue::new(base64::engine::general_purpose::STANDARD.encode(pfx))
}

fn other_key_pem() -> String {
    make_chain("R2", "I2", "other.example.test")
        .unwrap()
        .leaf_key_pem
}

#[test]
fn budget_maximal_pfx_costs_the_whole_budget() {
    let started = Instant::now();
    let result = super::super::convert(&budget_maximal_pfx(&chain()), None);
    eprintln!("{result:?} in {:?}", started.elapsed());
}
