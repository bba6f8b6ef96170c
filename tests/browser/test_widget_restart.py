"""The web chat widget across a gateway restart, in headless Chromium.

A restart is what the README describes for a single node: the gateway shuts down (the visitor's
socket closes with 1001, going away), and a new gateway comes up on the same port and the same
store. The widget must keep its visitor (its token), resume with `after=` the last message it
showed (what was missed is replayed, once), send what the visitor typed meanwhile, and drop its
token only when the gateway says the token itself is invalid (401 `invalid_token`).

Every wait is a Playwright expectation or event with a deadline; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import NewPage, PageErrors, widget_send
from tests.browser.harness import CONFIG, LiveGateway, live_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

# What Chromium logs while the gateway is down (a refused fetch or socket, or one a test aborts).
GATEWAY_DOWN = ("net::ERR_CONNECTION_REFUSED", "net::ERR_FAILED")
# Backoff may have grown while the gateway was down: a reconnect may take a few seconds.
RECONNECTED = 30_000
SITE = 'title: "Chat with Acme"}'


def with_secret(secret: str) -> str:
    """The test config with a fixed signing secret for the web chat channel."""
    assert SITE in CONFIG
    return CONFIG.replace(SITE, f'title: "Chat with Acme", secret: "{secret}"}}')


class Restartable:
    """A gateway that can be shut down and started again on the same port."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._outer = stack
        self._stack: AsyncExitStack | None = None
        self.port = 0
        self.gw: LiveGateway | None = None

    async def start(self, db: Path, config: str = CONFIG) -> LiveGateway:
        assert self._stack is None
        self._stack = AsyncExitStack()
        self._outer.push_async_callback(self._stack.aclose)
        self.gw = await self._stack.enter_async_context(live_gateway(db, config, port=self.port))
        self.port = int(self.gw.url.rsplit(":", 1)[1])
        return self.gw

    async def stop(self) -> None:
        """The node's shutdown: visitor sockets close with 1001, then the port is free."""
        assert self._stack is not None
        stack, self._stack, self.gw = self._stack, None, None
        await stack.aclose()


@asynccontextmanager
async def restartable() -> AsyncIterator[Restartable]:
    async with AsyncExitStack() as stack:
        yield Restartable(stack)


async def stored(page: Page) -> dict[str, Any]:
    """What the widget keeps in localStorage (token, visitor id, unsent messages)."""
    data: dict[str, Any] = await page.evaluate(
        """() => {
            const key = Object.keys(localStorage).find(k => k.startsWith("gw-webchat:"));
            return key ? JSON.parse(localStorage.getItem(key)) : {};
        }"""
    )
    return data


async def open_demo(page: Page, gw: LiveGateway) -> None:
    await page.goto(gw.url + "/webchat/site/demo")
    await expect(page.locator(".gwc-status")).to_have_text("online")


async def go_down(page: Page, node: Restartable) -> None:
    """Shut the gateway down and wait until the widget has tried, and failed, to come back."""
    async with page.expect_event(
        "requestfailed", lambda r: r.url.endswith("/webchat/site/session"), timeout=10_000
    ):
        await node.stop()
        await expect(page.locator(".gwc-status")).to_have_text("reconnecting…")


async def test_widget_keeps_its_visitor_across_a_gateway_restart(
    tmp_path: Path, new_page: NewPage, page_errors: PageErrors
) -> None:
    page_errors.tolerate(*GATEWAY_DOWN)  # but never a 400: "Unexpected response code: 400"
    db = tmp_path / "restart.db"
    async with restartable() as node:
        first = await node.start(db)
        page = await new_page()
        await open_demo(page, first)
        await widget_send(page, "Hola antes del reinicio")
        before = await stored(page)
        assert before["visitor"].startswith("v_")

        await go_down(page, node)
        # Written while the gateway is down: kept, shown as being sent.
        await page.get_by_label("Message").fill("¿Siguen ahí?")
        await page.get_by_role("button", name="Send").click()
        await expect(page.locator(".gwc-unsent .gwc-text")).to_have_text("¿Siguen ahí?")
        # Keep the widget away a while longer, so the agent answers before it is back.
        await page.route("**/webchat/site/session", lambda route: route.abort())

        gw = await node.start(db)
        (conversation,) = await gw.waiting()
        path = f"/api/v1/conversations/{conversation['id']}"
        status, _ = await gw.post("maria", path + "/accept")
        assert status == 200
        await gw.post("maria", path + "/messages", {"text": "Respuesta mientras no estabas"})
        await gw.settle()
        await expect(page.locator(".gwc-status")).to_have_text("reconnecting…")

        await page.unroute("**/webchat/site/session")
        # Back: same visitor, the missed reply replayed once, the kept message sent once.
        await expect(page.locator(".gwc-status")).to_have_text("online", timeout=RECONNECTED)
        await expect(page.locator(".gwc-unsent")).to_have_count(0)
        messages = page.locator(".gwc-msg .gwc-text")
        await expect(messages).to_have_count(3)
        assert sorted(await messages.all_text_contents()) == sorted(
            ["Hola antes del reinicio", "Respuesta mientras no estabas", "¿Siguen ahí?"]
        )
        after = await stored(page)
        assert after["visitor"] == before["visitor"]
        assert after["pending"] == {}

        # A reply sent now arrives live.
        await gw.post("maria", path + "/messages", {"text": "Respuesta en vivo"})
        await expect(page.locator(".gwc-out")).to_have_count(2)
        await expect(page.locator(".gwc-out .gwc-text").last).to_have_text("Respuesta en vivo")
        await expect(page.locator(".gwc-status")).to_have_text("online")

        # One conversation holds all of it, nothing twice; a reload shows it in order.
        history = [
            "Hola antes del reinicio",
            "Respuesta mientras no estabas",
            "¿Siguen ahí?",
            "Respuesta en vivo",
        ]
        thread = await gw.get("maria", path)
        assert [m["text"] for m in thread["messages"]] == history
        assert thread["contact"]["address"] == before["visitor"]
        active = await gw.get("maria", "/api/v1/inbox?state=active")
        assert [c["id"] for c in active["conversations"]] == [conversation["id"]]
        await page.reload()
        await expect(page.locator(".gwc-status")).to_have_text("online")
        await expect(page.locator(".gwc-msg .gwc-text")).to_have_text(history)
        assert (await stored(page))["visitor"] == before["visitor"]
        await page.context.close()


