"""The agent inbox page (`/inbox`) in headless Chromium against a live gateway.

Each test is a flow of issue 7 as a person does it: a visitor writes in the widget of the demo
page, an agent in another browser context signs in, previews, accepts, replies; states change
live through `/api/v1/stream`. The pages are only ever waited on for what they show.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.async_api import Dialog, Locator, Page, Route, WebSocketRoute, expect

from plugins.email.parse import parse_email
from tests.browser.conftest import (
    PHONE,
    NewPage,
    PageErrors,
    SilentNetwork,
    item,
    open_widget,
    sign_in,
    tab,
    widget_send,
)
from tests.browser.harness import TOKENS, LiveGateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

PREVIEW = re.compile("^Preview the conversation")
OPEN = re.compile("^Open the conversation")
ACCEPT = re.compile("^Accept the conversation")
XSS = "<img src=x onerror=window.__xss=1>"
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "email"


def count(page: Page, state: str) -> Locator:
    """The count shown on a state's tab."""
    return page.locator(f"[role=tab][data-state={state}] .count")


STORED_REPLY = ".msg-out:not(.msg-sending)"
"""Replies the gateway took (a reply still going out shows as `.msg-sending` meanwhile)."""
STORED_REPLY_TEXT = STORED_REPLY + " .msg-text"


async def accepted(
    gw: LiveGateway, new_page: NewPage, name: str, text: str
) -> tuple[Page, Locator]:
    """A visitor `name` writes `text`; Maria signs in and accepts it: her page and its reply
    box, focused (ready to answer)."""
    await gw.visitor(name, text)
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, name).get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await expect(reply).to_be_focused()
    return agent, reply


async def test_headers_of_the_page_and_its_files(gw: LiveGateway) -> None:
    async with gw.http.get(gw.url + "/inbox") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "connect-src 'self' ws: wss:" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        etag = resp.headers["ETag"]
    async with gw.http.get(gw.url + "/inbox", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    for name, kind in [("inbox.js", "text/javascript"), ("inbox.css", "text/css")]:
        async with gw.http.get(f"{gw.url}/inbox/static/{name}") as resp:
            assert resp.status == 200 and resp.content_type == kind
            assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]
    for bad in ["nope.js", "inbox.html", "..%2Fapi%2Finbox.py", ".hidden.js"]:
        async with gw.http.get(f"{gw.url}/inbox/static/{bad}") as resp:
            assert resp.status == 404, bad


async def test_visitor_writes_agent_previews_accepts_replies_pends_resumes(
    gw: LiveGateway, new_page: NewPage
) -> None:
    visitor = await new_page()
    await open_widget(visitor, gw)
    await widget_send(visitor, "Hola, necesito ayuda")

    agent = await new_page()
    await sign_in(agent, gw)
    await expect(count(agent, "waiting")).to_have_text("1")
    entry = item(agent, "Hola, necesito ayuda")
    await expect(entry.get_by_role("img", name="Web chat")).to_be_visible()

    # Preview: the messages are shown, nothing is accepted.
    await entry.get_by_role("button", name=PREVIEW).click()
    await expect(agent.locator(".thread .msg-text")).to_have_text(["Hola, necesito ayuda"])
    await expect(agent.locator(".banner")).to_contain_text("not accepted yet")
    reply = agent.get_by_label("Reply", exact=True)
    await expect(reply).to_be_disabled()
    (waiting,) = await gw.waiting()
    assert waiting["state"] == "waiting" and waiting["agent"] is None
    conv_path = f"/api/v1/conversations/{waiting['id']}"

    # The green check accepts it; the page moves to the active tab with the thread open.
    await entry.get_by_role("button", name=ACCEPT).click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("active")
    await expect(agent.locator("[role=tab][data-state=active]")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(count(agent, "active")).to_have_text("1")
    await expect(count(agent, "waiting")).to_have_text("0")
    assert (await gw.get("maria", conv_path))["agent"] == "maria"

    # Typing both ways, then the reply reaches the visitor, whose open chat reads it: the
    # read receipt turns the ticks blue, live.
    await visitor.get_by_label("Message").fill("un momento…")
    await expect(agent.locator(".typing")).to_contain_text("is typing")
    await visitor.get_by_label("Message").fill("")
    await expect(reply).to_be_enabled()
    await reply.fill("¿En qué te ayudo?")
    await expect(visitor.locator(".gwc-typing")).to_have_text("Agent is typing…")
    await agent.get_by_role("button", name="Send reply").click()
    await expect(visitor.locator(".gwc-out .gwc-text")).to_have_text(["¿En qué te ayudo?"])
    await expect(reply).to_have_value("")
    sent = agent.locator(STORED_REPLY).last
    await expect(sent.locator(".tick")).to_have_attribute("data-status", "read")
    read = sent.locator(".tick-read")
    await expect(read).to_have_text("✓✓")
    assert await read.evaluate("e => getComputedStyle(e).color") == "rgb(9, 105, 218)"
    # ...and says so in a word, for whoever cannot tell the blue from delivered's grey.
    assert await read.evaluate("e => getComputedStyle(e, '::after').content") == '" read"'

    # The visitor answers; it arrives without a reload.
    await widget_send(visitor, "Mi pedido es el 4411")
    await expect(agent.locator(".msg-in .msg-text").last).to_have_text("Mi pedido es el 4411")

    # Pending, then resume.
    await agent.get_by_role("button", name="Set this conversation pending").click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("pending")
    await expect(reply).to_be_disabled()
    await expect(agent.locator(".composer-why")).to_have_text("Resume the conversation to reply.")
    await expect(agent.locator(".banner")).to_contain_text("Pending (set aside")
    await expect(count(agent, "pending")).to_have_text("1")
    await agent.get_by_role("button", name="Resume this conversation").click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("active")
    await expect(reply).to_be_enabled()
    assert (await gw.get("maria", conv_path))["state"] == "active"

    # Close: the visitor is told.
    await agent.get_by_role("button", name="Close this conversation").click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("closed")
    await expect(visitor.locator(".gwc-note .gwc-text")).to_have_text(
        "The agent closed this conversation."
    )


async def test_inactive_conversations_are_grey_with_their_reason(
    gw: LiveGateway, new_page: NewPage
) -> None:
    # A web chat visitor writes while no agent is online: after no_agent_timeout it is inactive.
    await gw.visitor("Lucía", "¿Hacen envíos a Montevideo?")
    gw.clock.advance(timedelta(minutes=6))
    await gw.runtime.scheduler.run_once()

    agent = await new_page()
    await sign_in(agent, gw)
    await expect(count(agent, "inactive")).to_have_text("1")
    # A WhatsApp customer writes while the agent watches; nobody answers within 24 h.
    await gw.whatsapp("+5511999990000", "Bruno Costa", "Oi, tudo bem?")
    bruno = item(agent, "Bruno Costa")
    await expect(bruno.get_by_role("img", name="WhatsApp")).to_be_visible()
    gw.clock.advance(timedelta(hours=24, minutes=1))
    await gw.runtime.scheduler.run_once()
    await expect(bruno).to_have_count(0)  # it left the waiting list live
    await expect(count(agent, "inactive")).to_have_text("2")

    await tab(agent, "inactive")
    await expect(bruno).to_contain_text("Inactive: window expired")
    await expect(bruno).to_contain_text("+5511999990000")
    lucia = item(agent, "Lucía")
    await expect(lucia).to_contain_text("Inactive: no agent available")
    for entry in (bruno, lucia):
        await expect(entry).to_have_class(re.compile(r"\bis-inactive\b"))
        assert await entry.evaluate("e => getComputedStyle(e).backgroundColor") == (
            "rgb(240, 240, 240)"
        )
    await expect(bruno.get_by_role("button", name=ACCEPT)).to_have_count(0)

    # Opened, it is read-only; the contact's address is there for look-up.
    await lucia.get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".banner")).to_contain_text("no agent available")
    await expect(agent.locator(".actions")).to_be_hidden()
    await expect(agent.get_by_label("Reply", exact=True)).to_be_hidden()
    await expect(agent.locator(".composer-why")).to_contain_text("can no longer be answered")
    await expect(agent.get_by_role("form", name="Send a template")).to_be_hidden()
    # An expired WhatsApp window can still be re-engaged with an approved template.
    await bruno.get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".banner")).to_contain_text("window expired")
    await expect(agent.locator(".banner")).to_contain_text("+5511999990000")
    await expect(agent.locator(".actions")).to_be_hidden()
    await expect(agent.locator(".composer-why")).to_contain_text("approved template")
    sid = "HX" + "feedface" * 4  # a Twilio Content SID: HX and 32 hex digits
    await agent.get_by_label("Template name").fill(sid)
    await agent.get_by_role("button", name="Send template").click()
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text([f"Template {sid} (es)"])


