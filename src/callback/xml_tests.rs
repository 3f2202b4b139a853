use super::*;
use crate::callback::event::{parse, parse_bytes, parse_with_limit};

/// What reading `xml` as a callback body fails with.
fn parse_err(xml: &str) -> XmlError {
    parse(xml).unwrap_err()
}

#[test]
fn predefined_entities_and_char_refs_are_resolved() {
    let xml = "<xml><MsgType>t</MsgType>\
                   <V>&lt;&gt;&amp;&apos;&quot;&#65;&#x4E2D;&#x1F600;</V></xml>";
    let fields = parse_fields(xml, DEFAULT_MAX_XML_BYTES).unwrap();
    assert_eq!(fields.get("V"), Some("<>&'\"A中😀"));
}

#[test]
fn unknown_entity_reference_is_rejected() {
    let xml = "<xml><MsgType>&xxe;</MsgType></xml>";
    assert_eq!(parse_err(xml), XmlError::UnknownEntity("xxe".into()));
    assert_eq!(parse_err(xml).reason(), "unknown_entity");
}

#[test]
fn invalid_char_refs_are_malformed() {
    for r in [
        "&#0;",
        "&#xD800;",
        "&#x110000;",
        "&#99999999999999999999;",
        "&#;",
        "&#xZ;",
    ] {
        let xml = format!("<xml><MsgType>{r}</MsgType></xml>");
        assert_eq!(parse_err(&xml).reason(), "malformed", "{r}");
    }
}

#[test]
fn doctype_is_rejected_without_expansion() {
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
                   <xml><MsgType>&xxe;</MsgType></xml>";
    assert_eq!(parse_err(xxe), XmlError::Doctype);
    let laughs = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;\">]>\
                      <xml><MsgType>&lol2;</MsgType></xml>";
    assert_eq!(parse_err(laughs), XmlError::Doctype);
    assert_eq!(parse_err("<!DOCTYPE xml><xml/>").reason(), "doctype");
}

#[test]
fn entity_declaration_outside_doctype_is_rejected() {
    let xml = "<!ENTITY x \"y\"><xml><MsgType>&x;</MsgType></xml>";
    assert!(parse(xml).is_err());
}

#[test]
fn oversized_body_is_rejected_before_parsing() {
    let big = format!(
        "<xml><MsgType>{}</MsgType></xml>",
        "a".repeat(DEFAULT_MAX_XML_BYTES)
    );
    assert_eq!(
        parse_err(&big),
        XmlError::TooLarge {
            len: big.len(),
            limit: DEFAULT_MAX_XML_BYTES
        }
    );
    // A caller-given limit applies to both str and byte entry points,
    // and the size check runs before the UTF-8 check.
    assert_eq!(
        parse_with_limit("<xml/>", 5).unwrap_err().reason(),
        "too_large"
    );
    assert_eq!(
        parse_bytes(b"\xff\xff\xff", 2).unwrap_err().reason(),
        "too_large"
    );
}

#[test]
fn non_utf8_body_is_rejected() {
    assert_eq!(
        parse_bytes(b"<xml><MsgType>\xff</MsgType></xml>", DEFAULT_MAX_XML_BYTES).unwrap_err(),
        XmlError::NotUtf8
    );
}

#[test]
fn malformed_documents_are_rejected() {
    for xml in [
        "",
        "   ",
        "not xml",
        "<xml>",
        "<xml><MsgType>text</MsgType>",
        "<xml><MsgType>text</msgtype></xml>",
        "<xml></xml></xml>",
        "</xml>",
        "<xml><MsgType>a<b</MsgType></xml>",
        "<xml><MsgType>a & b</MsgType></xml>",
        "<xml><MsgType><![CDATA[text</MsgType></xml>",
        "<xml/><xml/>",
        "<xml/>trailing",
        "<![CDATA[x]]><xml/>",
        "<xml><MsgType attr=\"x>text</MsgType></xml>",
        "<xml a='1' a='2'><MsgType>t</MsgType></xml>",
        "<xml><MsgType a=1>t</MsgType></xml>",
        "<xml><MsgType>t</MsgType><?xml version='1.0'?></xml>",
        "<xml><!-- a -- b --><MsgType>t</MsgType></xml>",
    ] {
        let err = parse_err(xml);
        assert_eq!(err.reason(), "malformed", "{xml:?} gave {err:?}");
    }
}

#[test]
fn wrong_root_is_rejected() {
    assert_eq!(
        parse_err("<html><MsgType>t</MsgType></html>"),
        XmlError::UnexpectedRoot("html".into())
    );
}

#[test]
fn duplicate_field_is_rejected() {
    let xml = "<xml><MsgType>event</MsgType><MsgType>text</MsgType></xml>";
    assert_eq!(parse_err(xml), XmlError::DuplicateField("MsgType".into()));
}
