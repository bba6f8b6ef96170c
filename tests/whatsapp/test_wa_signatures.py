"""Signature algorithms against the published vectors (PROTOCOLS.md 1.3 and 2.2)."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from plugins.whatsapp.signatures import (
    meta_signature,
    meta_signature_valid,
    token_equal,
    twilio_signature,
    twilio_signature_valid,
)
from tests.whatsapp.support import META_DIR

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]


def test_twilio_vector() -> None:
    assert twilio_signature(TOKEN, URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature_valid(TOKEN, URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_twilio_vector_with_port() -> None:
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert twilio_signature(TOKEN, with_port, PARAMS) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    # Twilio may sign either form: both are accepted whichever one we reconstruct.
    assert twilio_signature_valid(TOKEN, URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert twilio_signature_valid(TOKEN, with_port, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_twilio_vector_custom_port() -> None:
    url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2"
    assert twilio_signature(TOKEN, url, PARAMS) == "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="


def test_twilio_vector_multivalued() -> None:
    params = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    assert twilio_signature(TOKEN, URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_vector_json_body() -> None:
    body = b'{"property": "value", "boolean": true}'
    digest = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    assert hashlib.sha256(body).hexdigest() == digest
    url = f"{URL}&bodySHA256={digest}"
    assert twilio_signature(TOKEN, url) == "a9nBmqA0ju/hNViExpshrM61xv4="
    assert twilio_signature_valid(TOKEN, url, [], "a9nBmqA0ju/hNViExpshrM61xv4=", body)
    assert not twilio_signature_valid(TOKEN, url, [], "a9nBmqA0ju/hNViExpshrM61xv4=", body + b" ")


def test_twilio_rejects_wrong_or_missing() -> None:
    assert not twilio_signature_valid(TOKEN, URL, PARAMS, None)
    assert not twilio_signature_valid(TOKEN, URL, PARAMS, "")
    assert not twilio_signature_valid("other", URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not twilio_signature_valid(
        TOKEN, URL, [*PARAMS, ("X", "1")], "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    assert not twilio_signature_valid(TOKEN, URL, PARAMS, "ünïcode")


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.text(max_size=30),
        max_size=8,
    ),
    st.sampled_from(["https://gw.example.com/webhooks/wa", "http://127.0.0.1:8080/w?x=1&y=%20"]),
)
def test_twilio_matches_twilio_python(params: dict[str, str], url: str) -> None:
    """Our signer agrees with twilio-python's RequestValidator on arbitrary params."""
    expected = RequestValidator(TOKEN).compute_signature(url, params)
    assert twilio_signature(TOKEN, url, params.items()) == expected


def test_meta_vector() -> None:
    assert meta_signature("secret", b"test") == (
        "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914"
    )
    header = "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914"
    assert meta_signature_valid("secret", b"test", header)
    assert meta_signature_valid("secret", b"test", header.upper().replace("SHA256", "sha256"))


def test_meta_fixture_bytes() -> None:
    """Signed over the exact file bytes; one changed byte or a re-serialization fails."""
    body = (META_DIR / "msg_reaction.json").read_bytes()
    header = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert meta_signature_valid("app-secret", body, header)
    assert not meta_signature_valid("app-secret", body.replace(b" ", b""), header)
    assert not meta_signature_valid("app-secret", body + b"\n", header)


def test_meta_rejects_wrong_or_missing() -> None:
    assert not meta_signature_valid("secret", b"test", None)
    assert not meta_signature_valid("secret", b"test", "")
    assert not meta_signature_valid("secret", b"test", "sha256=")
    assert not meta_signature_valid("secret", b"test", "sha1=0329a06b62cd16b33eb6792be8c6")
    assert not meta_signature_valid("other", b"test", meta_signature("secret", b"test"))
    assert not meta_signature_valid("secret", b"test", "sha256=ü")


def test_token_equal() -> None:
    assert token_equal("abc", "abc")
    assert not token_equal("abc", "abd")
    assert not token_equal("abc", None)
    assert not token_equal("abc", "")
