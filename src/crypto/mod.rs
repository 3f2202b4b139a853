//! WeChat's message security, for the account's callback and the platform's pushes alike: the
//! SHA-1 signatures ([`signature`]) and AES "safe mode" (here).
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
//! (see [`signature`]) before calling [`decrypt`], so that padding and
//! length errors are only ever reported for payloads WeChat really sent.

pub mod signature;

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
pub(crate) const ENCODING_AES_KEY_LEN: usize = 43;

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
    /// The inner callback XML, ready for the callback's event parser.
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
mod tests;
