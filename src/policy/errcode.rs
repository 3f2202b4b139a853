//! The one typed table of WeChat Official Account error codes.
//!
//! Every `errcode` the worker can see maps to exactly one [`Action`]. Keeping
//! the mapping in a single table means the send path, the token path, the
//! metrics labels and the operator documentation (`ERROR_POLICY.md`) all agree.
//! A unit test renders the table as markdown and checks that the policy
//! document contains it verbatim, so the doc cannot silently drift from the
//! code.

use std::borrow::Cow;
use std::fmt;

/// The operator-facing policy document. The test
/// `policy_doc_contains_generated_table` checks it against [`TABLE`].
/// This is the only place that names the document's path.
#[cfg(test)]
const POLICY_DOC: &str = include_str!("../../docs/ERROR_POLICY.md");

/// What the worker does after WeChat answers with a given `errcode`.
///
/// The variants are ordered from "nothing to do" to "give up on this job";
/// the operational meaning of each one is described in `ERROR_POLICY.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `errcode` 0: the message was accepted; the job ends as `sent`.
    Success,
    /// The access token used by the request is no longer valid. Invalidate
    /// exactly that token (not a newer one another worker may have fetched),
    /// refresh, then retry. Token churn is normal, so this is not an error
    /// worth alerting on by itself.
    RefreshToken,
    /// A transient failure. Back off (exponential, full jitter) and retry with
    /// the same `client_msg_id`, bounded by the retry budget. This is also the
    /// action for codes the table does not know, because an unknown code is
    /// more often a new transient condition than a permanent one, and the
    /// retry budget keeps the cost bounded.
    Retry,
    /// 45011, the per-minute limit: wait until the next minute starts, then
    /// retry. Backing off exponentially would waste the rest of the minute.
    SlowDown,
    /// 45009, the daily quota is spent: pause the whole account and defer its
    /// jobs (never fail them), probing periodically. The quota resets by
    /// itself, so no job should be lost because of it.
    PauseQuota,
    /// A configuration problem (IP whitelist, unauthorized API, wrong
    /// AppID/AppSecret). Retrying cannot help until an operator changes
    /// something, so sending stops for that account only.
    StopAccount,
    /// The job can never succeed as given (bad openid, bad template, user
    /// refused, payload too large, ...). The job ends as `rejected`.
    Reject,
}

impl Action {
    /// Every action, in declaration order. Handy for exhaustive tests and for
    /// pre-registering metric label values.
    pub const ALL: [Action; 7] = [
        Action::Success,
        Action::RefreshToken,
        Action::Retry,
        Action::SlowDown,
        Action::PauseQuota,
        Action::StopAccount,
        Action::Reject,
    ];

    /// The snake_case name, identical to the serde representation, so logs,
    /// metric labels and JSON agree without going through a serializer.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Action::Success => "success",
            Action::RefreshToken => "refresh_token",
            Action::Retry => "retry",
            Action::SlowDown => "slow_down",
            Action::PauseQuota => "pause_quota",
            Action::StopAccount => "stop_account",
            Action::Reject => "reject",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the error table.
///
/// `reason` is the stable machine word used in job outcomes, logs and metric
/// labels; `zh` keeps WeChat's own wording so it can be matched against the
/// official documentation; `en` is a plain explanation for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ErrorInfo {
    /// The `errcode` value WeChat returns.
    pub code: i64,
    /// Short snake_case word, e.g. `invalid_openid`. Stable: dashboards and
    /// stored outcomes refer to it.
    pub reason: &'static str,
    /// WeChat's Chinese description.
    pub zh: &'static str,
    /// English explanation, including the modern meaning where it differs
    /// from the historical Chinese wording.
    pub en: &'static str,
    /// What the worker does when a send returns this code.
    pub action: Action,
    /// What the worker does when a token endpoint (`/cgi-bin/token`, `/cgi-bin/stable_token`)
    /// returns it. The same numbers mean other things there: 40001 is a wrong AppSecret, not a
    /// stale token, and refreshing again would only repeat it.
    pub token_action: Action,
}

const fn row(
    code: i64,
    reason: &'static str,
    zh: &'static str,
    en: &'static str,
    action: Action,
    token_action: Action,
) -> ErrorInfo {
    ErrorInfo {
        code,
        reason,
        zh,
        en,
        action,
        token_action,
    }
}

use Action::{PauseQuota, RefreshToken, Reject, Retry, SlowDown, StopAccount, Success};

