//! The CRD: generated YAML in sync with `crds/`, a structural schema, the
//! examples valid, and invalid specs rejected with a message naming the field.

use kube::CustomResourceExt;
use kvsync::crd::{
    KeyTransform, OnDisabled, OnExpired, TargetPolicy, VaultSecretBinding, VaultSecretBindingSpec,
};
use serde_json::Value;

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/kvsync.io_vaultsecretbindings.yaml"
);

#[test]
fn checked_in_crd_matches_generated() {
    let on_disk = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        on_disk == kvsync::crd::crd_yaml(),
        "crds/kvsync.io_vaultsecretbindings.yaml is stale: regenerate it with \
         `cargo run -- crd > crds/kvsync.io_vaultsecretbindings.yaml`"
    );
}

#[test]
fn checked_in_cluster_scoped_crds_match_generated() {
    for (plural, generated) in [
        ("vaultaccesspolicies", kvsync::crd::policy::crd_yaml()),
        (
            "clustervaultsecretbindings",
            kvsync::crd::cluster::crd_yaml(),
        ),
    ] {
        let path = format!(
            "{}/crds/kvsync.io_{plural}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "crds/kvsync.io_{plural}.yaml is stale: regenerate it with \
             `cargo run -- crd {plural} > crds/kvsync.io_{plural}.yaml`"
        );
    }
}

#[test]
fn cluster_binding_crd_is_cluster_scoped_structural_with_printer_columns() {
    let crd = kvsync::crd::cluster::ClusterVaultSecretBinding::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.plural, "clustervaultsecretbindings");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cvsb".to_string()]));
    let version = &crd.spec.versions[0];
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready",
            "Namespaces",
            "Synced",
            "Failed",
            "Last Sync",
            "Age"
        ]
    );
    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let mut violations = Vec::new();
    structural_violations(&schema, "", &mut violations);
    assert!(violations.is_empty(), "{violations:#?}");
    let spec = &schema["properties"]["spec"]["properties"];
    for field in [
        "vaultUrl",
        "secrets",
        "select",
        "target",
        "namespaceSelector",
        "namespaces",
    ] {
        assert!(spec.get(field).is_some(), "spec.{field} is in the schema");
    }
    let identity = &spec["identity"]["properties"];
    assert!(identity.get("serviceAccountRef").is_some());
    assert!(
        identity.get("serviceAccountName").is_none(),
        "a cluster object names ServiceAccounts with their namespace"
    );
    assert_eq!(
        identity["clientSecretRef"]["required"],
        serde_json::json!(["key", "name", "namespace"])
    );
}

