"""The inbox page's list and headings as several agents see them at once (browser audit with
four agents): what a row shows, what the tab counts count, and what an open pane says when
the conversation changes under it."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, Route, expect

from tests.browser.conftest import PHONE, NewPage, item, sign_in
from tests.browser.harness import CONFIG, TOKENS, LiveGateway, live_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

PREVIEW = re.compile("^Preview the conversation")
OPEN = re.compile("^Open the conversation")
ACCEPT = re.compile("^Accept the conversation")


def count(page: Page, state: str) -> Locator:
    """The count shown on a state's tab."""
    return page.locator(f"[role=tab][data-state={state}] .count")


async def test_an_unnamed_visitor_is_titled_by_the_end_of_its_id(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Audit: an unnamed web chat visitor was titled "v_01M8FBHC6483TBVNN48MQ0DRZA", two lines
    of a phone's header; the whole id stays beside the short name, to tell visitors apart."""
    await gw.visitor(None, "hola")
    (conversation,) = await gw.waiting()
    visitor_id = conversation["contact"]["address"]
    short = f"Visitor {visitor_id[-5:]}"
    agent = await new_page(PHONE)
    await sign_in(agent, gw)
    entry = item(agent, short)
    await expect(entry.locator(".conv-name")).to_have_text(short)
    await expect(entry.locator(".conv-name")).to_have_attribute("title", visitor_id)
    await expect(entry.get_by_role("button", name=PREVIEW)).to_have_accessible_name(
        re.compile(f"^Preview the conversation with {short}")
    )
    await entry.get_by_role("button", name=PREVIEW).click()
    heading = agent.locator(".conv-head h2")
    await expect(heading).to_have_text(short)
    await expect(heading).to_have_attribute("title", visitor_id)
    await expect(agent.locator(".conv-sub").first).to_contain_text(visitor_id)
    # One line in the phone's header.
    box = await heading.bounding_box()
    line = await heading.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
    assert box is not None and box["height"] < 1.5 * line


async def test_the_tab_counts_follow_only_mine_and_the_queue_filter(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Audit: with "only mine" ticked the tabs still counted the team's (Active 2 over a list
    of 1; Inactive 46 against her 9)."""
    for name in ("Suya", "DeJose", "Cerrada", "Espera"):
        await gw.visitor(name, "hola")
    by_name = {c["contact"]["display_name"]: c["id"] for c in await gw.waiting()}
    for who, name, actions in (
        ("maria", "Suya", ["accept"]),
        ("jose", "DeJose", ["accept"]),
        ("jose", "Cerrada", ["accept", "close"]),
    ):
        for action in actions:
            path = f"/api/v1/conversations/{by_name[name]}/{action}"
            assert (await gw.post(who, path))[0] == 200
    agent = await new_page()
    await sign_in(agent, gw)
    expected = {"waiting": "1", "active": "2", "pending": "0", "closed": "1"}
    for state, shown in expected.items():
        await expect(count(agent, state)).to_have_text(shown)

    await agent.get_by_label("only mine").check()
    for state, shown in {"waiting": "0", "active": "1"}.items():
        await expect(count(agent, state)).to_have_text(shown)
    # Her own closed ones are her whole history: not counted, so no number, not a wrong one.
    await expect(count(agent, "closed")).to_be_hidden()
    await agent.locator("[role=tab][data-state=active]").click()
    await expect(agent.locator("#list li")).to_have_count(1)
    await agent.get_by_label("Queue").select_option("sales")
    await expect(count(agent, "active")).to_have_text("0")
    await expect(agent.locator("#empty")).to_be_visible()
    await agent.get_by_label("Queue").select_option("support")
    await expect(count(agent, "active")).to_have_text("1")
    # Live: José hands his over to her; her count and list follow.
    path = f"/api/v1/conversations/{by_name['DeJose']}/transfer"
    assert (await gw.post("jose", path, {"agent": "maria"}))[0] == 200
    await expect(count(agent, "active")).to_have_text("2")
    await expect(agent.locator("#list li")).to_have_count(2)
    await agent.get_by_label("only mine").uncheck()
    await expect(count(agent, "closed")).to_have_text("1")
    await expect(count(agent, "closed")).to_be_visible()
    # The window's title still counts every customer waiting on her queues.
    await expect(agent).to_have_title("(1) Inbox · channel gateway")


async def test_an_open_conversation_moved_to_an_automatic_queue_not_mine_says_where(
    gw: LiveGateway, new_page: NewPage, tmp_path: Path
) -> None:
    """Audit: a conversation Ana (support only) had open was moved to sales, an automatic
    queue, and handed to José at once; her pane kept the badge "waiting" (she is not told of
    what happens on sales) and the error of her lost accept."""
    automatic = CONFIG.replace(
        "{name: sales, distribution: manual}", "{name: sales, distribution: automatic}"
    )
    stream = "/api/v1/stream?access_token=" + TOKENS["jose"]
    async with (
        live_gateway(tmp_path / "auto.db", config=automatic) as auto,
        auto.http.ws_connect(auto.url + stream) as jose,
    ):
        await jose.receive_json()  # hello: José is online, so sales gives him its chats
        await auto.visitor("Lucía", "hola")
        (conversation,) = await auto.waiting("ana")
        path = f"/api/v1/conversations/{conversation['id']}"
        ana = await new_page()
        await sign_in(ana, auto, "ana")
        await item(ana, "Lucía").get_by_role("button", name=PREVIEW).click()

        async def maria_gets_there_first(route: Route) -> None:
            assert (await auto.post("maria", path + "/accept"))[0] == 200
            await route.continue_()

        await ana.route("**/accept", maria_gets_there_first)
        await ana.get_by_role("button", name="Accept this conversation").click()
        notice = ana.locator(".notice")
        await expect(notice).to_have_text("Taken by another agent.")

        assert (await auto.post("maria", path + "/transfer", {"queue": "sales"}))[0] == 200
        await expect(ana.locator(".banner")).to_have_text(
            "Moved to queue sales, which is not one of yours: you can no longer act on it."
        )
        moved = await auto.get("jose", path)
        assert (moved["state"], moved["agent"]) == ("active", "jose")  # handed on at once
        await expect(ana.locator(".conv-head .badge")).to_have_text("moved")
        await expect(notice).to_be_hidden()
        await ana.context.close()  # before its gateway goes


async def test_the_waiting_list_does_not_move_under_the_pointer_when_another_agent_accepts(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Audit: Maria pointed at the second customer's ✓; José accepted the first just before
    she clicked, the list moved up, and her click accepted the third customer (out of FIFO,
    without asking). Held under the pointer, the first one's row stays, as a placeholder."""
    for name in ("Uno", "Dos", "Tres"):
        await gw.visitor(name, "hola")
        gw.clock.advance(timedelta(minutes=1))
    ids = {c["contact"]["display_name"]: c["id"] for c in await gw.waiting()}
    agent = await new_page()
    await sign_in(agent, gw)
    await expect(agent.locator("#list .conv-name")).to_have_text(["Uno", "Dos", "Tres"])
    accept = item(agent, "Dos").get_by_role("button", name=ACCEPT)
    box = await accept.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await agent.mouse.move(x, y)
    # A keyboard user's focus on the entry that goes stays where it was, on its placeholder.
    await item(agent, "Uno").get_by_role("button", name=PREVIEW).focus()

    status, _ = await gw.post("jose", f"/api/v1/conversations/{ids['Uno']}/accept")
    assert status == 200
    gone = agent.locator("#list li.is-gone")
    await expect(gone).to_have_text("Uno: taken by jose")
    await expect(gone).to_be_focused()
    await expect(gone.get_by_role("button")).to_have_count(0)  # nothing there to click
    await expect(count(agent, "waiting")).to_have_text("2")  # counts are the truth
    assert await accept.bounding_box() == box  # Dos's ✓ is still under the pointer

    await agent.mouse.down()
    await agent.mouse.up()
    await expect(agent.locator(".conv-head h2")).to_have_text("Dos")
    dos = await gw.get("maria", f"/api/v1/conversations/{ids['Dos']}")
    assert (dos["state"], dos["agent"]) == ("active", "maria")
    (tres,) = await gw.waiting()
    assert tres["id"] == ids["Tres"]  # still first in the queue, as it should be


async def test_the_active_list_reorders_only_once_the_pointer_leaves_it(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Audit: Maria aimed at a conversation, another customer wrote first, the list sorted that
    one to the top and her click opened the wrong conversation."""
    tokens = {}
    for name in ("Primera", "Segunda", "Tercera"):
        tokens[name] = await gw.visitor(name, "hola")
    for conversation in await gw.waiting():
        path = f"/api/v1/conversations/{conversation['id']}/accept"
        assert (await gw.post("maria", path))[0] == 200
    for name in ("Primera", "Segunda", "Tercera"):
        gw.clock.advance(timedelta(minutes=1))
        await gw.visitor_says(tokens[name], f"soy {name}")
    agent = await new_page()
    await sign_in(agent, gw)
    await agent.locator("[role=tab][data-state=active]").click()
    names = agent.locator("#list .conv-name")
    await expect(names).to_have_text(["Tercera", "Segunda", "Primera"])
    await item(agent, "Segunda").get_by_role("button", name=OPEN).hover()

    gw.clock.advance(timedelta(minutes=1))
    await gw.visitor_says(tokens["Primera"], "¿sigue ahí?")
    await expect(item(agent, "Primera")).to_contain_text("¿sigue ahí?")
    await expect(names).to_have_text(["Tercera", "Segunda", "Primera"])  # not yet re-sorted
    await agent.mouse.down()
    await agent.mouse.up()
    await expect(agent.locator(".conv-head h2")).to_have_text("Segunda")

    await agent.locator(".conv-head h2").hover()  # out of the list: it settles
    await expect(names).to_have_text(["Primera", "Tercera", "Segunda"])


async def test_what_came_in_my_other_conversations_is_marked_until_opened(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: nothing flagged a customer writing in another of the agent's conversations,
    and a conversation transferred to her landed silently at the bottom of Active. Its entry
    says so ("2 new", "handed to you") until she opens it."""
    tokens = {name: await gw.visitor(name, "hola") for name in ("Abierta", "Otra", "DeJose")}
    by_name = {c["contact"]["display_name"]: c["id"] for c in await gw.waiting()}
    for who, name in (("maria", "Abierta"), ("maria", "Otra"), ("jose", "DeJose")):
        assert (await gw.post(who, f"/api/v1/conversations/{by_name[name]}/accept"))[0] == 200
    agent = await new_page()
    await sign_in(agent, gw)
    await agent.locator("[role=tab][data-state=active]").click()
    await item(agent, "Abierta").get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Abierta")
    other = item(agent, "Otra")
    await expect(other.locator(".unread")).to_have_count(0)
    await gw.visitor_says(tokens["Otra"], "¿sigues ahí?")
    await expect(other.locator(".unread")).to_have_text("1 new")
    await gw.visitor_says(tokens["Otra"], "¿hola?")
    await expect(other.locator(".unread")).to_have_text("2 new")
    await gw.visitor_says(tokens["Abierta"], "gracias")  # the open one: seen as it comes
    await expect(agent.locator(".msg-in .msg-text").last).to_have_text("gracias")
    await expect(item(agent, "Abierta").locator(".unread")).to_have_count(0)
    path = f"/api/v1/conversations/{by_name['DeJose']}/transfer"
    assert (await gw.post("jose", path, {"agent": "maria"}))[0] == 200
    await expect(item(agent, "DeJose").locator(".unread")).to_have_text("handed to you")
    # A reload keeps them (re-audit: they were gone): they stay until she opens them.
    await agent.reload()
    await expect(agent.locator("#conn")).to_have_text("live")
    await agent.locator("[role=tab][data-state=active]").click()
    await expect(other.locator(".unread")).to_have_text("2 new")
    await expect(item(agent, "DeJose").locator(".unread")).to_have_text("handed to you")
    await other.get_by_role("button", name=OPEN).click()
    await expect(agent.locator(".conv-head h2")).to_have_text("Otra")
    await expect(other.locator(".unread")).to_have_count(0)
    await expect(item(agent, "DeJose").locator(".unread")).to_have_text("handed to you")


async def test_on_a_phone_the_open_conversation_says_what_waits_in_the_list(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: on a phone, with a conversation open (the list hidden behind it), nothing
    on screen showed new customers waiting; only the tab's title. The back button says it."""
    await gw.visitor("Primera", "hola")
    agent = await new_page(PHONE)
    await sign_in(agent, gw)
    await item(agent, "Primera").get_by_role("button", name=ACCEPT).click()
    back = agent.get_by_role("button", name=re.compile("^Back to the list"))
    await expect(back).to_be_visible()
    await expect(back).to_have_accessible_name("Back to the list")
    await gw.visitor("Segunda", "¿alguien?")
    await gw.visitor("Tercera", "hola")
    await expect(back.locator(".back-news")).to_have_text("2")
    await expect(back).to_have_accessible_name("Back to the list (2 waiting)")


async def test_on_a_phone_the_template_form_leaves_the_thread_room(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Team audit: at phone size the template form (a closed WhatsApp window) took about half
    the screen, leaving two or three messages in sight."""
    for n in range(12):
        await gw.whatsapp("+5511966665555", "Janela", f"mensagem {n}")
    (conversation,) = await gw.waiting()
    assert (await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/accept"))[0] == 200
    gw.clock.advance(timedelta(hours=24, minutes=5))  # the window closes
    agent = await new_page(PHONE)
    await sign_in(agent, gw)
    await agent.locator("[role=tab][data-state=active]").click()
    await item(agent, "Janela").get_by_role("button", name=OPEN).click()
    await expect(agent.get_by_role("button", name="Send template")).to_be_visible()
    thread = await agent.locator(".thread").bounding_box()
    assert thread is not None and thread["height"] >= 0.4 * 740, thread


async def test_a_list_answer_older_than_an_event_does_not_drop_what_the_event_brought(
    gw: LiveGateway, new_page: NewPage
) -> None:
    """Full run: the list's answer left the gateway before a transfer to the agent, and came
    after its event: the conversation it brought was dropped as "no longer listed" (counted 2,
    listed 1)."""
    for name in ("Suya", "DeJose"):
        await gw.visitor(name, "hola")
    by_name = {c["contact"]["display_name"]: c["id"] for c in await gw.waiting()}
    assert (await gw.post("maria", f"/api/v1/conversations/{by_name['Suya']}/accept"))[0] == 200
    assert (await gw.post("jose", f"/api/v1/conversations/{by_name['DeJose']}/accept"))[0] == 200
    agent = await new_page()
    await sign_in(agent, gw)
    await agent.locator("[role=tab][data-state=active]").click()
    await expect(agent.locator("#list li")).to_have_count(2)
    held = asyncio.Event()
    release = asyncio.Event()

    async def stale(route: Route) -> None:
        answer = await route.fetch()  # the gateway answers now: before the transfer
        held.set()
        await release.wait()
        await route.fulfill(response=answer)

    await agent.route(re.compile(r"/api/v1/inbox\?.*mine=1"), stale)
    await agent.get_by_label("only mine").check()
    await held.wait()
    path = f"/api/v1/conversations/{by_name['DeJose']}/transfer"
    assert (await gw.post("jose", path, {"agent": "maria"}))[0] == 200
    await expect(count(agent, "active")).to_have_text("2")  # its event has come
    release.set()
    await expect(item(agent, "DeJose")).to_be_visible()
    await expect(agent.locator("#list li")).to_have_count(2)
