"""Agents download inbound media through the gateway, which fetches it with the channel's
credentials from the provider's hosts only (here the stand-ins, over real HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.media import content_disposition, safe_content_type
from tests.whatsapp.fakes import PNG
from tests.whatsapp.support import TWILIO_SID
from tests.whatsapp_e2e.conftest import (
    TWILIO,
    WaGateway,
    meta_messages,
    twilio_inbound,
)

NOW_TS = 1795590000
MEDIA_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1"


def meta_image(wamid: str, media_id: str) -> dict[str, Any]:
    return {
        "from": "5511999990000",
        "id": wamid,
        "timestamp": str(NOW_TS),
        "type": "image",
        "image": {"id": media_id, "mime_type": "image/png", "sha256": "abc="},
    }


async def meta_images(wa: WaGateway, *media_ids: str) -> tuple[str, str]:
    """The customer sends one image per media id; return the first's conversation and id."""
    messages = [meta_image(f"wamid.IMG{i}", m) for i, m in enumerate(media_ids)]
    assert (await wa.post_meta(meta_messages(messages))).status == 200
    (first, *_) = await wa.received()
    return first["message"]["conversation_id"], first["message"]["id"]


def path(conversation_id: str, message_id: str, index: int | str) -> str:
    return f"/api/v1/conversations/{conversation_id}/messages/{message_id}/attachments/{index}"


async def test_meta_media_by_id(wa: WaGateway) -> None:
    conversation_id, message_id = await meta_images(wa, "m1")
    resp = await wa.client.get(path(conversation_id, message_id, 0), headers=wa.gw.auth("maria"))
    assert resp.status == 200
    assert await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Disposition"].startswith("inline;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "private, no-store"


async def test_any_agent_of_the_queue_may_download_but_others_not(wa: WaGateway) -> None:
    conversation_id, message_id = await meta_images(wa, "m1")
    url = path(conversation_id, message_id, 0)
    resp = await wa.client.get(url, headers=wa.gw.auth("jose"))  # previews, not assigned
    assert resp.status == 200
    resp = await wa.client.get(url, headers=wa.gw.auth("ana"))  # not on `support`
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "not_on_queue"
    resp = await wa.client.get(url)
    assert resp.status == 401


@pytest.mark.parametrize(
    ("media_id", "reason"),
    [
        ("m404", "code 100"),  # Graph does not know it
        ("evil", "169.254.169.254"),  # Graph points at a private address: refused, not fetched
        ("lookalike", "lookaside.fbsbx.com.evil.example"),
    ],
)
async def test_meta_media_refused(media_id: str, reason: str, wa: WaGateway) -> None:
    conversation_id, message_id = await meta_images(wa, media_id)
    resp = await wa.client.get(path(conversation_id, message_id, 0), headers=wa.gw.auth("maria"))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "media_unavailable"
    assert reason in error["message"]


async def test_unknown_attachment_message_or_conversation(wa: WaGateway) -> None:
    conversation_id, message_id = await meta_images(wa, "m1")
    auth = wa.gw.auth("maria")
    for index in (1, "x", "-1"):
        resp = await wa.client.get(path(conversation_id, message_id, index), headers=auth)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    resp = await wa.client.get(path(conversation_id, "m_nope", 0), headers=auth)
    assert resp.status == 404
    resp = await wa.client.get(path("c_nope", message_id, 0), headers=auth)
    assert resp.status == 404
    # A message of another conversation is not reachable through this one.
    await wa.customer_twilio("SMother", "hola", phone="+5511000000077")
    other = await wa.conversation_of(TWILIO, "+5511000000077")
    resp = await wa.client.get(path(other, message_id, 0), headers=auth)
    assert resp.status == 404