// One row per line, so the table reads as a table (and a diff shows the row that changed).
#[rustfmt::skip]
const ENTRIES: &[ErrorInfo] = &[
    row(-1, "system_busy", "系统繁忙", "system busy, try again later", Retry, Retry),
    row(0, "ok", "请求成功", "request succeeded", Success, Success),
    row(40001, "invalid_credential", "验证失败", "invalid credential: the access_token is invalid or not the latest (at the token endpoint: wrong AppSecret)", RefreshToken, StopAccount),
    row(40002, "invalid_grant_type", "不合法的凭证类型", "invalid grant_type", Reject, StopAccount),
    row(40003, "invalid_openid", "不合法的OpenID", "invalid openid", Reject, Retry),
    row(40004, "invalid_media_type", "不合法的媒体文件类型", "invalid media type", Reject, Retry),
    row(40005, "invalid_file_type", "不合法的文件类型", "invalid file type", Reject, Retry),
    row(40006, "invalid_file_size", "不合法的文件大小", "invalid file size", Reject, Retry),
    row(40007, "invalid_media_id", "不合法的媒体文件id", "invalid media_id", Reject, Retry),
    row(40008, "invalid_message_type", "不合法的消息类型", "invalid message type", Reject, Retry),
    row(40009, "invalid_image_size", "不合法的图片文件大小", "invalid image file size", Reject, Retry),
    row(40010, "invalid_voice_size", "不合法的音频文件大小", "invalid voice file size", Reject, Retry),
    row(40011, "invalid_video_size", "不合法的视频文件大小", "invalid video file size", Reject, Retry),
    row(40012, "invalid_thumb_size", "不合法的缩略图文件大小", "invalid thumbnail file size", Reject, Retry),
    row(40013, "invalid_appid", "不合法的APPID", "invalid AppID", StopAccount, StopAccount),
    row(40014, "invalid_access_token", "不合法的access_token", "invalid access_token", RefreshToken, Retry),
    row(40033, "invalid_charset", "不合法的请求字符，不能包含 \\uxxxx 格式的字符", "invalid characters in the request: it must not contain \\uxxxx escapes", Reject, Retry),
    row(40035, "invalid_parameter", "不合法的参数", "invalid parameter", Reject, Retry),
    row(40036, "invalid_template_id_size", "不合法的template_id长度", "invalid template_id length", Reject, Retry),
    row(40037, "invalid_template_id", "不合法的template_id", "invalid template_id (unknown or deleted template)", Reject, Retry),
    row(40038, "invalid_packaging_type", "不合法的请求格式", "invalid request format", Reject, Retry),
    row(40039, "invalid_url_size", "不合法的 URL 长度", "invalid URL length (the message's url is too long)", Reject, Retry),
    row(40048, "invalid_url_domain", "无效的url", "invalid url (its domain is not accepted)", Reject, Retry),
    row(40066, "invalid_url", "不合法的 url ，递交的页面被sitemap标记为拦截", "invalid url: the page is blocked by the mini-program's sitemap", Reject, Retry),
    row(40097, "invalid_args", "参数错误", "invalid arguments", Reject, Retry),
    row(40125, "invalid_appsecret", "不合法的appsecret", "invalid AppSecret", StopAccount, StopAccount),
    row(40164, "ip_not_whitelisted", "调用接口的IP地址不在白名单中", "caller IP address is not in the account's IP whitelist", StopAccount, StopAccount),
    row(41001, "access_token_missing", "缺少access_token参数", "access_token parameter missing", RefreshToken, Retry),
    row(41002, "appid_missing", "缺少appid参数", "appid parameter missing", Reject, StopAccount),
    row(41003, "refresh_token_missing", "缺少refresh_token参数", "refresh_token parameter missing", Reject, Retry),
    row(41004, "secret_missing", "缺少secret参数", "secret parameter missing", Reject, StopAccount),
    row(41005, "media_data_missing", "缺少多媒体文件数据", "media file data missing", Reject, Retry),
    row(41006, "access_token_timeout", "access_token超时", "access_token timed out (the seed's table; today's list says missing media_id)", RefreshToken, Retry),
    row(41030, "invalid_page", "page路径不正确，需要保证在现网版本小程序中存在，与app.json保持一致", "the page path is wrong: it must exist in the published mini-program and match its app.json (subscription sends)", Reject, Retry),
    row(42001, "access_token_expired", "需要GET请求", "access_token expired (modern meaning; the old table's wording is \"GET request required\")", RefreshToken, Retry),
    row(43002, "require_post", "需要POST请求", "POST request required", Reject, Retry),
    row(43003, "require_https", "需要HTTPS请求", "HTTPS request required", Reject, Retry),
    row(43004, "require_subscribe", "需要接收者关注", "recipient does not follow the account", Reject, Retry),
    row(43019, "recipient_blacklisted", "需要将接收者从黑名单中移除", "recipient is on the account's blacklist", Reject, Retry),
    row(43101, "user_refused", "用户拒绝接受消息", "user refused to receive messages; on a subscription send: the user refused or withdrew consent for this template (a rejection for this recipient only)", Reject, Retry),
    row(44001, "empty_media", "多媒体文件为空", "media file is empty", Reject, Retry),
    row(44002, "empty_post_data", "POST的数据包为空", "POST body is empty", Reject, Retry),
    row(44003, "empty_news", "图文消息内容为空", "news message content is empty", Reject, Retry),
    row(45001, "media_size_limit", "多媒体文件大小超过限制", "media file size exceeds the limit", Reject, Retry),
    row(45002, "content_size_limit", "消息内容超过限制", "message content exceeds the limit", Reject, Retry),
    row(45003, "title_size_limit", "标题字段超过限制", "title field exceeds the limit", Reject, Retry),
    row(45004, "description_size_limit", "描述字段超过限制", "description field exceeds the limit", Reject, Retry),
    row(45005, "url_size_limit", "链接字段超过限制", "url field exceeds the limit", Reject, Retry),
    row(45006, "picurl_size_limit", "图片链接字段超过限制", "picture url field exceeds the limit", Reject, Retry),
    row(45007, "voice_duration_limit", "音频播放时间超过限制", "voice playback time exceeds the limit", Reject, Retry),
    row(45008, "article_count_limit", "图文消息超过限制", "news message exceeds the article limit", Reject, Retry),
    row(45009, "daily_quota_exceeded", "接口调用超过限制", "API daily call quota exceeded", PauseQuota, PauseQuota),
    row(45011, "minute_limit_exceeded", "API调用太频繁", "API called too frequently (per-minute limit)", SlowDown, Retry),
    row(46001, "media_not_found", "不存在媒体数据", "media data does not exist", Reject, Retry),
    row(47001, "invalid_json_xml", "解析JSON/XML内容错误", "cannot parse the JSON/XML body", Reject, Retry),
    row(47003, "invalid_argument", "参数错误/模板参数不准确", "argument invalid (template data does not match the template)", Reject, Retry),
    row(48001, "api_unauthorized", "api功能未授权", "API not authorized for this account", StopAccount, Retry),
    row(48002, "user_blocked_messages", "粉丝拒收消息（粉丝在公众号选项中，关闭了“接收消息”）", "the follower turned off \"receive messages\" for this account (a rejection for this recipient only)", Reject, Retry),
    row(48004, "api_banned", "api接口被封禁", "API banned for this account (see mp.weixin.qq.com)", StopAccount, Retry),
    row(50001, "api_unauthorized_by_user", "用户未授权该api", "API not authorized", StopAccount, Retry),
    row(50002, "account_restricted", "用户受限，可能是违规后接口被封禁", "account restricted, the API may be banned after a violation", StopAccount, Retry),
];

