"""Fixtures for the browser tests: a live gateway, headless Chromium, pages that record errors.

The tests run in the session's event loop (`pytestmark` in each module) so that one Chromium
serves them all; each test still starts its own gateway on a fresh database.

Every page records uncaught exceptions and console errors (a Content-Security-Policy violation
is reported there), and `clean` asserts there were none, so a page that "works" while throwing
or being blocked by its own policy still fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Playwright,
    ViewportSize,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.browser.harness import TOKENS, LiveGateway, launch, live_gateway, require_chromium

expect.set_options(timeout=10_000)

PHONE: ViewportSize = {"width": 360, "height": 740}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest_asyncio.fixture(loop_scope="session")
async def gw(tmp_path: Path) -> AsyncIterator[LiveGateway]:
    """A gateway whose clock starts an hour ago, so what it stamps reads as past on the page."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with live_gateway(tmp_path / "gw.db", start=start) as gateway:
        yield gateway


class Chromium:
    """One browser for the whole run, launched on first use.

    Starting Playwright's driver and Chromium costs about a second, so every test shares one
    browser (each test still gets fresh contexts: separate storage, cookies, sockets). It is
    launched from inside the first test that opens a page, so a missing /usr/bin/chromium is
    a failing test with the way to fix it, never a skip.
    """

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    async def get(self) -> Browser:
        if self._browser is None:
            require_chromium()
            self._playwright = await async_playwright().start()
            self._browser = await launch(self._playwright)
        return self._browser

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Chromium]:
    holder = Chromium()
    try:
        yield holder
    finally:
        await holder.close()


# Chromium logs every 4xx answer to fetch() as a console error; the pages handle those (a lost
# accept race is a 409 by design), so only script errors and policy violations count.
NETWORK_LOG = "Failed to load resource: the server responded with a status of 4"


class PageErrors:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.tolerated: tuple[str, ...] = ()

    def tolerate(self, *fragments: str) -> None:
        """Also let console errors containing one of `fragments` pass: a test that takes the
        gateway down expects the browser to report the refused connections meanwhile."""
        self.tolerated += fragments

    def _console(self, page: Page, msg: ConsoleMessage) -> None:
        if msg.type != "error" or msg.text.startswith(NETWORK_LOG):
            return
        if not any(fragment in msg.text for fragment in self.tolerated):
            self.errors.append(f"{page.url}: {msg.text}")

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("console", lambda msg: self._console(page, msg))
        return page


NewPage = Callable[..., Awaitable[Page]]


@pytest_asyncio.fixture(loop_scope="session")
async def page_errors() -> PageErrors:
    """What the test's pages logged; `new_page` asserts at the end that it is empty."""
    return PageErrors()


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(
    chromium: Chromium, gw: LiveGateway, page_errors: PageErrors
) -> AsyncIterator[NewPage]:
    """Open pages; each fresh browser context has its own storage: another person's browser.

    It depends on `gw` so its contexts (and their sockets) close before the gateway stops.
    """
    contexts: list[BrowserContext] = []
    errors = page_errors

    async def factory(
        viewport: ViewportSize | None = None, context: BrowserContext | None = None
    ) -> Page:
        """A page in a new context, or another page (tab) of `context`."""
        if context is None:
            browser = await chromium.get()
            context = await browser.new_context(viewport=viewport or DESKTOP)
            contexts.append(context)
        return errors.watch(await context.new_page())

    yield factory
    for context in contexts:
        await context.close()
    assert errors.errors == [], "the pages logged errors:\n" + "\n".join(errors.errors)


async def sign_in(page: Page, gw: LiveGateway, agent: str = "maria", query: str = "") -> None:
    """Open /inbox (with `query`: the page's own options), sign in with the agent's token and
    wait for the live stream."""
    await page.goto(gw.url + "/inbox" + query)
    await page.get_by_label("Agent token").fill(TOKENS[agent])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#conn")).to_have_text("live")


async def open_widget(page: Page, gw: LiveGateway) -> None:
    """Open the demo page; the widget starts opened there and goes online."""
    await page.goto(gw.url + "/webchat/site/demo")
    await expect(page.locator(".gwc-status")).to_have_text("online")


async def widget_send(page: Page, text: str) -> None:
    await page.get_by_label("Message").fill(text)
    await page.get_by_role("button", name="Send").click()
    # Acknowledged: stored by the gateway, no longer shown as being sent.
    await expect(page.locator(".gwc-msg.gwc-in:not(.gwc-unsent) .gwc-text").last).to_have_text(text)


async def taken_by_maria(gw: LiveGateway) -> str:
    """Maria accepts the one waiting conversation; its API path."""
    (conversation,) = await gw.waiting()
    path = f"/api/v1/conversations/{conversation['id']}"
    status, _ = await gw.post("maria", path + "/accept")
    assert status == 200
    return path


def tab(page: Page, state: str) -> Awaitable[None]:
    return page.locator(f"[role=tab][data-state={state}]").click()


def item(page: Page, text: str) -> Locator:
    """The list entry of a conversation, found by any text it shows."""
    return page.locator("#list li", has_text=text)


class SilentNetwork:
    """Pass a page's sockets through to the gateway until `silence()`: from then on the first
    socket stays open but carries nothing either way (a proxy that lost it), while any socket
    the page opens afterwards works. `sockets` lists them in order."""

    def __init__(self) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.silent = False

    def silence(self) -> None:
        self.silent = True

    def route(self, socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()
        first = not self.sockets
        self.sockets.append(socket)
        socket.on_message(lambda f: None if first and self.silent else server.send(f))
        server.on_message(lambda f: None if first and self.silent else socket.send(f))


def luminance(color: str) -> float:
    """The relative luminance (WCAG 2.1) of a computed `rgb(r, g, b)` colour."""
    channels = [int(c) / 255 for c in color[color.index("(") + 1 : -1].split(",")[:3]]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(one: str, other: str) -> float:
    """The contrast ratio (WCAG 2.1) of two computed opaque colours."""
    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


async def style(locator: Locator, prop: str) -> str:
    """A computed style of the element, e.g. `style(input, "outline-style")`."""
    value: str = await locator.evaluate("(e, p) => getComputedStyle(e).getPropertyValue(p)", prop)
    return value


async def opacity(locator: Locator) -> float:
    """The element's effective opacity: its own times every ancestor's (across the shadow root)."""
    value: float = await locator.evaluate(
        """e => {
            let o = 1;
            for (let n = e; n; n = n.parentElement || (n.getRootNode() || {}).host) {
                o *= Number(getComputedStyle(n).opacity);
            }
            return o;
        }"""
    )
    return value
