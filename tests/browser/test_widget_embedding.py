"""The widget on the pages it is really embedded in, and on the networks it really meets.

Host pages are served by Playwright's router (on the gateway's own origin, or on a made-up
one), so each test controls the page's markup, stylesheet and Content-Security-Policy; socket
troubles are made with `route_web_socket`, between the page and the real gateway.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.async_api import Page, Route, WebSocketRoute, expect

from tests.browser.conftest import NewPage, SilentNetwork, taken_by_maria, widget_send
from tests.browser.harness import LiveGateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTILE_CSS = """
input { width: 100% !important; display: block; border: 3px solid red; }
button { display: block !important; width: 100% !important; }
div, section { background: #ffeb3b !important; font-family: "Comic Sans MS" !important; }
"""


async def host_page(
    page: Page,
    gw: LiveGateway,
    *,
    origin: str | None = None,
    attributes: str = 'data-open="true"',
    csp: str | None = None,
) -> None:
    """Serve a shop page at `origin` (default: the gateway's) that embeds the widget, with a
    stylesheet of its own that styles every input, button and div, and open it."""
    url = (origin or gw.url) + "/shop"
    markup = (
        '<!doctype html><html><head><link rel="stylesheet" href="/shop.css"></head><body>'
        "<h1>Shop</h1><p>Our products.</p>"
        f'<script src="{gw.url}/webchat/widget.js" data-channel="site" data-gateway="{gw.url}"'
        f' data-title="Chat with Acme" {attributes} async></script></body></html>'
    )
    headers = {"Content-Security-Policy": csp} if csp else {}

    async def shop(route: Route) -> None:
        await route.fulfill(body=markup, content_type="text/html", headers=headers)

    async def stylesheet(route: Route) -> None:
        await route.fulfill(body=HOSTILE_CSS, content_type="text/css")

    await page.route(url, shop)
    await page.route((origin or gw.url) + "/shop.css", stylesheet)
    await page.goto(url)


async def test_the_host_pages_css_and_a_strict_policy_do_not_reach_the_widget(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """A Bootstrap-like stylesheet (every input and button full width) and `style-src 'self'`
    (no inline styles): the widget keeps its own look and stays usable."""
    page = await new_page()
    policy = f"default-src 'self'; script-src 'self' {gw.url}; style-src 'self'"
    await host_page(page, gw, csp=policy)
    await expect(page.locator(".gwc-status")).to_have_text("online")
    launcher = page.get_by_role("button", name="Chat with Acme")
    box = await launcher.bounding_box()
    assert box is not None and box["width"] < 300  # not stretched across the page
    panel = page.get_by_role("region", name="Chat with Acme")
    assert await panel.evaluate("e => getComputedStyle(e).position") == "fixed"
    assert await panel.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 255, 255)"
    await expect(page.get_by_label("Message")).to_be_visible()
    await widget_send(page, "Hola desde la tienda")
    (conversation,) = await gw.waiting()
    assert conversation["preview"] == "Hola desde la tienda"
    # The page's own elements still get the page's styles.
    heading = page.locator("h1")
    assert "Comic Sans" not in await heading.evaluate("e => getComputedStyle(e).fontFamily")
    assert await page.locator("p").evaluate("e => getComputedStyle(e).fontFamily") != ""


async def test_a_site_the_chat_is_not_for_is_told_so_and_not_retried(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    sessions: list[str] = []
    page.on("request", lambda r: sessions.append(r.url) if r.url.endswith("/session") else None)
    await host_page(page, gw, origin="http://other-shop.example")
    await expect(page.locator(".gwc-status")).to_have_text("unavailable")
    await expect(page.locator(".gwc-note .gwc-text")).to_have_text(
        ["Chat is not available on this site."]
    )
    # Another request would come within a second of backoff: none does.
    await page.wait_for_timeout(1500)
    assert len(sessions) == 1
    assert await gw.waiting() == []


async def test_a_socket_that_goes_silent_is_replaced(gw: LiveGateway, new_page: NewPage) -> None:
    """The network keeps the connection open but carries nothing (a proxy that lost it): the
    keep-alive goes unanswered, the widget drops the socket and a new one gets what was missed."""
    page = await new_page()
    network = SilentNetwork()
    await page.route_web_socket("**/webchat/site/ws*", network.route)
    await host_page(page, gw, attributes='data-open="true" data-keepalive="1"')
    await expect(page.locator(".gwc-status")).to_have_text("online")
    await widget_send(page, "Hola")
    path = await taken_by_maria(gw)
    network.silence()
    await gw.post("maria", path + "/messages", {"text": "¿Sigues ahí?"})
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["¿Sigues ahí?"])
    assert len(network.sockets) == 2  # the reply came over the new socket


async def test_a_rate_limited_message_goes_again_and_nothing_overtakes_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """The gateway refuses the second message with `rate_limited` (made here on the way, with
    the wait it names): the widget sends it again after the wait, then the third one."""
    page = await new_page()
    refused: list[str] = []

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_gateway(frame: str | bytes) -> None:
            data = json.loads(frame)
            if data.get("text") == "dos" and not refused:
                refused.append(data["client_id"])
                socket.send(
                    json.dumps(
                        {
                            "type": "error",
                            "code": "rate_limited",
                            "message": "too many messages; retry in 1 s",
                            "client_id": data["client_id"],
                            "retry_after": 1,
                        }
                    )
                )
                return
            server.send(frame)

        socket.on_message(to_gateway)
        server.on_message(socket.send)

    await page.route_web_socket("**/webchat/site/ws*", route)
    await host_page(page, gw)
    await expect(page.locator(".gwc-status")).to_have_text("online")
    for text in ("uno", "dos", "tres"):
        await page.get_by_label("Message").fill(text)
        await page.get_by_label("Message").press("Enter")
    await expect(page.locator(".gwc-msg:not(.gwc-unsent) .gwc-text")).to_have_text(
        ["uno", "dos", "tres"]
    )
    (conversation,) = await gw.waiting()
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["uno", "dos", "tres"]
    assert len(refused) == 1


async def test_unread_replies_are_counted_and_read_when_the_chat_is_opened(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    await host_page(page, gw)
    await widget_send(page, "Hola")
    path = await taken_by_maria(gw)

    async def statuses(*expected: str) -> None:
        """Wait, on the event log, until the replies' statuses are `expected`."""
        cursor = (await gw.get("maria", "/api/v1/events?limit=1000"))["cursor"] or ""
        async with asyncio.timeout(10):
            while True:
                thread = await gw.get("maria", path)
                got = [m["status"] for m in thread["messages"] if m["direction"] == "out"]
                if got == list(expected):
                    return
                page = await gw.get("maria", f"/api/v1/events?wait=5&after={cursor}")
                cursor = page["cursor"] or cursor

    await gw.post("maria", path + "/messages", {"text": "Visto"})  # the chat is open: read
    await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["Visto"])
    await statuses("read")

    await page.get_by_role("button", name="Close chat").click()
    launcher = page.get_by_role("button", name="Chat with Acme")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    for text in ("Uno", "Dos"):
        await gw.post("maria", path + "/messages", {"text": text})
    await expect(page.locator(".gwc-badge")).to_have_text("2")
    await expect(launcher).to_have_attribute("aria-label", "Chat with Acme (2 unread)")
    await statuses("read", "delivered", "delivered")
    await launcher.click()
    await expect(page.locator(".gwc-badge")).to_have_text("")
    await statuses("read", "read", "read")
    await page.get_by_label("Message").press("Escape")  # closes, focus back on the launcher
    await expect(launcher).to_be_focused()


async def test_what_the_visitor_writes_in_one_tab_shows_in_the_other(
    gw: LiveGateway, new_page: NewPage
) -> None:
    first = await new_page()
    await host_page(first, gw)
    await widget_send(first, "Desde la primera")
    second = await new_page(context=first.context)  # same browser: the same visitor
    await host_page(second, gw)
    await expect(second.locator(".gwc-msg .gwc-text")).to_have_text(["Desde la primera"])
    await widget_send(second, "Desde la segunda")
    await expect(first.locator(".gwc-msg .gwc-text")).to_have_text(
        ["Desde la primera", "Desde la segunda"]
    )
    await expect(second.locator(".gwc-msg .gwc-text")).to_have_text(
        ["Desde la primera", "Desde la segunda"]
    )
    assert len(await gw.waiting()) == 1


async def test_the_widget_takes_the_focus_only_when_the_visitor_opens_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Opening it with the launcher moves focus into its input; a page load that opens it as
    it was left (or as `data-open` asks) leaves the focus where the page has it."""
    page = await new_page()
    await host_page(page, gw, attributes="")
    panel = page.get_by_role("region", name="Chat with Acme")
    message = page.get_by_label("Message")
    await expect(panel).to_be_hidden()
    await page.get_by_role("button", name="Chat with Acme").press("Enter")
    await expect(panel).to_be_visible()
    await expect(message).to_be_focused()

    await page.reload()  # remembered open: shown open, the focus left alone
    await expect(panel).to_be_visible()
    await expect(message).not_to_be_focused()
    assert await page.evaluate("document.activeElement === document.body")

    other = await new_page()
    await host_page(other, gw)  # data-open="true"
    await expect(other.get_by_role("region", name="Chat with Acme")).to_be_visible()
    await expect(other.get_by_label("Message")).not_to_be_focused()
