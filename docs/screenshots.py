"""Regenerate the README's screenshots of the inbox page and the web chat widget.

    python docs/screenshots.py        (needs Debian's chromium and `pip install -e '.[test]'`)

It starts a gateway on a free loopback port with a manual clock set a day in the past, seeds a
few conversations the way each channel brings them (web chat through the visitor API, WhatsApp
and email through the ingest path their adapters use), lets time pass so some become inactive,
and photographs the main screens with headless Chromium at desktop and phone sizes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, ViewportSize, async_playwright, expect  # noqa: E402

from gateway.model import DeliveryState, DeliveryStatus  # noqa: E402
from tests.browser.harness import TOKENS, LiveGateway, launch, live_gateway  # noqa: E402

DOCS = ROOT / "docs"
DESKTOP: ViewportSize = {"width": 1280, "height": 760}
PHONE: ViewportSize = {"width": 360, "height": 740}
WIDGET: ViewportSize = {"width": 900, "height": 680}


async def seed(gw: LiveGateway) -> str:
    """Conversations in every state; returns the web chat token of Ana, whom Maria attends."""
    # Yesterday: a WhatsApp customer nobody answered within the 24 h window...
    await gw.whatsapp("+5511987654321", "Rafael Lima", "Boa tarde, meu pedido chegou quebrado")
    # ...and one Maria took, whose window closes while she still holds it. Twilio cannot be
    # reached from here, so her reply fails visibly.
    gw.clock.advance(timedelta(minutes=20))
    await gw.whatsapp("+5511988887777", "Paulo Mendes", "Preciso trocar o endereço de entrega")
    (paulo,) = [c for c in await gw.waiting() if c["contact"]["display_name"] == "Paulo Mendes"]
    await gw.post("maria", f"/api/v1/conversations/{paulo['id']}/accept")
    await gw.post("maria", f"/api/v1/conversations/{paulo['id']}/messages", {"text": "Olá Paulo!"})
    await gw.settle()
    gw.clock.advance(timedelta(hours=23, minutes=45))
    await gw.runtime.scheduler.run_once()
    # A web chat visitor who left while no agent was online.
    await gw.visitor("Lucía", "¿Hacen envíos a Montevideo?")
    gw.clock.advance(timedelta(minutes=6))
    await gw.runtime.scheduler.run_once()
    # This morning's queue, oldest first (from here on the scheduler does not run, so Paulo's
    # conversation stays active with its window closed, as between two scheduler passes).
    gw.clock.advance(timedelta(minutes=2))
    await gw.whatsapp("+5511999990000", "Bruno Costa", "Qual é o preço do plano anual?")
    gw.clock.advance(timedelta(minutes=7))
    await gw.email(
        "carla@example.com", "Carla Pérez", "Invoice 2026-118 is missing", "Hello, I cannot..."
    )
    gw.clock.advance(timedelta(minutes=4))
    visitor = await gw.visitor("Ana Souza", "Hola, necesito ayuda con mi pedido #4411")
    gw.clock.advance(timedelta(minutes=3))
    await gw.visitor("Diego", "Is anyone there? <b>I typed markup</b>")
    # Maria attends Ana: a short exchange with every delivery state.
    waiting = await gw.waiting()
    ana = next(c for c in waiting if c["contact"]["display_name"] == "Ana Souza")["id"]
    await gw.post("maria", f"/api/v1/conversations/{ana}/accept")
    path = f"/api/v1/conversations/{ana}/messages"
    _, first = await gw.post("maria", path, {"text": "¡Hola Ana! Soy Maria. ¿Me das tu email?"})
    await gw.settle()
    await gw.visitor_says(visitor, "ana.souza@example.com, gracias")
    _, second = await gw.post("maria", path, {"text": "Gracias. Ya veo el pedido #4411."})
    await gw.settle()
    for message, status in ((first, DeliveryState.READ), (second, DeliveryState.DELIVERED)):
        await gw.runtime.ingestor.status(
            DeliveryStatus(
                channel="site",
                provider_message_id=message["message"]["id"],
                status=status,
                at=gw.clock.now(),
            )
        )
    await gw.post("maria", path, {"text": "Te escribo en un momento con el estado del envío."})
    await gw.settle()
    return visitor


async def sign_in(page: Page, gw: LiveGateway) -> None:
    await page.goto(gw.url + "/inbox")
    await page.get_by_label("Agent token").fill(TOKENS["maria"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#conn")).to_have_text("live")


async def main() -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=24, minutes=40)
    with tempfile.TemporaryDirectory() as tmp:
        async with live_gateway(Path(tmp) / "gw.db", start=start) as gw, async_playwright() as pw:
            ana = await seed(gw)
            browser = await launch(pw)
            desk = await browser.new_page(viewport=DESKTOP)
            await sign_in(desk, gw)
            bruno = desk.locator("#list li", has_text="Bruno Costa")
            await bruno.get_by_role(
                "button", name="Preview the conversation with Bruno Costa"
            ).click()
            await expect(desk.locator(".thread")).to_contain_text("plano anual")
            await desk.mouse.move(0, 0)  # no hover highlight in the picture
            await desk.screenshot(path=DOCS / "inbox-waiting.png")

            await desk.locator("[role=tab][data-state=active]").click()
            await desk.get_by_role("button", name="Open the conversation with Ana Souza").click()
            await expect(desk.locator(".tick-read")).to_be_visible()
            await desk.get_by_label("Reply", exact=True).fill("Un momento, por favor")
            # Ana is typing in her widget (a visitor socket, as the widget speaks it).
            ws_url = gw.url.replace("http", "ws") + f"/webchat/site/ws?token={ana}"
            async with gw.http.ws_connect(ws_url) as visitor_ws:
                await visitor_ws.send_json({"type": "typing"})
                await expect(desk.locator(".typing")).to_have_text("Ana Souza is typing…")
                await desk.screenshot(path=DOCS / "inbox-conversation.png")

            await desk.get_by_role("button", name="Open the conversation with Paulo Mendes").click()
            await expect(desk.locator(".tick-failed")).to_be_visible()
            await desk.get_by_label("Template name").fill("HX6f1c2e0a9b8d7c6e5f4a3b2c1d0e9f8a")
            await desk.get_by_label("Template language").fill("pt_BR")
            await desk.get_by_label("Template parameters, one per line").fill("Paulo\n4411")
            await desk.mouse.move(0, 0)
            await desk.screenshot(path=DOCS / "inbox-template.png")

            await desk.locator("[role=tab][data-state=inactive]").click()
            await desk.get_by_role("button", name="Open the conversation with Rafael Lima").click()
            await expect(desk.locator(".banner")).to_contain_text("window expired")
            await desk.mouse.move(0, 0)
            await desk.screenshot(path=DOCS / "inbox-inactive.png")

            phone = await browser.new_page(viewport=PHONE)
            await sign_in(phone, gw)
            await expect(phone.locator("#list li")).to_have_count(3)
            await phone.mouse.move(PHONE["width"] - 1, PHONE["height"] - 1)
            await phone.screenshot(path=DOCS / "inbox-mobile.png")
            await phone.locator("[role=tab][data-state=active]").click()
            await phone.get_by_role("button", name="Open the conversation with Ana Souza").click()
            await expect(phone.locator(".tick-read")).to_be_visible()
            await phone.screenshot(path=DOCS / "inbox-mobile-conversation.png")

            visitor = await browser.new_page(viewport=WIDGET)
            await visitor.goto(gw.url + "/webchat/site/demo")
            await expect(visitor.locator(".gwc-status")).to_have_text("online")
            await visitor.get_by_label("Message").fill("Hi! Do you ship to Lisbon?")
            await visitor.get_by_role("button", name="Send").click()
            await expect(visitor.locator(".gwc-msg:not(.gwc-unsent)")).to_have_count(1)
            waiting = await gw.waiting()
            chat = next(c for c in waiting if c["preview"] == "Hi! Do you ship to Lisbon?")["id"]
            await gw.post("jose", f"/api/v1/conversations/{chat}/accept")
            await gw.post(
                "jose",
                f"/api/v1/conversations/{chat}/messages",
                {"text": "Hello! Yes, we ship to Lisbon in 2-3 days."},
            )
            await expect(visitor.locator(".gwc-out")).to_have_count(1)
            await gw.post("jose", f"/api/v1/conversations/{chat}/typing")
            await expect(visitor.locator(".gwc-typing")).to_have_text("Agent is typing…")
            await visitor.screenshot(path=DOCS / "widget.png")
            await browser.close()
            print(f"screenshots written to {DOCS}")


if __name__ == "__main__":
    asyncio.run(main())
