"""Pieces every benchmark script shares: a free loopback port, waiting for a server it started,
and a signed Meta Cloud API webhook carrying one text message."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import shutil
import socket
import time

import aiohttp
import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, timeout: float = 60) -> None:
    """Poll `url` until it answers below 500 (a process we started is listening)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # polling a process we started; not test state
    raise RuntimeError(f"{url} did not come up")


def signed_meta_text(
    *,
    app_secret: str,
    waba_id: str,
    phone_number_id: str,
    phone: str,
    name: str,
    wamid: str,
    text: str,
    timestamp: int,
) -> tuple[bytes, str]:
    """A Cloud API webhook body with one text message, and its `X-Hub-Signature-256` value."""
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": [{"profile": {"name": name}, "wa_id": phone}],
                            "messages": [
                                {
                                    "from": phone,
                                    "id": wamid,
                                    "timestamp": str(timestamp),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    body = orjson.dumps(payload)
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return body, f"sha256={digest}"


def add_load_argument(parser: argparse.ArgumentParser) -> None:
    """`--load auto|wrk|python`: which load generator drives the measured runs (see README)."""
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator for the measured runs: wrk (if installed, the default) or our"
        " Python client, which caps the bare handler and so flatters every ratio",
    )


def resolve_load(args: argparse.Namespace) -> None:
    """Turn `--load auto` into wrk when it is installed, else the Python client (said so)."""
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"
        if args.load == "python":
            print("wrk not found (apt-get install wrk): using the Python load generator")
