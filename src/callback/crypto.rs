//! AES "safe mode" for WeChat callbacks.
//!
//! In safe mode WeChat encrypts the callback XML with AES-256-CBC and sends
//! the base64 ciphertext inside an `<Encrypt>` element. The plaintext layout
//! is:
//!
//! ```text
//! 16 random bytes | u32 big-endian xml length | xml bytes | appid bytes | padding
//! ```
//!
//! Two details differ from what a generic AES helper would do, and both are
//! handled here rather than left to callers:
//!
//! * The padding is PKCS#7 with a block size of **32**, so pad bytes range
//!   from 1 to 32. A stock 16-byte PKCS#7 unpadder rejects valid messages, so
//!   we decrypt with no padding and check the 32-byte padding ourselves.
//! * The key comes from a 43-character `EncodingAESKey`, base64-decoded after
//!   appending one `=`. WeChat generates these as random alphanumerics, so
//!   the last character often carries non-zero trailing bits; the lenient
//!   decoders in WeChat's own SDKs ignore them and so do we.
//!
//! Decryption does not authenticate anything. Always check `msg_signature`
//! (see [`super::signature`]) before calling [`decrypt`], so that padding and
//! length errors are only ever reported for payloads WeChat really sent.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

/// Block size WeChat uses for its PKCS#7-style padding.
const PAD_BLOCK: usize = 32;

/// AES block size; the ciphertext must be a whole number of these.
const AES_BLOCK: usize = 16;

/// Bytes before the XML: 16 random bytes plus the 4-byte length field.
const HEADER_LEN: usize = 16 + 4;

/// Length of an `EncodingAESKey` as shown in the WeChat admin console.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Base64 engine for `EncodingAESKey`: standard alphabet, canonical `=`
/// padding, but tolerant of non-zero trailing bits (see the module docs).
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;

/// Why a safe-mode payload (or key) was rejected.
///
/// Each variant maps to a short, stable [`reason`](CryptoError::reason) word
/// so logs and metrics can count failures by kind without parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The `EncodingAESKey` is not 43 base64 characters decoding to 32 bytes.
    #[error("EncodingAESKey must be 43 base64 characters that decode to 32 bytes")]
    BadKey,
    /// The `Encrypt` text is not valid standard base64.
    #[error("encrypted payload is not valid base64")]
    BadBase64,
    /// The ciphertext is empty or not a whole number of AES blocks.
    #[error("ciphertext length is not a non-zero multiple of 16 bytes")]
    BadLength,
    /// The 32-byte-block PKCS#7 padding is missing or inconsistent.
    #[error("invalid padding (PKCS#7 with a 32-byte block)")]
    BadPadding,
    /// The plaintext is too short to hold the random prefix and length field.
    #[error("decrypted payload is too short for its 20-byte header")]
    TooShort,
    /// The declared XML length runs past the end of the plaintext.
    #[error("declared XML length exceeds the decrypted payload")]
    BadLengthField,
    /// The XML or the trailing appid is not valid UTF-8.
    #[error("decrypted XML or appid is not valid UTF-8")]
    BadUtf8,
    /// The trailing appid is not one of the accounts we serve.
    #[error("appid {0:?} is not a configured account")]
    UnknownAppId(String),
}

impl CryptoError {
    /// A short machine-readable word for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CryptoError::BadKey => "bad_key",
            CryptoError::BadBase64 => "bad_base64",
            CryptoError::BadLength => "bad_length",
            CryptoError::BadPadding => "bad_padding",
            CryptoError::TooShort => "too_short",
            CryptoError::BadLengthField => "bad_length_field",
            CryptoError::BadUtf8 => "bad_utf8",
            CryptoError::UnknownAppId(_) => "unknown_appid",
        }
    }
}

