//! Request signatures for WeChat server-push callbacks.
//!
//! WeChat proves that a callback came from WeChat by hashing a shared secret
//! (the *token*) together with values from the query string. Both the
//! plaintext `signature` and the safe-mode `msg_signature` use the same
//! recipe: sort the parts byte-wise, concatenate them, SHA-1 the result and
//! print it as lowercase hex. Only the list of parts differs.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// Computes WeChat's signature over `parts`: sorted, concatenated, SHA-1,
/// lowercase hex.
///
/// The parts are sorted before hashing, so the caller does not need to know
/// which order WeChat used; `sign(&[token, timestamp, nonce])` and
/// `sign(&[nonce, token, timestamp])` agree. This is used for the URL check
/// and plaintext POSTs (three parts) as well as for safe mode (four parts,
/// the fourth being the `Encrypt` payload).
pub fn sign(parts: &[&str]) -> String {
    hex::encode(digest(parts))
}

/// Checks a signature received from WeChat against the one we compute.
///
/// The comparison runs in constant time over the 20 digest bytes, so a
/// caller probing the endpoint learns nothing from response timing about how
/// many leading bytes were right. Upper- or lowercase hex is accepted; any
/// string that is not exactly 40 hex digits is simply a mismatch.
pub fn verify(expected_hex: &str, parts: &[&str]) -> bool {
    let mut expected = [0u8; 20];
    if hex::decode_to_slice(expected_hex, &mut expected).is_err() {
        return false;
    }
    let actual = digest(parts);
    expected.ct_eq(&actual).into()
}

/// Signature for the URL check and plaintext POSTs: `token`, `timestamp`,
/// `nonce`.
///
/// A thin wrapper so call sites read like the protocol description instead
/// of an anonymous slice.
pub fn url_signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sign(&[token, timestamp, nonce])
}

/// Verifies the `signature` query parameter of a URL check or plaintext POST.
pub fn verify_url_signature(signature: &str, token: &str, timestamp: &str, nonce: &str) -> bool {
    verify(signature, &[token, timestamp, nonce])
}

/// Safe-mode signature: `token`, `timestamp`, `nonce` and the `Encrypt`
/// element's text.
///
/// Including the ciphertext means the signature also authenticates the
/// payload, which is why it must be checked *before* decrypting.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sign(&[token, timestamp, nonce, encrypt])
}

/// Verifies the `msg_signature` query parameter of a safe-mode POST.
pub fn verify_msg_signature(
    msg_signature: &str,
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
) -> bool {
    verify(msg_signature, &[token, timestamp, nonce, encrypt])
}

fn digest(parts: &[&str]) -> [u8; 20] {
    let mut sorted: Vec<&str> = parts.to_vec();
    // `str`'s ordering is byte-wise, which for UTF-8 is also code-point
    // order; that matches what WeChat's reference SDKs do.
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Expected values computed independently with Python:
    // hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()

    #[test]
    fn sign_matches_python_hashlib_for_documented_sample() {
        assert_eq!(
            sign(&["QDG6eK", "1409659813", "1372623149"]),
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a"
        );
    }

    #[test]
    fn sign_sorts_parts_bytewise_before_hashing() {
        // sorted(["b", "a", "c", "ab"]) == ["a", "ab", "b", "c"] -> "aabbc"
        assert_eq!(
            sign(&["b", "a", "c", "ab"]),
            "fb030f259c9565dc23e2d1fc87d25cc4b99c6fd0"
        );
        assert_eq!(
            sign(&["token", "timestamp", "nonce"]),
            "6db4861c77e0633e0105672fcd41c9fc2766e26e"
        );
    }

    #[test]
    fn sign_of_no_parts_is_sha1_of_empty_string() {
        assert_eq!(sign(&[]), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn url_signature_is_sign_of_three_parts() {
        assert_eq!(
            url_signature("QDG6eK", "1409659813", "1372623149"),
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a"
        );
    }

    #[test]
    fn verify_accepts_correct_signature_in_either_case() {
        let parts = ["QDG6eK", "1409659813", "1372623149"];
        assert!(verify("d2157f2f9079f4d6257b45edf665c43c62e60a0a", &parts));
        assert!(verify("D2157F2F9079F4D6257B45EDF665C43C62E60A0A", &parts));
        assert!(verify_url_signature(
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a",
            "QDG6eK",
            "1409659813",
            "1372623149"
        ));
    }

    #[test]
    fn verify_rejects_wrong_signature() {
        let parts = ["QDG6eK", "1409659813", "1372623149"];
        // One digit off.
        assert!(!verify("d2157f2f9079f4d6257b45edf665c43c62e60a0b", &parts));
        // Right signature, wrong token.
        assert!(!verify_url_signature(
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a",
            "other-token",
            "1409659813",
            "1372623149"
        ));
    }

    #[test]
    fn verify_rejects_malformed_hex_without_panicking() {
        let parts = ["a", "b", "c"];
        for bad in [
            "",
            "zz",
            "d2157f2f9079f4d6257b45edf665c43c62e60a0",
            "d2157f2f9079f4d6257b45edf665c43c62e60a0a00",
            "g2157f2f9079f4d6257b45edf665c43c62e60a0a",
            "é",
        ] {
            assert!(!verify(bad, &parts), "{bad:?} should not verify");
        }
    }

    #[test]
    fn msg_signature_covers_the_encrypt_payload() {
        let sig = msg_signature("t", "1", "n", "payload");
        assert!(verify_msg_signature(&sig, "t", "1", "n", "payload"));
        assert!(!verify_msg_signature(&sig, "t", "1", "n", "payload2"));
    }

    proptest! {
        #[test]
        fn sign_is_independent_of_part_order(a in ".*", b in ".*", c in ".*") {
            let one = sign(&[&a, &b, &c]);
            prop_assert_eq!(&one, &sign(&[&c, &a, &b]));
            prop_assert!(verify(&one, &[&b, &c, &a]));
        }

        #[test]
        fn verify_never_panics(sig in ".*", a in ".*") {
            let _ = verify(&sig, &[&a]);
        }
    }
}
