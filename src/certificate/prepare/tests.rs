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
    *RUNS.lock().unwrap().entry(vault.to_string()).or_default() += 1;
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
                role: crate::plan::Role::Certificate(CertificateFormat::Tls),
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

/// A PFX admitted at exactly the key-derivation budget, that converts: a
/// SHA-256 MAC and two AES-256 parts (the shrouded key, the certificates),
/// each at the most iterations one derivation may have. Counted as kvsync
/// admits it (the MAC twice, for two passwords, and each part once):
/// 4 × 100,000 = 400,000; derived: 300,000, as the MAC verifies under the
/// first password tried.
fn budget_maximal_pfx(chain: &TestChain) -> SecretValue {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let der = |pem: &str| super::super::pem::blocks(pem).unwrap().remove(0).der;
    let certs: Vec<Certificate> = [&chain.leaf_pem, &chain.intermediate_pem, &chain.root_pem]
        .iter()
        .map(|pem| Certificate::from_der(&der(pem)).unwrap())
        .collect();
    let key = PrivateKey::from_der(&der(&chain.leaf_key_pem)).unwrap();
    let mut store = KeyStore::new();
    store.add_entry(
        "leaf",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new("leaf", key, certs)),
    );
    let pfx = store
        .writer("")
        .mac_iterations(super::super::pfx::MAX_ITERATIONS)
        .encryption_iterations(super::super::pfx::MAX_ITERATIONS)
        .write()
        .unwrap();
    SecretValue::new(base64::engine::general_purpose::STANDARD.encode(pfx))
}

/// Runs `work` on a current-thread runtime beside a task that ticks every
/// millisecond; returns what `work` returned and the longest the ticker
/// waited between two ticks (from before `work` started to after it ended).
fn beside_a_ticker<T>(work: impl std::future::Future<Output = T>) -> (T, Duration, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        // From before the work starts: a conversion run inline, before the
        // ticker's first poll, still shows as a gap.
        let started = Instant::now();
        let ticker = tokio::spawn({
            let done = done.clone();
            async move {
                let (mut last, mut worst, mut ticks) = (started, Duration::ZERO, 0);
                loop {
                    let now = Instant::now();
                    worst = worst.max(now - last);
                    last = now;
                    if done.load(Ordering::SeqCst) {
                        return (worst, ticks);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ticks += 1;
                }
            }
        });
        // The ticker runs first, as a runtime's other tasks already do.
        tokio::task::yield_now().await;
        let out = work.await;
        done.store(true, Ordering::SeqCst);
        let (worst, ticks) = ticker.await.unwrap();
        (out, worst, ticks)
    })
}

#[test]
fn a_costly_pfx_converts_off_the_task_that_asks_for_it() {
    let pfx = budget_maximal_pfx(&chain());
    let started = Instant::now();
    let inline = super::super::convert(&pfx, None);
    let cost = started.elapsed();
    assert!(inline.is_ok(), "{inline:?}");

    let vault = "https://ticker.vault.test/";
    let plan = cert_plan(&[("tls.crt", "web-tls")]);
    let fetched = fetched("tls.crt", &pfx, "v1");
    let (conversions, worst_gap, ticks) = beside_a_ticker(prepare(vault, &plan, &fetched));

    assert_eq!(runs(vault), 1);
    assert_eq!(conversions.get("tls.crt"), Some(&inline));
    eprintln!(
        "conversion {cost:?} inline; beside it the ticker's longest gap {worst_gap:?} over {ticks} ticks"
    );
    assert!(
        worst_gap < cost / 4,
        "the ticker waited {worst_gap:?}: the conversion ({cost:?}) blocked its runtime"
    );
    assert!(ticks > 1, "the ticker ran while the PFX converted");
}

#[tokio::test]
async fn one_version_converts_once_however_often_it_is_rendered() {
    let vault = "https://once.vault.test/";
    let c = chain();
    let plan = cert_plan(&[("tls.crt", "web-tls")]);
    let fetched = fetched("tls.crt", &SecretValue::new(c.keyvault_pem()), "v1");
    for _ in 0..20 {
        let conversions = prepare(vault, &plan, &fetched).await;
        let before = on_this_thread();
        let out = rendered(&plan, &fetched, &conversions).unwrap();
        assert_eq!(on_this_thread(), before, "render converted");
        assert_eq!(out.data["tls.crt"].expose(), c.chain_pem());
    }
    assert_eq!(runs(vault), 1);
}

#[tokio::test]
async fn three_hundred_versions_convert_once_each_and_are_kept() {
    let vault = "https://many.vault.test/";
    let pem = chain().keyvault_pem();
    let plan = cert_plan(&[("tls.crt", "web-tls")]);
    // Distinct values too (text outside the PEM blocks), as 300 versions
    // of one certificate are.
    let versions: Vec<(String, SecretValue)> = (0..300)
        .map(|i| {
            let value = SecretValue::new(format!("{pem}version {i}\n"));
            (format!("version-{i:03}"), value)
        })
        .collect();
    for round in 0..2 {
        for (version, value) in &versions {
            let fetched = fetched("tls.crt", value, version);
            let conversions = prepare(vault, &plan, &fetched).await;
            assert!(conversions.get("tls.crt").unwrap().is_ok());
        }
        assert_eq!(runs(vault), 300, "after round {round}");
    }
}

