#!/usr/bin/env python3
"""Generate known-answer vectors for the WeChat callback "safe mode" code.

The vectors are produced with Python's `cryptography` package and `hashlib`,
independently of the Rust implementation, so the Rust tests compare against a
second opinion rather than against themselves.

Usage (from the crate root):

    python3 scripts/gen_callback_vectors.py

Writes src/crypto/testdata/aes_vectors.json. The output is deterministic:
every "random" input is fixed here.
"""

import base64
import hashlib
import json
import pathlib
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# WeChat pads to a 32-byte block with PKCS#7-style bytes, not the 16-byte AES block.
WECHAT_PAD_BLOCK = 32

# The sample EncodingAESKey from WeChat's documentation. Its last character
# ('G') carries non-zero trailing bits, which lenient base64 decoders (PHP,
# Python, Java) ignore; the Rust side must accept it too.
ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

TOKEN = "QDG6eK"

TEMPLATE_XML = (
    "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>"
    "<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>"
    "<CreateTime>1395658920</CreateTime>"
    "<MsgType><![CDATA[event]]></MsgType>"
    "<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event>"
    "<MsgID>200163836</MsgID>"
    "<Status><![CDATA[success]]></Status></xml>"
)

UNICODE_XML = (
    "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>"
    "<FromUserName><![CDATA[oia2TjuEGTNoeX76QEjQNrcURxG8]]></FromUserName>"
    "<CreateTime>1395658921</CreateTime>"
    "<MsgType><![CDATA[text]]></MsgType>"
    "<Content><![CDATA[你好，世界 ✓]]></Content>"
    "<MsgId>1234567890123456</MsgId></xml>"
)


def decode_key(encoding_aes_key: str) -> bytes:
    # validate=False (the default) tolerates non-canonical trailing bits.
    key = base64.b64decode(encoding_aes_key + "=")
    assert len(key) == 32, len(key)
    return key


def pad32(data: bytes) -> bytes:
    n = WECHAT_PAD_BLOCK - (len(data) % WECHAT_PAD_BLOCK)
    return data + bytes([n]) * n


def encrypt(key: bytes, random16: bytes, xml: str, appid: str) -> str:
    xml_bytes = xml.encode("utf-8")
    plain = random16 + struct.pack(">I", len(xml_bytes)) + xml_bytes + appid.encode("utf-8")
    padded = pad32(plain)
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    ct = enc.update(padded) + enc.finalize()
    return base64.b64encode(ct).decode("ascii")


def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def vector(name, random16, xml, appid, timestamp, nonce):
    key = decode_key(ENCODING_AES_KEY)
    enc = encrypt(key, random16, xml, appid)
    plain_len = 16 + 4 + len(xml.encode("utf-8")) + len(appid.encode("utf-8"))
    return {
        "name": name,
        "encoding_aes_key": ENCODING_AES_KEY,
        "key_hex": key.hex(),
        "random16_hex": random16.hex(),
        "xml": xml,
        "appid": appid,
        "pad_len": WECHAT_PAD_BLOCK - (plain_len % WECHAT_PAD_BLOCK),
        "encrypt": enc,
        "token": TOKEN,
        "timestamp": timestamp,
        "nonce": nonce,
        "signature": sha1_sorted(TOKEN, timestamp, nonce),
        "msg_signature": sha1_sorted(TOKEN, timestamp, nonce, enc),
    }


def full_pad_appid() -> str:
    # Choose an appid whose plaintext length is an exact multiple of 32, so the
    # padding is a whole extra block of 32 bytes of value 32.
    base = "wx5823bf96d3bd56c7"
    plain_len = 16 + 4 + len(TEMPLATE_XML.encode("utf-8")) + len(base)
    extra = (-plain_len) % WECHAT_PAD_BLOCK
    return base + "x" * extra


def main() -> None:
    vectors = [
        vector(
            "template_send_job_finish",
            bytes(range(16)),
            TEMPLATE_XML,
            "wx5823bf96d3bd56c7",
            "1409659813",
            "1372623149",
        ),
        vector(
            "unicode_text_message",
            b"ABCDEFGHIJKLMNOP",
            UNICODE_XML,
            "wxb11529c136998cb6",
            "1409659589",
            "263014780",
        ),
        vector(
            "full_block_padding",
            bytes([0xFF] * 16),
            TEMPLATE_XML,
            full_pad_appid(),
            "1700000000",
            "42",
        ),
    ]
    assert vectors[2]["pad_len"] == 32, vectors[2]["pad_len"]
    out = pathlib.Path(__file__).resolve().parent.parent / "src/crypto/testdata/aes_vectors.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vectors": vectors}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {out}")


if __name__ == "__main__":
    main()
