"""Webhook signatures: X-Twilio-Signature (HMAC-SHA1) and Meta's X-Hub-Signature-256.

Both are checked before anything in the body is believed, with constant-time comparisons so a
forger learns nothing from response timing. The algorithms follow PROTOCOLS.md 1.3 and 2.2 and
are pinned by their published test vectors in tests/whatsapp/test_signatures.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

Params = Iterable[tuple[str, str]]

_DEFAULT_PORTS = {"https": 443, "http": 80}


def twilio_signature(auth_token: str, url: str, params: Params = ()) -> str:
    """Compute X-Twilio-Signature: base64 HMAC-SHA1 over the URL plus the sorted params.

    Each distinct name is appended once per distinct value, names and values sorted, exactly as
    twilio-python's RequestValidator does for multi-valued form fields.
    """
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    payload = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _with_port(url: str) -> str:
    parts = urlsplit(url)
    port = _DEFAULT_PORTS.get(parts.scheme)
    if parts.port is not None or port is None or parts.hostname is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def _without_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        return url
    netloc = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=netloc))


def url_variants(url: str) -> list[str]:
    """Return the URL as given, with and without its default port.

    Twilio's own validator accepts either because Twilio's signing is inconsistent about
    explicit `:443`/`:80` (PROTOCOLS.md 1.3 step 4).
    """
    variants = [url]
    for variant in (_without_port(url), _with_port(url)):
        if variant not in variants:
            variants.append(variant)
    return variants


def _equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def twilio_signature_valid(
    auth_token: str, url: str, params: Params, signature: str | None, body: bytes = b""
) -> bool:
    """Tell whether `signature` signs this request for `auth_token`.

    `url` is the full public URL Twilio called, query string included. When the query carries
    `bodySHA256` (JSON webhooks), the body hash is checked and the URL is signed without params.
    """
    if not signature:
        return False
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    signed_params: list[tuple[str, str]] = list(params)
    if "bodySHA256" in query:
        body_hash = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(body_hash.encode(), query["bodySHA256"].lower().encode()):
            return False
        signed_params = []
    matches = [
        _equal(twilio_signature(auth_token, variant, signed_params), signature)
        for variant in url_variants(url)
    ]
    return any(matches)


def meta_signature(app_secret: str, body: bytes) -> str:
    """Compute X-Hub-Signature-256: `sha256=` + hex HMAC-SHA256 of the raw body."""
    # Not hmac.digest: that one-shot releases the GIL on every call, and on a busy node the
    # event loop then waits for the store's writer thread to hand the GIL back (up to 5 ms).
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def meta_signature_valid(app_secret: str, body: bytes, header: str | None) -> bool:
    """Tell whether `header` signs exactly these raw bytes (never re-serialized JSON)."""
    if not header:
        return False
    algorithm, _, digest = header.strip().partition("=")
    if algorithm.lower() != "sha256":
        return False
    return _equal(meta_signature(app_secret, body), f"sha256={digest.lower()}")


def token_equal(expected: str, given: str | None) -> bool:
    """Constant-time equality for shared tokens such as Meta's verify_token."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
