"""The web chat widget (`/webchat/widget.js`) on the demo page, in headless Chromium.

The visitor is a browser; the agent side is the real agent API over HTTP (the inbox page has its
own tests), so these tests are about what a visitor sees across reloads and absences.
"""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser.conftest import (
    PHONE,
    NewPage,
    contrast,
    opacity,
    open_widget,
    style,
    taken_by_maria,
    widget_send,
)
from tests.browser.harness import LiveGateway

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_widget_opens_sends_and_shows_replies_and_typing(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    await open_widget(page, gw)
    panel = page.get_by_role("region", name="Chat with Acme")
    toggle = page.get_by_role("button", name="Chat with Acme")
    await toggle.click()
    await expect(panel).to_be_hidden()
    await toggle.click()
    await expect(panel).to_be_visible()
    await expect(page.get_by_label("Message")).to_be_focused()

    await widget_send(page, "¿Tienen talla 42?")
    (conversation,) = await gw.waiting()
    path = f"/api/v1/conversations/{conversation['id']}"
    assert conversation["channel_type"] == "webchat"
    await gw.post("maria", path + "/accept")
    await gw.post("maria", path + "/typing")
    await expect(page.locator(".gwc-typing")).to_have_text("Agent is typing…")
    await gw.post("maria", path + "/messages", {"text": "Sí, en negro y en azul."})
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["Sí, en negro y en azul."])
    await expect(page.locator(".gwc-typing")).to_have_text("")


async def test_widget_survives_a_reload_and_replays_what_was_missed(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page(PHONE)
    await open_widget(page, gw)
    await widget_send(page, "Primera pregunta")
    path = await taken_by_maria(gw)
    await gw.post("maria", path + "/messages", {"text": "Respuesta uno"})
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["Respuesta uno"])

    # A reload keeps the session (token in localStorage) and shows the history in order.
    await page.reload()
    await expect(page.locator(".gwc-status")).to_have_text("online")
    await expect(page.locator(".gwc-msg .gwc-text")).to_have_text(
        ["Primera pregunta", "Respuesta uno"]
    )

    # The visitor leaves; the agent answers meanwhile; coming back replays it.
    context = page.context
    await page.close()
    await gw.post("maria", path + "/messages", {"text": "Respuesta mientras no estabas"})
    await gw.settle()
    again = await new_page(context=context)
    await open_widget(again, gw)
    await expect(again.locator(".gwc-msg .gwc-text")).to_have_text(
        ["Primera pregunta", "Respuesta uno", "Respuesta mientras no estabas"]
    )
    await widget_send(again, "Gracias")

    # Still one visitor, one conversation, nothing duplicated.
    thread = await gw.get("maria", path)
    assert [m["text"] for m in thread["messages"]] == [
        "Primera pregunta",
        "Respuesta uno",
        "Respuesta mientras no estabas",
        "Gracias",
    ]
    assert thread["messages"][2]["status"] == "read"  # shown in the open chat when they came back
    assert await gw.waiting() == []