#[test]
fn policy_crd_is_cluster_scoped_with_its_names() {
    let crd = kvsync::crd::policy::VaultAccessPolicy::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.plural, "vaultaccesspolicies");
    assert_eq!(crd.spec.names.short_names, Some(vec!["vap".to_string()]));
    let mut violations = Vec::new();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    structural_violations(&schema, "", &mut violations);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn crd_names_and_printer_columns() {
    let crd = VaultSecretBinding::crd();
    assert_eq!(crd.spec.group, "kvsync.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.plural, "vaultsecretbindings");
    assert_eq!(crd.spec.names.short_names, Some(vec!["vsb".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["kvsync".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Reason", "Secrets", "Last Sync", "Age"]);
}

/// Walks the schema and collects every construct the API server rejects in a
/// structural schema (see "Specifying a structural schema" in the Kubernetes docs).
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$schema",
    ] {
        if obj.contains_key(forbidden) {
            out.push(format!("{path}: uses {forbidden}"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => {
            if !["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str())
            {
                out.push(format!("{path}: unknown type {t}"));
            }
            if t == "array" && !obj.contains_key("items") {
                out.push(format!("{path}: array without items"));
            }
        }
        Some(other) => out.push(format!("{path}: type must be one string, found {other}")),
        None if preserve || int_or_string => {}
        None => out.push(format!("{path}: no type")),
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, child) in props {
            structural_violations(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if extra.is_object() {
            structural_violations(extra, &format!("{path}[*]"), out);
        } else if extra != &Value::Bool(false) {
            out.push(format!("{path}: additionalProperties must be a schema"));
        }
    }
    if let Some(items) = obj.get("items") {
        structural_violations(items, &format!("{path}[]"), out);
    }
    if let Some(Value::Array(keys)) = obj.get("x-kubernetes-list-map-keys") {
        if obj.get("x-kubernetes-list-type") != Some(&Value::String("map".into())) {
            out.push(format!("{path}: list-map-keys without list-type map"));
        }
        let required = obj["items"]
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for key in keys {
            if !required.contains(key) {
                out.push(format!(
                    "{path}: list-map key {key} is not required in items"
                ));
            }
        }
    }
}

#[test]
fn schema_is_structural() {
    let crd = serde_json::to_value(VaultSecretBinding::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut violations = Vec::new();
    structural_violations(schema, "", &mut violations);
    assert!(
        violations.is_empty(),
        "non-structural schema: {violations:#?}"
    );

    // The walker itself must catch what it claims to catch.
    let bad = serde_json::json!({"type": "object", "properties": {
        "a": {"anyOf": [{"type": "string"}]},
        "b": {"$ref": "#/definitions/x"},
        "c": {"type": "array"}
    }});
    let mut found = Vec::new();
    structural_violations(&bad, "", &mut found);
    assert_eq!(found.len(), 5, "{found:#?}");
}

#[test]
fn every_spec_field_has_a_description() {
    let crd = serde_json::to_value(VaultSecretBinding::crd()).unwrap();
    fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(Value::Object(props)) = node.get("properties") {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"],
        "spec",
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "fields without a description for kubectl explain: {missing:?}"
    );
}

fn example(name: &str) -> VaultSecretBinding {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 3,
        "expected at least three examples, found {names:?}"
    );
    for name in names {
        let path = format!("{dir}/{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        let kind: Value = serde_yaml::from_str(&text).unwrap();
        let checked = match kind["kind"].as_str() {
            Some("VaultSecretBinding") => example(&name).spec.validate(),
            Some("ClusterVaultSecretBinding") => {
                let c: kvsync::crd::cluster::ClusterVaultSecretBinding =
                    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
                c.spec.validate()
            }
            other => panic!("examples/{name}: unexpected kind {other:?}"),
        };
        if let Err(e) = checked {
            panic!("examples/{name} is invalid: {e}");
        }
    }
}

#[test]
fn cluster_example_selects_labelled_namespaces_with_a_namespaced_identity() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster-agents.yaml");
    let c: kvsync::crd::cluster::ClusterVaultSecretBinding =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let labelled = [("kvsync.io/agents".to_string(), "true".to_string())].into();
    assert!(c.spec.selects("team-a", &labelled));
    assert!(!c.spec.selects("team-a", &Default::default()));
    let (_, identity_namespace) = c.spec.binding_spec();
    assert_eq!(identity_namespace.as_deref(), Some("platform-identities"));
}

#[test]
fn pinned_example_pins_one_version_and_follows_the_rest() {
    let b = example("pinned-picks.yaml");
    assert_eq!(
        b.spec.secrets[0].version.as_deref(),
        Some("3f6c2a1b9d8e4f7a8b0c1d2e3f405162")
    );
    assert_eq!(b.spec.secrets[1].version, None);
    assert!(b.spec.secrets[2].optional);
    assert_eq!(b.spec.target_name("payments-db"), "payments-db-credentials");
}

#[test]
fn build_agent_example_selects_all_as_env_vars() {
    let b = example("build-agent-all.yaml");
    assert!(b.spec.select.as_ref().unwrap().all);
    assert_eq!(b.spec.key_transform, KeyTransform::EnvVar);
    assert_eq!(b.spec.on_expired, OnExpired::Warn);
    assert_eq!(b.spec.rollout.len(), 1);
}

#[test]
fn merge_example_targets_a_dockerconfigjson_secret() {
    let b = example("registry-merge.yaml");
    assert_eq!(b.spec.policy(), TargetPolicy::Merge);
    assert_eq!(b.spec.target_type(), "kubernetes.io/dockerconfigjson");
    assert_eq!(b.spec.secrets[0].key.as_deref(), Some(".dockerconfigjson"));
}

#[test]
fn omitted_fields_take_documented_defaults() {
    let spec: VaultSecretBindingSpec =
        serde_yaml::from_str("vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\n")
            .unwrap();
    assert_eq!(spec.key_transform, KeyTransform::Verbatim);
    assert_eq!(spec.on_disabled, OnDisabled::KeepLast);
    assert_eq!(spec.on_expired, OnExpired::Sync);
    assert_eq!(spec.policy(), TargetPolicy::Owner);
    assert_eq!(spec.target_type(), "Opaque");
    assert_eq!(spec.target_name("my-binding"), "my-binding");
    assert_eq!(
        spec.refresh_interval_or(std::time::Duration::from_secs(300)),
        std::time::Duration::from_secs(300)
    );
    assert!(!spec.secrets[0].optional);
}

#[test]
fn invalid_specs_are_rejected_naming_the_field() {
    // (spec YAML, field the error must name, words the message must contain)
    let cases: &[(&str, &str, &str)] = &[
        (
            "vaultUrl: http://v.vault.azure.net\nsecrets: [{name: a}]",
            "spec.vaultUrl",
            "https",
        ),
        (
            "vaultUrl: not a url\nsecrets: [{name: a}]",
            "spec.vaultUrl",
            "not a URL",
        ),
        (
            "vaultUrl: https://v.vault.azure.net/secrets/a\nsecrets: [{name: a}]",
            "spec.vaultUrl",
            "just the vault",
        ),
        (
            "vaultUrl: https://v.vault.azure.net",
            "spec.secrets",
            "at least one",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: db_password}]",
            "spec.secrets[0].name",
            "Key Vault secret name",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}, {name: b, key: 'a b'}]",
            "spec.secrets[1].key",
            "Secret key",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a, key: '..'}]",
            "spec.secrets[0].key",
            "Secret key",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a, version: 'v-1'}]",
            "spec.secrets[0].version",
            "version id",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nselect: {all: true, namePrefix: agent-}",
            "spec.select",
            "exclusive",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nselect: {}",
            "spec.select",
            "needs all",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nselect: {all: true, stripPrefix: true}",
            "spec.select.stripPrefix",
            "namePrefix",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nselect: {namePrefix: 'a_'}",
            "spec.select.namePrefix",
            "letters, digits",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {serviceAccountName: sa, managedIdentity: {}}",
            "spec.identity",
            "at most one",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {clientSecretRef: {name: c, key: k}}",
            "spec.identity.clientId",
            "clientId",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {serviceAccountName: Build_Agent}",
            "spec.identity.serviceAccountName",
            "ServiceAccount",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {clientId: x, managedIdentity: {}}",
            "spec.identity.managedIdentity",
            "managedIdentity.clientId",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {tenantId: '//127.0.0.1:9999/evil'}",
            "spec.identity.tenantId",
            "GUID",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {serviceAccountName: sa, tenantId: 'contoso.com/x'}",
            "spec.identity.tenantId",
            "domain name",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {clientId: 'app@evil', clientSecretRef: {name: c, key: k}}",
            "spec.identity.clientId",
            "not a client id",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nidentity: {managedIdentity: {clientId: 'x&resource=https://evil'}}",
            "spec.identity.managedIdentity.clientId",
            "GUID",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\ntarget: {name: My_Secret}",
            "spec.target.name",
            "Secret name",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\ntarget: {type: ''}",
            "spec.target.type",
            "empty",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\ntarget: {labels: {app.kubernetes.io/managed-by: me}}",
            "spec.target.labels",
            "set by kvsync",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nrefreshInterval: 10s",
            "spec.refreshInterval",
            "at least 30s",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nrefreshInterval: 5 minutes",
            "spec.refreshInterval",
            "not a duration",
        ),
        (
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nrollout: [{kind: Deployment, name: Agent}]",
            "spec.rollout[0].name",
            "workload name",
        ),
    ];
    for (yaml, field, words) in cases {
        let spec: VaultSecretBindingSpec =
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let errs = spec.validate().expect_err(yaml).0;
        assert!(
            errs.iter()
                .any(|e| e.field.starts_with(field) && e.message.contains(words)),
            "{yaml}\nexpected an error on {field} mentioning {words:?}, got {errs:?}"
        );
    }
}

