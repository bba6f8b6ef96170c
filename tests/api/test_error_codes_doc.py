"""README's table of error codes names every code the gateway answers with, at its status."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import HTTP_STATUS

ROOT = Path(__file__).resolve().parents[2]
WEB_CHAT_CODES = {  # answered by the web chat plugin itself
    "invalid_token": 401,
    "origin_not_allowed": 403,
    "client_id_reused": 422,
    "rate_limited": 429,
}
OTHERS = {"method_not_allowed": 405}  # aiohttp's own refusal, in our error shape


def test_every_error_code_is_in_the_readme_at_its_status() -> None:
    """README audit: codes a client meets (`unauthorized`, `not_assignee`, `invalid_json`...)
    were named nowhere."""
    section = (ROOT / "README.md").read_text().split("### Error codes", 1)[1].split("\n## ", 1)[0]
    documented = {
        code: int(status)
        for code, status in re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M)
    }
    assert documented == {**HTTP_STATUS, **WEB_CHAT_CODES, **OTHERS}