const fn sorted_and_unique(entries: &[ErrorInfo]) -> bool {
    let mut i = 1;
    while i < entries.len() {
        if entries[i - 1].code >= entries[i].code {
            return false;
        }
        i += 1;
    }
    true
}

// Checked at compile time because `lookup` relies on binary search.
const _: () = assert!(
    sorted_and_unique(ENTRIES),
    "errcode ENTRIES must be sorted by code with no duplicates"
);

/// All known error codes, sorted by `code` with no duplicates (enforced at
/// compile time), so lookups can binary-search and the rendered policy table
/// has a stable order.
pub static TABLE: &[ErrorInfo] = ENTRIES;

/// The table row for `code`, or `None` if WeChat returned a code this table
/// does not know. Callers that only need the action or the reason should use
/// [`action`] or [`reason`], which handle unknown codes consistently.
pub(crate) fn lookup(code: i64) -> Option<&'static ErrorInfo> {
    TABLE
        .binary_search_by_key(&code, |e| e.code)
        .ok()
        .map(|i| &TABLE[i])
}

/// The action for a code returned by a send (or any non-token) endpoint.
///
/// Unknown codes map to [`Action::Retry`]: new codes are more often transient
/// than permanent, and the retry budget bounds the cost. A code that keeps
/// showing up unknown should be added to [`TABLE`].
pub(crate) fn action(code: i64) -> Action {
    lookup(code).map_or(Action::Retry, |e| e.action)
}