async def test_customer_markup_is_shown_as_text(gw: LiveGateway, new_page: NewPage) -> None:
    visitor = await new_page()
    await open_widget(visitor, gw)
    await widget_send(visitor, XSS)
    name = '<img src=x onerror="window.__xss=2">Eve'
    await gw.visitor(name, "hi")
    subject = '<img src=x onerror="window.__xss=3">Invoice'
    await gw.email("mallory@example.com", "<script>window.__xss=4</script>", subject, "<b>x</b>")

    agent = await new_page()
    await sign_in(agent, gw)
    await expect(item(agent, XSS)).to_be_visible()
    await expect(agent.get_by_text(name, exact=True)).to_be_visible()
    await expect(agent.get_by_text(subject, exact=True)).to_be_visible()
    await expect(agent.get_by_text("<script>window.__xss=4</script>", exact=True)).to_be_visible()

    await item(agent, XSS).get_by_role("button", name=ACCEPT).click()
    await expect(agent.locator(".thread .msg-text")).to_have_text([XSS])
    await agent.get_by_label("Reply", exact=True).fill(XSS)
    await agent.get_by_role("button", name="Send reply").click()
    await expect(visitor.locator(".gwc-out .gwc-text")).to_have_text([XSS])

    assert await agent.locator("#app img, #app script, #app b").count() == 0
    assert await visitor.locator(".gwc-panel img").count() == 0
    assert await agent.evaluate("typeof window.__xss") == "undefined"
    assert await visitor.evaluate("typeof window.__xss") == "undefined"


async def test_a_lost_accept_race_says_taken_by_another_agent(
    gw: LiveGateway, new_page: NewPage
) -> None:
    await gw.visitor("Rosa", "Hola")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Rosa").get_by_role("button", name=PREVIEW).click()
    (conversation,) = await gw.waiting()

    async def jose_gets_there_first(route: Route) -> None:
        """Hold Maria's accept until José's has won, over the same real HTTP API."""
        status, _ = await gw.post("jose", f"/api/v1/conversations/{conversation['id']}/accept")
        assert status == 200
        await route.continue_()

    await agent.route("**/accept", jose_gets_there_first)
    await agent.get_by_role("button", name="Accept this conversation").click()
    await expect(agent.locator(".notice")).to_have_text("Taken by another agent.")
    await expect(agent.locator(".banner")).to_have_text("Attended by jose.")
    await expect(agent.get_by_role("button", name="Accept this conversation")).to_have_count(0)
    await expect(item(agent, "Rosa")).to_have_count(0)
    await expect(agent.locator("#conn")).to_have_text("live")  # still the inbox, no error page


async def test_transfer_to_an_agent_and_to_a_queue(gw: LiveGateway, new_page: NewPage) -> None:
    await gw.visitor("Tomás", "Necesito una factura")
    (conversation,) = await gw.waiting()
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Tomás").get_by_role("button", name=ACCEPT).click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("active")

    await agent.get_by_role("button", name="Transfer this conversation").click()
    # Colleagues on her queues, with presence and load; not herself.
    picker = agent.get_by_label("Transfer to an agent")
    await expect(picker.locator("option")).to_have_count(3)  # the hint, ana, jose
    await expect(picker.locator("option[value=jose]")).to_have_text(
        re.compile(r"^José .*\(offline, 0/\d+ active\)$")
    )
    await expect(picker.locator("option[value=maria]")).to_have_count(0)
    await picker.select_option("jose")
    await agent.get_by_label("Transfer to a queue").select_option("sales")  # both: him, there
    await agent.get_by_role("button", name="Confirm the transfer").click()
    await expect(agent.locator(".banner")).to_have_text("Attended by jose.")
    moved = await gw.get("jose", f"/api/v1/conversations/{conversation['id']}")
    assert (moved["agent"], moved["queue"]) == ("jose", "sales")

    # José hands it to the sales queue: it is waiting again, live on Maria's page.
    await gw.post(
        "jose", f"/api/v1/conversations/{conversation['id']}/transfer", {"queue": "sales"}
    )
    await expect(agent.locator(".conv-head .badge")).to_have_text("waiting")
    await expect(agent.locator(".conv-sub").first).to_contain_text("queue sales")
    await tab(agent, "waiting")
    await expect(item(agent, "Tomás")).to_be_visible()


