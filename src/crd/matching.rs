//! Matching used by the resources' own rules (pure): the `*` globs of
//! VaultAccessPolicy patterns and `select.allowedNames`, and Kubernetes label
//! selectors (a policy's or a cluster binding's `namespaceSelector`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// `*` matches any run of letters, digits and `-` (never `.` or `:`);
/// everything else matches itself, ignoring ASCII case.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let wild = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    // Backtracking over the last `*` (enough for one-class globs).
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i].eq_ignore_ascii_case(&t[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star
            && wild(t[sj])
        {
            // The `*` takes one more character.
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Whether `selector` selects an object with `labels` (an empty or absent
/// selector selects everything). An expression that cannot be evaluated
/// (an unknown operator, `In`/`NotIn` without values — the CRD refuses
/// both) selects everything: a policy that fails must restrict more, not
/// less.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => true,
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => true,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