#[tokio::test]
async fn a_failed_conversion_is_kept_too() {
    let vault = "https://refused.vault.test/";
    let plan = cert_plan(&[("tls.crt", "plain")]);
    let fetched = fetched(
        "tls.crt",
        &SecretValue::new("hunter2, not a certificate"),
        "v1",
    );
    for _ in 0..5 {
        let conversions = prepare(vault, &plan, &fetched).await;
        assert_eq!(
            conversions.get("tls.crt"),
            Some(&Err(CertError::Unrecognized))
        );
        let e = rendered(&plan, &fetched, &conversions).unwrap_err();
        assert_eq!(e.reason(), crate::reason::Reason::CertificateInvalid);
    }
    assert_eq!(runs(vault), 1);
}

#[tokio::test]
async fn the_key_is_vault_name_without_case_and_version() {
    let value = SecretValue::new(chain().keyvault_pem());
    let (one, other) = ("https://one.vault.test/", "https://other.vault.test/");
    let fetched = fetched("tls.crt", &value, "v1");
    prepare(one, &cert_plan(&[("tls.crt", "Web-TLS")]), &fetched).await;
    prepare(one, &cert_plan(&[("tls.crt", "web-tls")]), &fetched).await;
    assert_eq!(runs(one), 1, "Key Vault names ignore case");
    prepare(other, &cert_plan(&[("tls.crt", "web-tls")]), &fetched).await;
    assert_eq!(runs(other), 1, "another vault's secret is another entry");
}

#[tokio::test]
async fn concurrent_renders_of_one_version_share_one_conversion() {
    let vault = "https://shared.vault.test/";
    let value = SecretValue::new(chain().keyvault_pem());
    // One cluster binding in three namespaces, and one plan naming the
    // certificate twice.
    let plan = cert_plan(&[("a.crt", "web-tls"), ("b.crt", "web-tls")]);
    let mut fetched = fetched("a.crt", &value, "v1");
    fetched.insert("b.crt".into(), fetched["a.crt"].clone());
    let (x, y, z) = tokio::join!(
        prepare(vault, &plan, &fetched),
        prepare(vault, &plan, &fetched),
        prepare(vault, &plan, &fetched),
    );
    assert_eq!(runs(vault), 1);
    for c in [&x, &y, &z] {
        assert!(Arc::ptr_eq(&c.by_key["a.crt"], &x.by_key["b.crt"]));
    }
}

#[tokio::test]
async fn a_version_without_an_id_is_converted_every_time() {
    let vault = "https://unversioned.vault.test/";
    let value = SecretValue::new(chain().keyvault_pem());
    let plan = cert_plan(&[("tls.crt", "web-tls")]);
    let fetched = fetched("tls.crt", &value, "");
    prepare(vault, &plan, &fetched).await;
    prepare(vault, &plan, &fetched).await;
    assert_eq!(runs(vault), 2, "nothing says the value is the same");
}

#[test]
fn the_cache_evicts_the_least_recently_used_down_to_its_bounds() {
    let mut cache = Cache {
        entries: BTreeMap::new(),
        order: BTreeMap::new(),
        clock: 0,
        bytes: 0,
    };
    let key = |i: usize| VersionKey {
        vault: "v".into(),
        name: "n".into(),
        version: i.to_string(),
    };
    let refused: Conversion = Arc::new(Err(CertError::Unrecognized));
    for i in 0..=CACHE_ENTRIES {
        let cell = cache.cell(&key(i));
        cache.settle(&key(i), &cell, &refused);
        // Version 0 stays in use.
        cache.cell(&key(0));
    }
    assert_eq!(cache.entries.len(), CACHE_ENTRIES);
    assert!(cache.entries.contains_key(&key(0)));
    assert!(!cache.entries.contains_key(&key(1)), "the oldest went");
    assert_eq!(cache.bytes, CACHE_ENTRIES * ENTRY_OVERHEAD);

    // Bytes: entries of 4 MiB each, so only CACHE_BYTES / 4 MiB fit.
    let big = SecretValue::new("x".repeat(4 << 20));
    let large: Conversion = Arc::new(Ok(Converted {
        tls_crt: big.clone(),
        tls_key: SecretValue::new(""),
        not_after: 0,
        subject: String::new(),
    }));
    for i in 0..CACHE_BYTES / (4 << 20) {
        let k = key(CACHE_ENTRIES + 1 + i);
        let cell = cache.cell(&k);
        cache.settle(&k, &cell, &large);
    }
    assert!(cache.bytes <= CACHE_BYTES);
    assert!(cache.entries.len() < CACHE_BYTES / (4 << 20));
}