async def test_an_agent_hands_a_conversation_to_a_queue_she_is_not_on(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: the transfer form offered only the agent's own queues, so "this is for
    Sales" could not be done from the page (the API takes it). Every queue is offered, hers
    first."""
    await gw.visitor("Paco", "Quiero comprar")
    (conversation,) = await gw.waiting()
    ana = await new_page()
    await sign_in(ana, gw, "ana")  # support only
    await item(ana, "Paco").get_by_role("button", name=ACCEPT).click()
    await expect(ana.locator(".conv-head .badge")).to_have_text("active")
    await ana.get_by_role("button", name="Transfer this conversation").click()
    queues = ana.get_by_label("Transfer to a queue")
    await expect(queues.locator("option")).to_have_text(["a queue…", "support", "sales"])
    await queues.select_option("sales")
    await ana.get_by_role("button", name="Confirm the transfer").click()
    await expect(ana.locator(".conv-head .badge")).to_have_text("moved")  # off her queues
    moved = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert (moved["state"], moved["queue"], moved["agent"]) == ("waiting", "sales", None)


async def test_a_conversation_transferred_out_of_my_queues_leaves_my_page_live(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Ana is on support only. Maria moves a support conversation to sales: Ana's page must
    drop it at once, not keep showing it where it no longer is until she switches tabs."""
    await gw.visitor("Ramón", "Una consulta")
    (conversation,) = await gw.waiting()
    ana = await new_page()
    await sign_in(ana, gw, "ana")
    await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/accept")
    await tab(ana, "active")
    await expect(item(ana, "Ramón")).to_be_visible()
    await expect(count(ana, "active")).to_have_text("1")

    await gw.post(
        "maria", f"/api/v1/conversations/{conversation['id']}/transfer", {"queue": "sales"}
    )
    await expect(item(ana, "Ramón")).to_have_count(0)
    await expect(count(ana, "active")).to_have_text("0")
    await tab(ana, "waiting")
    await expect(item(ana, "Ramón")).to_have_count(0)


async def test_a_long_conversation_opens_at_its_newest_messages(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """1,005 messages: the thread shows the newest thousand, and "Show earlier messages"
    brings the rest, oldest first, without losing the agent's place."""
    for n in range(1005):
        await gw.whatsapp("+5511988887777", "Larga Conversa", f"mensaje {n}")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Larga Conversa").get_by_role("button", name=PREVIEW).click()
    texts = agent.locator(".thread .msg-text")
    await expect(texts).to_have_count(1000)
    await expect(texts.first).to_have_text("mensaje 5")
    await expect(texts.last).to_have_text("mensaje 1004")
    await agent.get_by_role("button", name="Show earlier messages").click()
    await expect(texts).to_have_count(1005)
    await expect(texts.first).to_have_text("mensaje 0")
    await expect(agent.get_by_role("button", name="Show earlier messages")).to_have_count(0)


async def test_whatsapp_window_closed_offers_a_template(gw: LiveGateway, new_page: NewPage) -> None:
    await gw.whatsapp("+5511988887777", "Paulo", "Preciso de ajuda")
    (conversation,) = await gw.waiting()
    status, _ = await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/accept")
    assert status == 200
    # A day passes; the scheduler has not run yet, so it is still active but cannot take text.
    gw.clock.advance(timedelta(hours=24, minutes=5))

    agent = await new_page()
    await sign_in(agent, gw)
    await tab(agent, "active")
    await item(agent, "Paulo").get_by_role("button", name=OPEN).click()
    await expect(agent.get_by_label("Reply", exact=True)).to_be_disabled()
    # In the channel's terms (its reply window need not be 24 hours), with the times.
    why = agent.locator(".composer-why")
    await expect(why).to_contain_text("WhatsApp's reply window closed at ")
    await expect(why).to_contain_text("(the customer last wrote ")
    await agent.get_by_label("Template name").fill("HX0123456789abcdef0123456789abcdef")
    await agent.get_by_label("Template language").fill("pt_BR")
    await agent.get_by_label("Template parameters, one per line").fill("Paulo\n4411")
    await agent.get_by_role("button", name="Send template").click()
    sent = agent.locator(STORED_REPLY).last
    await expect(sent.locator(".msg-text")).to_have_text(
        "Template HX0123456789abcdef0123456789abcdef (pt_BR): Paulo, 4411"
    )
    # Twilio cannot be reached from a test: the send fails, and the page says so.
    await expect(sent.locator(".tick")).to_have_attribute("data-status", "failed")
    await expect(sent.locator(".tick")).to_have_text("✗")
    await expect(sent.locator(".msg-error")).to_contain_text("Not delivered")


async def test_close_stands_apart_from_the_other_actions_on_a_phone(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: on a phone, Close (which cannot be undone) was one tap next to Transfer."""
    await gw.visitor("Dedo", "hola")
    agent = await new_page(PHONE)
    await sign_in(agent, gw)
    await item(agent, "Dedo").get_by_role("button", name=ACCEPT).click()
    close = await agent.get_by_role("button", name="Close this conversation").bounding_box()
    transfer = await agent.get_by_role("button", name="Transfer this conversation").bounding_box()
    assert close is not None and transfer is not None
    same_row = abs(close["y"] - transfer["y"]) < 1
    gap = close["x"] - (transfer["x"] + transfer["width"])
    assert not same_row or gap >= 40, (close, transfer)


async def test_a_reply_that_was_not_delivered_can_be_sent_again(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: a failed reply (✗) offered no way to try again but typing it anew. "Send
    again" sends the same text as a new reply."""
    await gw.whatsapp("+5511977776666", "Rita", "Oi")
    (conversation,) = await gw.waiting()
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Rita").get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await reply.fill("Seu pedido saiu hoje")
    await reply.press("Enter")
    failed = agent.locator(STORED_REPLY).first
    # Twilio cannot be reached from a test: the send fails, and the page says so.
    await expect(failed.locator(".tick")).to_have_attribute("data-status", "failed")
    await failed.get_by_role("button", name="Send this reply again").click()
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(
        ["Seu pedido saiu hoje", "Seu pedido saiu hoje"]
    )
    await expect(failed.get_by_role("button", name="Send this reply again")).to_be_disabled()
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    outgoing = [m for m in thread["messages"] if m["direction"] == "out"]
    assert [m["text"] for m in outgoing] == ["Seu pedido saiu hoje"] * 2
    assert outgoing[0]["id"] != outgoing[1]["id"]


async def no_horizontal_scroll(page: Page) -> None:
    scroll, inner = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{page.url} scrolls sideways: {scroll} > {inner}"


async def test_phone_width_360_has_no_horizontal_scroll(gw: LiveGateway, new_page: NewPage) -> None:
    await gw.visitor("Ana Maria de Souza Albuquerque Figueiredo", "Uma mensagem longa " * 20)
    await gw.email(
        "someone.with.a.rather.long.address@support.subdomain.example.com",
        None,
        "A subject that goes on and on " * 4,
        "Hello",
    )
    phone = await new_page(PHONE)
    await sign_in(phone, gw)
    await expect(phone.locator("#list li")).to_have_count(2)
    await no_horizontal_scroll(phone)

    await item(phone, "Ana Maria").get_by_role("button", name=PREVIEW).click()
    await expect(phone.locator(".thread")).to_be_visible()
    await expect(phone.locator("#list")).to_be_hidden()
    await no_horizontal_scroll(phone)
    await phone.get_by_role("button", name="Back to the list").click()
    await expect(phone.locator("#list")).to_be_visible()

    visitor = await new_page(PHONE)
    await open_widget(visitor, gw)
    await widget_send(visitor, "Olá " * 60)
    await no_horizontal_scroll(visitor)


async def test_sign_in_refuses_a_bad_token_and_signs_out(
    gw: LiveGateway, new_page: NewPage
) -> None:
    page = await new_page()
    await page.goto(gw.url + "/inbox")
    await page.get_by_label("Agent token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    await sign_in(page, gw)
    await expect(page.locator("#me")).to_have_text("Maria Malheiro")
    await page.reload()  # the token is kept for the tab's session
    await expect(page.locator("#conn")).to_have_text("live")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Agent token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def online(gw: LiveGateway, agent: str) -> None:
    """Wait until the gateway recorded the agent online (it does so just after the upgrade)."""
    presence = gw.runtime.presence
    async with asyncio.timeout(10), presence.changed:
        while True:
            state = (await gw.runtime.store.presence()).get(agent)
            if state is not None and state.online:
                return
            await presence.changed.wait()


async def test_the_stream_reconnects_by_itself_from_the_last_cursor(
    gw: LiveGateway, new_page: NewPage
) -> None:
    sockets: list[WebSocketRoute] = []
    cursors: list[str] = []  # every cursor the page was handed, in order
    got_dos = asyncio.Event()
    gap = asyncio.Event()

    async def route(socket: WebSocketRoute) -> None:
        """Pass the stream through, noting cursors; a reconnection waits for the test's change."""
        sockets.append(socket)
        if len(sockets) > 1:
            await gap.wait()
        server = socket.connect_to_server()

        def forward(frame: str | bytes) -> None:
            socket.send(frame)
            event = json.loads(frame)
            if event.get("cursor") and event["type"] != "hello":
                cursors.append(event["cursor"])
            if event["type"] == "message.received" and event["message"]["text"] == "dos":
                got_dos.set()

        server.on_message(forward)

    agent = await new_page()
    await agent.route_web_socket(re.compile(r"/api/v1/stream"), route)
    await gw.visitor("Primero", "uno")
    await sign_in(agent, gw)
    await expect(item(agent, "Primero")).to_be_visible()
    await online(gw, "maria")  # the open page is the agent's presence
    await gw.visitor("Segundo", "dos")
    await expect(item(agent, "Segundo")).to_be_visible()
    await got_dos.wait()

    last_seen = cursors[-1]
    await sockets[0].close()  # the connection drops
    await expect(agent.locator("#conn")).to_have_text("reconnecting…")
    await gw.visitor("Tercero", "tres")  # while the page is disconnected
    gap.set()
    await expect(agent.locator("#conn")).to_have_text("live")
    await expect(item(agent, "Tercero")).to_be_visible()
    assert f"after={last_seen}" in sockets[1].url  # resumed where it was, replay first
    assert "access_token=" in sockets[1].url


async def test_waiting_is_listed_oldest_first_with_the_time_waited(
    gw: LiveGateway, new_page: NewPage
) -> None:
    await gw.visitor("Alba", "primera")  # the gateway's clock started an hour ago
    gw.clock.advance(timedelta(minutes=20))
    await gw.whatsapp("+5511911112222", "Beto", "segunda")
    gw.clock.advance(timedelta(minutes=15))
    await gw.email("carmen@example.com", "Carmen", "Tercera", "tercera")
    agent = await new_page()
    await sign_in(agent, gw)
    names = agent.locator("#list .conv-name")
    await expect(names).to_have_text(["Alba", "Beto", "Carmen"])
    await expect(agent.locator("#list .since")).to_have_text(
        ["waiting 1 h", "waiting 40 min", "waiting 25 min"]
    )
    await expect(item(agent, "Carmen").get_by_role("img", name="Email")).to_be_visible()
    await gw.visitor("Dora", "cuarta")  # arrives live, at the end
    await expect(names).to_have_text(["Alba", "Beto", "Carmen", "Dora"])


async def test_queue_filter_and_only_mine(gw: LiveGateway, new_page: NewPage) -> None:
    await gw.visitor("Soporte", "necesito ayuda")
    await gw.visitor("Ventas", "¿qué precio tiene?")  # routed to sales
    await gw.visitor("Otro", "hola")
    for who, name in (("maria", "Soporte"), ("jose", "Otro")):
        (conv,) = [c for c in await gw.waiting() if c["contact"]["display_name"] == name]
        assert (await gw.post(who, f"/api/v1/conversations/{conv['id']}/accept"))[0] == 200

    agent = await new_page()
    await sign_in(agent, gw)
    await expect(count(agent, "waiting")).to_have_text("1")
    await expect(count(agent, "active")).to_have_text("2")
    await agent.get_by_label("Queue").select_option("support")
    await expect(count(agent, "waiting")).to_have_text("0")
    await expect(agent.locator("#empty")).to_be_visible()
    await tab(agent, "active")
    await expect(agent.locator("#list li")).to_have_count(2)
    await expect(item(agent, "Otro")).to_contain_text("with jose")
    await expect(item(agent, "Soporte")).to_contain_text("with you")
    await agent.get_by_label("only mine").check()
    await expect(agent.locator("#list li")).to_have_count(1)
    await expect(item(agent, "Soporte")).to_be_visible()


async def test_an_email_attachment_downloads_from_the_thread(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """The page fetches it with the agent's token (a link could not) and saves it by its name:
    exactly the bytes that arrived."""
    raw = (FIXTURES / "cpython_msg_07_multipart_gif_attachments.eml").read_bytes()
    parsed = parse_email(raw, "support-mail", gw.clock.now())
    stored = await gw.runtime.ingestor.message(parsed.message)
    [gif] = stored.message.attachments

    agent = await new_page()
    await sign_in(agent, gw)
    entry = item(agent, "dingus fish")
    await entry.get_by_role("button", name=PREVIEW).click()
    button = agent.get_by_role("button", name="Download dingusfish.gif")
    async with agent.expect_download() as started:
        await button.click()
    download = await started.value
    assert download.suggested_filename == "dingusfish.gif"
    data = Path(await download.path()).read_bytes()
    assert len(data) == gif.size and hashlib.sha256(data).hexdigest() == gif.sha256


async def test_a_long_waiting_queue_is_paged_in_fifo_order(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """More waiting than one page (200): the rest comes with "Show more", and one arriving
    live is not shown right after the first page as if it were next in the queue."""
    for i in range(203):
        await gw.whatsapp(f"+5511900{i:05}", f"Cliente {i:03}", "hola")
    agent = await new_page()
    await sign_in(agent, gw)
    await expect(agent.locator("[role=tab][data-state=waiting]")).to_be_focused()
    names = agent.locator("#list .conv-name")
    await expect(names).to_have_count(200)
    await expect(names.last).to_have_text("Cliente 199")
    more = agent.get_by_role("button", name="Show more")
    await gw.whatsapp("+5511999999999", "Tarde", "hola")  # the 204th, after three not shown
    await expect(agent.locator("[role=tab][data-state=waiting] .count")).to_have_text("204")
    await expect(names.last).to_have_text("Cliente 199")
    await more.click()
    await expect(names).to_have_count(204)
    await expect(names.nth(199)).to_have_text("Cliente 199")
    await expect(names.nth(200)).to_have_text("Cliente 200")
    await expect(names.last).to_have_text("Tarde")
    await expect(more).to_be_hidden()


async def test_a_stream_that_goes_silent_is_replaced(gw: LiveGateway, new_page: NewPage) -> None:
    """The network holds the stream open but carries nothing: the unanswered keep-alive makes
    the page reconnect, and what happened meanwhile shows."""
    network = SilentNetwork()
    agent = await new_page()
    await agent.route_web_socket(re.compile(r"/api/v1/stream"), network.route)
    await agent.goto(gw.url + "/inbox?keepalive=1")
    await agent.get_by_label("Agent token").fill(TOKENS["maria"])
    await agent.get_by_role("button", name="Sign in").click()
    await expect(agent.locator("#conn")).to_have_text("live")
    network.silence()
    await gw.visitor("Callado", "¿hola?")
    await expect(item(agent, "Callado")).to_be_visible()
    await expect(agent.locator("#conn")).to_have_text("live")
    assert len(network.sockets) == 2


async def test_a_reply_the_gateway_could_not_take_goes_again_by_itself(
    gw: LiveGateway, new_page: NewPage, page_errors: PageErrors
) -> None:
    page_errors.tolerate("net::ERR_FAILED")  # the request the test drops
    await gw.visitor("Reintento", "hola")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Reintento").get_by_role("button", name="Accept").click()
    await expect(agent.get_by_role("textbox", name="Reply")).to_be_focused()  # ready to answer
    refused: list[str] = []

    async def once(route: Route) -> None:
        if route.request.method == "POST" and not refused:
            refused.append(route.request.headers["idempotency-key"])
            await route.abort()  # the network drops this one
            return
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), once)
    reply = agent.get_by_role("textbox", name="Reply")
    await reply.fill("¿Me oyes?")
    await agent.get_by_role("button", name="Send reply").click()
    await expect(agent.locator(".notice")).to_contain_text("cannot be reached")
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["¿Me oyes?"])
    await expect(reply).to_have_value("")
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["hola", "¿Me oyes?"]
    assert len(refused) == 1


async def test_what_the_agent_types_while_a_reply_sends_is_kept(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser audit: on a slow network the sent reply stayed in the box, what the agent typed
    next was added to it, and the answer then cleared the lot. A reply now leaves the box at
    once; the next draft stays."""
    agent, reply = await accepted(gw, new_page, "Borrador", "hola")
    release = asyncio.Event()

    async def slow(route: Route) -> None:
        if route.request.method == "POST":
            await release.wait()
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), slow)
    await reply.fill("reply A")
    await reply.press("Enter")
    await expect(reply).to_have_value("")  # out of the composer while it sends
    await reply.press_sequentially("draft B")
    release.set()
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["reply A"])
    await expect(reply).to_have_value("draft B")


async def test_a_reply_the_network_holds_up_shows_as_sending_then_goes_again(
    gw: LiveGateway, new_page: NewPage, page_errors: PageErrors
) -> None:
    """Team audit: on a cut network a sent reply left the composer and showed nowhere, for as
    long as the request hung (minutes). It shows at the end of the thread as sending; a
    request unanswered past the page's time-out goes again under the same key, and the bubble
    says so; once the gateway took it, the stored message takes its place."""
    page_errors.tolerate("net::ERR_FAILED")  # the request the page gave up on
    await gw.visitor("Cortado", "hola")
    agent = await new_page()
    await sign_in(agent, gw, query="?timeout=1")
    await item(agent, "Cortado").get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await expect(reply).to_be_focused()
    keys: list[str] = []
    release = asyncio.Event()

    async def cut(route: Route) -> None:
        if route.request.method == "POST":
            keys.append(route.request.headers["idempotency-key"])
            if len(keys) == 1:
                await release.wait()  # the network holds the first try: the page gives up
                with contextlib.suppress(Exception):  # the page dropped it long ago
                    await route.abort()
                return
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), cut)
    await reply.fill("¿Sigues ahí?")
    await reply.press("Enter")
    sending = agent.locator(".msg-sending")
    await expect(sending.locator(".msg-text")).to_have_text("¿Sigues ahí?")
    await expect(sending).to_contain_text("sending…")
    await expect(sending).to_contain_text("not sent yet, trying again…")
    await expect(sending).to_have_count(0)
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["¿Sigues ahí?"])
    release.set()
    assert len(keys) == 2 and keys[0] == keys[1]  # the same reply, sent once
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["hola", "¿Sigues ahí?"]


async def test_the_enter_that_picks_an_input_method_word_does_not_send(
    gw: LiveGateway, new_page: NewPage
) -> None:
    await gw.visitor("Kenji", "こんにちは")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Kenji").get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await reply.fill("日本")
    # What an input method sends when Enter picks the word being composed.
    await reply.evaluate(
        "el => el.dispatchEvent(new KeyboardEvent('keydown',"
        " {key: 'Enter', isComposing: true, bubbles: true, cancelable: true}))"
    )
    await expect(reply).to_have_value("日本")  # not sent: the word is still being written
    await reply.press("Enter")
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["日本"])
    await expect(reply).to_have_value("")


async def test_a_refused_transfer_says_why_and_the_picker_warns_of_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser audit: a transfer to an agent not on the queue showed "This conversation is not
    on your queues any more.", which was false; the gateway's own reason names who and
    which queue, and the picker says who is not on the conversation's queue."""
    await gw.visitor("Inés", "una duda")
    (conversation,) = await gw.waiting()
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Inés").get_by_role("button", name=ACCEPT).click()
    await expect(agent.locator(".conv-head .badge")).to_have_text("active")
    await agent.get_by_role("button", name="Transfer this conversation").click()
    await agent.get_by_label("Transfer to a queue").select_option("sales")
    await agent.get_by_label("Transfer to an agent").select_option("ana")  # support only
    await agent.get_by_role("button", name="Confirm the transfer").click()
    await expect(agent.locator(".notice")).to_have_text("agent ana is not on queue sales")
    moved = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert (moved["agent"], moved["queue"]) == ("maria", "support")  # nothing changed
    # On sales, the picker says who is not on it.
    await gw.post(
        "maria",
        f"/api/v1/conversations/{conversation['id']}/transfer",
        {"queue": "sales", "agent": "maria"},
    )
    await expect(agent.locator(".conv-sub").first).to_contain_text("queue sales")
    await agent.get_by_role("button", name="Transfer this conversation").click()
    await agent.get_by_role("button", name="Transfer this conversation").click()
    await expect(
        agent.get_by_label("Transfer to an agent").locator("option[value=ana]")
    ).to_have_text(re.compile(r"not on sales\)$"))


async def test_an_open_conversation_moved_out_of_my_queues_says_so(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser audit: Ana (support only) kept a chat open that Maria moved to sales; it still
    offered Accept, which the gateway would refuse."""
    await gw.visitor("Lucía", "hola")
    (conversation,) = await gw.waiting()
    ana = await new_page()
    await sign_in(ana, gw, "ana")
    await item(ana, "Lucía").get_by_role("button", name=PREVIEW).click()
    await expect(ana.get_by_role("button", name="Accept this conversation")).to_be_visible()
    path = f"/api/v1/conversations/{conversation['id']}"
    await gw.post("maria", f"{path}/accept")
    await gw.post("maria", f"{path}/transfer", {"queue": "sales"})
    await expect(ana.locator(".banner")).to_have_text(
        "Moved to queue sales, which is not one of yours: you can no longer act on it."
    )
    await expect(ana.get_by_role("button", name="Accept this conversation")).to_have_count(0)


async def test_a_reload_reopens_the_conversation_and_arrows_move_between_tabs(
    gw: LiveGateway, new_page: NewPage
) -> None:
    await gw.visitor("Recarga", "sigo aquí")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Recarga").get_by_role("button", name=ACCEPT).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Recarga")
    await agent.reload()
    await expect(agent.locator(".conv-head h2")).to_have_text("Recarga")  # her place is kept
    await expect(agent.locator(".conv-head .badge")).to_have_text("active")
    # The tabs are one stop for Tab; the arrow keys move between them.
    waiting = agent.locator("[role=tab][data-state=waiting]")
    await waiting.click()
    await expect(waiting).to_have_attribute("tabindex", "0")
    await expect(agent.locator("[role=tab][tabindex='0']")).to_have_count(1)
    await agent.keyboard.press("ArrowRight")
    active = agent.locator("[role=tab][data-state=active]")
    await expect(active).to_be_focused()
    await expect(active).to_have_attribute("aria-selected", "true")
    await agent.keyboard.press("End")
    await expect(agent.locator("[role=tab][data-state=closed]")).to_be_focused()
    await agent.keyboard.press("ArrowRight")  # round to the first
    await expect(waiting).to_be_focused()


async def test_quick_replies_go_out_in_order_each_once_even_when_alike(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser re-audit: with the composer emptying at once, Enter pressed again while a reply
    was on its way sent the next one alongside it, and the network reordered them; the same
    short text twice went out once (it reused the first one's key). Replies now go one at a
    time, in order, each with its own key. Here the first ones are slowed the most."""
    agent, reply = await accepted(gw, new_page, "Rápido", "hola")
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    delays = iter([0.6, 0.4, 0.2, 0.1, 0.0, 0.0])

    async def slower_first(route: Route) -> None:
        if route.request.method == "POST":
            await asyncio.sleep(next(delays, 0.0))  # network latency, longest for the first
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), slower_first)
    typed = ["w0", "ok", "ok", "w3", "w4", "w5"]
    for text in typed:
        await reply.fill(text)
        await reply.press("Enter")
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(typed)
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"] if m["direction"] == "out"] == typed


async def test_refused_replies_come_back_in_order_before_what_was_typed_since(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """A refusal returns that reply and those queued after it (none goes out ahead of it), in
    the order written, before what the agent typed since; the notice repeats them (browser
    re-audits: a refused reply was lost under a new draft, then several came back reversed
    while later ones went out). A busy conversation (`conflict`) is tried again instead."""
    agent, reply = await accepted(gw, new_page, "Rechazo", "hola")
    typed = asyncio.Event()
    answers = iter(["conflict", "closed"])

    async def refuse(route: Route) -> None:
        answer = next(answers, "closed")
        if answer == "conflict":
            code, message = "conflict", "the conversation kept changing; try again"
        else:
            await typed.wait()
            code, message = "invalid_transition", "a closed conversation takes no reply"
        await route.fulfill(
            status=409,
            content_type="application/json",
            body=json.dumps({"error": {"code": code, "message": message}}),
        )

    await agent.route(re.compile(r"/messages$"), refuse)
    for text in ("Your refund is R-7781", "It takes 3 days"):
        await reply.fill(text)
        await reply.press("Enter")
    await expect(reply).to_have_value("")
    await reply.press_sequentially("Anything else?")
    typed.set()
    await expect(agent.locator(".notice")).to_have_text(
        "a closed conversation takes no reply."
        " Not sent: “Your refund is R-7781”, “It takes 3 days”."
    )
    await expect(reply).to_have_value("Your refund is R-7781\n\nIt takes 3 days\n\nAnything else?")
    await expect(agent.locator(STORED_REPLY)).to_have_count(0)  # neither went out


async def test_a_reply_waiting_for_the_network_goes_out_after_another_conversation_opens(
    gw: LiveGateway, new_page: NewPage, page_errors: PageErrors
) -> None:
    """Browser re-audit: its retry was the open pane's, so opening another conversation
    dropped it, while the notice still said it would go."""
    page_errors.tolerate("net::ERR_FAILED")  # the request the test drops
    await gw.visitor("Primera", "uno")
    await gw.visitor("Segunda", "dos")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Primera").get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await expect(reply).to_be_focused()
    dropped: list[str] = []

    async def once(route: Route) -> None:
        if route.request.method == "POST" and not dropped:
            dropped.append(route.request.url)
            await route.abort()
            return
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), once)
    await reply.fill("¿Sigues ahí?")
    await reply.press("Enter")
    await expect(agent.locator(".notice")).to_contain_text("cannot be reached")
    await tab(agent, "waiting")
    await item(agent, "Segunda").get_by_role("button", name=PREVIEW).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Segunda")
    await tab(agent, "active")
    await item(agent, "Primera").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["¿Sigues ahí?"])
    assert len(dropped) == 1


async def test_a_message_that_comes_while_a_conversation_opens_is_shown(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser re-audit: the conversation's answer could predate a message the stream
    brought while it loaded, which was then missing from the thread until it was reopened."""
    visitor = await gw.visitor("Carrera", "race one")
    agent = await new_page()
    await sign_in(agent, gw)
    release = asyncio.Event()

    async def slow_open(route: Route) -> None:
        if route.request.method == "GET" and re.search(r"/conversations/c_\w+$", route.request.url):
            response = await route.fetch()  # the answer as it is now, held back a while
            await release.wait()
            await route.fulfill(response=response)
            return
        await route.continue_()

    await agent.route(re.compile(r"/api/v1/conversations/"), slow_open)
    await item(agent, "Carrera").get_by_role("button", name=PREVIEW).click()
    await gw.visitor_says(visitor, "race two")
    await expect(item(agent, "Carrera")).to_contain_text("race two")  # the stream has it
    release.set()
    await expect(agent.locator(".msg-in .msg-text")).to_have_text(["race one", "race two"])


async def test_an_address_hash_that_names_no_conversation_is_dropped(
    gw: LiveGateway, new_page: NewPage
) -> None:
    agent = await new_page()
    await agent.goto(gw.url + "/inbox#%E0%A4%A")  # not even decodable
    await agent.get_by_label("Agent token").fill(TOKENS["maria"])
    await agent.get_by_role("button", name="Sign in").click()
    await expect(agent.locator("#conn")).to_have_text("live")
    assert await agent.evaluate("location.hash") == ""
    await agent.goto(gw.url + "/inbox#c_01NOSUCHCONVERSATION0000000")  # the same page: ...
    await agent.reload()  # ... reloaded with it
    await expect(agent.locator("#conn")).to_have_text("live")
    await expect(agent).to_have_url(re.compile(r"/inbox$"))  # dropped once the gateway said so
    await expect(agent.locator(".conv-head")).to_have_count(0)


async def test_a_reply_refused_after_sign_out_leaves_nothing_for_the_next_agent(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser re-audit: a reply still on its way when Maria signed out was refused after
    José signed in on the same page, and came back into his composer with her notice."""
    agent, reply = await accepted(gw, new_page, "Privado", "hola")
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    release, answered = asyncio.Event(), asyncio.Event()

    async def held(route: Route) -> None:
        await release.wait()
        await route.fulfill(
            status=409,
            content_type="application/json",
            body=json.dumps({"error": {"code": "invalid_transition", "message": "closed"}}),
        )
        answered.set()

    await agent.route(re.compile(r"/messages$"), held)
    await reply.fill("MARIA-PRIVATE-NOTE")
    await reply.press("Enter")
    asked: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        asked.append(dialog.message)  # a reply is still going out: she is asked first
        await dialog.accept()

    agent.once("dialog", confirm)
    await agent.get_by_role("button", name="Sign out").click()
    await expect(agent.get_by_label("Agent token")).to_be_visible()
    assert asked == ["Replies not sent yet are dropped if you sign out. Sign out anyway?"]
    await agent.get_by_label("Agent token").fill(TOKENS["jose"])
    await agent.get_by_role("button", name="Sign in").click()
    await expect(agent.locator("#conn")).to_have_text("live")
    release.set()
    async with asyncio.timeout(10):
        await answered.wait()
    await tab(agent, "active")
    await item(agent, "Privado").click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Privado")
    await expect(agent.get_by_text("MARIA-PRIVATE-NOTE")).to_have_count(0)
    await expect(agent.get_by_role("textbox", name="Reply")).to_have_value("")
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["hola"]


async def test_a_reply_a_busy_conversation_keeps_refusing_comes_back_after_a_few_tries(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Browser re-audit: `conflict` was retried forever, out of the agent's sight, and the
    notice ("try again") invited a duplicate. The notice says it goes again by itself;
    after three tries it comes back to the composer."""
    agent, reply = await accepted(gw, new_page, "Ocupado", "hola")
    posts: list[str] = []

    async def busy(route: Route) -> None:
        posts.append(route.request.headers["idempotency-key"])
        await route.fulfill(
            status=409,
            content_type="application/json",
            body=json.dumps({"error": {"code": "conflict", "message": "kept changing"}}),
        )

    await agent.route(re.compile(r"/messages$"), busy)
    await reply.fill("A")
    await reply.press("Enter")
    await expect(agent.locator(".notice")).to_have_text(
        "kept changing. Not sent yet; it goes again by itself: “A”."
    )
    await expect(reply).to_have_value("A", timeout=20_000)
    await expect(agent.locator(".notice")).to_have_text("kept changing. Not sent: “A”.")
    assert len(posts) == 3 and len(set(posts)) == 1  # one reply, one key


async def test_a_reload_keeps_the_replies_waiting_to_go_out_and_the_drafts(
    gw: LiveGateway, new_page: NewPage, page_errors: PageErrors
) -> None:
    """They lived in the page alone: a reload (after the page's warning) dropped a reply the
    network had not taken yet, and what was being written. The tab keeps them now; the
    reply goes out once, under the key it was first tried with."""
    page_errors.tolerate("net::ERR_FAILED")  # the requests the test drops
    agent, reply = await accepted(gw, new_page, "Recargo", "hola")
    agent.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    keys: list[str] = []
    down = True

    async def network(route: Route) -> None:
        if route.request.method == "POST":
            keys.append(route.request.headers["idempotency-key"])
            if down:
                await route.abort()
                return
        await route.continue_()

    await agent.route(re.compile(r"/messages$"), network)
    await reply.fill("Primera respuesta")
    await reply.press("Enter")
    await expect(agent.locator(".notice")).to_contain_text("Not sent yet")
    await reply.fill("un borrador")
    await agent.reload()
    await expect(agent.locator(".conv-head h2")).to_have_text("Recargo")
    await expect(agent.get_by_role("textbox", name="Reply")).to_have_value("un borrador")
    await expect(agent.locator(".notice")).to_contain_text("Primera respuesta")
    tried = len(keys)
    assert tried >= 2  # before the reload and again after it
    down = False
    await agent.evaluate("window.dispatchEvent(new Event('online'))")  # back: it goes now
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["Primera respuesta"])
    await expect(agent.locator(".notice")).to_be_hidden()
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["hola", "Primera respuesta"]
    assert len(set(keys)) == 1, keys
    # Signing out leaves nothing behind for whoever signs in on this tab next.
    await agent.get_by_role("button", name="Sign out").click()
    await expect(agent.get_by_label("Agent token")).to_be_visible()
    assert await agent.evaluate("sessionStorage.length") == 0


async def test_a_template_being_filled_in_stays_with_its_conversation(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Only a refused template's parameters were kept: the name and language typed for one
    customer were lost on opening another, and all of it on a reload."""
    for phone, name in (("+5511988880001", "Paulo"), ("+5511988880002", "Rita")):
        await gw.whatsapp(phone, name, "Preciso de ajuda")
    for conversation in await gw.waiting():
        status, _ = await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/accept")
        assert status == 200
    gw.clock.advance(timedelta(hours=24, minutes=5))  # both windows closed: templates only
    agent = await new_page()
    agent.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_in(agent, gw)
    await tab(agent, "active")
    name, language = agent.get_by_label("Template name"), agent.get_by_label("Template language")
    params = agent.get_by_label("Template parameters, one per line")
    await item(agent, "Paulo").get_by_role("button", name=OPEN).click()
    await name.fill("order_update")
    await language.fill("pt_BR")
    await params.fill("Paulo\n4411")
    await item(agent, "Rita").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Rita")
    await expect(name).to_have_value("")
    await expect(language).to_have_value("es")
    await expect(params).to_have_value("")
    await item(agent, "Paulo").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Paulo")
    for field, value in ((name, "order_update"), (language, "pt_BR"), (params, "Paulo\n4411")):
        await expect(field).to_have_value(value)
    await agent.reload()
    await expect(agent.locator(".conv-head h2")).to_have_text("Paulo")
    for field, value in ((name, "order_update"), (language, "pt_BR"), (params, "Paulo\n4411")):
        await expect(field).to_have_value(value)

    # A template the gateway refuses comes back whole, after a reload too.
    async def refuse(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        await route.fulfill(
            status=422,
            content_type="application/json",
            body='{"error": {"code": "invalid_template", "message": "no such template"}}',
        )

    await agent.route(re.compile(r"/messages$"), refuse)
    await name.fill("order_updat")
    await agent.get_by_role("button", name="Send template").click()
    await expect(agent.locator(".notice")).to_contain_text("no such template")
    for field, value in ((name, "order_updat"), (language, "pt_BR"), (params, "Paulo\n4411")):
        await expect(field).to_have_value(value)
    await params.fill("Paulo\n4411")  # what the agent types since comes after: here, the same
    await tab(agent, "active")  # a reload lists the waiting tab
    await item(agent, "Rita").get_by_role("button", name=OPEN).click()
    await item(agent, "Paulo").get_by_role("button", name=OPEN).click()
    await expect(name).to_have_value("order_updat")


async def test_keyboard_focus_stays_put_while_the_conversation_changes_and_moves_on_after_actions(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility audit: the pane is rebuilt on every change, and focus fell to the page's
    body each time (a customer's message was enough), and after Pending, Resume, Close."""
    token = await gw.visitor("Foco", "hola")
    agent, reply = await accepted(gw, new_page, "Otra", "buenas")
    await tab(agent, "waiting")
    await item(agent, "Foco").get_by_role("button", name=ACCEPT).click()
    await expect(reply).to_be_focused()
    transfer = agent.get_by_role("button", name="Transfer this conversation")
    await transfer.focus()
    await gw.visitor_says(token, "¿sigues ahí?")
    await expect(agent.locator(".msg-in .msg-text").last).to_have_text("¿sigues ahí?")
    await expect(transfer).to_be_focused()  # the customer wrote: the agent's place is kept
    # The transfer form: opening it moves focus in, Escape closes it and comes back.
    await expect(transfer).to_have_attribute("aria-expanded", "false")
    await agent.keyboard.press("Enter")
    await expect(agent.get_by_role("combobox", name="Transfer to a queue")).to_be_focused()
    await expect(transfer).to_have_attribute("aria-expanded", "true")
    await agent.keyboard.press("Escape")
    await expect(agent.get_by_role("form", name="Transfer")).to_be_hidden()
    await expect(transfer).to_be_focused()
    # Each action removes its own button: focus goes where the next step is.
    await agent.get_by_role("button", name="Set this conversation pending").press("Enter")
    await expect(agent.get_by_role("button", name="Resume this conversation")).to_be_focused()
    await agent.keyboard.press("Enter")
    await expect(reply).to_be_focused()
    await agent.get_by_role("button", name="Close this conversation").press("Enter")
    await expect(agent.locator(".conv-head .badge")).to_have_text("closed")
    await expect(agent.locator(".conv-head h2")).to_be_focused()


async def test_on_a_phone_focus_follows_the_pane_in_and_back(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility audit: at 720 px or less the pane replaces the list, and the button that
    opened it, so focus was left on nothing; Back did the same."""
    await gw.visitor("Movil", "hola")
    agent = await new_page(PHONE)
    await sign_in(agent, gw)
    await item(agent, "Movil").get_by_role("button", name=PREVIEW).press("Enter")
    await expect(agent.locator(".conv-head h2")).to_be_focused()
    await agent.get_by_role("button", name="Back to the list").press("Enter")
    await expect(item(agent, "Movil").get_by_role("button", name=PREVIEW)).to_be_focused()


async def test_screen_readers_hear_who_wrote_what_and_what_comes_in(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility audit: a message did not say who wrote it (only its side and colour did),
    a tick's status was an unread label, new work arrived silently and the tab's title never
    changed, and a list entry was named by a label that hid what it shows."""
    agent, reply = await accepted(gw, new_page, "Lectora", "hola")
    await reply.fill("¿En qué te ayudo?")
    await reply.press("Enter")
    thread = agent.get_by_role("list", name="Messages")
    await expect(thread.get_by_role("listitem")).to_have_count(2)
    await expect(thread.get_by_role("listitem").first).to_contain_text("Lectora: hola")
    await expect(thread.get_by_role("listitem").last).to_contain_text("You: ¿En qué te ayudo?")
    await expect(thread.get_by_role("img", name=re.compile("sent|delivered|read"))).to_have_count(1)
    await gw.visitor("Nueva", "buenas")  # on Maria's queue, while she reads another
    await expect(agent.locator("#announce")).to_have_text("Waiting on support: Nueva.")
    await expect(agent).to_have_title("(1) Inbox · channel gateway")
    await tab(agent, "waiting")
    entry = item(agent, "Nueva").get_by_role("button", name=PREVIEW)
    await expect(entry).to_have_accessible_name(re.compile(r"^Preview the conversation with Nueva"))
    await expect(entry).to_have_accessible_name(re.compile("buenas"))  # what it shows, it says
    tabs = agent.get_by_role("tab", name=re.compile("^Waiting"))
    await expect(tabs).to_have_attribute("aria-controls", "tabpanel")
    await expect(agent.get_by_role("tabpanel")).to_have_attribute("aria-labelledby", "tab-waiting")


async def test_focus_moves_to_the_next_entry_when_the_focused_one_leaves_the_list(
    gw: LiveGateway, new_page: NewPage
) -> None:
    await gw.visitor("Primero", "uno")
    await gw.visitor("Segundo", "dos")
    agent = await new_page()
    await sign_in(agent, gw)
    accept = item(agent, "Primero").get_by_role("button", name=ACCEPT)
    await accept.focus()
    first = next(c for c in await gw.waiting() if c["contact"]["display_name"] == "Primero")
    status, _ = await gw.post("jose", f"/api/v1/conversations/{first['id']}/accept")
    assert status == 200
    await expect(item(agent, "Primero")).to_have_count(0)
    await expect(item(agent, "Segundo").get_by_role("button", name=PREVIEW)).to_be_focused()


async def test_a_huge_subject_keeps_the_actions_in_view_and_no_text_reorders_itself(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Hostile-content audit: a 1,750-character subject took half the pane (100,000: the
    whole page scrolled, Accept 7,000 px down), and a right-to-left override in a subject or
    file name showed "Plain txt.exe" as "Plain exe.txt"."""
    long_subject = " ".join(["invoice"] * 2_000)
    await gw.email("spoof@customer.example", "Spoof", long_subject, "hola")
    await gw.email("rtl@customer.example", "Rtl", "Plain \u202etxt.exe", "hola")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Spoof").get_by_role("button", name=PREVIEW).click()
    accept = agent.get_by_role("button", name="Accept this conversation")
    await expect(accept).to_be_in_viewport()
    head = await agent.locator(".conv-head").bounding_box()
    assert head is not None and head["height"] < 150, head
    assert await agent.evaluate("document.scrollingElement.scrollHeight") <= 800
    await item(agent, "Rtl").get_by_role("button", name=PREVIEW).click()
    await expect(agent.locator(".conv-head .conv-sub").last).to_have_text("Subject: Plain txt.exe")
    await expect(item(agent, "Rtl").locator(".conv-subject")).to_have_text("Plain txt.exe")


async def test_a_tick_that_moves_does_not_put_the_thread_in_again(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility re-audit: the thread is a live region, and every change of a message
    (a tick going to read) built the whole thread again: a screen reader read it all out
    again, for each receipt. Only a new message goes in; a tick moves in place."""
    token = await gw.visitor("Lee", "hola")
    agent = await new_page()
    await sign_in(agent, gw)
    await item(agent, "Lee").get_by_role("button", name=ACCEPT).click()
    reply = agent.get_by_role("textbox", name="Reply")
    await expect(reply).to_be_focused()
    await agent.evaluate(
        """() => {
          window.added = [];
          new MutationObserver((records) => {
            for (const r of records) for (const n of r.addedNodes) window.added.push(n.nodeName);
          }).observe(document.querySelector(".thread"), { childList: true });
        }"""
    )
    for text in ("uno", "dos"):
        await reply.fill(text)
        await reply.press("Enter")
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["uno", "dos"])
    ticks = agent.locator(".msg-out .tick")
    await expect(ticks).to_have_count(2)
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    last = thread["messages"][-1]["id"]
    async with gw.http.post(
        gw.url + "/webchat/site/read",
        json={"message_id": last},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status in (200, 204), await resp.text()
    await expect(ticks.last).to_have_attribute("data-status", "read")
    await expect(ticks.first).to_have_attribute("data-status", "read")
    assert await agent.evaluate("window.added") == ["LI", "LI"]  # the two replies, once each
    # Opened again (as on a reconnect): fetched anew, the same messages stay where they are.
    async with agent.expect_response(re.compile(r"/api/v1/conversations/c_[^/?]+$")):
        await item(agent, "Lee").get_by_role("button", name=OPEN).click()
    assert await agent.evaluate("window.added") == ["LI", "LI"]


async def test_events_leave_the_focus_alone_unless_its_control_goes(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility re-audit: every event built the pane's buttons and the list again and
    focused the new ones, so a screen reader said the focused control again each time; and a
    reply box disabled by a change made elsewhere kept a focus nothing could use."""
    token = await gw.visitor("Quieta", "hola")
    agent, reply = await accepted(gw, new_page, "Otro", "buenas")
    await tab(agent, "waiting")
    await item(agent, "Quieta").get_by_role("button", name=ACCEPT).click()
    await expect(reply).to_be_focused()
    transfer = agent.get_by_role("button", name="Transfer this conversation")
    await transfer.focus()
    await agent.evaluate(
        "() => { window.moves = 0;"
        " document.addEventListener('focusin', () => { window.moves += 1; }); }"
    )
    await gw.visitor_says(token, "¿hola?")
    await gw.visitor("Nuevo", "otro cliente")  # the waiting list changes too
    await expect(agent.locator(".msg-in .msg-text").last).to_have_text("¿hola?")
    await expect(agent.locator("#announce")).to_have_text("Waiting on support: Nuevo.")
    await expect(transfer).to_be_focused()
    assert await agent.evaluate("window.moves") == 0
    # Closed from elsewhere (another tab, a script) while she writes: the reply box goes.
    await reply.focus()
    conversation = next(
        c
        for c in (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
        if c["contact"]["display_name"] == "Quieta"
    )
    status, _ = await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/close")
    assert status == 200
    await expect(agent.locator(".conv-head .badge")).to_have_text("closed")
    await expect(agent.locator(".conv-head h2")).to_be_focused()


async def test_a_message_in_a_conversation_of_mine_not_open_is_announced_once(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Accessibility re-audit: it never was (its conversation's change came first, at the
    same version). And the window's title counts everything waiting on the agent's queues,
    whatever the list's queue filter, and goes back to plain after signing out."""
    token = await gw.visitor("Mía", "hola")
    agent, _ = await accepted(gw, new_page, "Abierta", "buenas")
    await tab(agent, "waiting")
    await item(agent, "Mía").get_by_role("button", name=ACCEPT).click()
    await tab(agent, "active")
    await item(agent, "Abierta").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Abierta")
    await gw.visitor_says(token, "¿sigues?")
    await expect(agent.locator("#announce")).to_have_text("New message from Mía.")
    await gw.visitor("Espera", "hola")
    await expect(agent).to_have_title("(1) Inbox · channel gateway")
    await agent.get_by_label("Queue", exact=True).select_option("sales")  # nobody waits there
    await expect(agent.locator("[role=tab][data-state=waiting] .count")).to_have_text("0")
    await expect(agent).to_have_title("(1) Inbox · channel gateway")
    agent.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await agent.get_by_role("button", name="Sign out").click()
    await expect(agent).to_have_title("Inbox · channel gateway")


async def test_a_reload_while_the_gateway_is_down_keeps_the_session_and_its_replies(
    gw: LiveGateway, new_page: NewPage, page_errors: PageErrors
) -> None:
    """Audit: the reloaded tab could not reach the gateway to sign in again, took that as a
    sign-out, and the replies it held back were dropped at the next sign-in."""
    page_errors.tolerate("net::ERR_FAILED")  # the requests the test drops
    agent, reply = await accepted(gw, new_page, "Caída", "hola")
    agent.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    down = True

    async def network(route: Route) -> None:
        if down:
            await route.abort()
        else:
            await route.continue_()

    await agent.route(re.compile(r"/messages$"), network)
    await reply.fill("Sigo aquí")
    await reply.press("Enter")
    await expect(agent.locator(".notice")).to_contain_text("Not sent yet")
    await agent.route(re.compile(r"/api/v1/me$"), network)  # now the whole gateway is gone
    await agent.reload()
    await expect(agent.locator("#signin-error")).to_contain_text("Signing in again by itself")
    down = False
    await expect(agent.locator("#conn")).to_have_text("live", timeout=15_000)
    await expect(agent.locator(STORED_REPLY_TEXT)).to_have_text(["Sigo aquí"])
    (conversation,) = (await gw.get("maria", "/api/v1/inbox?state=active"))["conversations"]
    thread = await gw.get("maria", f"/api/v1/conversations/{conversation['id']}")
    assert [m["text"] for m in thread["messages"]] == ["hola", "Sigo aquí"]


async def test_someone_elses_pending_conversation_says_so_and_a_closed_transfer_form_forgets(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Regression hunt: another agent's pending conversation read "Attended by jose."; and the
    transfer form, hidden with a queue chosen, still had it chosen when opened again."""
    await gw.visitor("Aparte", "hola")
    (conversation,) = await gw.waiting()
    path = f"/api/v1/conversations/{conversation['id']}"
    for action in ("accept", "pending"):
        assert (await gw.post("jose", f"{path}/{action}"))[0] == 200
    agent, _ = await accepted(gw, new_page, "Mía", "buenas")
    await tab(agent, "pending")
    await item(agent, "Aparte").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".banner")).to_contain_text("Pending with jose (set aside")
    await expect(agent.locator(".composer-why")).to_have_text("Another agent set this aside.")
    await tab(agent, "active")
    await item(agent, "Mía").get_by_role("button", name=OPEN).click()
    transfer = agent.get_by_role("button", name="Transfer this conversation")
    queue = agent.get_by_role("combobox", name="Transfer to a queue")
    await transfer.click()
    await queue.select_option("sales")
    await agent.keyboard.press("Escape")
    await transfer.click()
    await expect(queue).to_have_value("")