#[test]
fn schema_rejects_unknown_enum_values_at_parse_time() {
    for yaml in [
        "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nkeyTransform: Shout",
        "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\ntarget: {policy: Steal}",
        "vaultUrl: https://v.vault.azure.net\nsecrets: [{name: a}]\nrollout: [{kind: Job, name: x}]",
    ] {
        let err = serde_yaml::from_str::<VaultSecretBindingSpec>(yaml).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{yaml}: {err}");
    }
}

#[test]
fn identity_ids_are_constrained_in_the_schema_like_validate() {
    let crd = serde_json::to_value(VaultSecretBinding::crd()).unwrap();
    let identity = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["identity"]["properties"];
    let fields = [
        &identity["tenantId"],
        &identity["clientId"],
        &identity["managedIdentity"]["properties"]["clientId"],
    ];
    for field in fields {
        assert_eq!(field["pattern"], kvsync::crd::ENTRA_ID_PATTERN, "{field}");
        assert_eq!(field["maxLength"], 253, "{field}");
    }
    // The schema's pattern and validate() agree: a GUID and a domain pass,
    // the seen attack and other URL text do not.
    let ok = |tenant: &str| {
        let yaml = format!(
            "vaultUrl: https://v.vault.azure.net\nsecrets: [{{name: a}}]\nidentity: {{tenantId: '{tenant}'}}"
        );
        serde_yaml::from_str::<VaultSecretBindingSpec>(&yaml)
            .unwrap()
            .validate()
            .is_ok()
    };
    assert!(ok("72f988bf-86f1-41af-91ab-2d7cd011db47"));
    assert!(ok("contoso.onmicrosoft.com"));
    for bad in ["//127.0.0.1:9999/evil", "a b", "a?b", "a#b", "a%2f", "a:1"] {
        assert!(!ok(bad), "{bad}");
    }
}

