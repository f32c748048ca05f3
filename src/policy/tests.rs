use super::*;
use serde_json::json;

fn spec(v: serde_json::Value) -> VaultSecretBindingSpec {
    serde_json::from_value(v).expect("a binding spec")
}

fn policy(name: &str, v: serde_json::Value) -> Policy {
    Policy {
        name: name.into(),
        spec: serde_json::from_value(v).expect("a policy spec"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const HOST: &str = "kv-ci.vault.azure.net";

fn binding(extra: serde_json::Value) -> VaultSecretBindingSpec {
    let mut v =
        json!({"vaultUrl": format!("https://{HOST}/"), "secrets": [{"name": "public-api"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    spec(v)
}

/// One row: policies, mode, namespace labels, binding → allowed (with the
/// select filter's verdict on `payroll-db` and `public-x`) or the words the
/// denial must contain.
/// Decides `spec` as the reconcile does: its plan before listing, its
/// identity with `tenant` resolved (default: the spec's own override).
fn decide_spec(
    policies: &Policies,
    mode: Mode,
    labels: &BTreeMap<String, String>,
    spec: &VaultSecretBindingSpec,
    tenant: Option<&str>,
) -> Result<NameFilter, Denial> {
    let url = reqwest::Url::parse(&spec.vault_url).unwrap();
    let host = url.host_str().unwrap().to_string();
    let plan = crate::plan::plan(spec, &[]).expect("a plan");
    let identity = IdentityUse {
        spec: spec.identity.as_ref(),
        tenant: tenant.or(spec.identity.as_ref().and_then(|i| i.tenant_id.as_deref())),
        operator_tenant: Some(OPERATOR_TENANT),
    };
    policies.decide(
        mode,
        "ns",
        labels,
        &Request {
            host: &host,
            plan: &plan,
            identity,
        },
    )
}

const OPERATOR_TENANT: &str = "33333333-3333-3333-3333-333333333333";

#[test]
fn decisions() {
    let ci_only = || {
        policy(
            "ci-public",
            json!({"namespaceSelector": {"matchLabels": {"team": "ci"}}, "vaults": ["*-ci.vault.azure.net"], "secrets": ["public-*"]}),
        )
    };
    let ids =
        |rules: serde_json::Value| policy("ids", json!({"vaults": ["*"], "identities": rules}));
    let ci = labels(&[("team", "ci")]);
    let web = labels(&[("team", "web")]);
    type Row = (
        &'static str,
        Vec<Policy>,
        Mode,
        BTreeMap<String, String>,
        VaultSecretBindingSpec,
        Result<(bool, bool), &'static str>,
    );
    let rows: Vec<Row> = vec![
        (
            "no policy, open",
            vec![],
            Mode::Open,
            ci.clone(),
            binding(json!({})),
            Ok((true, true)),
        ),
        (
            "no policy, enforce",
            vec![],
            Mode::Enforce,
            ci.clone(),
            binding(json!({})),
            Err("no VaultAccessPolicy selects namespace ns"),
        ),
        (
            "policy selects another namespace, open",
            vec![ci_only()],
            Mode::Open,
            web.clone(),
            binding(json!({})),
            Ok((true, true)),
        ),
        (
            "policy selects another namespace, enforce",
            vec![ci_only()],
            Mode::Enforce,
            web.clone(),
            binding(json!({})),
            Err("no VaultAccessPolicy selects namespace ns"),
        ),
        (
            "allowed pick, filter from the policy",
            vec![ci_only()],
            Mode::Enforce,
            ci.clone(),
            binding(json!({})),
            Ok((false, true)),
        ),
        (
            "forbidden pick",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(json!({"secrets": [{"name": "public-api"}, {"name": "payroll-db"}]})),
            Err(
                "VaultAccessPolicy ci-public: secret payroll-db (spec.secrets) is not among secrets [public-*]",
            ),
        ),
        (
            "forbidden vault",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(json!({"vaultUrl": "https://kv-prod.vault.azure.net/"})),
            Err(
                "VaultAccessPolicy ci-public: vault kv-prod.vault.azure.net is not among vaults [*-ci.vault.azure.net]",
            ),
        ),
        (
            "a second policy allows it",
            vec![
                ci_only(),
                policy(
                    "ci-all",
                    json!({"namespaceSelector": {"matchLabels": {"team": "ci"}}, "vaults": ["kv-ci.vault.azure.net"]}),
                ),
            ],
            Mode::Open,
            ci.clone(),
            binding(json!({"secrets": [{"name": "payroll-db"}]})),
            Ok((true, true)),
        ),
        (
            "two deny: the first by name decides, the count is told",
            vec![
                ci_only(),
                policy("b-other", json!({"vaults": ["other.vault.azure.net"]})),
            ],
            Mode::Open,
            ci.clone(),
            binding(json!({"secrets": [{"name": "payroll-db"}]})),
            Err(
                "VaultAccessPolicy b-other: vault kv-ci.vault.azure.net is not among vaults [other.vault.azure.net] (and 1 other policy",
            ),
        ),
        (
            "operator identity refused",
            vec![ids(json!({"serviceAccounts": true}))],
            Mode::Open,
            ci.clone(),
            binding(json!({})),
            Err("identities.operator is not true"),
        ),
        (
            "service account allowed",
            vec![ids(json!({"serviceAccounts": true}))],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"serviceAccountName": "agent"}})),
            Ok((true, true)),
        ),
        (
            "service account refused",
            vec![ids(json!({"operator": true}))],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"serviceAccountName": "agent"}})),
            Err("identities.serviceAccounts is not true (ServiceAccount agent)"),
        ),
        (
            "clientId override needs clientIds",
            vec![ids(json!({"operator": true}))],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"clientId": "11111111-1111-1111-1111-111111111111"}})),
            Err(
                "identities.clientIds does not allow clientId 11111111-1111-1111-1111-111111111111",
            ),
        ),
        (
            "clientId override allowed",
            vec![ids(
                json!({"operator": true, "clientIds": ["11111111-1111-1111-1111-111111111111"]}),
            )],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"clientId": "11111111-1111-1111-1111-111111111111"}})),
            Ok((true, true)),
        ),
        (
            "managed identity by client id",
            vec![ids(
                json!({"managedIdentityClientIds": ["22222222-2222-2222-2222-222222222222"]}),
            )],
            Mode::Open,
            ci.clone(),
            binding(
                json!({"identity": {"managedIdentity": {"clientId": "22222222-2222-2222-2222-222222222222"}}}),
            ),
            Ok((true, true)),
        ),
        (
            "system-assigned managed identity refused",
            vec![ids(
                json!({"managedIdentityClientIds": ["22222222-2222-2222-2222-222222222222"]}),
            )],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"managedIdentity": {}}})),
            Err("does not allow managed identity system"),
        ),
        (
            "client secret refused",
            vec![ids(json!({"operator": true, "clientIds": ["*"]}))],
            Mode::Open,
            ci.clone(),
            binding(
                json!({"identity": {"clientId": "11111111-1111-1111-1111-111111111111", "clientSecretRef": {"name": "sp", "key": "secret"}}}),
            ),
            Err("identities.clientSecret is not true"),
        ),
        (
            "tenantId override needs tenantIds",
            vec![ids(json!({"operator": true}))],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"tenantId": "contoso.onmicrosoft.com"}})),
            Err("identities.tenantIds does not allow tenantId contoso.onmicrosoft.com"),
        ),
        (
            "tenantId override allowed",
            vec![ids(
                json!({"operator": true, "tenantIds": ["CONTOSO.onmicrosoft.com"]}),
            )],
            Mode::Open,
            ci.clone(),
            binding(json!({"identity": {"tenantId": "contoso.onmicrosoft.com"}})),
            Ok((true, true)),
        ),
        (
            "forbidden pinned pick",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(
                json!({"secrets": [{"name": "payroll-db", "version": "0123456789abcdef0123456789abcdef"}]}),
            ),
            Err("secret payroll-db (spec.secrets) is not among secrets [public-*]"),
        ),
        (
            "forbidden certificate",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(json!({"certificates": [{"name": "payroll-tls"}]})),
            Err("secret payroll-tls (spec.certificates) is not among secrets [public-*]"),
        ),
        (
            "allowed certificate",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(
                json!({"secrets": [], "certificates": [{"name": "public-tls", "format": "Pem"}]}),
            ),
            Ok((false, true)),
        ),
        (
            "select only: the filter keeps the policy's names",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(json!({"secrets": [], "select": {"all": true}})),
            Ok((false, true)),
        ),
    ];
    for (what, policies, mode, labels, spec, expected) in rows {
        let got = decide_spec(&Policies::new(policies), mode, &labels, &spec, None);
        match (got, expected) {
            (Ok(filter), Ok((payroll, public))) => {
                assert_eq!(filter.allows("payroll-db"), payroll, "{what}: payroll-db");
                assert_eq!(filter.allows("public-x"), public, "{what}: public-x");
            }
            (Err(d), Err(words)) => assert!(d.message.contains(words), "{what}: {}", d.message),
            (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn the_tenant_the_identity_signs_in_to_is_judged_wherever_it_came_from() {
    let policies = |rules: serde_json::Value| {
        Policies::new(vec![policy(
            "ids",
            json!({"vaults": ["*"], "identities": rules}),
        )])
    };
    let ci = labels(&[("team", "ci")]);
    let sa = binding(json!({"identity": {"serviceAccountName": "agent"}}));
    let foreign = "44444444-4444-4444-4444-444444444444";
    // The ServiceAccount's annotation names a foreign tenant: no tenantIds
    // means the operator's tenant only.
    let denied = decide_spec(
        &policies(json!({"serviceAccounts": true})),
        Mode::Open,
        &ci,
        &sa,
        Some(foreign),
    )
    .unwrap_err();
    assert!(
        denied.message.contains(&format!(
            "identities.tenantIds does not allow tenant {foreign}"
        )),
        "{}",
        denied.message
    );
    // The operator's own tenant (annotation absent, or naming it) passes.
    for own in [OPERATOR_TENANT, &OPERATOR_TENANT.to_ascii_uppercase()] {
        decide_spec(
            &policies(json!({"serviceAccounts": true})),
            Mode::Open,
            &ci,
            &sa,
            Some(own),
        )
        .unwrap();
    }
    // Listed, the foreign tenant passes.
    decide_spec(
        &policies(json!({"serviceAccounts": true, "tenantIds": [foreign]})),
        Mode::Open,
        &ci,
        &sa,
        Some(foreign),
    )
    .unwrap();
    // A managed identity has no tenant to judge.
    decide_spec(
        &policies(json!({"managedIdentityClientIds": ["*"]})),
        Mode::Open,
        &ci,
        &binding(json!({"identity": {"managedIdentity": {}}})),
        None,
    )
    .unwrap();
}

#[test]
fn a_select_result_the_policies_do_not_allow_denies_a_plan_read_before() {
    let policies = Policies::new(vec![policy(
        "public",
        json!({"vaults": ["*"], "secrets": ["public-*"]}),
    )]);
    let spec = binding(json!({"secrets": [], "select": {"all": true}}));
    let item = |name: &str| crate::azure::keyvault::SecretItem {
        id: format!("https://{HOST}/secrets/{name}"),
        attributes: Default::default(),
        tags: Default::default(),
        content_type: None,
        managed: None,
    };
    // Planned without the policy's narrowing (as a plan read before the
    // policy was created would be).
    let plan = crate::plan::plan(&spec, &[item("public-a"), item("payroll-db")]).unwrap();
    let request = Request {
        host: HOST,
        plan: &plan,
        identity: IdentityUse::default(),
    };
    let denied = policies
        .decide(Mode::Open, "ns", &labels(&[]), &request)
        .unwrap_err();
    assert!(
        denied.message.contains("payroll-db (spec.select)"),
        "{}",
        denied.message
    );
    let narrowed = crate::policy::narrowed(&spec, NameFilter(Some(vec!["public-*".into()])))
        .expect("narrowed");
    let plan = crate::plan::plan(&narrowed, &[item("public-a"), item("payroll-db")]).unwrap();
    let request = Request {
        plan: &plan,
        ..request
    };
    assert!(
        policies
            .decide(Mode::Open, "ns", &labels(&[]), &request)
            .is_ok()
    );
}

/// Whatever field of the spec reads `payroll-db`, a policy allowing only
/// `public-*` keeps it from being read: denied outright when it is read by
/// name, left out of (and, if planned anyway, denying) a `select`.
#[test]
fn every_way_of_reading_is_judged() {
    let policies = Policies::new(vec![policy(
        "public",
        json!({"vaults": ["*"], "secrets": ["public-*"]}),
    )]);
    let listing = [crate::azure::keyvault::SecretItem {
        id: format!("https://{HOST}/secrets/payroll-db"),
        attributes: Default::default(),
        tags: [("team".to_string(), "pay".to_string())].into(),
        content_type: None,
        managed: None,
    }];
    for (field, yaml, role) in crate::plan::READS_BY_FIELD {
        let spec: VaultSecretBindingSpec =
            serde_yaml::from_str(&format!("vaultUrl: https://{HOST}/\n{yaml}")).unwrap();
        let named = crate::plan::plan(&spec, &[]).unwrap();
        let request = Request {
            host: HOST,
            plan: &named,
            identity: IdentityUse::default(),
        };
        let decided = policies.decide(Mode::Open, "ns", &labels(&[]), &request);
        if *role == Role::Selected {
            let filter = decided.unwrap_or_else(|d| panic!("{field}: {}", d.message));
            let narrowed = narrowed(&spec, filter).expect("a select is narrowed");
            let plan = crate::plan::plan(&narrowed, &listing).unwrap();
            assert!(plan.keys.is_empty(), "{field}: {plan:?}");
            // The same select planned without the policy is refused.
            let unnarrowed = crate::plan::plan(&spec, &listing).unwrap();
            let request = Request {
                plan: &unnarrowed,
                ..request
            };
            assert!(
                policies
                    .decide(Mode::Open, "ns", &labels(&[]), &request)
                    .is_err(),
                "{field}"
            );
        } else {
            let denied = decided.expect_err(field);
            assert!(
                denied.message.contains("secret payroll-db ("),
                "{field}: {}",
                denied.message
            );
        }
    }
}
