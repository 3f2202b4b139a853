//! The invariants the fuzz targets check, one function per target.
//!
//! They live here rather than in the targets so that `tests/fuzz_corpus.rs` replays the
//! committed corpus through exactly the same checks on every `cargo test`, with no fuzzer
//! installed. Each function takes the raw fuzz input and panics only when the code under test
//! breaks a promise: parsers that must never panic on untrusted bytes, ids that must stay
//! within WeChat's `client_msg_id` limit, a DOCTYPE that must never be accepted, and an AES
//! decoder that must agree with a straightforward reading of the protocol.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use serde_json::Value;
use wxdispatch::callback::event::{self, Inbound};
use wxdispatch::callback::xml;
use wxdispatch::config::Config;
use wxdispatch::crypto::{self, AesKey, CryptoError, Decrypted};
use wxdispatch::job::{self, Job, MAX_BATCH, MAX_ID_LEN, Parsed};
use wxdispatch::tools::mock::xml::{WechatXml, encrypted_envelope};

/// The one account the job target's configurations serve.
pub const APPID: &str = "wx0123456789abcdef";

/// The `EncodingAESKey` of the AES vectors in `src/crypto/testdata/aes_vectors.json`, so the
/// vectors' ciphertexts in the corpus decrypt.
pub const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// The 32 bytes [`ENCODING_AES_KEY`] decodes to (the vectors' `key_hex`), written out so the
/// raw-plaintext check below encrypts independently of the crate's key decoding.
const KEY_BYTES: [u8; 32] = [
    0x69, 0xb7, 0x1d, 0x79, 0xf8, 0x21, 0x8a, 0x39, 0x25, 0x9a, 0x7a, 0x29, 0xaa, 0xbb, 0x2d, 0xba,
    0xfc, 0x31, 0xcb, 0x3d, 0x35, 0xdb, 0x7e, 0x39, 0xeb, 0xbf, 0x3d, 0x00, 0x10, 0x83, 0x10, 0x51,
];

/// Message ids the job target tries with every body: none (the body or a digest decides), a
/// valid one, and one that is not a valid id.
const MESSAGE_IDS: [Option<&str>; 3] = [None, Some("amqp-message-id-1"), Some("not an id")];

/// Two configurations for the job target: the defaults, and a 2 KiB body limit so that inputs
/// of the size the fuzzer produces also reach the size checks.
fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let config = |extra: &[(&str, &str)]| {
            let env: BTreeMap<String, String> = [("WXD_APPID", APPID), ("WXD_SECRET", "s")]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Config::from_sources(None, &env).expect("the fuzz configuration is valid")
        };
        [config(&[]), config(&[("WXD_MAX_JOB_BYTES", "2048")])]
    })
}

/// `wxdispatch::job::parse` on an arbitrary body.
///
/// Never panics. A single job's body is the JSON object WeChat receives, with `touser` and
/// `client_msg_id` set to the job's and the worker-only keys removed; ids are valid
/// `client_msg_id`s; every recipient of a batch re-parses to a single job with the batch's
/// id; a rejected job has a short machine reason and still an id of at most 64 bytes.
pub fn job_parse(data: &[u8]) {
    for config in configs() {
        for message_id in MESSAGE_IDS {
            check_job(data, message_id, config);
        }
    }
}

