use super::*;
use std::collections::HashSet;

/// Every code the brief requires, with the Chinese wording the source table gives.
const REQUIRED: &[(i64, &str)] = &[
    (-1, "系统繁忙"),
    (0, "请求成功"),
    (40001, "验证失败"),
    (40002, "不合法的凭证类型"),
    (40003, "不合法的OpenID"),
    (40004, "不合法的媒体文件类型"),
    (40005, "不合法的文件类型"),
    (40006, "不合法的文件大小"),
    (40007, "不合法的媒体文件id"),
    (40008, "不合法的消息类型"),
    (40009, "不合法的图片文件大小"),
    (40010, "不合法的音频文件大小"),
    (40011, "不合法的视频文件大小"),
    (40012, "不合法的缩略图文件大小"),
    (40013, "不合法的APPID"),
    (41001, "缺少access_token参数"),
    (41002, "缺少appid参数"),
    (41003, "缺少refresh_token参数"),
    (41004, "缺少secret参数"),
    (41005, "缺少多媒体文件数据"),
    (41006, "access_token超时"),
    (42001, "需要GET请求"),
    (43002, "需要POST请求"),
    (43003, "需要HTTPS请求"),
    (44001, "多媒体文件为空"),
    (44002, "POST的数据包为空"),
    (44003, "图文消息内容为空"),
    (45001, "多媒体文件大小超过限制"),
    (45002, "消息内容超过限制"),
    (45003, "标题字段超过限制"),
    (45004, "描述字段超过限制"),
    (45005, "链接字段超过限制"),
    (45006, "图片链接字段超过限制"),
    (45007, "音频播放时间超过限制"),
    (45008, "图文消息超过限制"),
    (45009, "接口调用超过限制"),
    (46001, "不存在媒体数据"),
    (47001, "解析JSON/XML内容错误"),
    // Codes real template sends return.
    (40014, "不合法的access_token"),
    (40036, "不合法的template_id长度"),
    (40037, "不合法的template_id"),
    (40125, "不合法的appsecret"),
    (40164, "调用接口的IP地址不在白名单中"),
    (43004, "需要接收者关注"),
    (43101, "用户拒绝接受消息"),
    (45011, "API调用太频繁"),
    (47003, "参数错误/模板参数不准确"),
    (48001, "api功能未授权"),
    // Codes the subscription sends return.
    (
        41030,
        "page路径不正确，需要保证在现网版本小程序中存在，与app.json保持一致",
    ),
];

#[test]
fn table_sorted_and_unique() {
    assert!(sorted_and_unique(TABLE));
    let codes: HashSet<i64> = TABLE.iter().map(|e| e.code).collect();
    assert_eq!(codes.len(), TABLE.len());
    assert!(!sorted_and_unique(&[TABLE[1], TABLE[0]]));
    assert!(!sorted_and_unique(&[TABLE[0], TABLE[0]]));
}

#[test]
fn reasons_are_unique_snake_case_words() {
    let mut seen = HashSet::new();
    for e in TABLE {
        assert!(seen.insert(e.reason), "duplicate reason {}", e.reason);
        assert!(
            !e.reason.is_empty()
                && e.reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "reason {:?} for {} is not snake_case",
            e.reason,
            e.code
        );
        assert!(
            !e.reason.starts_with("errcode_"),
            "errcode_ prefix is reserved for unknown codes"
        );
        assert!(
            !e.zh.is_empty() && !e.en.is_empty(),
            "{} lacks text",
            e.code
        );
    }
}

#[test]
fn every_required_code_present_with_table_wording() {
    for &(code, zh) in REQUIRED {
        let e = lookup(code).unwrap_or_else(|| panic!("code {code} missing from TABLE"));
        assert_eq!(e.code, code);
        assert_eq!(e.zh, zh, "Chinese wording for {code}");
    }
}

#[test]
fn required_actions() {
    let expect = |codes: &[i64], want: Action| {
        for &c in codes {
            assert_eq!(action(c), want, "action for {c}");
        }
    };
    expect(&[0], Action::Success);
    expect(&[40001, 40014, 41001, 41006, 42001], Action::RefreshToken);
    expect(&[-1], Action::Retry);
    expect(&[45009], Action::PauseQuota);
    expect(&[45011], Action::SlowDown);
    expect(
        &[40164, 48001, 48004, 50001, 50002, 40013, 40125],
        Action::StopAccount,
    );
    let mut reject = vec![
        40002, 40003, 40008, 40033, 40036, 40037, 40038, 40039, 40048, 40066, 40097, 41030, 43002,
        43003, 43004, 43019, 43101, 46001, 47001, 47003, 48002,
    ];
    reject.extend(40004..=40012);
    reject.extend(41002..=41005);
    reject.extend(44001..=44003);
    reject.extend(45001..=45008);
    expect(&reject, Action::Reject);
}