async def test_an_invalid_token_starts_a_fresh_session_with_nothing_of_the_old_one(
    tmp_path: Path, new_page: NewPage, page_errors: PageErrors
) -> None:
    """The gateway comes back with another signing secret: the kept token is refused (401
    `invalid_token`), so the widget starts a new visitor, and nothing of the old visitor (its
    last message id above all, which the new visitor's socket may not ask for) is used again."""
    page_errors.tolerate(*GATEWAY_DOWN)
    db = tmp_path / "rotated.db"
    async with restartable() as node:
        first = await node.start(db, with_secret("the-old-secret-of-at-least-32-characters"))
        page = await new_page()
        await open_demo(page, first)
        await widget_send(page, "Hola con el token viejo")
        before = await stored(page)

        await go_down(page, node)
        gw = await node.start(db, with_secret("a-new-secret-of-at-least-32-characters"))
        await expect(page.locator(".gwc-status")).to_have_text("online", timeout=RECONNECTED)
        after = await stored(page)
        assert after["visitor"] != before["visitor"]
        assert after["token"] != before["token"]
        # The old visitor's conversation is not shown to the new one.
        await expect(page.locator(".gwc-msg")).to_have_count(0)

        await widget_send(page, "Hola de nuevo")
        waiting = await gw.waiting()
        (conversation,) = [c for c in waiting if c["contact"]["address"] == after["visitor"]]
        path = f"/api/v1/conversations/{conversation['id']}"
        await gw.post("maria", path + "/accept")
        await gw.post("maria", path + "/messages", {"text": "Bienvenido otra vez"})
        await expect(page.locator(".gwc-out .gwc-text")).to_have_text(["Bienvenido otra vez"])
        await page.reload()
        await expect(page.locator(".gwc-status")).to_have_text("online")
        await expect(page.locator(".gwc-msg .gwc-text")).to_have_text(
            ["Hola de nuevo", "Bienvenido otra vez"]
        )
        await page.context.close()


async def test_a_refused_after_falls_back_to_the_whole_history(
    tmp_path: Path, new_page: NewPage, page_errors: PageErrors
) -> None:
    """The gateway comes back on an empty store with the same secret (a restored backup, say):
    the token is still valid but the last message id the widget saw is unknown there, so the
    socket is refused with 400. The widget asks for `after=0` next instead of looping."""
    page_errors.tolerate(*GATEWAY_DOWN, "Unexpected response code: 400")
    config = with_secret("a-kept-secret-of-at-least-32-characters")
    async with restartable() as node:
        first = await node.start(tmp_path / "before.db", config)
        page = await new_page()
        await open_demo(page, first)
        await widget_send(page, "Hola")
        before = await stored(page)

        await go_down(page, node)
        # The first socket resumes after the last message shown; once that is refused, the
        # next one asks for the whole history and stays open.
        async with page.expect_event(
            "websocket", lambda ws: "after=m_" in ws.url, timeout=RECONNECTED
        ):
            gw = await node.start(tmp_path / "after.db", config)
        await expect(page.locator(".gwc-status")).to_have_text("online", timeout=RECONNECTED)
        assert (await stored(page))["visitor"] == before["visitor"]
        await widget_send(page, "¿Hay alguien?")
        (conversation,) = await gw.waiting()
        assert conversation["contact"]["address"] == before["visitor"]
        await page.context.close()


async def test_the_inbox_page_comes_back_after_its_gateway_lost_the_stream_cursor(
    tmp_path: Path, new_page: NewPage, page_errors: PageErrors
) -> None:
    """The gateway comes back on a fresh store (as when moving to a new Redis): the page's
    cursor means nothing there and resuming from it is refused. The page must start from
    now, not retry that cursor forever (offline for good: its open page is the presence)."""
    from tests.browser.conftest import item, sign_in

    page_errors.tolerate(*GATEWAY_DOWN, "Unexpected response code: 400", "400 (Bad Request)")
    async with restartable() as node:
        first = await node.start(tmp_path / "old.db")
        agent = await new_page()
        await sign_in(agent, first)
        await first.visitor("Antes", "hola")
        await expect(item(agent, "Antes")).to_be_visible()  # the page holds a cursor now
        await node.stop()
        await expect(agent.locator("#conn")).to_have_text("reconnecting…")

        gw = await node.start(tmp_path / "fresh.db")
        await expect(agent.locator("#conn")).to_have_text("live", timeout=RECONNECTED)
        await gw.visitor("Después", "hola otra vez")
        await expect(item(agent, "Después")).to_be_visible()
        await expect(item(agent, "Antes")).to_have_count(0)  # the lists were reloaded
        presence = await gw.get("maria", "/api/v1/agents")
        assert [a["online"] for a in presence["agents"] if a["id"] == "maria"] == [True]
        await agent.context.close()
