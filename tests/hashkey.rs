//! The dataHash key Secret against a scripted API server: read, made on the
//! first start, the race of two replicas, and an unusable Secret.

mod support;

use std::collections::BTreeMap;

use base64::Engine;
use kvsync::hashkey::{HashKey, HashKeyError, load_or_create};
use kvsync::value::SecretValue;
use serde_json::{Value, json};
use support::mock::{self, expect, expect_answering};

const PATH: &str = "/api/v1/namespaces/kvsync/secrets/kvsync-hash-key";
const COLLECTION: &str = "/api/v1/namespaces/kvsync/secrets";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_secret(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "kvsync-hash-key", "namespace": "kvsync", "resourceVersion": "3"},
        "data": data})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
        "message": format!("secrets \"kvsync-hash-key\" {reason}")})
}

fn sample() -> BTreeMap<String, SecretValue> {
    [("K".to_string(), SecretValue::new("v".to_string()))].into()
}

/// Two keys are the same key when they hash the same data alike.
fn same_key(a: &HashKey, b: &HashKey) -> bool {
    a.data_hash(&sample()) == b.data_hash(&sample())
}

#[tokio::test]
async fn an_existing_secret_provides_the_key() {
    let (client, mut handle) = mock::client();
    let bytes = [7u8; 32];
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(
        &mut handle,
        "GET",
        PATH,
        200,
        key_secret(json!({"key": b64(&bytes)})),
    )
    .await;
    let key = load.await.unwrap().expect("the key loads");
    assert!(same_key(&key, &HashKey::new(&bytes)));
    assert!(!same_key(&key, &HashKey::new(&[8u8; 32])));
}

#[tokio::test]
async fn a_missing_secret_is_created_with_32_random_bytes() {
    let (client, mut handle) = mock::client();
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(&mut handle, "GET", PATH, 404, status(404, "NotFound")).await;
    let (_, sent) = expect_answering(&mut handle, "POST", COLLECTION, 201, Value::clone).await;
    let key = load.await.unwrap().expect("the key is made");

    assert_eq!(sent["metadata"]["name"], "kvsync-hash-key");
    assert_eq!(
        sent["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kvsync"
    );
    assert_eq!(sent["immutable"], true);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sent["data"]["key"].as_str().expect("data.key"))
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_ne!(bytes, vec![0u8; 32], "random, not zeroed");
    assert!(
        same_key(&key, &HashKey::new(&bytes)),
        "the key used is the key stored"
    );
}

#[tokio::test]
async fn two_makers_are_random_apart() {
    let mut made = Vec::new();
    for _ in 0..2 {
        let (client, mut handle) = mock::client();
        let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
        expect(&mut handle, "GET", PATH, 404, status(404, "NotFound")).await;
        let (_, sent) = expect_answering(&mut handle, "POST", COLLECTION, 201, Value::clone).await;
        load.await.unwrap().unwrap();
        made.push(sent["data"]["key"].clone());
    }
    assert_ne!(made[0], made[1]);
}

#[tokio::test]
async fn a_lost_create_race_uses_the_winners_key() {
    let (client, mut handle) = mock::client();
    let winner = [42u8; 32];
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(&mut handle, "GET", PATH, 404, status(404, "NotFound")).await;
    expect(
        &mut handle,
        "POST",
        COLLECTION,
        409,
        status(409, "AlreadyExists"),
    )
    .await;
    expect(
        &mut handle,
        "GET",
        PATH,
        200,
        key_secret(json!({"key": b64(&winner)})),
    )
    .await;
    let key = load.await.unwrap().expect("the winner's key loads");
    assert!(same_key(&key, &HashKey::new(&winner)));
}

#[tokio::test]
async fn a_short_key_is_an_error_that_says_to_delete_the_secret() {
    let (client, mut handle) = mock::client();
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(
        &mut handle,
        "GET",
        PATH,
        200,
        key_secret(json!({"key": b64(b"short")})),
    )
    .await;
    let err = load.await.unwrap().expect_err("a 5-byte key is refused");
    assert!(matches!(err, HashKeyError::Unusable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("5 bytes"), "{msg}");
    assert!(
        msg.contains("kubectl -n kvsync delete secret kvsync-hash-key"),
        "{msg}"
    );
    assert!(
        handle.next_request().await.is_none(),
        "nothing is written: an unusable Secret is not replaced"
    );
}

#[tokio::test]
async fn a_secret_without_the_key_is_an_error() {
    let (client, mut handle) = mock::client();
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(
        &mut handle,
        "GET",
        PATH,
        200,
        key_secret(json!({"other": b64(&[1u8; 32])})),
    )
    .await;
    let err = load.await.unwrap().expect_err("no data key");
    assert!(err.to_string().contains(r#"no data key "key""#), "{err}");
}

#[tokio::test]
async fn forbidden_says_which_permission_to_grant() {
    let (client, mut handle) = mock::client();
    let load = tokio::spawn(async move { load_or_create(&client, "kvsync").await });
    expect(&mut handle, "GET", PATH, 403, status(403, "Forbidden")).await;
    let err = load.await.unwrap().expect_err("forbidden");
    let msg = err.to_string();
    assert!(
        msg.contains("grant kvsync get and create on secrets in namespace kvsync"),
        "{msg}"
    );
}