fn check_job(body: &[u8], message_id: Option<&str>, config: &Config) {
    match job::parse(body, message_id, config) {
        Ok(Parsed::Single(job)) => {
            check_single(&job);
            // The id (a digest when the body brings none) must not depend on anything but the
            // input, or a re-published job would escape WeChat's deduplication.
            match job::parse(body, message_id, config) {
                Ok(Parsed::Single(again)) => {
                    assert_eq!(
                        (again.id, again.body),
                        (job.id, job.body),
                        "parse is not stable"
                    )
                }
                other => panic!("the second parse of the same body differs: {other:?}"),
            }
        }
        Ok(Parsed::Batch(batch)) => {
            check_id(batch.id.as_str());
            assert_eq!(batch.appid, APPID);
            let n = batch.recipients.len();
            assert!((2..=MAX_BATCH).contains(&n), "a batch of {n} recipients");
            for touser in batch.recipients.iter().take(4) {
                let one = batch.job_for(touser);
                match job::parse(&one, None, config) {
                    Ok(Parsed::Single(job)) => {
                        check_single(&job);
                        assert_eq!(job.id, batch.id, "a recipient's job keeps the batch id");
                        assert_eq!(&job.touser, touser);
                        assert_eq!(job.not_after, batch.not_after);
                    }
                    other => panic!(
                        "recipient {touser:?} of a batch does not re-parse as a single job: \
                         {other:?}\nits body starts {}",
                        String::from_utf8_lossy(&one[..one.len().min(300)])
                    ),
                }
            }
        }
        Err((invalid, known)) => {
            let reason = invalid.reason;
            assert!(
                !reason.is_empty()
                    && reason.len() <= 32
                    && reason
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "reason {reason:?} is not a short machine word"
            );
            assert!(!invalid.detail.is_empty(), "{reason} without a detail");
            assert!(invalid.detail.len() <= 512, "detail too long for a header");
            let id = known
                .id
                .expect("an invalid job still gets an id for its outcome");
            assert!(id.len() <= MAX_ID_LEN, "outcome id of {} bytes", id.len());
            assert!(known.appid.is_none_or(|a| a.len() <= 64));
            assert!(known.touser.is_none_or(|t| t.len() <= 128));
        }
    }
}

fn check_single(job: &Job) {
    check_id(job.id.as_str());
    assert_eq!(job.appid, APPID);
    let sent: Value = serde_json::from_slice(&job.body).expect("a job body is JSON");
    let sent = sent.as_object().expect("a job body is a JSON object");
    let text = |key: &str| sent.get(key).and_then(Value::as_str);
    assert_eq!(text("client_msg_id"), Some(job.id.as_str()));
    assert_eq!(text("touser"), Some(job.touser.as_str()));
    assert!(
        !job.touser.is_empty() && job.touser.len() <= 128,
        "touser of {} bytes",
        job.touser.len()
    );
    assert!(text("template_id").is_some_and(|t| !t.is_empty()));
    // The catalogue check reads the template id and data keys where the parser noted them.
    let template = job.template();
    assert_eq!(Some(&*template.id()), text("template_id"));
    let keys: Vec<String> = match sent.get("data") {
        Some(Value::Object(data)) => data.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let noted: Vec<String> = template.data_keys().map(|k| k.into_owned()).collect();
    assert_eq!(noted, keys, "the noted data keys are the body's");
    for key in ["id", "appid", "not_after"] {
        assert!(sent.get(key).is_none(), "`{key}` is sent to WeChat");
    }
}

/// A `client_msg_id`: 1 to 64 bytes of printable ASCII.
fn check_id(id: &str) {
    assert!(
        !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "id {id:?} is not a valid client_msg_id"
    );
}

/// `wxdispatch::callback::event` (and its reader, `callback::xml`) on an arbitrary body.
///
/// Never panics; `parse_bytes` and `parse` agree; a document with a DOCTYPE is refused
/// whatever follows it (no entity is ever expanded); an event or envelope that parses
/// serializes back (the simulator's `WechatXml::to_xml`, `encrypted_envelope`) to XML that parses to the same
/// value, since the callback simulator relies on that.
pub fn callback_xml(data: &[u8]) {
    let limit = xml::DEFAULT_MAX_XML_BYTES;
    let parsed = event::parse_bytes(data, limit);
    if let Err(e) = &parsed {
        assert!(!e.reason().is_empty());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(parsed.is_err(), "non-UTF-8 body accepted");
        return;
    };
    assert_eq!(event::parse(text), parsed, "parse and parse_bytes disagree");
    let _ = xml::parse_fields(text, limit);

    for prolog in [
        "<!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>",
        "<?xml version=\"1.0\"?>\n<!DOCTYPE xml>",
    ] {
        let doc = format!("{prolog}{text}");
        match event::parse_with_limit(&doc, usize::MAX) {
            Err(e) => assert_eq!(e.reason(), "doctype", "{e}"),
            Ok(inbound) => panic!("a document with a DOCTYPE was accepted: {inbound:?}"),
        }
    }

    match parsed {
        Ok(Inbound::Event(e)) => {
            let xml = e.to_xml();
            assert_eq!(
                event::parse_with_limit(&xml, usize::MAX),
                Ok(Inbound::Event(e)),
                "the event does not survive to_xml: {xml}"
            );
        }
        Ok(Inbound::Subscription(e)) => {
            assert!(!e.items.is_empty(), "a subscription event without items");
            let xml = e.to_xml();
            assert_eq!(
                event::parse_with_limit(&xml, usize::MAX),
                Ok(Inbound::Subscription(e)),
                "the subscription event does not survive to_xml: {xml}"
            );
        }
        Ok(Inbound::Encrypted {
            to_user: Some(to_user),
            encrypt,
        }) => {
            let xml = encrypted_envelope(&to_user, &encrypt);
            assert_eq!(
                event::parse_with_limit(&xml, usize::MAX),
                Ok(Inbound::Encrypted {
                    to_user: Some(to_user),
                    encrypt
                }),
                "the envelope does not survive encrypted_envelope: {xml}"
            );
        }
        _ => {}
    }
}

fn aes_key() -> &'static AesKey {
    static KEY: OnceLock<AesKey> = OnceLock::new();
    KEY.get_or_init(|| AesKey::from_encoding_aes_key(ENCODING_AES_KEY).expect("a valid key"))
}