#[test]
fn lookup_action_reason_samples() {
    let e = lookup(40003).unwrap();
    assert_eq!(e.reason, "invalid_openid");
    assert_eq!(e.action, Action::Reject);
    assert_eq!(reason(40003), "invalid_openid");

    let e = lookup(42001).unwrap();
    assert_eq!(e.zh, "需要GET请求");
    assert!(e.en.contains("access_token expired"));
    assert_eq!(reason(42001), "access_token_expired");

    assert_eq!(reason(0), "ok");
    assert_eq!(reason(-1), "system_busy");
    assert_eq!(reason(45009), "daily_quota_exceeded");
    assert_eq!(reason(45011), "minute_limit_exceeded");
    assert_eq!(reason(40164), "ip_not_whitelisted");
    assert!(matches!(reason(40037), Cow::Borrowed(_)));
}

#[test]
fn unknown_codes() {
    for code in [1, 12345, 40000, 45010, 99999, -2, i64::MIN, i64::MAX] {
        assert!(lookup(code).is_none(), "{code} should be unknown");
        assert_eq!(action(code), Action::Retry);
        assert_eq!(reason(code), format!("errcode_{code}"));
    }
    assert_eq!(reason(-7), "errcode_-7");
}

#[test]
fn token_endpoint_rules() {
    assert_eq!(token_endpoint_action(0), Action::Success);
    for c in [40001, 40125, 40013, 40164, 41002, 41004, 40002] {
        assert_eq!(token_endpoint_action(c), Action::StopAccount, "token {c}");
    }
    assert_eq!(token_endpoint_action(45009), Action::PauseQuota);
    for c in [-1, 45011, 40014, 42001, 12345, 48001] {
        assert_eq!(token_endpoint_action(c), Action::Retry, "token {c}");
    }
    // 40001 means something different at the send endpoint.
    assert_eq!(action(40001), Action::RefreshToken);
}

#[test]
fn action_names_are_snake_case_and_distinct() {
    let names: HashSet<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(names.len(), Action::ALL.len());
    assert_eq!(Action::PauseQuota.to_string(), "pause_quota");
    assert_eq!(Action::StopAccount.as_str(), "stop_account");
}

#[test]
fn markdown_table_shape() {
    let t = policy_markdown_table();
    assert_eq!(t.lines().count(), TABLE.len() + 2);
    assert!(t.contains("| 42001 | `access_token_expired` | 需要GET请求 |"));
    for line in t.lines() {
        assert_eq!(
            line.replace("\\|", "").matches('|').count(),
            7,
            "row shape: {line}"
        );
    }
}

/// Fails with `how` (how to regenerate) and the table when ERROR_POLICY.md lacks `table`.
fn assert_policy_doc_has(table: &str, how: &str) {
    assert!(
        POLICY_DOC.contains(table),
        "ERROR_POLICY.md is out of date with {how}\nExpected table:\n{table}"
    );
}

#[test]
fn policy_doc_contains_generated_table() {
    assert_policy_doc_has(
        &policy_markdown_table(),
        "errcode::TABLE.\n\
         Regenerate with: cargo test print_policy_markdown_table -- --ignored --nocapture\n\
         and replace the table between the `errcode-table` markers in the doc.",
    );
}

/// 408, 425 and 429 are refusals in front of WeChat, retried and never counted
/// as maybe-sent; other 3xx/4xx reject; 5xx may have been sent.
#[test]
fn http_statuses_are_classified_by_the_table() {
    for s in [408, 425, 429] {
        let r = http_rule(s);
        assert_eq!((r.action, r.maybe_sent), (Action::Retry, false), "{s}");
    }
    for s in [301, 302, 400, 403, 404, 413] {
        assert_eq!(http_rule(s).action, Action::Reject, "{s}");
        assert!(!http_rule(s).maybe_sent, "{s}");
    }
    for s in [500, 502, 503, 504, 599, 100] {
        let r = http_rule(s);
        assert_eq!((r.action, r.maybe_sent), (Action::Retry, true), "{s}");
    }
    assert!(
        HTTP_RULES[0].maybe_sent,
        "a 200 without errcode may have been sent"
    );
}

#[test]
fn policy_doc_contains_the_http_table() {
    assert_policy_doc_has(&http_markdown_table(), "errcode::HTTP_RULES.");
}

/// Prints the table for pasting into ERROR_POLICY.md.
#[test]
#[ignore = "helper: prints the policy table for regenerating ERROR_POLICY.md"]
fn print_policy_markdown_table() {
    print!("{}", policy_markdown_table());
}
