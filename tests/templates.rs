//! `target.template` end to end without a cluster: the real `kvsync run`
//! against the API stand-in and a dev vault.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/operator.rs"]
mod operator;
mod support;

use base64::Engine;
use operator::{Stack, WITHIN, decoded};
use serde_json::{Value, json};

const SEED: &str = "secrets:\n  - {name: reg-user, value: robot}\n  - {name: reg-password, value: hunter2-REGISTRY}\n  - {name: npm-token, value: npm_SECRET_TOKEN}\n";
#[tokio::test]
async fn an_image_pull_secret_and_an_npmrc_are_built_from_vault_values() {
    let stack = Stack::start(SEED, &[]).await;
    stack.api.create_namespace("agents");
    stack.create_binding("agents",
        "registry",
        json!({
            "secrets": [{"name": "reg-user"}, {"name": "reg-password"}],
            "keyTransform": "EnvVar",
            "target": {"name": "registry-pull", "template": {
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": "{{ dockerconfigjson(\"contoso.azurecr.io\", REG_USER, REG_PASSWORD) }}"},
            }},
        }),
    );
    stack.create_binding("agents",
        "npm",
        json!({
            "secrets": [{"name": "npm-token", "key": "NPM_TOKEN"}],
            "target": {"template": {
                "data": {".npmrc": "//registry.npmjs.org/:_authToken={{ NPM_TOKEN }}\nalways-auth=true\n"},
                "metadata": {"labels": {"team": "build"}},
            }},
        }),
    );
    stack.ready_condition("agents", "registry", "True").await;
    stack.ready_condition("agents", "npm", "True").await;

    let pull = stack.api.get("secrets", "agents", "registry-pull").unwrap();
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");
    let keys: Vec<&String> = pull["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [".dockerconfigjson"],
        "Replace: the templated key only"
    );
    let config: Value =
        serde_json::from_str(&decoded(&pull, ".dockerconfigjson").unwrap()).unwrap();
    let auth = &config["auths"]["contoso.azurecr.io"];
    assert_eq!(auth["username"], "robot");
    assert_eq!(auth["password"], "hunter2-REGISTRY");
    assert_eq!(
        auth["auth"],
        base64::engine::general_purpose::STANDARD.encode("robot:hunter2-REGISTRY")
    );

    let npm = stack.api.get("secrets", "agents", "npm").unwrap();
    assert_eq!(
        decoded(&npm, ".npmrc").unwrap(),
        "//registry.npmjs.org/:_authToken=npm_SECRET_TOKEN\nalways-auth=true\n"
    );
    assert_eq!(npm["metadata"]["labels"]["team"], "build");
}

#[tokio::test]
async fn a_failing_template_says_which_key_and_line_and_never_the_value() {
    let stack = Stack::start(SEED, &[]).await;
    stack.api.create_namespace("agents");
    stack.create_binding("agents",
        "uri",
        json!({
            "secrets": [{"name": "reg-password", "key": "DB_PASSWORD"}],
            "target": {"template": {"data": {
                "DATABASE_URL": "# built from the vault\npostgres://app:{{ DB_PASSWORD | urlencode }}@db:5432/{{ DB_NAME }}",
            }}},
        }),
    );
    let c = stack.ready_condition("agents", "uri", "False").await;
    assert_eq!(c["reason"], "TemplateError");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("DB_NAME"), "{message}");
    assert!(
        stack.api.get("secrets", "agents", "uri").is_none(),
        "nothing written"
    );

    // The value is nowhere a person could read it: status, Events, logs.
    let value = "hunter2-REGISTRY";
    let b = stack
        .api
        .get("vaultsecretbindings", "agents", "uri")
        .unwrap();
    assert!(!b["status"].to_string().contains(value));
    let events = stack
        .wait_for("a warning Event", WITHIN, || {
            let all = stack.api.objects("events");
            (!all.is_empty()).then_some(all)
        })
        .await;
    for e in &events {
        assert!(!e.to_string().contains(value), "{e}");
    }
    assert!(
        events.iter().any(|e| e["note"]
            .as_str()
            .is_some_and(|n| n.contains("TemplateError"))),
        "{events:?}"
    );
    let logs = std::fs::read_to_string(&stack.log).unwrap();
    assert!(logs.contains("TemplateError"), "the failure is logged");
    assert!(!logs.contains(value), "the value is not logged");
}