/// `wxdispatch::crypto` on arbitrary bytes, read three ways.
///
/// 1. As the text of an `<Encrypt>` element: `decrypt` never panics, and what it returns
///    encrypts back to something that decrypts the same.
/// 2. As a plaintext (cut to whole AES blocks) encrypted here with an independent AES-CBC:
///    `decrypt` returns exactly what [`reference_unpack`] reads from it, error included. This
///    lets the fuzzer steer the padding, length-field and UTF-8 checks, which it could not
///    reach through ciphertext.
/// 3. As `xml NUL appid`: `encrypt` then `decrypt` gives both back.
pub fn aes_decrypt(data: &[u8]) {
    let key = aes_key();

    if let Ok(d) = crypto::decrypt(key, &String::from_utf8_lossy(data)) {
        round_trip(&d.xml, &d.appid, [7; 16]);
    }

    let plain = &data[..data.len() / 16 * 16];
    if !plain.is_empty() {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&KEY_BYTES[..16]);
        let cipher = cbc::Encryptor::<Aes256>::new(&KEY_BYTES.into(), &iv.into())
            .encrypt_padded_vec_mut::<NoPadding>(plain);
        assert_eq!(
            crypto::decrypt(key, &STANDARD.encode(cipher)),
            reference_unpack(plain),
            "decrypt disagrees with the reference reading of plaintext {plain:02x?}"
        );
    }

    let (xml, appid) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut random16 = [0u8; 16];
    let n = data.len().min(16);
    random16[..n].copy_from_slice(&data[..n]);
    round_trip(
        &String::from_utf8_lossy(xml),
        &String::from_utf8_lossy(appid),
        random16,
    );
}

fn round_trip(xml: &str, appid: &str, random16: [u8; 16]) {
    let encrypted = crypto::encrypt(aes_key(), xml, appid, random16);
    let expected = Decrypted {
        xml: xml.to_owned(),
        appid: appid.to_owned(),
    };
    assert_eq!(crypto::decrypt(aes_key(), &encrypted), Ok(expected));
}

/// The safe-mode plaintext layout read the obvious way, as an oracle for `decrypt`:
/// `16 random | u32 BE xml length | xml | appid | n × n` with `n` in 1..=32.
pub fn reference_unpack(plain: &[u8]) -> Result<Decrypted, CryptoError> {
    let n = usize::from(*plain.last().ok_or(CryptoError::BadPadding)?);
    if !(1..=32).contains(&n) || n > plain.len() {
        return Err(CryptoError::BadPadding);
    }
    let (body, pad) = plain.split_at(plain.len() - n);
    if pad.iter().any(|&b| usize::from(b) != n) {
        return Err(CryptoError::BadPadding);
    }
    if body.len() < 20 {
        return Err(CryptoError::TooShort);
    }
    let xml_len = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let rest = &body[20..];
    if xml_len > rest.len() {
        return Err(CryptoError::BadLengthField);
    }
    let (xml, appid) = rest.split_at(xml_len);
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| CryptoError::BadUtf8);
    Ok(Decrypted {
        xml: utf8(xml)?,
        appid: utf8(appid)?,
    })
}