async def test_twilio_media_urls_only_on_twilio_hosts(wa: WaGateway) -> None:
    pairs = [
        (k, v)
        for k, v in twilio_inbound("MMmedia", "foto", phone="+5511999990000")
        if k != "NumMedia"
    ]
    pairs += [
        ("NumMedia", "2"),
        ("MediaContentType0", "image/png"),
        ("MediaUrl0", wa.twilio.base_url + MEDIA_PATH),
        # A URL on a host that is not Twilio's (in a signed webhook, so only defence in depth).
        ("MediaContentType1", "text/html"),
        ("MediaUrl1", "http://169.254.169.254/latest/meta-data/"),
    ]
    assert (await wa.post_twilio(pairs)).status == 200
    (event,) = await wa.received()
    message = event["message"]
    assert [a["url"] for a in message["attachments"]] == [
        wa.twilio.base_url + MEDIA_PATH,
        "http://169.254.169.254/latest/meta-data/",
    ]
    auth = wa.gw.auth("maria")
    resp = await wa.client.get(path(message["conversation_id"], message["id"], 0), headers=auth)
    assert resp.status == 200 and await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    resp = await wa.client.get(path(message["conversation_id"], message["id"], 1), headers=auth)
    assert resp.status == 502
    assert "refusing to fetch media" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        (("image/png", None), "image/png"),
        ((None, "audio/ogg; codecs=opus"), "audio/ogg; codecs=opus"),
        (("text/html\r\nSet-Cookie: x=1", "image/jpeg"), "image/jpeg"),
        (("", None), "application/octet-stream"),
        (("imagé/png", None), "application/octet-stream"),
    ],
)
def test_safe_content_type(candidates: tuple[str | None, str | None], expected: str) -> None:
    assert safe_content_type(*candidates) == expected


@pytest.mark.parametrize(
    ("content_type", "filename", "expected"),
    [
        ("image/png", None, 'inline; filename="m_1-0"'),
        (
            "application/pdf",
            "factura 3.pdf",
            "inline; filename=\"factura_3.pdf\"; filename*=UTF-8''factura%203.pdf",
        ),
        ("text/html", "x.html", 'attachment; filename="x.html"'),
        ("image/svg+xml", "x.svg", 'attachment; filename="x.svg"'),
        # RFC 6266: the ASCII fallback, and the real name percent-encoded as UTF-8
        (
            "application/pdf",
            "résumé façade.pdf",
            'inline; filename="r_sum__fa_ade.pdf";'
            " filename*=UTF-8''r%C3%A9sum%C3%A9%20fa%C3%A7ade.pdf",
        ),
        # control characters dropped, path separators never a path
        (
            "application/octet-stream",
            'a"b\r\nc',
            "attachment; filename=\"a_b__c\"; filename*=UTF-8''a%22bc",
        ),
        ("application/octet-stream", "../x.txt", 'attachment; filename=".._x.txt"'),
    ],
)
def test_content_disposition(content_type: str, filename: str | None, expected: str) -> None:
    assert content_disposition(content_type, filename, "m_1-0") == expected


async def test_route_is_documented(wa: WaGateway) -> None:
    spec = await (await wa.client.get("/api/openapi.json")).json()
    route = spec["paths"]["/api/v1/conversations/{id}/messages/{message_id}/attachments/{index}"]
    assert set(route["get"]["responses"]) >= {"200", "401", "403", "404", "502"}


async def test_an_agents_attachment_is_never_fetched_with_the_channels_credentials(
    wa: WaGateway,
) -> None:
    """The download endpoint fetches a customer's media with the channel's credentials. An
    agent's attachment is at the URL the agent gave: fetched the same way, an agent could make
    the gateway read the provider's own API with its token (every message of the account) by
    attaching an API URL to a reply (an audit did). It is refused, and nothing is fetched."""
    conversation_id, _ = await meta_images(wa, "m1")
    await wa.accept(conversation_id)
    api_url = f"{wa.graph.base_url}/media-bin/m1"  # on the provider's host: credentials apply
    image = {"url": api_url, "mime_type": "image/png"}
    status, body = await wa.reply(conversation_id, {"text": "mira", "attachments": [image]})
    assert status == 202, body
    sent = body["message"]["id"]
    resp = await wa.client.get(path(conversation_id, sent, 0), headers=wa.gw.auth("maria"))
    assert resp.status == 404
    assert "its attachments are at their URLs" in (await resp.json())["error"]["message"]
