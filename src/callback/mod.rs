//! WeChat Official Account server-push callbacks: the HTTP endpoint and everything it needs.
//!
//! WeChat calls back into the worker to report what happened to template messages
//! (`TEMPLATESENDJOBFINISH` receipts) and subscription notifications, and to deliver other
//! events. Before any of that can be trusted, the request has to be authenticated, possibly
//! decrypted, and parsed; each step lives in its own submodule:
//!
//! * [`crate::crypto`] (shared with the platform's pushes): the SHA-1 signatures and
//!   AES-256-CBC "safe mode".
//! * [`xml`]: a deliberately strict reader for the pushed XML.
//! * [`event`]: the message model, and what a body turns out to be.
//!
//! The [`open_plain`] and [`open_safe_mode`] helpers run those steps in the right order, so
//! the handler does not have to remember that the signature comes first; they are plain
//! functions over bytes. The I/O is apart:
//!
//! * [`http`]: the axum handlers, turning pushes into outcomes;
//! * [`forward`]: the pushes the worker does not own, handed to the account's existing server;
//! * [`push`]: those pushes read for publishing as `kind: event` outcomes;
//! * [`dedupe`]: WeChat's retries of one push, told apart from new pushes;
//! * `publisher`: the callback's own lazily opened, confirming publisher.

pub(crate) mod dedupe;
pub mod event;
mod forward;
pub mod http;
pub(crate) mod publisher;
mod push;
pub mod xml;

pub use event::{Event, Inbound, SubscriptionEvent, SubscriptionItem, SubscriptionKind, parse};
pub use xml::XmlError;

use crate::crypto::{self, AesKey, CryptoError, signature};

/// Why a callback request was refused by [`open_plain`] or [`open_safe_mode`].
///
/// Wraps the per-step errors so a handler can log one
/// [`reason`](CallbackError::reason) word and answer WeChat uniformly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The `signature` or `msg_signature` did not match.
    #[error("callback signature mismatch")]
    BadSignature,
    /// The body (outer or decrypted) was not acceptable XML.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The encrypted payload could not be decrypted or unpacked.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A safe-mode request whose body has no `<Encrypt>` element.
    #[error("safe-mode callback body has no <Encrypt> element")]
    NotEncrypted,
    /// The decrypted XML was itself an encrypted envelope.
    #[error("decrypted callback is itself encrypted")]
    NestedEncryption,
}

impl CallbackError {
    /// A short machine-readable word for logs and metric labels; step errors
    /// pass their own word through (e.g. `bad_padding`, `doctype`).
    pub fn reason(&self) -> &'static str {
        match self {
            CallbackError::BadSignature => "bad_signature",
            CallbackError::Xml(e) => e.reason(),
            CallbackError::Crypto(e) => e.reason(),
            CallbackError::NotEncrypted => "not_encrypted",
            CallbackError::NestedEncryption => "nested_encryption",
        }
    }
}

/// The query parameters WeChat adds to a safe-mode POST.
#[derive(Debug, Clone, Copy)]
pub struct SafeModeQuery<'a> {
    /// `timestamp` query parameter.
    pub timestamp: &'a str,
    /// `nonce` query parameter.
    pub nonce: &'a str,
    /// `msg_signature` query parameter.
    pub msg_signature: &'a str,
}

/// A successfully authenticated and decrypted safe-mode callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The appid found after the XML; already checked against the allowed list.
    pub appid: String,
    /// The parsed inner message.
    pub inbound: Inbound,
    /// The inner message's XML, for reading more of it than [`Inbound`] keeps.
    pub xml: String,
}

/// Authenticates and parses a plaintext-mode POST.
///
/// The signature is checked before the body is looked at, so unauthenticated
/// requests cost one hash and never reach the XML parser.
pub fn open_plain(
    token: &str,
    signature: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
    max_body: usize,
) -> Result<Inbound, CallbackError> {
    if !signature::verify_url_signature(signature, token, timestamp, nonce) {
        return Err(CallbackError::BadSignature);
    }
    Ok(event::parse_bytes(body, max_body)?)
}