#[test]
fn the_readme_policy_example_is_a_valid_policy() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("kind: VaultAccessPolicy"))
        .expect("the README shows a VaultAccessPolicy");
    let p: kvsync::crd::policy::VaultAccessPolicy = serde_yaml::from_str(block).unwrap();
    assert!(!p.spec.vaults.is_empty());
    let ids = p.spec.identities.expect("the example sets identities");
    assert!(ids.operator && !ids.service_accounts);
}

#[test]
fn template_examples_render_over_their_picks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut rendered = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.starts_with("template-") {
            continue;
        }
        let b = example(&name);
        let template = b
            .spec
            .template()
            .expect("a template example has a template");
        let values =
            b.spec
                .secrets
                .iter()
                .map(|p| {
                    let key = p.key.clone().unwrap_or_else(|| {
                        kvsync::plan::transform_key(&p.name, b.spec.key_transform)
                    });
                    (key, kvsync::value::SecretValue::new("p@ss w/rd?#%"))
                })
                .collect();
        let out = kvsync::template::render(&template.data, &values)
            .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
        if let Some(uri) = out.get("DATABASE_URL") {
            assert!(
                uri.expose().contains("p%40ss%20w%2Frd%3F%23%25@"),
                "the password is percent-encoded in the URI"
            );
        }
        if let Some(conn) = out.get("AIRFLOW_CONN_SMTP_DEFAULT") {
            let v: Value = serde_json::from_str(conn.expose()).expect("valid JSON");
            assert_eq!(v["password"], "p@ss w/rd?#%");
        }
        rendered += 1;
    }
    assert!(rendered >= 4, "image pull, npmrc, connection URI, Airflow");
}

#[test]
fn a_tls_certificate_makes_the_secret_kubernetes_io_tls_unless_a_type_is_given() {
    let spec = |extra: &str| -> VaultSecretBindingSpec {
        serde_yaml::from_str(&format!("vaultUrl: https://v.vault.azure.net\n{extra}")).unwrap()
    };
    assert_eq!(
        spec("certificates: [{name: web}]").target_type(),
        "kubernetes.io/tls"
    );
    assert_eq!(
        spec("certificates: [{name: web, format: Pem}]").target_type(),
        "Opaque"
    );
    assert_eq!(
        spec("certificates: [{name: web}]\ntarget: {type: Opaque}").target_type(),
        "Opaque"
    );
    assert_eq!(
        spec("secrets: [{name: a}]\ntarget: {type: x, template: {type: kubernetes.io/dockerconfigjson, data: {k: v}}}")
            .target_type(),
        "kubernetes.io/dockerconfigjson"
    );
}

#[test]
fn certificate_and_template_mistakes_are_refused_naming_the_field() {
    let errors = |extra: &str| -> String {
        let spec: VaultSecretBindingSpec =
            serde_yaml::from_str(&format!("vaultUrl: https://v.vault.azure.net\n{extra}")).unwrap();
        spec.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = errors("certificates: [{name: a}, {name: b}]");
    assert!(
        e.contains("spec.certificates") && e.contains("format: Pem"),
        "{e}"
    );
    let e = errors("secrets: [{name: web, key: tls.crt}]\ncertificates: [{name: web}]");
    assert!(
        e.contains("spec.certificates[0].name") && e.contains("also in spec.secrets"),
        "{e}"
    );
    let e = errors("certificates: [{name: web, version: '../x'}]");
    assert!(e.contains("spec.certificates[0].version"), "{e}");
    let long = "x".repeat(kvsync::crd::MAX_TEMPLATE_BYTES + 1);
    let e = errors(&format!(
        "secrets: [{{name: a}}]\ntarget: {{template: {{data: {{k: '{long}'}}}}}}"
    ));
    assert!(
        e.contains("spec.target.template.data[k]") && e.contains("at most"),
        "{e}"
    );
    let many: Vec<String> = (0..=kvsync::crd::MAX_TEMPLATE_KEYS)
        .map(|i| format!("k{i}: x"))
        .collect();
    let e = errors(&format!(
        "secrets: [{{name: a}}]\ntarget: {{template: {{data: {{{}}}}}}}",
        many.join(", ")
    ));
    assert!(e.contains("templates: at most"), "{e}");
    assert_eq!(
        errors("certificates: [{name: web}]\ntarget: {template: {data: {k: v}}}"),
        ""
    );
    let replaced: VaultSecretBindingSpec = serde_yaml::from_str(
        "vaultUrl: https://v.vault.azure.net\ncertificates: [{name: web}]\ntarget: {template: {data: {bundle.pem: '{{ values[\"tls.crt\"] }}'}}}",
    )
    .unwrap();
    assert_eq!(
        replaced.target_type(),
        "Opaque",
        "a Replace template writes no tls.crt/tls.key"
    );
}