/// A decoded 32-byte safe-mode key.
///
/// The key is kept opaque so it cannot end up in a log line by accident:
/// `Debug` prints a placeholder, and there is no `Display`. The IV WeChat
/// uses is the first 16 bytes of the key, so it is derived here rather than
/// configured separately.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl AesKey {
    /// Decodes the 43-character `EncodingAESKey` from the WeChat console.
    ///
    /// This is the only place the key format is interpreted, so a typo in
    /// configuration surfaces once at startup as [`CryptoError::BadKey`]
    /// instead of as a decryption failure on every callback.
    pub fn from_encoding_aes_key(s: &str) -> Result<AesKey, CryptoError> {
        if s.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(s);
        padded.push('=');
        let bytes = KEY_ENGINE
            .decode(padded.as_bytes())
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(AesKey(key))
    }

    /// Wraps raw key bytes, for callers (and tests) that already hold them.
    pub fn from_bytes(bytes: [u8; 32]) -> AesKey {
        AesKey(bytes)
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// The result of a successful [`decrypt`].
///
/// The appid is returned rather than checked here because one worker may
/// serve several official accounts; the caller knows which ones are valid
/// (see [`Decrypted::check_appid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The inner callback XML, ready for [`super::event::parse`].
    pub xml: String,
    /// The appid WeChat appended after the XML.
    pub appid: String,
}

impl Decrypted {
    /// Succeeds if the trailing appid is one of `allowed`.
    ///
    /// A payload encrypted for a different account (same key reused, or a
    /// misrouted callback) decrypts fine but must not be acted on. Appids are
    /// public identifiers, so a plain comparison is fine here.
    pub fn check_appid<S: AsRef<str>>(&self, allowed: &[S]) -> Result<(), CryptoError> {
        if allowed.iter().any(|a| a.as_ref() == self.appid) {
            Ok(())
        } else {
            Err(CryptoError::UnknownAppId(self.appid.clone()))
        }
    }
}

/// Encrypts `xml` for `appid` exactly as WeChat does, returning base64.
///
/// The random prefix is a parameter so the output is reproducible in tests
/// and in the callback simulator; production code that needs fresh
/// randomness can use [`encrypt_with_random`].
///
/// # Panics
///
/// Panics if `xml` is 4 GiB or larger, since its length must fit the
/// protocol's `u32` length field.
pub fn encrypt(key: &AesKey, xml: &str, appid: &str, random16: [u8; 16]) -> String {
    let xml_len = u32::try_from(xml.len()).expect("callback XML must be smaller than 4 GiB");
    let body_len = HEADER_LEN + xml.len() + appid.len();
    let pad = PAD_BLOCK - body_len % PAD_BLOCK;

    let mut plain = Vec::with_capacity(body_len + pad);
    plain.extend_from_slice(&random16);
    plain.extend_from_slice(&xml_len.to_be_bytes());
    plain.extend_from_slice(xml.as_bytes());
    plain.extend_from_slice(appid.as_bytes());
    // `pad` is in 1..=32, so the cast is lossless.
    plain.resize(body_len + pad, pad as u8);

    STANDARD.encode(encrypt_blocks(key, &plain))
}

/// Like [`encrypt`], with a fresh random prefix from the thread-local RNG.
pub fn encrypt_with_random(key: &AesKey, xml: &str, appid: &str) -> String {
    encrypt(key, xml, appid, rand::random())
}

/// Decrypts and unpacks the text of an `<Encrypt>` element.
///
/// Every malformed input is reported as a [`CryptoError`]; nothing here
/// panics, whatever the bytes. The checks run in protocol order: base64,
/// block alignment, padding, header length, XML length field, UTF-8.
pub fn decrypt(key: &AesKey, encrypt_b64: &str) -> Result<Decrypted, CryptoError> {
    let cipher = STANDARD
        .decode(encrypt_b64.as_bytes())
        .map_err(|_| CryptoError::BadBase64)?;
    if cipher.is_empty() || cipher.len() % AES_BLOCK != 0 {
        return Err(CryptoError::BadLength);
    }

    let plain = Aes256CbcDec::new(&key.0.into(), &key.iv().into())
        .decrypt_padded_vec_mut::<NoPadding>(&cipher)
        .map_err(|_| CryptoError::BadLength)?;

    let body = strip_padding(&plain)?;
    if body.len() < HEADER_LEN {
        return Err(CryptoError::TooShort);
    }
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&body[16..HEADER_LEN]);
    let rest = &body[HEADER_LEN..];
    let xml_len =
        usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::BadLengthField)?;
    if xml_len > rest.len() {
        return Err(CryptoError::BadLengthField);
    }
    let (xml, appid) = rest.split_at(xml_len);

    let xml = std::str::from_utf8(xml).map_err(|_| CryptoError::BadUtf8)?;
    let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::BadUtf8)?;
    Ok(Decrypted {
        xml: xml.to_owned(),
        appid: appid.to_owned(),
    })
}