/// Authenticates, decrypts and parses a safe-mode (`encrypt_type=aes`) POST.
///
/// The order matters: the envelope must be parsed to find the ciphertext,
/// but `msg_signature` is verified before anything is decrypted, so AES and
/// padding errors are only reachable with a valid signature (no padding
/// oracle for outsiders). The appid after the XML must be one of
/// `allowed_appids`.
pub fn open_safe_mode<S: AsRef<str>>(
    token: &str,
    key: &AesKey,
    allowed_appids: &[S],
    query: &SafeModeQuery<'_>,
    body: &[u8],
    max_body: usize,
) -> Result<Opened, CallbackError> {
    let encrypt = match event::parse_bytes(body, max_body)? {
        Inbound::Encrypted { encrypt, .. } => encrypt,
        _ => return Err(CallbackError::NotEncrypted),
    };
    if !signature::verify_msg_signature(
        query.msg_signature,
        token,
        query.timestamp,
        query.nonce,
        &encrypt,
    ) {
        return Err(CallbackError::BadSignature);
    }
    let decrypted = crypto::decrypt(key, &encrypt)?;
    decrypted.check_appid(allowed_appids)?;
    let inbound = event::parse_with_limit(&decrypted.xml, max_body)?;
    if matches!(inbound, Inbound::Encrypted { .. }) {
        return Err(CallbackError::NestedEncryption);
    }
    Ok(Opened {
        appid: decrypted.appid,
        inbound,
        xml: decrypted.xml,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::xml::DEFAULT_MAX_XML_BYTES;
    use crate::outcome::ReceiptStatus;

    const TOKEN: &str = "QDG6eK";
    const APPID: &str = "wx5823bf96d3bd56c7";

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap()
    }

    /// A template receipt as WeChat writes it.
    fn receipt_xml() -> String {
        "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>\
         <FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>\
         <CreateTime>1395658920</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>200163836</MsgID>\
         <Status><![CDATA[failed:user block]]></Status></xml>"
            .into()
    }

    /// The safe-mode envelope WeChat POSTs.
    fn encrypted_envelope(to_user: &str, encrypt: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName>\
             <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        )
    }

    /// A safe-mode body and its `msg_signature`, sealed the way WeChat seals them.
    struct Sealed {
        body: String,
        msg_signature: String,
    }

    fn query<'a>(sealed: &'a Sealed) -> SafeModeQuery<'a> {
        SafeModeQuery {
            timestamp: "1409659813",
            nonce: "1372623149",
            msg_signature: &sealed.msg_signature,
        }
    }

    /// Opens `sealed` as the handler would, with `token`, the test key and only `APPID`
    /// configured.
    fn open_sealed(token: &str, sealed: &Sealed, limit: usize) -> Result<Opened, CallbackError> {
        open_safe_mode(
            token,
            &key(),
            &[APPID],
            &query(sealed),
            sealed.body.as_bytes(),
            limit,
        )
    }

    fn seal(appid: &str, inner: &str) -> Sealed {
        let encrypt = crypto::encrypt_with_random(&key(), inner, appid);
        Sealed {
            msg_signature: signature::msg_signature(TOKEN, "1409659813", "1372623149", &encrypt),
            body: encrypted_envelope("gh_7f083739789a", &encrypt),
        }
    }

    #[test]
    fn sealed_safe_mode_request_opens_to_the_original_event() {
        let sealed = seal(APPID, &receipt_xml());
        let opened = open_sealed(TOKEN, &sealed, DEFAULT_MAX_XML_BYTES).unwrap();
        assert_eq!(opened.appid, APPID);
        match opened.inbound {
            Inbound::Event(e) => {
                assert_eq!(e.msg_id, Some(200163836));
                assert_eq!(e.receipt_status(), Some(ReceiptStatus::Blocked));
            }
            other => panic!("expected event, got {other:?}"),
        }
    }

    #[test]
    fn safe_mode_with_wrong_signature_is_refused_before_decrypting() {
        // Garbage ciphertext: if decryption ran first we would see bad_length.
        let body = encrypted_envelope("gh", "AAAA");
        let q = SafeModeQuery {
            timestamp: "1",
            nonce: "2",
            msg_signature: "0000000000000000000000000000000000000000",
        };
        let err = open_safe_mode(TOKEN, &key(), &[APPID], &q, body.as_bytes(), 1024).unwrap_err();
        assert_eq!(err, CallbackError::BadSignature);
        assert_eq!(err.reason(), "bad_signature");
    }

    #[test]
    fn safe_mode_with_wrong_token_is_refused() {
        let sealed = seal(APPID, &receipt_xml());
        let err = open_sealed("other-token", &sealed, DEFAULT_MAX_XML_BYTES).unwrap_err();
        assert_eq!(err, CallbackError::BadSignature);
    }

    #[test]
    fn safe_mode_for_an_unconfigured_appid_is_refused() {
        let sealed = seal("wx_someone_else", &receipt_xml());
        let err = open_sealed(TOKEN, &sealed, DEFAULT_MAX_XML_BYTES).unwrap_err();
        assert_eq!(
            err,
            CallbackError::Crypto(CryptoError::UnknownAppId("wx_someone_else".into()))
        );
        assert_eq!(err.reason(), "unknown_appid");
    }

    #[test]
    fn safe_mode_body_without_encrypt_is_refused() {
        let q = SafeModeQuery {
            timestamp: "1",
            nonce: "2",
            msg_signature: "x",
        };
        let err = open_safe_mode(
            TOKEN,
            &key(),
            &[APPID],
            &q,
            receipt_xml().as_bytes(),
            DEFAULT_MAX_XML_BYTES,
        )
        .unwrap_err();
        assert_eq!(err, CallbackError::NotEncrypted);
    }

    #[test]
    fn safe_mode_inner_xml_with_doctype_is_refused() {
        let sealed = seal(APPID, "<!DOCTYPE x [<!ENTITY a \"b\">]><xml/>");
        let err = open_sealed(TOKEN, &sealed, DEFAULT_MAX_XML_BYTES).unwrap_err();
        assert_eq!(err, CallbackError::Xml(XmlError::Doctype));
    }

    #[test]
    fn safe_mode_nested_envelope_is_refused() {
        let sealed = seal(APPID, &encrypted_envelope("gh", "QUJD"));
        let err = open_sealed(TOKEN, &sealed, DEFAULT_MAX_XML_BYTES).unwrap_err();
        assert_eq!(err.reason(), "nested_encryption");
    }

    #[test]
    fn plain_mode_checks_signature_then_parses() {
        let sig = signature::url_signature(TOKEN, "1", "2");
        let body = receipt_xml();
        let ok = open_plain(
            TOKEN,
            &sig,
            "1",
            "2",
            body.as_bytes(),
            DEFAULT_MAX_XML_BYTES,
        );
        assert!(matches!(ok, Ok(Inbound::Event(_))));

        let bad = open_plain(
            TOKEN,
            &sig,
            "1",
            "3",
            body.as_bytes(),
            DEFAULT_MAX_XML_BYTES,
        );
        assert_eq!(bad.unwrap_err(), CallbackError::BadSignature);
    }

    #[test]
    fn oversized_bodies_are_refused_in_both_modes() {
        let sig = signature::url_signature(TOKEN, "1", "2");
        let body = receipt_xml();
        let err = open_plain(TOKEN, &sig, "1", "2", body.as_bytes(), 16).unwrap_err();
        assert_eq!(err.reason(), "too_large");

        let sealed = seal(APPID, &body);
        let err = open_sealed(TOKEN, &sealed, 16).unwrap_err();
        assert_eq!(err.reason(), "too_large");
    }
}
