//! The loader's rules, one test per rule or per table of rows.

use std::collections::BTreeMap;
use std::time::Duration;

use super::settings::{SETTINGS, Source};
use super::*;

/// Classic tokens are per caller (each fetch invalidates the last one after
/// five minutes), so several replicas must not each fetch their own.
#[test]
fn classic_tokens_with_several_replicas_need_redis() {
    let env = |extra: &[(&str, &str)]| {
        let mut m: std::collections::BTreeMap<String, String> = [
            ("WXD_APPID", "wxclassic"),
            ("WXD_SECRET", "s"),
            ("WXD_TOKEN_MODE", "classic"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    };
    let e = Config::from_sources(None, &env(&[("WXD_EXPECTED_REPLICAS", "3")])).unwrap_err();
    assert!(e.to_string().contains("token_mode"), "{e}");
    assert!(Config::from_sources(None, &env(&[])).is_ok());
    let e = Config::from_sources(None, &env(&[("WXD_TOKEN_FORCE_BUDGET", "21")])).unwrap_err();
    assert!(e.to_string().contains("token_force_budget"), "{e}");
}

/// A central token service owns the tokens: accounts need no AppSecret, and the mode needs
/// the service's URL. Its bearer token is a secret, from the environment or a file.
#[test]
fn central_tokens_need_a_url_and_no_secret() {
    let e = Config::from_sources(
        None,
        &env(&[("WXD_APPID", "wxcentral"), ("WXD_TOKEN_MODE", "central")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("WXD_TOKEN_URL"), "{e}");
    let dir = std::env::temp_dir().join(format!("wxd-central-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auth = dir.join("auth");
    std::fs::write(&auth, "bearer-secret\n").unwrap();
    let c = Config::from_sources(
        Some("[[accounts]]\nappid = \"wxother\"\n"),
        &env(&[
            ("WXD_APPID", "wxcentral"),
            ("WXD_TOKEN_MODE", "central"),
            ("WXD_TOKEN_URL", "http://tokens.internal/token"),
            ("WXD_TOKEN_URL_AUTH_FILE", auth.to_str().unwrap()),
        ]),
    )
    .expect("no AppSecret is needed in central mode");
    assert_eq!(c.wechat.token_mode, TokenMode::Central);
    assert_eq!(c.accounts.len(), 2);
    assert!(c.credentials.app_secret("wxcentral").is_none());
    assert_eq!(
        c.credentials.token_url_auth.as_ref().map(Secret::expose),
        Some("bearer-secret")
    );
    assert!(!format!("{c:?}").contains("bearer-secret"));
    // The same accounts without a secret are still refused in the default mode.
    let e = Config::from_sources(None, &env(&[("WXD_APPID", "wxcentral")])).unwrap_err();
    assert!(e.to_string().contains("WXD_SECRET"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Component mode needs Redis, the platform's appid and its three secrets, and no
/// AppSecret per account; the check names what is missing.
#[test]
fn component_mode_needs_redis_and_the_platform_credentials() {
    let base = [
        ("WXD_APPID", "wxauthorizer"),
        ("WXD_TOKEN_MODE", "component"),
        ("WXD_COMPONENT_APPID", "wxplatform"),
        ("WXD_REDIS_URL", "redis://127.0.0.1:6379/"),
        ("WXD_COMPONENT_SECRET", "s"),
        ("WXD_COMPONENT_TOKEN", "t"),
        (
            "WXD_COMPONENT_AES_KEY",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        ),
    ];
    let without = |key: &str| {
        env(&base
            .iter()
            .copied()
            .filter(|(k, _)| *k != key)
            .collect::<Vec<_>>())
    };
    let c = Config::from_sources(None, &env(&base)).expect("complete");
    assert_eq!(c.wechat.token_mode, TokenMode::Component);
    assert!(c.credentials.app_secret("wxauthorizer").is_none());
    for (key, named) in [
        ("WXD_REDIS_URL", "WXD_REDIS_URL"),
        ("WXD_COMPONENT_APPID", "WXD_COMPONENT_APPID"),
        ("WXD_COMPONENT_SECRET", "WXD_COMPONENT_SECRET"),
        ("WXD_COMPONENT_TOKEN", "WXD_COMPONENT_TOKEN"),
        ("WXD_COMPONENT_AES_KEY", "WXD_COMPONENT_AES_KEY"),
    ] {
        let e = Config::from_sources(None, &without(key)).unwrap_err();
        assert!(e.to_string().contains(named), "{key}: {e}");
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_follow_the_contract() {
    let c = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(c.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(c.amqp.jobs_queue, "wxdispatch.jobs");
    assert_eq!(c.amqp.outcomes_exchange, "wxdispatch.outcomes");
    assert_eq!(c.amqp.outcomes_queue, "wxdispatch.outcomes");
    assert_eq!(c.amqp.dead_queue, "wxdispatch.dead");
    assert_eq!(c.wechat.api_base, "https://api.weixin.qq.com");
    assert_eq!(c.wechat.token_mode, TokenMode::Stable);
    assert_eq!(c.http_addr, "0.0.0.0:9090");
    assert_eq!(c.callback.path, "/wechat/callback");
    assert_eq!(c.limits.quota_probe, Duration::from_secs(600));
    assert_eq!(c.amqp.jobs_queue_type, QueueType::Quorum);
}

#[test]
fn env_overrides_file_and_single_account_comes_from_env() {
    let toml = "jobs_queue = \"from-file\"\nconcurrency = 8\n";
    let e = env(&[
        ("WXD_JOBS_QUEUE", "from-env"),
        ("WXD_APPID", "wx0123456789abcdef"),
        ("WXD_SECRET", "s3cret"),
        ("WXD_RATE_PER_SEC", "200"),
    ]);
    let c = Config::from_sources(Some(toml), &e).unwrap();
    assert_eq!(c.amqp.jobs_queue, "from-env");
    assert_eq!(c.limits.concurrency, 8);
    assert_eq!(c.accounts.len(), 1);
    assert_eq!(c.accounts[0].rate_per_sec, 200);
    assert_eq!(
        c.credentials
            .app_secret(&c.accounts[0].appid)
            .unwrap()
            .expose(),
        "s3cret"
    );
}

#[test]
fn several_accounts_come_from_the_file_with_secrets_from_env() {
    let toml = r#"
        [[accounts]]
        appid = "wxaaaa"
        secret_env = "SECRET_A"
        rate_per_sec = 10
        [[accounts]]
        appid = "wxbbbb"
        daily_quota = 500
    "#;
    let e = env(&[("SECRET_A", "a"), ("WXD_SECRET_WXBBBB", "b")]);
    let c = Config::from_sources(Some(toml), &e).unwrap();
    assert_eq!(c.accounts.len(), 2);
    assert_eq!(c.accounts[0].rate_per_sec, 10);
    assert_eq!(c.accounts[1].daily_quota, Some(500));
    assert_eq!(c.credentials.app_secret("wxbbbb").unwrap().expose(), "b");
    assert!(c.account(Some("wxbbbb")).is_some());
    assert!(c.account(None).is_none(), "no default with two accounts");
}

#[test]
fn unknown_keys_are_named() {
    let e = Config::from_sources(Some("concurrencyy = 3"), &env(&[])).unwrap_err();
    assert!(e.to_string().contains("concurrencyy"), "{e}");
    let e = Config::from_sources(None, &env(&[("WXD_PREFECTH", "3")])).unwrap_err();
    assert!(e.to_string().contains("WXD_PREFECTH"), "{e}");
}

#[test]
fn missing_secret_is_named_and_bad_urls_are_refused() {
    let e = Config::from_sources(None, &env(&[("WXD_APPID", "wx1")])).unwrap_err();
    assert!(e.to_string().contains("WXD_SECRET"), "{e}");
    let e = Config::from_sources(None, &env(&[("WXD_AMQP_URL", "http://x")])).unwrap_err();
    assert!(e.to_string().contains("WXD_AMQP_URL"), "{e}");
    let e = Config::from_sources(None, &env(&[("WXD_API_BASE", "not a url")])).unwrap_err();
    assert!(e.to_string().contains("WXD_API_BASE"), "{e}");
    let e = Config::from_sources(None, &env(&[("WXD_CONCURRENCY", "many")])).unwrap_err();
    assert!(e.to_string().contains("WXD_CONCURRENCY"), "{e}");
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    let e = env(&[("WXD_APPID", "wx1"), ("WXD_SECRET", "hunter2-very-secret")]);
    let c = Config::from_sources(None, &e).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    let e = env(&[
        ("WXD_APPID", "bad appid!"),
        ("WXD_SECRET", "hunter2-very-secret"),
    ]);
    let msg = Config::from_sources(None, &e).unwrap_err().to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
}

/// Every validation rule as a row: the settings that break it, and the words the error
/// must contain so an operator knows which key to fix. Each row is checked against a
/// base that is valid on its own, so a row can only fail for its own rule.
#[test]
fn each_invalid_setting_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("wxd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let empty_file = dir.join("empty");
    std::fs::write(&empty_file, "  \n").unwrap();
    let missing_file = dir.join("missing");
    let (sf, ef, mf) = (
        secret_file.display().to_string(),
        empty_file.display().to_string(),
        missing_file.display().to_string(),
    );
    let base = [("WXD_APPID", "wx0123456789abcdef"), ("WXD_SECRET", "s")];
    let ok = |toml: Option<&str>, pairs: &[(&str, &str)]| {
        let mut e = env(&base);
        e.extend(env(pairs));
        Config::from_sources(toml, &e)
    };
    assert!(ok(None, &[]).is_ok(), "the base itself is valid");
    let long = "q".repeat(201);
    let long_ok = "q".repeat(200);
    let aes_42 = "a".repeat(42);
    let aes_44 = "a".repeat(44);
    let dup = "[[accounts]]\nappid = \"wx0123456789abcdef\"\n";
    let two = "[[accounts]]\nappid = \"wxaaaa\"\n[[accounts]]\nappid = \"wxaaaa\"\n";
    let env_and_file =
        format!("[[accounts]]\nappid = \"wxcccc\"\nsecret_env = \"S\"\nsecret_file = \"{sf}\"\n");
    let unset_env = "[[accounts]]\nappid = \"wxcccc\"\nsecret_env = \"NOT_SET\"\n";
    let bad_file = format!("[[accounts]]\nappid = \"wxcccc\"\nsecret_file = \"{mf}\"\n");
    let empty_secret_file = format!("[[accounts]]\nappid = \"wxcccc\"\nsecret_file = \"{ef}\"\n");
    let no_secret = "[[accounts]]\nappid = \"wxcccc\"\n";
    /// A case: its name, the file, the extra settings, and words the error must contain.
    type Row<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let zero_rate = "[[accounts]]\nappid = \"wxcccc\"\nrate_per_sec = 0\n";
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("bad appid", None, vec![("WXD_APPID", "wx bad!")], "not a valid appid"),
        ("empty appid", None, vec![("WXD_APPID", "")], "not a valid appid"),
        ("empty secret", None, vec![("WXD_SECRET", "  ")], "empty"),
        ("empty secret file", Some(&empty_secret_file), vec![], "empty"),
        ("rate 0", None, vec![("WXD_RATE_PER_SEC", "0")], "rate_per_sec"),
        ("rate 0 in the file", Some(zero_rate), vec![("WXD_SECRET_WXCCCC", "c")], "rate_per_sec"),
        ("appid twice (env and file)", Some(dup), vec![("WXD_SECRET_WX0123456789ABCDEF", "x")], "configured twice"),
        ("appid twice in the file", Some(two), vec![("WXD_SECRET_WXAAAA", "a")], "configured twice"),
        ("secret_env and secret_file", Some(&env_and_file), vec![("S", "x")], "not both"),
        ("secret_env not set", Some(unset_env), vec![], "NOT_SET is not set"),
        ("secret_file unreadable", Some(&bad_file), vec![], "secret_file: cannot read"),
        ("no secret source", Some(no_secret), vec![], "WXD_SECRET_WXCCCC"),
        ("jobs queue too long", None, vec![("WXD_JOBS_QUEUE", &long)], "jobs_queue"),
        ("jobs queue empty", None, vec![("WXD_JOBS_QUEUE", "")], "jobs_queue"),
        ("outcomes exchange too long", None, vec![("WXD_OUTCOMES_EXCHANGE", &long)], "outcomes_exchange"),
        ("outcomes queue too long", None, vec![("WXD_OUTCOMES_QUEUE", &long)], "outcomes_queue"),
        ("dead queue too long", None, vec![("WXD_DEAD_QUEUE", &long)], "dead_queue"),
        ("AES key of 42", None, vec![("WXD_CALLBACK_AES_KEY", &aes_42)], "43 characters"),
        ("AES key of 44", None, vec![("WXD_CALLBACK_AES_KEY", &aes_44)], "43 characters"),
    ];
    for (name, toml, pairs, want) in &rows {
        match ok(*toml, pairs) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert!(e.to_string().contains(want), "{name}: {e} (want {want:?})"),
        }
    }
    // The edges that are valid, so the rules above are not simply "refuse everything".
    let c = ok(None, &[("WXD_JOBS_QUEUE", &long_ok)]).unwrap();
    assert_eq!(c.amqp.jobs_queue.len(), 200);
    assert!(ok(None, &[("WXD_CALLBACK_AES_KEY", &"a".repeat(43))]).is_ok());
    assert!(ok(None, &[("WXD_RATE_PER_SEC", "1")]).is_ok());
    // The single account's secret from a file: read and trimmed, or a named error.
    let only_file = |path: &str| {
        Config::from_sources(
            None,
            &env(&[
                ("WXD_APPID", "wx0123456789abcdef"),
                ("WXD_SECRET_FILE", path),
            ]),
        )
    };
    assert_eq!(
        only_file(&sf)
            .unwrap()
            .credentials
            .app_secret("wx0123456789abcdef")
            .unwrap()
            .expose(),
        "from-a-file"
    );
    let e = only_file(&mf).unwrap_err().to_string();
    assert!(e.contains("WXD_SECRET_FILE: cannot read"), "{e}");
    let e = only_file(&ef).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn original_ids_and_topology_are_read_and_checked() {
    let toml = r#"
        topology = "passive"
        [[accounts]]
        appid = "wxaaaa"
        original_id = "gh_aaaa"
        [[accounts]]
        appid = "wxbbbb"
    "#;
    let e = env(&[("WXD_SECRET_WXAAAA", "a"), ("WXD_SECRET_WXBBBB", "b")]);
    let c = Config::from_sources(Some(toml), &e).unwrap();
    assert_eq!(c.accounts[0].original_id.as_deref(), Some("gh_aaaa"));
    assert_eq!(c.accounts[1].original_id, None);
    assert_eq!(c.amqp.topology, Topology::Passive);
    let c = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(c.amqp.topology, Topology::Declare, "the default");
    let single = env(&[
        ("WXD_APPID", "wxaaaa"),
        ("WXD_SECRET", "a"),
        ("WXD_ORIGINAL_ID", "gh_single"),
        ("WXD_TOPOLOGY", "passive"),
    ]);
    let c = Config::from_sources(None, &single).unwrap();
    assert_eq!(c.accounts[0].original_id.as_deref(), Some("gh_single"));
    assert_eq!(c.amqp.topology, Topology::Passive);
    let twice = toml.replace(
        "appid = \"wxbbbb\"",
        "appid = \"wxbbbb\"\noriginal_id = \"gh_aaaa\"",
    );
    let e2 = Config::from_sources(Some(&twice), &e).unwrap_err();
    assert!(e2.to_string().contains("gh_aaaa"), "{e2}");
    let bad = Config::from_sources(None, &env(&[("WXD_TOPOLOGY", "maybe")])).unwrap_err();
    assert!(bad.to_string().contains("maybe"), "{bad}");
}

/// `publishers`: a list per `[[accounts]]` entry, or `WXD_PUBLISHERS` (comma-separated) for
/// the single account; without it anyone may send; an empty list or a name with a blank is
/// refused at load, naming the account.
#[test]
fn publishers_are_read_per_account_and_checked() {
    let toml = r#"
        [[accounts]]
        appid = "wxaaaa"
        publishers = ["billing", "crm"]
        [[accounts]]
        appid = "wxbbbb"
    "#;
    let e = env(&[("WXD_SECRET_WXAAAA", "a"), ("WXD_SECRET_WXBBBB", "b")]);
    let c = Config::from_sources(Some(toml), &e).unwrap();
    let a = &c.accounts[0];
    assert!(a.admits(Some("billing")) && a.admits(Some("crm")));
    assert!(!a.admits(Some("other")) && !a.admits(None) && !a.admits(Some("")));
    assert!(c.accounts[1].admits(None), "without the key, anyone");
    let single = env(&[
        ("WXD_APPID", "wxaaaa"),
        ("WXD_SECRET", "a"),
        ("WXD_PUBLISHERS", "billing, crm"),
    ]);
    let c = Config::from_sources(None, &single).unwrap();
    assert_eq!(
        c.accounts[0].publishers,
        Some(vec!["billing".to_string(), "crm".to_string()])
    );
    for bad in [r#"[]"#, r#"["bill ing"]"#, r#"[""]"#, r#""billing""#] {
        let t = toml.replace(r#"["billing", "crm"]"#, bad);
        let err = Config::from_sources(Some(&t), &e).unwrap_err().to_string();
        assert!(
            err.contains("publishers") || err.contains("accounts"),
            "{bad}: {err}"
        );
    }
    let mut empty = single.clone();
    empty.insert("WXD_PUBLISHERS".into(), " ".into());
    let err = Config::from_sources(None, &empty).unwrap_err().to_string();
    assert!(
        err.contains("PUBLISHERS") || err.contains("publishers"),
        "{err}"
    );
}

#[test]
fn inline_secret_in_file_is_refused() {
    let e = Config::from_sources(Some("secret = \"x\""), &env(&[])).unwrap_err();
    assert!(e.to_string().contains("secret"));
}

#[test]
fn every_key_has_a_setting_and_a_default_in_run_help() {
    let help = env_help();
    let c = Config::from_sources(None, &env(&[])).unwrap();
    let printed = c.settings();
    for s in SETTINGS {
        let name = s.env();
        assert!(help.contains(&name), "run --help lacks {name}:\n{help}");
        assert!(
            help.contains(s.help),
            "run --help lacks the help of {name}:\n{help}"
        );
        if s.key != "secret" {
            assert!(
                printed.iter().any(|(n, _)| *n == name),
                "check-config does not print {name}"
            );
        }
    }
    assert!(
        help.contains("WXD_PREFETCH") && help.contains("128"),
        "{help}"
    );
}

#[test]
fn settings_redact_every_password_and_secret() {
    let e = env(&[
        ("WXD_AMQP_URL", "amqps://app:hunter2-amqp@rabbit:5671/%2f"),
        ("WXD_REDIS_URL", "redis://:hunter2-redis@redis:6379/0"),
        ("WXD_APPID", "wx1"),
        ("WXD_SECRET", "hunter2-appsecret"),
        ("WXD_CALLBACK_TOKEN", "hunter2-token"),
    ]);
    let c = Config::from_sources(None, &e).unwrap();
    let all = format!("{:?}", c.settings());
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("amqps://app:***@rabbit:5671/%2f"), "{all}");
    assert!(all.contains("(set)"), "{all}");
}

#[test]
fn amqp_and_redis_urls_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("wxd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let amqp = dir.join("amqp");
    let redis = dir.join("redis");
    std::fs::write(&amqp, "amqp://u:p@broker:5672/%2f\n").unwrap();
    std::fs::write(&redis, "redis://:p@redis:6379/1\n").unwrap();
    let e = env(&[
        ("WXD_AMQP_URL_FILE", amqp.to_str().unwrap()),
        ("WXD_REDIS_URL_FILE", redis.to_str().unwrap()),
    ]);
    let c = Config::from_sources(None, &e).unwrap();
    assert_eq!(c.amqp.url, "amqp://u:p@broker:5672/%2f");
    assert_eq!(
        c.limits.redis_url.as_deref(),
        Some("redis://:p@redis:6379/1")
    );
    let both = env(&[
        ("WXD_AMQP_URL_FILE", amqp.to_str().unwrap()),
        ("WXD_AMQP_URL", "amqp://x"),
    ]);
    let msg = Config::from_sources(None, &both).unwrap_err().to_string();
    assert!(msg.contains("WXD_AMQP_URL_FILE"), "{msg}");
    let missing = env(&[("WXD_REDIS_URL_FILE", "/nonexistent/wxd-redis-url")]);
    let msg = Config::from_sources(None, &missing)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("WXD_REDIS_URL_FILE"), "{msg}");
    // The file's content is checked like the variable's.
    std::fs::write(&amqp, "http://not-amqp\n").unwrap();
    let e = env(&[("WXD_AMQP_URL_FILE", amqp.to_str().unwrap())]);
    let msg = Config::from_sources(None, &e).unwrap_err().to_string();
    assert!(msg.contains("WXD_AMQP_URL"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn callback_addr_is_optional_validated_and_distinct() {
    let c = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(
        c.callback.addr, None,
        "the contract's single listener by default"
    );
    let c = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "0.0.0.0:8080")])).unwrap();
    assert_eq!(c.callback.addr.as_deref(), Some("0.0.0.0:8080"));
    let msg = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "8080")]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("WXD_CALLBACK_ADDR"), "{msg}");
    let msg = Config::from_sources(None, &env(&[("WXD_CALLBACK_ADDR", "0.0.0.0:9090")]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("WXD_CALLBACK_ADDR"), "{msg}");
}

#[test]
fn env_keys_name_every_key_once() {
    let keys = env_keys();
    let plain = SETTINGS.iter().filter(|s| s.source != Source::Secret);
    assert_eq!(keys.len(), plain.count());
    assert!(
        !keys.contains(&"WXD_CALLBACK_AES_KEY".to_string()),
        "secrets are not listed"
    );
    assert!(keys.contains(&"WXD_AMQP_URL".to_string()));
    assert!(keys.contains(&"WXD_TOKEN_FORCE_BUDGET".to_string()));
    let unique: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
}

#[test]
fn without_credentials_no_secret_is_read_and_the_accounts_are_kept() {
    // Secret sources that would fail if they were read (the accounts as inline tables).
    let toml = r#"accounts = [
        { appid = "wxa0000000000001", secret_file = "/nonexistent/secret" },
        { appid = "wxb0000000000002", secret_env = "UNSET_VARIABLE" },
    ]"#;
    let e = env(&[("WXD_APPID", "wxc0000000000003"), ("WXD_JOBS_QUEUE", "q")]);
    let c = Config::without_credentials(Some(toml), &e).unwrap();
    let ids: Vec<&str> = c.accounts.iter().map(|a| a.appid.as_str()).collect();
    assert_eq!(
        ids,
        ["wxc0000000000003", "wxa0000000000001", "wxb0000000000002"]
    );
    assert!(
        c.accounts
            .iter()
            .all(|a| c.credentials.app_secret(&a.appid).is_none())
    );
    assert_eq!(c.amqp.jobs_queue, "q");
    // Unknown keys are still refused, like the worker does.
    assert!(Config::without_credentials(None, &env(&[("WXD_JOBS_QUEUEE", "q")])).is_err());
}

/// What `run` refuses before it connects, the loader (and so `check-config`) refuses too,
/// naming the key, its variable and what is expected. Each row is valid but for one value.
#[test]
fn check_config_refuses_what_run_refuses() {
    let base = [
        ("WXD_APPID", "wx0123456789abcdef"),
        ("WXD_SECRET", "s"),
        ("WXD_CALLBACK_TOKEN", "t"),
    ];
    let load = |pairs: &[(&str, &str)]| {
        let mut e = env(&base);
        e.extend(env(pairs));
        Config::from_sources(None, &e)
    };
    assert!(load(&[]).is_ok(), "the base itself is valid");
    // The k8s base's old placeholder: 43 characters, but `_` is not base64.
    let placeholder = "CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME_CHA";
    #[rustfmt::skip]
    let rows: &[(&str, &str, &[&str])] = &[
        ("WXD_CALLBACK_AES_KEY", placeholder, &["WXD_CALLBACK_AES_KEY", "base64"]),
        ("WXD_AMQP_URL", "amqp://h:notaport/%2f", &["amqp_url", "WXD_AMQP_URL", "amqp://h:notaport/%2f"]),
        ("WXD_AMQP_URL", "amqp://u:pw@a:5672/%2f,amqp://u:pw@b:x/%2f", &["WXD_AMQP_URL", "amqp://u:***@b:x/%2f"]),
        ("WXD_REDIS_URL", "redis://h:notaport/0", &["redis_url", "WXD_REDIS_URL"]),
        ("WXD_CALLBACK_PATH", "/metrics", &["callback_path", "WXD_CALLBACK_PATH", "/metrics"]),
        ("WXD_CALLBACK_PATH", "/wechat/{id", &["WXD_CALLBACK_PATH"]),
        ("WXD_CALLBACK_PATH", "/we chat", &["WXD_CALLBACK_PATH"]),
    ];
    let mut wrong = Vec::new();
    for (var, value, want) in rows {
        match load(&[(var, value)]) {
            Ok(_) => wrong.push(format!("{var}={value}: accepted")),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains(":pw@") || !want.iter().all(|w| msg.contains(w)) {
                    wrong.push(format!("{var}={value}: {msg} (want {want:?})"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The neighbours that are valid: a base64 key, a cluster list, a path of its own.
    assert!(
        load(&[(
            "WXD_CALLBACK_AES_KEY",
            "CHANGEMEchangemeCHANGEMEchangemeCHANGEME012"
        )])
        .is_ok()
    );
    assert!(load(&[("WXD_AMQP_URL", "amqp://a:5672/%2f,amqps://u:p@b:5671/%2f")]).is_ok());
    assert!(load(&[("WXD_REDIS_URL", "redis://:p@h:6379/1")]).is_ok());
    assert!(
        load(&[
            ("WXD_CALLBACK_PATH", "/metrics"),
            ("WXD_CALLBACK_ADDR", "0.0.0.0:8080")
        ])
        .is_ok(),
        "on its own listener the callback may use any path"
    );
}

/// A misspelt key names the key it probably meant, in the file, in `[[accounts]]` and in
/// the environment.
#[test]
fn unknown_keys_suggest_the_nearest() {
    let e = Config::from_sources(Some("retry_budget = 60"), &env(&[])).unwrap_err();
    assert!(
        e.to_string().contains("did you mean `retry_budget_secs`"),
        "{e}"
    );
    let e = Config::from_sources(None, &env(&[("WXD_RETRY_BUDGET", "60")])).unwrap_err();
    assert!(e.to_string().contains("WXD_RETRY_BUDGET_SECS"), "{e}");
    let toml = "[[accounts]]\nappid = \"wxa\"\nrate_per_second = 5\n";
    let e = Config::from_sources(Some(toml), &env(&[("WXD_SECRET_WXA", "a")])).unwrap_err();
    assert!(e.to_string().contains("did you mean `rate_per_sec`"), "{e}");
}

/// Each key of the table reads back what it shows: setting its variable to the value the
/// defaults show leaves that value unchanged, and a different value shows through.
#[test]
fn every_setting_round_trips_through_its_variable() {
    let defaults = Config::from_sources(None, &env(&[])).unwrap();
    for s in SETTINGS
        .iter()
        .filter(|s| s.source == Source::File || s.source == Source::Mounted)
    {
        let Some(shown) = (s.show)(&defaults) else {
            continue; // unset by default: nothing to read back
        };
        if s.key == "original_id" || shown.contains("***") {
            continue;
        }
        let c = Config::from_sources(None, &env(&[(&s.env(), &shown)]))
            .unwrap_or_else(|e| panic!("{}={shown}: {e}", s.env()));
        assert_eq!((s.show)(&c).as_deref(), Some(shown.as_str()), "{}", s.env());
    }
    let c = Config::from_sources(None, &env(&[("WXD_MAX_ATTEMPTS", "9")])).unwrap();
    assert_eq!(c.retry.max_attempts, 9);
}

/// The callback forwarding keys: off by default, a forward timeout below WeChat's 5 s.
#[test]
fn forwarding_keys_are_read_and_checked() {
    let c = Config::from_sources(None, &env(&[])).unwrap();
    assert_eq!(c.callback.forward_url, None);
    assert!(!c.callback.forward_owned && !c.callback.publish_events);
    assert!(!c.callback.publish_content);
    assert_eq!(c.callback.forward_timeout, Duration::from_secs(4));
    let c = Config::from_sources(
        Some("callback_forward_url = \"https://old.example/wx\"\ncallback_forward_owned = true"),
        &env(&[
            ("WXD_CALLBACK_PUBLISH_EVENTS", "true"),
            ("WXD_CALLBACK_FORWARD_TIMEOUT_MS", "4999"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.callback.forward_url.as_deref(),
        Some("https://old.example/wx")
    );
    assert!(c.callback.forward_owned && c.callback.publish_events);
    assert_eq!(c.callback.forward_timeout, Duration::from_millis(4999));
    for (var, value, want) in [
        ("WXD_CALLBACK_FORWARD_TIMEOUT_MS", "5000", "from 1 to 4999"),
        ("WXD_CALLBACK_FORWARD_OWNED", "yes", "true or false"),
        ("WXD_CALLBACK_FORWARD_URL", "ftp://x", "http(s)"),
    ] {
        let e = Config::from_sources(None, &env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(var) && e.contains(want), "{var}={value}: {e}");
    }
}

/// A secret key in the file is refused with where it may come from instead.
#[test]
fn secrets_in_the_file_are_refused_by_name() {
    let e = Config::from_sources(Some("callback_aes_key = \"x\""), &env(&[])).unwrap_err();
    assert!(e.to_string().contains("WXD_CALLBACK_AES_KEY_FILE"), "{e}");
}
