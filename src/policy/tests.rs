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

#[test]
fn globs_match_within_a_label_and_ignore_case() {
    for (pattern, text, expected) in [
        ("*-ci.vault.azure.net", "kv-ci.vault.azure.net", true),
        ("*-ci.vault.azure.net", "KV-CI.vault.azure.net", true),
        ("*-ci.vault.azure.net", "evil.kv-ci.vault.azure.net", false),
        ("*.vault.azure.net", "a.b.vault.azure.net", false),
        (
            "kv-ci.vault.azure.net",
            "kv-ci.vault.azure.net.evil.com",
            false,
        ),
        ("public-*", "public-api", true),
        ("public-*", "public-", true),
        ("public-*", "payroll-db", false),
        ("*", "anything-at-all", true),
        ("*db*", "payroll-db-2", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("127.0.0.1:*", "127.0.0.1:8443", true),
        ("127.0.0.1:*", "127.0.0.1", false),
        ("", "", true),
        ("", "x", false),
    ] {
        assert_eq!(glob(pattern, text), expected, "{pattern} vs {text}");
    }
}

#[test]
fn label_selectors_follow_kubernetes() {
    let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
    let ci = labels(&[("team", "ci"), ("tier", "build")]);
    for (s, expected) in [
        (json!({}), true),
        (json!({"matchLabels": {"team": "ci"}}), true),
        (json!({"matchLabels": {"team": "web"}}), false),
        (
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["ci", "web"]}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ci"]}]}),
            false,
        ),
        (
            json!({"matchExpressions": [{"key": "gone", "operator": "NotIn", "values": ["x"]}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            false,
        ),
        // What cannot be evaluated selects everything (restricts more).
        (
            json!({"matchExpressions": [{"key": "tier", "operator": "Bogus"}]}),
            true,
        ),
        (
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}),
            true,
        ),
        (
            json!({"matchLabels": {"team": "ci"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["run"]}]}),
            false,
        ),
    ] {
        assert_eq!(selects(Some(&sel(s.clone())), &ci), expected, "{s}");
    }
    assert!(selects(None, &ci));
}

/// One row: policies, mode, namespace labels, binding → allowed (with the
/// select filter's verdict on `payroll-db` and `public-x`) or the words the
/// denial must contain.
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
            Err("VaultAccessPolicy ci-public: secret payroll-db is not among secrets [public-*]"),
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
            "select only: the filter keeps the policy's names",
            vec![ci_only()],
            Mode::Open,
            ci.clone(),
            binding(json!({"secrets": [], "select": {"all": true}})),
            Ok((false, true)),
        ),
    ];
    for (what, policies, mode, labels, spec, expected) in rows {
        let url = reqwest::Url::parse(&spec.vault_url).unwrap();
        let host = url.host_str().unwrap().to_string();
        let got = Policies::new(policies).decide(mode, "ns", &labels, &host, &spec);
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
