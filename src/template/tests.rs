use super::*;

/// A value no error may ever show.
const SECRET: &str = "hunter2-SECRET";

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), SecretValue::new(*value)))
        .collect()
}

/// Renders one template under the key `out`.
fn one(template: &str, pairs: &[(&str, &str)]) -> Result<String, TemplateError> {
    let templates = BTreeMap::from([("out".to_string(), template.to_string())]);
    // The limits behind the refusal of `*` are tested on their own.
    render_checked(&templates, &values(pairs))
        .map(|mut rendered| rendered.remove("out").unwrap().expose().to_owned())
}

fn assert_hides(err: &TemplateError, text: &str) {
    assert!(!format!("{err}").contains(text), "Display shows it: {err}");
    assert!(
        !format!("{err:?}").contains(text),
        "Debug shows it: {err:?}"
    );
    assert!(
        !format!("{err:#?}").contains(text),
        "Debug shows it: {err:#?}"
    );
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

// --- what a template sees ---------------------------------------------------

#[test]
fn identifier_keys_are_variables() {
    let out = one(
        "{{ REG_USER }}/{{ REG_PASSWORD }}",
        &[("REG_USER", "bot"), ("REG_PASSWORD", "pw")],
    );
    assert_eq!(out.unwrap(), "bot/pw");
}

#[test]
fn every_key_is_reachable_through_values() {
    let pairs = [
        ("db-password", "pw"),
        ("tls.crt", "CERT"),
        ("USER", "bot"),
        ("values", "v"),
    ];
    let out = one(
        r#"{{ values["db-password"] }} {{ values['tls.crt'] }} {{ values.USER }} {{ values["values"] }}"#,
        &pairs,
    );
    assert_eq!(out.unwrap(), "pw CERT bot v");
}

#[test]
fn values_can_be_iterated() {
    let out = one(
        "{% for k, v in values|items %}{{ k }}={{ v }};{% endfor %}",
        &[("b", "2"), ("a", "1")],
    );
    assert_eq!(out.unwrap(), "a=1;b=2;");
}

#[test]
fn each_template_renders_its_own_key() {
    let templates = BTreeMap::from([
        ("user".to_string(), "{{ U }}".to_string()),
        ("greeting".to_string(), "hello {{ U }}".to_string()),
    ]);
    let rendered = render(&templates, &values(&[("U", "bot")])).unwrap();
    assert_eq!(rendered.len(), 2);
    assert_eq!(rendered["user"].expose(), "bot");
    assert_eq!(rendered["greeting"].expose(), "hello bot");
}

#[test]
fn no_templates_render_nothing() {
    assert!(
        render(&BTreeMap::new(), &values(&[("U", "bot")]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn output_is_verbatim_whatever_the_key() {
    let value = r#"<a href="x">&'"#;
    for key in ["config.json", "index.html", "values.yaml", "plain"] {
        let templates = BTreeMap::from([(key.to_string(), "{{ V }}".to_string())]);
        let rendered = render(&templates, &values(&[("V", value)])).unwrap();
        assert_eq!(rendered[key].expose(), value, "{key} was escaped");
    }
}

#[test]
fn a_trailing_newline_is_kept() {
    assert_eq!(one("token={{ T }}\n", &[("T", "t")]).unwrap(), "token=t\n");
}

// --- strict undefined ---------------------------------------------------------

#[test]
fn an_undefined_name_is_an_error_naming_it_and_its_line() {
    let err = one(
        "user={{ REG_USER }}\npassword={{ REG_PASWORD }}\n",
        &[("REG_USER", "bot"), ("REG_PASSWORD", SECRET)],
    )
    .unwrap_err();
    assert!(
        matches!(&err, TemplateError::Undefined { name: Some(name), line: Some(2), .. } if name == "REG_PASWORD")
    );
    let message = err.to_string();
    assert!(
        message.starts_with("template out, line 2: `REG_PASWORD` is undefined"),
        "{message}"
    );
    assert!(
        message.contains("the values are REG_PASSWORD, REG_USER"),
        "{message}"
    );
    assert_eq!(err.key(), "out");
    assert_eq!(err.line(), Some(2));
    assert_hides(&err, SECRET);
}

#[test]
fn an_undefined_values_key_is_named() {
    let err = one("{{ values[\"db-pasword\"] }}", &[("db-password", SECRET)]).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Undefined { name: Some(name), line: Some(1), .. } if name == r#"values["db-pasword"]"#)
    );
}

#[test]
fn an_undefined_name_in_a_filter_is_named() {
    let err = one("{{ TOKEN | b64encode }}", &[]).unwrap_err();
    assert!(matches!(&err, TemplateError::Undefined { name: Some(name), .. } if name == "TOKEN"));
    assert!(err.to_string().contains("there are no values"), "{err}");
}

#[test]
fn an_undefined_attribute_of_a_value_is_not_blamed_on_another_name() {
    let err = one(
        "{% if OPT is defined %}{% endif %}\n{{ U.first }}",
        &[("U", "bot")],
    )
    .unwrap_err();
    match err {
        TemplateError::Undefined {
            name,
            not_found,
            line,
            ..
        } => {
            assert_eq!(name, None);
            // OPT has no value but line 2 does not use it: not blamed.
            assert!(not_found.is_empty(), "{not_found:?}");
            assert_eq!(line, Some(2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_looked_up_through_a_value_is_never_told() {
    let err = one("{{ values[P] }}", &[("P", SECRET)]).unwrap_err();
    assert!(
        matches!(err, TemplateError::Undefined { name: None, .. }),
        "{err:?}"
    );
    assert_hides(&err, SECRET);
}

#[test]
fn is_defined_and_default_handle_an_absent_value() {
    let template =
        "{% if OPT is defined %}{{ OPT }}{% else %}none{% endif %} {{ OPT | default('x') }}";
    assert_eq!(one(template, &[]).unwrap(), "none x");
    assert_eq!(one(template, &[("OPT", "o")]).unwrap(), "o o");
}

// --- other errors -------------------------------------------------------------

#[test]
fn a_syntax_error_names_key_and_line() {
    let templates = BTreeMap::from([
        ("good".to_string(), "{{ U }}".to_string()),
        ("bad".to_string(), "line one\n{{ U \nthree".to_string()),
    ]);
    let err = render(&templates, &values(&[("U", "bot")])).unwrap_err();
    assert!(matches!(err, TemplateError::Syntax { .. }), "{err:?}");
    assert_eq!(err.key(), "bad");
    assert!(err.line().is_some_and(|line| line >= 2), "{err:?}");
    assert!(err.to_string().starts_with("template bad, line "), "{err}");
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let err = one(
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(err, TemplateError::OutOfFuel { line: Some(1), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("too much work"), "{err}");
}

#[test]
fn output_up_to_the_limit_renders() {
    let out = one(&format!("{{{{ 'x' * {MAX_RENDERED_BYTES} }}}}"), &[]).unwrap();
    assert_eq!(out.len(), MAX_RENDERED_BYTES);
}

#[test]
fn output_past_the_limit_is_refused() {
    for template in [
        format!("{{{{ 'x' * {} }}}}", MAX_RENDERED_BYTES + 1),
        "{% for i in range(2000) %}{{ V * 1000 }}{% endfor %}".to_string(),
    ] {
        let err = one(&template, &[("V", "y")]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::TooLarge {
                key: "out".into(),
                limit: MAX_RENDERED_BYTES
            }
        );
    }
}

#[test]
fn a_template_cannot_include_or_debug() {
    for template in [
        "{% include 'other' %}",
        "{% extends 'base' %}",
        "{% import 'm' as m %}",
    ] {
        assert!(
            matches!(one(template, &[]), Err(TemplateError::Syntax { .. })),
            "{template}"
        );
    }
    let err = one("{{ debug() }}", &[("P", SECRET)]).unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
    assert!(err.to_string().contains("debug is unknown"), "{err}");
}

#[test]
fn an_unknown_filter_is_named() {
    let err = one("{{ P | b64encod }}", &[("P", SECRET)]).unwrap_err();
    assert!(
        err.to_string().contains("filter b64encod is unknown"),
        "{err}"
    );
}

#[test]
fn errors_never_show_a_value_or_rendered_text() {
    const NUMBER: &str = "73500123456789";
    let pairs = [("P", SECRET), ("PIN", NUMBER)];
    let failing = [
        "rendered {{ P }} then {{ MISSING }}",
        "{{ P }}\n{{ P.first.second }}",
        "{{ P + 1 }}",
        "{{ P | int }}{{ P | b64decode }}",
        "{{ PIN | int // 0 }}",
        "{{ values[P] }}",
        "{{ P | nosuchfilter }}",
        "{{ dockerconfigjson('', P, P) }}",
        "{{ dockerconfigjson('r', P ~ ':', P) }}",
        "{% for c in P %}{% for i in range(100000) %}{{ c }}{% endfor %}{% endfor %}",
        "{{ P * 100000 }}",
        "{{ P }}{% if P == 1 %",
    ];
    for template in failing {
        let err = one(template, &pairs).unwrap_err();
        assert_hides(&err, SECRET);
        assert_hides(&err, NUMBER);
        assert_hides(&err, "hunter2");
    }
    // minijinja's own message would have shown it.
    let raw = minijinja::Environment::new()
        .render_str(
            "{{ PIN | int // 0 }}",
            minijinja::context! { PIN => NUMBER },
        )
        .unwrap_err();
    assert!(raw.to_string().contains(NUMBER));
}

// --- helpers ------------------------------------------------------------------

#[test]
fn b64encode_and_b64decode_round_trip() {
    let text = "user:pässword/+=";
    assert_eq!(
        one("{{ V | b64encode }}", &[("V", text)]).unwrap(),
        "dXNlcjpww6Rzc3dvcmQvKz0="
    );
    assert_eq!(
        one("{{ V | b64encode | b64decode }}", &[("V", text)]).unwrap(),
        text
    );
}

#[test]
fn b64decode_takes_unpadded_url_safe_and_wrapped_input() {
    for (encoded, text) in [
        ("aGk/Pz4+", "hi??>>"),
        ("aGk_Pz4-", "hi??>>"),
        ("aGk/\nPz4+\n", "hi??>>"),
        ("aGk=", "hi"),
        ("aGk", "hi"),
    ] {
        assert_eq!(
            one("{{ V | b64decode }}", &[("V", encoded)]).unwrap(),
            text,
            "{encoded:?}"
        );
    }
}

#[test]
fn b64decode_refuses_what_is_not_base64_text() {
    let err = one("{{ V | b64decode }}", &[("V", SECRET)]).unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                helper: "b64decode",
                problem: "the input is not valid base64",
                line: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_hides(&err, SECRET);
    // 0xff 0xfe: base64 but not UTF-8.
    let err = one("{{ V | b64decode }}", &[("V", "//4=")]).unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                problem: "the decoded bytes are not UTF-8 text",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn tojson_quotes_a_string() {
    let value = "p\"w\\d\n<tab>\t'é";
    let out = one("{\"password\": {{ V | tojson }}}", &[("V", value)]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["password"], value);
}

#[test]
fn toyaml_reads_back_as_the_same_string() {
    let tricky = [
        "yes",
        "null",
        "~",
        "123",
        "0x1F",
        "- item",
        "key: value",
        "# comment",
        "@at",
        "`tick",
        "*alias",
        "&anchor",
        "!tag",
        "%directive",
        "{a: b}",
        "[1]",
        "|",
        ">",
        " leading",
        "trailing ",
        "",
        "quote\" and 'single'",
        "back\\slash",
        "line\nbreak",
        "tab\there",
        "cr\rlf",
        "bell\u{7}",
        "del\u{7f}",
        "nel\u{85}",
        "c1\u{9b}",
        "ls\u{2028}ps\u{2029}",
        "bom\u{feff}",
        "emoji 🔑",
        "ünïcødé",
    ];
    for value in tricky {
        let out = one("password: {{ V | toyaml }}\n", &[("V", value)]).unwrap();
        let parsed: BTreeMap<String, String> =
            serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert_eq!(parsed["password"], value, "{out:?}");
    }
}

#[test]
fn toyaml_quotes_numbers_and_refuses_other_kinds() {
    assert_eq!(one("{{ 5432 | toyaml }}", &[]).unwrap(), "\"5432\"");
    let err = one("{{ [1] | toyaml }}", &[]).unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                helper: "toyaml",
                ..
            }
        ),
        "{err:?}"
    );
    let err = one("{{ MISSING | toyaml }}", &[]).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Undefined { name: Some(name), .. } if name == "MISSING"),
        "{err:?}"
    );
}

#[test]
fn urlencode_leaves_only_unreserved_characters() {
    let out = one(
        "{{ V | urlencode }}",
        &[("V", "aZ09-._~ /?#[]@!$&'()*+,;=:%é")],
    )
    .unwrap();
    assert_eq!(
        out,
        "aZ09-._~%20%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%25%C3%A9"
    );
}

#[test]
fn urlencode_makes_a_password_safe_in_a_uri() {
    let password = "p@ss:w/rd?#%41&x=[y]";
    let user = "svc@corp:1";
    let uri = one(
        "postgresql://{{ U | urlencode }}:{{ P | urlencode }}@db.example:5432/app?sslmode=require",
        &[("U", user), ("P", password)],
    )
    .unwrap();
    let parsed = reqwest::Url::parse(&uri).unwrap();
    assert_eq!(parsed.host_str(), Some("db.example"));
    assert_eq!(parsed.port(), Some(5432));
    assert_eq!(parsed.path(), "/app");
    assert_eq!(parsed.query(), Some("sslmode=require"));
    assert_eq!(parsed.fragment(), None);
    assert_eq!(percent_decode(parsed.username()), user);
    assert_eq!(percent_decode(parsed.password().unwrap()), password);
}

#[test]
fn urlencode_turns_a_map_into_a_query_string() {
    let out = one(
        "{{ {'user': U, 'skip': none, 'q': 'a b&c'} | urlencode }}",
        &[("U", "a@b")],
    )
    .unwrap();
    assert_eq!(out, "q=a%20b%26c&user=a%40b");
}

#[test]
fn dockerconfigjson_holds_the_login_and_its_auth() {
    let out = one(
        "{{ dockerconfigjson('myregistry.azurecr.io', U, P) }}",
        &[("U", "bot"), ("P", "p@ss:\"w\"")],
    )
    .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let login = &parsed["auths"]["myregistry.azurecr.io"];
    assert_eq!(login["username"], "bot");
    assert_eq!(login["password"], "p@ss:\"w\"");
    let auth = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        login["auth"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(auth, b"bot:p@ss:\"w\"");
    assert_eq!(parsed.as_object().unwrap().len(), 1);
}

#[test]
fn dockerconfigjson_refuses_a_login_docker_cannot_read() {
    let err = one(
        "{{ dockerconfigjson(' ', U, P) }}",
        &[("U", "bot"), ("P", SECRET)],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                helper: "dockerconfigjson",
                problem: "the registry is empty",
                ..
            }
        ),
        "{err:?}"
    );
    let err = one(
        "{{ dockerconfigjson('r.io', U, P) }}",
        &[("U", "a:b"), ("P", SECRET)],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                problem: "the username contains ':'",
                ..
            }
        ),
        "{err:?}"
    );
    let err = one("{{ dockerconfigjson('r.io', U) }}", &[("U", "bot")]).unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");
    assert!(err.to_string().contains("missing argument"), "{err}");
}

// --- the uses in issue 11 -------------------------------------------------------

#[test]
fn example_image_pull_secret() {
    let templates = BTreeMap::from([(
        ".dockerconfigjson".to_string(),
        r#"{{ dockerconfigjson("ghcr.io", values["registry-user"], values["registry-token"]) }}"#
            .to_string(),
    )]);
    let rendered = render(
        &templates,
        &values(&[("registry-user", "ci-bot"), ("registry-token", "ghp_abc")]),
    )
    .unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(rendered[".dockerconfigjson"].expose()).unwrap();
    assert_eq!(parsed["auths"]["ghcr.io"]["auth"], "Y2ktYm90OmdocF9hYmM=");
}

#[test]
fn example_npmrc() {
    let out = one(
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={{ NPM_TOKEN }}\n",
        &[("NPM_TOKEN", "npm_abc123")],
    );
    assert_eq!(
        out.unwrap(),
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=npm_abc123\n"
    );
}

#[test]
fn example_connection_uri() {
    let out = one(
        "postgresql://{{ DB_USER | urlencode }}:{{ values['db-password'] | urlencode }}@{{ DB_HOST }}:5432/app",
        &[
            ("DB_USER", "app"),
            ("db-password", "a/b@c"),
            ("DB_HOST", "db.internal"),
        ],
    );
    assert_eq!(
        out.unwrap(),
        "postgresql://app:a%2Fb%40c@db.internal:5432/app"
    );
}

#[test]
fn example_airflow_connections() {
    let templates = BTreeMap::from([
        (
            "AIRFLOW_CONN_WAREHOUSE".to_string(),
            "postgres://{{ WH_USER | urlencode }}:{{ WH_PASSWORD | urlencode }}@warehouse:5432/dw".to_string(),
        ),
        (
            "AIRFLOW_CONN_API".to_string(),
            r#"{"conn_type": "http", "host": "api.example", "login": {{ API_USER | tojson }}, "password": {{ API_KEY | tojson }}}"#
                .to_string(),
        ),
    ]);
    let rendered = render(
        &templates,
        &values(&[
            ("WH_USER", "etl"),
            ("WH_PASSWORD", "p:w@1"),
            ("API_USER", "bot"),
            ("API_KEY", "k\"ey"),
        ]),
    )
    .unwrap();
    assert_eq!(
        rendered["AIRFLOW_CONN_WAREHOUSE"].expose(),
        "postgres://etl:p%3Aw%401@warehouse:5432/dw"
    );
    let api: serde_json::Value =
        serde_json::from_str(rendered["AIRFLOW_CONN_API"].expose()).unwrap();
    assert_eq!(api["password"], "k\"ey");
}

// --- resource limits (adversarial templates) --------------------------------------

/// Runs `f` on a thread with a tokio worker's 2 MiB stack: a template that
/// overflowed the stack there would abort the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// `{{ ` + `unit` as often as fits + `tail }}`: at most [`MAX_TEMPLATE_BYTES`].
fn longest(unit: &str, tail: &str) -> String {
    let room = MAX_TEMPLATE_BYTES - "{{  }}".len() - tail.len();
    format!("{{{{ {}{tail} }}}}", unit.repeat(room / unit.len()))
}

#[test]
fn deep_nesting_does_not_overflow_a_tokio_worker_stack() {
    let templates = [
        longest("not ", "true"),
        longest("-", "1"),
        longest("~", "1"),
        longest("(", ""),
        format!(
            "{{{{ 1{} }}}}",
            "|string".repeat((MAX_TEMPLATE_BYTES - 8) / 7)
        ),
        format!("{{{{ 1{} }}}}", "|e".repeat((MAX_TEMPLATE_BYTES - 8) / 2)),
    ];
    for template in templates {
        assert!(template.len() <= MAX_TEMPLATE_BYTES);
        let shown: String = template.chars().take(12).collect();
        let outcome = on_small_stack(move || one(&template, &[]));
        // Ok or an error, but an answer: the operator is still running.
        eprintln!("{shown}…: {:?}", outcome.map(|out| out.len()));
    }
}

#[test]
fn a_template_longer_than_the_limit_is_refused() {
    let template = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    let err = one(&template, &[]).unwrap_err();
    assert_eq!(
        err,
        TemplateError::TooLong {
            key: "out".into(),
            limit: MAX_TEMPLATE_BYTES
        }
    );
    assert_eq!(err.key(), "out");
    assert!(err.to_string().contains("16384"), "{err}");
    assert_eq!(
        one(&"x".repeat(MAX_TEMPLATE_BYTES), &[]).unwrap().len(),
        MAX_TEMPLATE_BYTES
    );
}

/// The confirmed memory attacks, with a modest value but the attack's
/// multipliers: each must fail at once with the named helper's refusal.
#[test]
fn building_huge_text_is_refused_before_it_is_built() {
    let x = "a".repeat(25_000);
    for (template, helper) in [
        ("{{ ([X] * 100000000) | join }}", "join"),
        ("{% set Y = X * 40 %}{{ ([Y] * 100000000) | join }}", "join"),
        ("{{ range(100000) | join(X) }}", "join"),
        ("{{ values | tojson(indent=1000000000) }}", "tojson"),
        ("{{ ([X] * 100000000) | tojson }}", "tojson"),
        ("{{ dict(a=[X] * 100000000) | tojson }}", "tojson"),
        ("{{ [X] * 100000000 }}", "print"),
        ("{{ values }}", "print"),
        ("{{ ([X] * 100000000) | string }}", "string"),
        ("{{ ([X] * 100000000) | upper }}", "upper"),
        ("{{ ([X] * 100000000) | b64encode }}", "b64encode"),
        ("{{ ([X] * 100000000) | urlencode }}", "urlencode"),
        ("{{ X | replace('a', X) }}", "replace"),
    ] {
        let start = std::time::Instant::now();
        let err = one(template, &[("X", &x)]).unwrap_err();
        assert!(
            matches!(err, TemplateError::Helper { helper: h, .. } if h == helper),
            "{template}: {err:?}"
        );
        assert!(start.elapsed().as_secs() < 5, "{template}: slow");
    }
}

#[test]
fn work_on_huge_lists_runs_out_of_fuel() {
    let x = "a".repeat(25_000);
    for template in [
        "{{ ([X] * 100000000) | last }}",
        "{{ X in ([X ~ 'b'] * 100000000) }}",
        "{% for a in [X] * 100000000 %}{% endfor %}",
        "{{ (X * 40) | split('a') | length }}",
        "{% set ns = namespace(a=[]) %}{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}",
    ] {
        let err = one(template, &[("X", &x)]).unwrap_err();
        assert!(
            matches!(err, TemplateError::OutOfFuel { .. }),
            "{template}: {err:?}"
        );
    }
}

#[test]
fn filters_that_walk_whole_lists_are_not_offered() {
    for filter in [
        "list",
        "pprint",
        "batch(2)",
        "slice(2)",
        "sum",
        "unique",
        "dictsort",
        "sort",
        "map('upper')",
        "indent(2)",
        "format",
        "title",
        "lines",
        "min",
        "reverse",
        "e",
        "escape",
        "safe",
    ] {
        let err = one(&format!("{{{{ ['a'] | {filter} }}}}"), &[]).unwrap_err();
        assert!(err.to_string().contains("is unknown"), "{filter}: {err}");
    }
    for test in ["startingwith('a')", "endingwith('a')", "lower", "upper"] {
        let err = one(&format!("{{{{ ['a'] is {test} }}}}"), &[]).unwrap_err();
        assert!(err.to_string().contains("is unknown"), "{test}: {err}");
    }
}

#[test]
fn all_templates_share_one_output_budget() {
    let template = format!("{{{{ 'x' * {} }}}}", MAX_RENDERED_BYTES / 2 + 1);
    let templates = BTreeMap::from([
        ("a".to_string(), template.clone()),
        ("b".to_string(), template),
    ]);
    let err = render_checked(&templates, &values(&[])).unwrap_err();
    assert_eq!(
        err,
        TemplateError::TooLarge {
            key: "b".into(),
            limit: MAX_RENDERED_BYTES
        }
    );
}

#[test]
fn all_templates_share_one_fuel() {
    // About 60 000 fuel each: one fits, two do not.
    let template = "{% for i in range(30000) %}{% endfor %}".to_string();
    assert_eq!(one(&template, &[]).unwrap(), "");
    let templates = BTreeMap::from([
        ("a".to_string(), template.clone()),
        ("b".to_string(), template),
    ]);
    let err = render_checked(&templates, &values(&[])).unwrap_err();
    assert!(matches!(err, TemplateError::OutOfFuel { .. }), "{err:?}");
    assert_eq!(err.key(), "b");
}

#[test]
fn tojson_indents_up_to_eight() {
    let out = one("{{ {'a': [1, 'x'], 'b': {}} | tojson(indent=2) }}", &[]).unwrap();
    assert_eq!(
        out,
        "{\n  \"a\": [\n    1,\n    \"x\"\n  ],\n  \"b\": {}\n}"
    );
    let out = one("{{ {'a': [1, none, true]} | tojson }}", &[]).unwrap();
    assert_eq!(out, "{\"a\": [1, null, true]}");
    let err = one("{{ 'a' | tojson(indent=9) }}", &[]).unwrap_err();
    assert!(
        matches!(
            err,
            TemplateError::Helper {
                helper: "tojson",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn kept_filters_still_work() {
    let out = one(
        "{{ U | upper }} {{ U | lower }} {{ ' p ' | trim }} {{ 'a-b-c' | replace('-', '+') }} \
         {{ 'a,b' | split(',') | join('|') }} {{ 'a b  c' | split | join('.') }} {{ [1, 'x', true] | join }} \
         {{ 5 | string }} {{ 'x.y' | replace('.', '', 1) }}",
        &[("U", "Bot")],
    )
    .unwrap();
    assert_eq!(out, "BOT bot p a+b+c a|b a.b.c 1xTrue 5 xy");
}

// --- the value leak through undefined-name errors ---------------------------------

/// The confirmed attack: a comment spells `values["c@i"]` for every
/// character and position, and a loop looks up the key made of the value's
/// i-th character. The error used to name the key looked up, spelling the
/// value out.
#[test]
fn a_key_computed_from_a_value_is_never_told_even_if_the_text_spells_it() {
    const VALUE: &str = "QzX7-unique-VALUE";
    let alphabet: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(['-', '_'])
        .collect();
    let mut comment = String::from("{# ");
    for i in 0..VALUE.len() {
        for c in &alphabet {
            comment.push_str(&format!("values[\"{c}@{i}\"] "));
        }
    }
    comment.push_str("#}");
    assert!(comment.len() < MAX_TEMPLATE_BYTES);
    for failing_line in [
        // On its own line, and on the line of the comment.
        format!(
            "{comment}\n{{% for i in range(P|length) %}}{{{{ values[P[i:i+1] ~ \"@\" ~ i] }}}}{{% endfor %}}"
        ),
        format!(
            "{{% for i in range(P|length) %}}{{{{ values[P[i:i+1] ~ \"@\" ~ i] }}}}{{% endfor %}}{comment}"
        ),
        format!("{comment}{{{{ values[P] }}}}{{{{ values[P ~ ''] }}}}"),
    ] {
        let err = one(&failing_line, &[("P", VALUE)]).unwrap_err();
        assert!(matches!(err, TemplateError::Undefined { .. }), "{err:?}");
        for shown in [format!("{err}"), format!("{err:?}"), format!("{err:#?}")] {
            let chars: Vec<char> = VALUE.chars().collect();
            for gram in chars.windows(4) {
                let gram: String = gram.iter().collect();
                assert!(!shown.contains(&gram), "{gram:?} in {shown}");
            }
            for (i, c) in VALUE.chars().enumerate() {
                let key = format!("{c}@{i}");
                // A key told alone (not in the full list of the line) would
                // tell a character of the value.
                if let TemplateError::Undefined {
                    name: Some(name), ..
                } = &err
                {
                    assert!(!name.contains(&key), "{name}");
                }
            }
        }
    }
}

#[test]
fn an_undefined_name_on_an_unknown_line_lists_the_names_the_text_uses() {
    let err = one("{{ values['nope'] }}{{ MISSING }}", &[("P", SECRET)]).unwrap_err();
    match &err {
        TemplateError::Undefined {
            name, not_found, ..
        } => {
            // Both are on line 1: neither is singled out.
            assert_eq!(name, &None);
            assert_eq!(not_found, &["MISSING", "values[\"nope\"]"]);
        }
        other => panic!("{other:?}"),
    }
    assert_hides(&err, SECRET);
    let err = one("{{ values[P ~ 'x'] }}", &[("P", SECRET)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("a name or values[...] key that is not defined"),
        "{err}"
    );
}

#[test]
fn the_repetition_operator_is_refused_before_anything_runs() {
    let values = BTreeMap::from([("X".to_string(), SecretValue::new("x".repeat(25_000)))]);
    for (source, line) in [
        ("{{ X ~ ([X] * 100000000) }}", 1),
        ("ok\n{% set y = 2 ** 3 %}{{ y }}", 2),
        // Ways a hand-written scanner was fooled: a comment with {{ and a
        // quote, a raw block, nested braces.
        ("{# {{ \" #}{{ X ~ ([X] * 100000000) }}", 1),
        ("{% raw %}{{ \"{% endraw %}{{ X ~ ([X] * 100000000) }}", 1),
        ("{{ [{'k': {}}, X ~ ([X] * 100000000)] | length }}", 1),
        // + joins lists lazily too.
        (
            "{% set l = [X] %}\n{% set l = l + l %}{{ (X ~ l) | length }}",
            2,
        ),
    ] {
        let templates = BTreeMap::from([("k".to_string(), source.to_string())]);
        match render(&templates, &values) {
            Err(TemplateError::Operator { key, line: at, .. }) => {
                assert_eq!((key.as_str(), at), ("k", line), "{source}");
            }
            other => panic!("{source}: {other:?}"),
        }
    }
    for fine in [
        "{{ \"a*b+c\" }}",
        "{{ 'it\\'s * fine' }}",
        "{# a * b + c #}{{ X | length }}",
        "a * b + c outside code {{ X | length }}",
        "{% raw %}{{ a * b }}{% endraw %}{{ X | length }}",
        "{{ X ~ '-' ~ X }}",
    ] {
        let templates = BTreeMap::from([("k".to_string(), fine.to_string())]);
        assert!(render(&templates, &values).is_ok(), "{fine}");
    }
}

// --- what a template could read (for holding) --------------------------------

fn keys(names: &[&str]) -> Dependencies {
    Dependencies::Keys(names.iter().map(|n| n.to_string()).collect())
}

#[test]
fn bare_names_read_the_keys_of_those_names() {
    assert_eq!(
        dependencies("pg://{{ DB_USER }}:{{ DB_PASSWORD | urlencode }}@db"),
        keys(&["DB_USER", "DB_PASSWORD"]),
        "a filter's name is not a read"
    );
}

#[test]
fn literal_lookups_in_values_read_only_that_key() {
    assert_eq!(
        dependencies(r#"{{ values["db-password"] }} {{ values['tls.crt'] }} {{ values.USER }}"#),
        keys(&["db-password", "tls.crt", "USER"])
    );
    assert_eq!(
        dependencies(r#"{{ values["db" ~ "-password"] }}"#),
        keys(&["db-password"]),
        "a subscript of literals only is folded, as the compiler folds it"
    );
    assert_eq!(
        dependencies(r#"{% if values.TOKEN is defined %}{{ values["TOKEN"] }}{% endif %}"#),
        keys(&["TOKEN"])
    );
}

#[test]
fn tojson_over_values_reads_every_value() {
    assert_eq!(dependencies("{{ values | tojson }}"), Dependencies::All);
    assert_eq!(
        dependencies("{{ values | tojson(indent=2) }}\n"),
        Dependencies::All
    );
}

#[test]
fn a_loop_over_values_reads_every_value() {
    assert_eq!(
        dependencies("{% for k, v in values | items %}{{ k }}={{ v }}\n{% endfor %}"),
        Dependencies::All
    );
    assert_eq!(
        dependencies("{% for k in values %}{{ k }}{% endfor %}"),
        Dependencies::All
    );
}

#[test]
fn a_computed_subscript_reads_every_value() {
    assert_eq!(
        dependencies(r#"{{ values[PREFIX ~ "_PASSWORD"] }}"#),
        Dependencies::All
    );
    assert_eq!(dependencies("{{ values[0] }}"), Dependencies::All);
}

#[test]
fn any_other_use_of_values_reads_every_value() {
    for template in [
        "{{ values | length }}",
        "{{ values.items() | length }}",
        r#"{{ values.get("A") }}"#,
        "{% set v = values %}{{ v.A }}",
        "{% set v %}{{ values | tojson }}{% endset %}{{ v }}",
        "{{ dict(all=values) | tojson }}",
        "{{ dockerconfigjson(values.R, values.U, values.P) }}{{ values | first }}",
        r#"{{ "A" in values }}"#,
        "{% if values is defined %}x{% endif %}",
        "{% with v = values %}{{ v.A }}{% endwith %}",
        "{% filter upper %}{{ values | tojson }}{% endfilter %}",
        "{% for x in range(3) %}{{ values[x] }}{% endfor %}",
    ] {
        assert_eq!(dependencies(template), Dependencies::All, "{template}");
    }
}

#[test]
fn aliases_and_loops_read_what_they_are_built_from() {
    assert_eq!(
        dependencies(
            "{% set p = DB_PASSWORD %}{% for u in [DB_USER] %}{{ u }}:{{ p }}{% endfor %}"
        ),
        keys(&["DB_PASSWORD", "DB_USER", "u", "p"])
    );
    assert_eq!(
        dependencies("{% with x = values.A %}{{ x }}{% endwith %}{% set s %}{{ B }}{% endset %}"),
        keys(&["A", "B", "x"])
    );
}

#[test]
fn a_name_shadowed_by_a_local_still_counts_as_a_read() {
    // Conservative: holding too much keeps the last good data.
    assert_eq!(
        dependencies(r#"{% set TOKEN = "fixed" %}{{ TOKEN }}"#),
        keys(&["TOKEN"])
    );
}

#[test]
fn comments_raw_blocks_and_string_literals_are_not_reads() {
    assert_eq!(
        dependencies(
            "{# uses PASSWORD and {{ values | tojson }} #}\
             {% raw %}{{ PASSWORD }}{{ values | tojson }}{% endraw %}\
             {{ \"PASSWORD\" }} {{ USER }}"
        ),
        keys(&["USER"])
    );
}

#[test]
fn a_key_inside_a_longer_name_is_not_read() {
    let deps = dependencies("{{ DATA }} {{ values.A_B }}");
    assert!(deps.reads("DATA") && deps.reads("A_B"));
    assert!(!deps.reads("A"), "{deps:?}");
}

#[test]
fn a_template_that_does_not_parse_reads_every_value() {
    assert_eq!(dependencies("{{ USER "), Dependencies::All);
    assert_eq!(dependencies("{% for %}"), Dependencies::All);
    let too_long = format!("{{{{ A }}}}{}", " ".repeat(MAX_TEMPLATE_BYTES));
    assert_eq!(dependencies(&too_long), Dependencies::All);
}

#[test]
fn every_template_of_a_secret_counts() {
    let templates = BTreeMap::from([
        ("url".to_string(), "{{ USER }}".to_string()),
        ("token".to_string(), "{{ values.TOKEN }}".to_string()),
    ]);
    assert_eq!(dependencies_of(&templates), keys(&["USER", "TOKEN"]));
    let templates = BTreeMap::from([
        ("url".to_string(), "{{ USER }}".to_string()),
        (
            "config.json".to_string(),
            "{{ values | tojson }}".to_string(),
        ),
    ]);
    assert_eq!(dependencies_of(&templates), Dependencies::All);
    assert_eq!(dependencies_of(&BTreeMap::new()), keys(&[]));
}

#[test]
fn deep_nesting_does_not_overflow_a_tokio_worker_stack_when_finding_reads() {
    let templates = [
        longest("not ", "A"),
        longest("A - ", "A"),
        longest("A ~ ", "A"),
        format!(
            "{{{{ A{} }}}}",
            "|string".repeat((MAX_TEMPLATE_BYTES - 8) / 7)
        ),
    ];
    for template in templates {
        let deps = on_small_stack(move || dependencies(&template));
        assert_eq!(deps, keys(&["A"]));
    }
}