async def hola_and_one_unsent(page: Page, gw: LiveGateway, lost: set[str]) -> None:
    """The visitor writes "Hola" (acknowledged), then "¿Siguen ahí?", whose frame is lost on
    the way to the gateway while its text is in `lost`: it stays shown as unsent."""

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()
        socket.on_message(
            lambda frame: None if any(t in str(frame) for t in lost) else server.send(frame)
        )

    await page.route_web_socket("**/webchat/site/ws*", route)
    await open_widget(page, gw)
    await widget_send(page, "Hola")
    await page.get_by_label("Message").fill("¿Siguen ahí?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator(".gwc-unsent .gwc-text")).to_have_text("¿Siguen ahí?")


async def test_a_message_not_yet_acknowledged_survives_a_reload(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    lost = {"¿Siguen ahí?"}
    await hola_and_one_unsent(page, gw, lost)

    # Reloaded with the connection healthy again: the kept message is sent, once.
    lost.clear()
    await page.reload()
    await expect(page.locator(".gwc-status")).to_have_text("online")
    await expect(page.locator(".gwc-msg:not(.gwc-unsent) .gwc-text")).to_have_text(
        ["Hola", "¿Siguen ahí?"]
    )
    (conversation,) = await gw.waiting()
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["Hola", "¿Siguen ahí?"]


async def test_a_resent_message_is_acked_after_the_replay_and_shows_below_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """After a reload the widget resends what was never acknowledged while the gateway replays
    the history. The gateway acks it only once its pushes have reached it, after the replay
    of everything stored before it; the widget shows messages in the order their frames come,
    which is the order the gateway stored them (ids need not be: each node's clock makes
    them), so it shows below the older ones."""
    page = await new_page()
    await hola_and_one_unsent(page, gw, {"¿Siguen ahí?"})

    came: list[str] = []

    def watch(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()
        socket.on_message(server.send)

        def to_page(frame: str | bytes) -> None:
            text = str(frame)
            if '"type":"message"' in text and "Hola" in text:
                came.append("replay")
            elif '"type":"ack"' in text:
                came.append("ack")
            socket.send(frame)

        server.on_message(to_page)

    await page.unroute_all()
    await page.route_web_socket("**/webchat/site/ws*", watch)
    await page.reload()
    await expect(page.locator(".gwc-msg:not(.gwc-unsent) .gwc-text")).to_have_text(
        ["Hola", "¿Siguen ahí?"]
    )
    assert came == ["replay", "ack"]


async def test_each_message_tells_screen_readers_who_wrote_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """The log reads "You: …", "Agent: …", not one run-on string; the author is hidden text,
    so the bubbles look as before."""
    page = await new_page()
    await open_widget(page, gw)
    await widget_send(page, "Hola")
    path = await taken_by_maria(gw)
    await gw.post("maria", path + "/messages", {"text": "مرحبا"})
    await gw.post("maria", path + "/messages", {"text": "Soy Maria"})
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["مرحبا", "Soy Maria"])
    await expect(page.get_by_role("log")).to_match_aria_snapshot(
        '- log: "You: Hola Agent: مرحبا Agent: Soy Maria"'
    )
    await expect(page.locator(".gwc-msg .gwc-who")).to_have_text(["You: ", "Agent: ", "Agent: "])
    # Hidden: it takes no room in the bubble, and does not turn right-to-left text around.
    for who in await page.locator(".gwc-who").all():
        box = await who.bounding_box()
        assert box is not None and box["width"] <= 1 and box["height"] <= 1
    direction = "e => getComputedStyle(e).direction"
    assert await page.locator(".gwc-out").first.evaluate(direction) == "rtl"


async def test_a_message_being_sent_says_so_to_screen_readers(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    lost = {"¿Siguen ahí?"}
    await hola_and_one_unsent(page, gw, lost)
    await expect(page.get_by_role("log")).to_match_aria_snapshot(
        '- log: "You: Hola You: ¿Siguen ahí? sending"'
    )
    # Shown as being sent by its look too, its text at full contrast.
    unsent = page.locator(".gwc-unsent")
    text = unsent.locator(".gwc-text")
    assert await opacity(text) == 1
    assert contrast(await style(text, "color"), await style(unsent, "background-color")) >= 4.5
    lost.clear()
    await page.reload()
    await expect(page.locator(".gwc-msg:not(.gwc-unsent) .gwc-text")).to_have_text(
        ["Hola", "¿Siguen ahí?"]
    )
    await expect(page.get_by_role("log")).to_match_aria_snapshot(
        '- log: "You: Hola You: ¿Siguen ahí?"'
    )


async def test_a_message_the_gateway_refuses_says_not_sent(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """A message the gateway can never take is marked failed: in words too, not only in looks."""

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_gateway(frame: str | bytes) -> None:
            data = json.loads(frame)
            if data.get("text") == "Demasiado":
                refusal = {
                    "type": "error",
                    "code": "too_long",
                    "message": "This message is too long.",
                    "client_id": data["client_id"],
                }
                socket.send(json.dumps(refusal))
                return
            server.send(frame)

        socket.on_message(to_gateway)
        server.on_message(socket.send)

    page = await new_page()
    await page.route_web_socket("**/webchat/site/ws*", route)
    await open_widget(page, gw)
    await page.get_by_label("Message").fill("Demasiado")
    await page.get_by_label("Message").press("Enter")
    failed = page.locator(".gwc-failed")
    await expect(failed.locator(".gwc-text")).to_have_text("Demasiado")
    await expect(failed.locator(".gwc-state")).to_have_text(" not sent")
    await expect(page.get_by_role("log")).to_match_aria_snapshot(
        '- log: "You: Demasiado not sent Notice: This message is too long."'
    )
    # Shown in words and by its border, its text at full contrast (no faded text).
    bubble = failed.first
    text = failed.locator(".gwc-text")
    assert await opacity(text) == 1
    assert contrast(await style(text, "color"), await style(bubble, "background-color")) >= 4.5
    assert await style(text, "text-decoration-line") == "line-through"
    marker = failed.locator(".gwc-state")
    box = await marker.bounding_box()
    assert box is not None and box["width"] > 20  # shown, not only read
    assert contrast(await style(marker, "color"), await style(bubble, "background-color")) >= 4.5
    assert contrast(await style(bubble, "border-top-color"), "rgb(246, 248, 250)") >= 3


async def test_the_message_input_shows_its_edge_and_its_focus(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Its border (non-text contrast, 3:1) and a focus ring (3:1) against the panel's white."""
    page = await new_page()
    await open_widget(page, gw)
    message = page.get_by_label("Message")
    panel = page.get_by_role("region", name="Chat with Acme")
    white = await style(panel, "background-color")
    assert await style(message, "border-top-style") == "solid"
    assert float((await style(message, "border-top-width")).removesuffix("px")) >= 1
    edge = await style(message, "border-top-color")
    assert contrast(edge, white) >= 3
    assert contrast(edge, await style(message, "background-color")) >= 3

    await message.focus()
    await expect(message).to_be_focused()
    assert await message.evaluate("e => e.matches(':focus-visible')")
    assert await style(message, "outline-style") != "none"
    assert float((await style(message, "outline-width")).removesuffix("px")) >= 2
    assert contrast(await style(message, "outline-color"), white) >= 3


async def test_the_connection_status_is_readable(gw: LiveGateway, new_page: NewPage) -> None:
    """Small text (12px) on the blue header: 4.5:1, not faded."""
    page = await new_page()
    await open_widget(page, gw)
    status = page.locator(".gwc-status")
    header = page.locator(".gwc-head")
    assert await opacity(status) == 1
    assert contrast(await style(status, "color"), await style(header, "background-color")) >= 4.5


async def test_typing_and_the_connection_status_are_announced_once(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Both are polite live regions; a typing frame that changes nothing (the agent types on:
    one comes every few seconds) leaves the text alone, so it is not announced again."""
    sockets: list[WebSocketRoute] = []

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()
        socket.on_message(server.send)
        server.on_message(socket.send)
        sockets.append(socket)

    page = await new_page()
    await page.route_web_socket("**/webchat/site/ws*", route)
    await open_widget(page, gw)
    await expect(page.get_by_role("status")).to_have_text("online")
    typing = page.locator(".gwc-typing")
    await expect(typing).to_have_attribute("aria-live", "polite")
    await typing.evaluate(
        """e => {
            window.said = [];
            new MutationObserver(() => window.said.push(e.textContent))
                .observe(e, {childList: true, characterData: true, subtree: true});
        }"""
    )
    (socket,) = sockets
    socket.send(json.dumps({"type": "typing", "active": True}))
    await expect(typing).to_have_text("Agent is typing…")
    socket.send(json.dumps({"type": "typing", "active": True}))
    socket.send(json.dumps({"type": "typing", "active": False}))
    await expect(typing).to_have_text("")
    assert await page.evaluate("window.said") == ["Agent is typing…", ""]


async def test_the_panel_has_a_heading(gw: LiveGateway, new_page: NewPage) -> None:
    """Its title is a heading (screen-reader users jump by headings), styled as before."""
    page = await new_page()
    await open_widget(page, gw)
    panel = page.get_by_role("region", name="Chat with Acme")
    heading = panel.get_by_role("heading", name="Chat with Acme", level=2)
    await expect(heading).to_be_visible()
    assert await style(heading, "font-size") == "14px"
    assert await style(heading, "margin-top") == "0px"


async def test_an_agents_file_shows_as_a_link_the_visitor_opens(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Hostile-content audit: the widget showed an agent's attachment as its text alone (or
    "[document]"), with no way to open it."""
    page = await new_page()
    await open_widget(page, gw)
    await widget_send(page, "¿Me mandan la factura?")
    path = await taken_by_maria(gw)
    invoice = {
        "kind": "document",
        "url": "https://files.example.com/f/123.pdf",
        "filename": "factura.pdf",
        "mime_type": "application/pdf",
    }
    status, _ = await gw.post(
        "maria", path + "/messages", {"text": "Aquí está", "attachments": [invoice]}
    )
    assert status == 202
    status, _ = await gw.post("maria", path + "/messages", {"attachments": [invoice]})
    assert status == 202
    files = page.get_by_role("link", name="📎 factura.pdf")
    await expect(files).to_have_count(2)
    await expect(files.first).to_have_attribute("href", invoice["url"])
    await expect(files.first).to_have_attribute("rel", "noopener noreferrer")
    await expect(files.first).to_have_attribute("target", "_blank")
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["Aquí está", ""])