/// Encrypts block-aligned data with AES-256-CBC and WeChat's key-derived IV.
fn encrypt_blocks(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    debug_assert_eq!(plain.len() % AES_BLOCK, 0);
    Aes256CbcEnc::new(&key.0.into(), &key.iv().into()).encrypt_padded_vec_mut::<NoPadding>(plain)
}

/// Removes PKCS#7 padding with a 32-byte block: the last byte `n` must be in
/// `1..=32`, no longer than the data, and the last `n` bytes must all be `n`.
fn strip_padding(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let &last = plain.last().ok_or(CryptoError::BadPadding)?;
    let n = usize::from(last);
    if n == 0 || n > PAD_BLOCK || n > plain.len() {
        return Err(CryptoError::BadPadding);
    }
    let (body, pad) = plain.split_at(plain.len() - n);
    if pad.iter().any(|&b| b != last) {
        return Err(CryptoError::BadPadding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::signature;
    use proptest::prelude::*;

    const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn key() -> AesKey {
        AesKey::from_encoding_aes_key(SAMPLE_KEY).unwrap()
    }

    /// Encrypts an arbitrary (block-aligned) plaintext, bypassing the
    /// framing and padding `encrypt` adds, to build malformed payloads.
    fn encrypt_raw(plain: &[u8]) -> String {
        STANDARD.encode(encrypt_blocks(&key(), plain))
    }

    /// An unpadded plaintext: random prefix, the given length field, then
    /// `payload` (xml and appid run together).
    fn framed(declared_len: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![7u8; 16];
        p.extend_from_slice(&declared_len.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn pad32(mut p: Vec<u8>) -> Vec<u8> {
        let n = PAD_BLOCK - p.len() % PAD_BLOCK;
        p.resize(p.len() + n, n as u8);
        p
    }

    struct Vector {
        name: String,
        encoding_aes_key: String,
        key_hex: String,
        random16: [u8; 16],
        xml: String,
        appid: String,
        encrypt: String,
        token: String,
        timestamp: String,
        nonce: String,
        signature: String,
        msg_signature: String,
    }

    /// Vectors written by scripts/gen_callback_vectors.py (Python
    /// `cryptography` + `hashlib`), independent of this module's encrypt.
    fn vectors() -> Vec<Vector> {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("testdata/aes_vectors.json")).unwrap();
        let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
        let list = doc["vectors"].as_array().unwrap();
        assert!(!list.is_empty());
        list.iter()
            .map(|v| Vector {
                name: s(v, "name"),
                encoding_aes_key: s(v, "encoding_aes_key"),
                key_hex: s(v, "key_hex"),
                random16: hex::decode(s(v, "random16_hex"))
                    .unwrap()
                    .try_into()
                    .unwrap(),
                xml: s(v, "xml"),
                appid: s(v, "appid"),
                encrypt: s(v, "encrypt"),
                token: s(v, "token"),
                timestamp: s(v, "timestamp"),
                nonce: s(v, "nonce"),
                signature: s(v, "signature"),
                msg_signature: s(v, "msg_signature"),
            })
            .collect()
    }

    #[test]
    fn python_vectors_decrypt_to_their_xml_and_appid() {
        for v in vectors() {
            let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
            assert_eq!(hex::encode(key.0), v.key_hex, "{}", v.name);
            let d = decrypt(&key, &v.encrypt).unwrap();
            assert_eq!(d.xml, v.xml, "{}", v.name);
            assert_eq!(d.appid, v.appid, "{}", v.name);
        }
    }

    #[test]
    fn encrypt_reproduces_python_vectors_byte_for_byte() {
        for v in vectors() {
            let key = AesKey::from_encoding_aes_key(&v.encoding_aes_key).unwrap();
            assert_eq!(
                encrypt(&key, &v.xml, &v.appid, v.random16),
                v.encrypt,
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn python_vectors_signatures_match() {
        for v in vectors() {
            assert_eq!(
                signature::url_signature(&v.token, &v.timestamp, &v.nonce),
                v.signature,
                "{}",
                v.name
            );
            assert_eq!(
                signature::msg_signature(&v.token, &v.timestamp, &v.nonce, &v.encrypt),
                v.msg_signature,
                "{}",
                v.name
            );
            assert!(signature::verify_msg_signature(
                &v.msg_signature,
                &v.token,
                &v.timestamp,
                &v.nonce,
                &v.encrypt
            ));
        }
    }

    #[test]
    fn sample_key_with_nonzero_trailing_bits_is_accepted() {
        // 'G' leaves non-zero trailing bits; strict base64 would refuse it.
        assert_eq!(
            hex::encode(key().0),
            "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
        );
    }

    #[test]
    fn malformed_encoding_aes_keys_are_bad_key() {
        for bad in [
            "",
            &SAMPLE_KEY[..42],
            &format!("{SAMPLE_KEY}A"),
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF=",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF-",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDE\u{e9}",
        ] {
            assert_eq!(
                AesKey::from_encoding_aes_key(bad).unwrap_err(),
                CryptoError::BadKey,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_output_does_not_reveal_key_bytes() {
        let k = key();
        let shown = format!("{k:?} {:#?}", k);
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("69b71d"));
        assert!(!shown.contains("105")); // first key byte 0x69 in decimal
    }

    #[test]
    fn bad_base64_is_rejected() {
        for bad in ["!!!!", "abc", "YWJj\n", "YW=j", "  "] {
            assert_eq!(decrypt(&key(), bad).unwrap_err(), CryptoError::BadBase64);
        }
        assert_eq!(CryptoError::BadBase64.reason(), "bad_base64");
    }

    #[test]
    fn empty_or_unaligned_ciphertext_is_bad_length() {
        assert_eq!(decrypt(&key(), "").unwrap_err(), CryptoError::BadLength);
        let fifteen = STANDARD.encode([0u8; 15]);
        assert_eq!(
            decrypt(&key(), &fifteen).unwrap_err(),
            CryptoError::BadLength
        );
        let seventeen = STANDARD.encode([0u8; 17]);
        assert_eq!(
            decrypt(&key(), &seventeen).unwrap_err(),
            CryptoError::BadLength
        );
    }

    #[test]
    fn pad_byte_zero_is_bad_padding() {
        let mut p = pad32(framed(3, b"<a/>wx"));
        *p.last_mut().unwrap() = 0;
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadPadding
        );
    }

    #[test]
    fn pad_byte_thirty_three_is_bad_padding() {
        // 16-byte PKCS#7 would never produce 33, nor would WeChat's 32.
        let p = vec![33u8; 64];
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadPadding
        );
        assert_eq!(CryptoError::BadPadding.reason(), "bad_padding");
    }

    #[test]
    fn inconsistent_pad_bytes_are_bad_padding() {
        let mut p = pad32(framed(4, b"<a/>wx"));
        let n = *p.last().unwrap() as usize;
        assert!(n >= 2);
        let len = p.len();
        p[len - n] ^= 0x01;
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadPadding
        );
    }

    #[test]
    fn pad_longer_than_ciphertext_is_bad_padding() {
        // One 16-byte block claiming 32 bytes of padding.
        let p = [32u8; 16];
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadPadding
        );
    }

    #[test]
    fn full_block_of_32_padding_is_accepted() {
        // 16 + 4 + 8 + 4 = 32 bytes of body, so a whole 32-byte pad block.
        let p = pad32(framed(8, b"<x>1</x>wx12"));
        assert_eq!(p.len(), 64);
        assert_eq!(p[63], 32);
        let d = decrypt(&key(), &encrypt_raw(&p)).unwrap();
        assert_eq!(d.xml, "<x>1</x>");
        assert_eq!(d.appid, "wx12");
    }

    #[test]
    fn body_shorter_than_header_is_too_short() {
        let p = pad32(vec![1u8; 10]);
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::TooShort
        );
    }

    #[test]
    fn length_field_past_end_is_bad_length_field() {
        let p = pad32(framed(1000, b"<xml/>wx"));
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadLengthField
        );
        let p = pad32(framed(u32::MAX, b"<xml/>wx"));
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadLengthField
        );
        // Exactly one byte too many.
        let p = pad32(framed(9, b"<xml/>wx"));
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadLengthField
        );
        assert_eq!(CryptoError::BadLengthField.reason(), "bad_length_field");
    }

    #[test]
    fn length_field_covering_everything_leaves_empty_appid() {
        let p = pad32(framed(8, b"<xml/>wx"));
        let d = decrypt(&key(), &encrypt_raw(&p)).unwrap();
        assert_eq!(d.xml, "<xml/>wx");
        assert_eq!(d.appid, "");
    }

    #[test]
    fn non_utf8_xml_or_appid_is_bad_utf8() {
        let p = pad32(framed(2, b"\xff\xfewx"));
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadUtf8
        );
        let p = pad32(framed(2, b"<a\xc3"));
        assert_eq!(
            decrypt(&key(), &encrypt_raw(&p)).unwrap_err(),
            CryptoError::BadUtf8
        );
    }

    #[test]
    fn wrong_key_does_not_yield_the_plaintext() {
        let b64 = encrypt(&key(), "<xml/>", "wx1", [0; 16]);
        let other = AesKey::from_bytes([0x42; 32]);
        assert_ne!(
            decrypt(&other, &b64).ok().map(|d| d.xml).as_deref(),
            Some("<xml/>")
        );
    }

    #[test]
    fn check_appid_accepts_listed_and_rejects_unlisted() {
        let d = decrypt(&key(), &encrypt(&key(), "<xml/>", "wx_good", [1; 16])).unwrap();
        assert_eq!(d.check_appid(&["wx_other", "wx_good"]), Ok(()));
        assert_eq!(
            d.check_appid(&["wx_other".to_string()]),
            Err(CryptoError::UnknownAppId("wx_good".into()))
        );
        let none: [&str; 0] = [];
        assert!(d.check_appid(&none).is_err());
        assert_eq!(
            CryptoError::UnknownAppId(String::new()).reason(),
            "unknown_appid"
        );
    }

    #[test]
    fn encrypt_with_random_round_trips_and_differs_each_time() {
        let a = encrypt_with_random(&key(), "<xml/>", "wx1");
        let b = encrypt_with_random(&key(), "<xml/>", "wx1");
        assert_ne!(a, b);
        assert_eq!(decrypt(&key(), &a).unwrap().xml, "<xml/>");
    }

    proptest! {
        #[test]
        fn encrypt_then_decrypt_round_trips(
            xml in ".{0,300}",
            appid in ".{0,40}",
            random16 in any::<[u8; 16]>(),
            key_bytes in any::<[u8; 32]>(),
        ) {
            let key = AesKey::from_bytes(key_bytes);
            let b64 = encrypt(&key, &xml, &appid, random16);
            let d = decrypt(&key, &b64).unwrap();
            prop_assert_eq!(d.xml, xml);
            prop_assert_eq!(d.appid, appid);
        }

        #[test]
        fn decrypt_of_arbitrary_strings_never_panics(s in ".{0,200}") {
            let _ = decrypt(&key(), &s);
        }

        #[test]
        fn decrypt_of_arbitrary_ciphertext_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            // Valid base64 so the bytes reach AES and the unpacking code.
            let _ = decrypt(&key(), &STANDARD.encode(&bytes));
        }

        #[test]
        fn any_43_alnum_key_decodes_to_32_bytes(s in "[A-Za-z0-9]{43}") {
            prop_assert!(AesKey::from_encoding_aes_key(&s).is_ok());
        }
    }
}