/// The machine reason for a code: the table's `reason`, or `errcode_<n>` for
/// unknown codes so outcomes and metrics still carry the raw value.
pub fn reason(code: i64) -> Cow<'static, str> {
    match lookup(code) {
        Some(e) => Cow::Borrowed(e.reason),
        None => Cow::Owned(format!("errcode_{code}")),
    }
}

/// The action for a code returned by the token endpoints
/// (`GET /cgi-bin/token`, `POST /cgi-bin/stable_token`): the table's `token_action` column.
///
/// Credential and whitelist problems stop the account, 45009 (the daily token-call limit,
/// which resets at midnight Beijing time) pauses it like any other quota, and everything else,
/// including -1, 45011 (a forced refresh too soon) and unknown codes, is retried with backoff.
pub(crate) fn token_endpoint_action(code: i64) -> Action {
    lookup(code).map_or(Action::Retry, |e| e.token_action)
}

/// What the send path does with an HTTP reply that is not a plain `200` with WeChat's JSON:
/// the same kind of decision as an `errcode`, kept beside the errcode table and rendered into
/// `ERROR_POLICY.md` the same way, so the code and the doc cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRule {
    /// The statuses the rule covers, as written in the doc.
    pub statuses: &'static str,
    /// `Retry` (with backoff and `Retry-After`) or `Reject`.
    pub action: Action,
    /// Whether WeChat may have taken the message anyway. A maybe-sent retry is made only with
    /// the same `client_msg_id` and only inside its deduplication window.
    pub maybe_sent: bool,
    /// Why, for operators.
    pub why: &'static str,
}

/// The HTTP rules, in the order [`http_rule`] checks them.
pub const HTTP_RULES: &[HttpRule] = &[
    HttpRule {
        statuses: "200 without `errcode` (an HTML page, `{}`, other JSON)",
        action: Action::Retry,
        maybe_sent: true,
        why: "not WeChat's answer (a proxy or captive portal may have sent it after forwarding the request): treated like an unreadable reply",
    },
    HttpRule {
        statuses: "408, 425, 429",
        action: Action::Retry,
        maybe_sent: false,
        why: "the front end or an egress proxy refused the request before WeChat processed it: back off, at least as long as `Retry-After` asks",
    },
    HttpRule {
        statuses: "3xx",
        action: Action::Reject,
        maybe_sent: false,
        why: "WeChat's API never redirects; following one would carry the access token elsewhere, so it is not followed",
    },
    HttpRule {
        statuses: "other 4xx",
        action: Action::Reject,
        maybe_sent: false,
        why: "the request itself is wrong and will be wrong again",
    },
    HttpRule {
        statuses: "5xx, other",
        action: Action::Retry,
        maybe_sent: true,
        why: "a gateway failed, possibly after WeChat took the message",
    },
];

/// The rule for an HTTP status other than 200. (A 200 without `errcode` is the first row of
/// [`HTTP_RULES`]; the client reports it as an unreadable reply.)
pub fn http_rule(status: u16) -> &'static HttpRule {
    let row = match status {
        408 | 425 | 429 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    &HTTP_RULES[row]
}

/// Renders [`HTTP_RULES`] as the table embedded in `ERROR_POLICY.md`.
pub fn http_markdown_table() -> String {
    let mut out = String::from("| HTTP reply | action | may have been sent | why |\n");
    out.push_str("|---|---|---|---|\n");
    for r in HTTP_RULES {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            escape_cell(r.statuses),
            r.action.as_str(),
            if r.maybe_sent { "yes" } else { "no" },
            escape_cell(r.why),
        ));
    }
    out
}

fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Renders [`TABLE`] as the markdown table embedded in `ERROR_POLICY.md`.
///
/// The doc is checked against this output in a test; to regenerate it, run
/// `cargo test print_policy_markdown_table -- --ignored --nocapture` and paste
/// the printed table between the markers in the doc.
pub fn policy_markdown_table() -> String {
    let mut out =
        String::from("| code | reason | 含义 | meaning | action | at the token endpoint |\n");
    out.push_str("|---:|---|---|---|---|---|\n");
    for e in TABLE {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | `{}` | `{}` |\n",
            e.code,
            e.reason,
            escape_cell(e.zh),
            escape_cell(e.en),
            e.action.as_str(),
            e.token_action.as_str(),
        ));
    }
    out
}

#[cfg(test)]
#[path = "errcode_tests.rs"]
mod tests;
