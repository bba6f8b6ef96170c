"""The agent inbox page: `GET /inbox` and its static files under `/inbox/static/{name}`.

The page is plain JavaScript and CSS shipped in `gateway/static/` (no build step, nothing fetched
from elsewhere at run time) and speaks only the public agent API, so it doubles as proof that the
API is enough to build an inbox on.

Every answer carries a strict Content-Security-Policy: the page renders customer text, and even
though it only ever uses `textContent`, the policy makes any slip (an injected `<script>` or an
`onerror=` attribute) inert rather than exploitable. Files are answered with a strong ETag and
`Cache-Control: no-cache`, so a browser revalidates cheaply (304) and an upgraded gateway is seen
at once without versioned file names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from aiohttp import web

routes = web.RouteTableDef()

CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Only plain file names with a known extension are served: no paths, no dot-files.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
PAGE = "inbox.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def _asset(name: str) -> Asset | None:
    """Read a packaged file once; the files cannot change while the process runs."""
    path = resources.files("gateway").joinpath("static", name)
    if not path.is_file():
        return None
    body = path.read_bytes()
    suffix = name[name.rfind(".") :]
    return Asset(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def _headers(asset: Asset) -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-cache",
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = _headers(asset)
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


@routes.get("/inbox")
async def page(request: web.Request) -> web.Response:
    asset = _asset(PAGE)
    if asset is None:  # pragma: no cover - a broken install
        raise web.HTTPNotFound(reason="the inbox page is not installed")
    return _serve(request, asset)


@routes.get("/inbox/static/{name}")
async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = _asset(name) if _NAME.match(name) else None
    if asset is None:
        raise web.HTTPNotFound(reason=f"no inbox file {name!r}")
    return _serve(request, asset)
