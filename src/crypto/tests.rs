use super::*;
use crate::crypto::signature;
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

/// What decrypting the raw plaintext `plain`, encrypted with the test key, fails with.
fn decrypt_err(plain: &[u8]) -> CryptoError {
    decrypt(&key(), &encrypt_raw(plain)).unwrap_err()
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
    assert_eq!(decrypt_err(&p), CryptoError::BadPadding);
}

#[test]
fn pad_byte_thirty_three_is_bad_padding() {
    // 16-byte PKCS#7 would never produce 33, nor would WeChat's 32.
    let p = vec![33u8; 64];
    assert_eq!(decrypt_err(&p), CryptoError::BadPadding);
    assert_eq!(CryptoError::BadPadding.reason(), "bad_padding");
}

#[test]
fn inconsistent_pad_bytes_are_bad_padding() {
    let mut p = pad32(framed(4, b"<a/>wx"));
    let n = *p.last().unwrap() as usize;
    assert!(n >= 2);
    let len = p.len();
    p[len - n] ^= 0x01;
    assert_eq!(decrypt_err(&p), CryptoError::BadPadding);
}

#[test]
fn pad_longer_than_ciphertext_is_bad_padding() {
    // One 16-byte block claiming 32 bytes of padding.
    let p = [32u8; 16];
    assert_eq!(decrypt_err(&p), CryptoError::BadPadding);
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
    assert_eq!(decrypt_err(&p), CryptoError::TooShort);
}

#[test]
fn length_field_past_end_is_bad_length_field() {
    let p = pad32(framed(1000, b"<xml/>wx"));
    assert_eq!(decrypt_err(&p), CryptoError::BadLengthField);
    let p = pad32(framed(u32::MAX, b"<xml/>wx"));
    assert_eq!(decrypt_err(&p), CryptoError::BadLengthField);
    // Exactly one byte too many.
    let p = pad32(framed(9, b"<xml/>wx"));
    assert_eq!(decrypt_err(&p), CryptoError::BadLengthField);
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
    assert_eq!(decrypt_err(&p), CryptoError::BadUtf8);
    let p = pad32(framed(2, b"<a\xc3"));
    assert_eq!(decrypt_err(&p), CryptoError::BadUtf8);
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
