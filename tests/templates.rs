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

#[tokio::test]
async fn a_template_over_all_values_keeps_its_file_when_a_value_is_refused() {
    const SEED: &str =
        "secrets:\n  - {name: app-user, value: robot}\n  - {name: app-token, value: first-TOKEN}\n";
    let stack = Stack::start(SEED, &[]).await;
    stack.api.create_namespace("agents");
    stack.create_binding(
        "agents",
        "config",
        json!({
            "secrets": [{"name": "app-user"}, {"name": "app-token", "optional": true}],
            "target": {"name": "app-config", "template": {
                "data": {"config.json": "{{ values | tojson }}"},
            }},
        }),
    );
    stack.ready_condition("agents", "config", "True").await;
    let first = stack
        .secret_text("agents", "app-config", "config.json")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"app-user": "robot", "app-token": "first-TOKEN"})
    );

    // A new version the operator may not read (403), then a forced check.
    stack.vault.put_secret("app-token", "second-TOKEN").await;
    stack
        .vault
        .fault(
            json!({"op": "get_secret", "secret": "app-token", "status": 403,
                      "code": "Forbidden", "innerCode": "ForbiddenByRbac",
                      "message": "Caller is not authorized to perform action on resource."}),
        )
        .await;
    let bindings: kube::Api<kvsync::crd::VaultSecretBinding> =
        kube::Api::namespaced(stack.client.clone(), "agents");
    bindings
        .patch(
            "config",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"kvsync.io/force-sync": "refused"}}}),
            ),
        )
        .await
        .unwrap();
    let message = stack
        .wait_for("the refusal of app-token in Ready", WITHIN, || {
            let b = stack.api.get("vaultsecretbindings", "agents", "config")?;
            let c = b["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?;
            let message = c["message"].as_str()?;
            message.contains("app-token").then(|| message.to_owned())
        })
        .await;
    assert_eq!(
        stack.secret_text("agents", "app-config", "config.json"),
        Some(first),
        "config.json keeps app-token rather than being rendered without it"
    );
    assert!(message.contains("config.json"), "{message}");
}
