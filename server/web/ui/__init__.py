"""The web console: plain HTML, CSS and JavaScript modules under ``/ui/``.

The relay serves these files itself, without the admin token (the page asks
for it and sends it on every ``/v1`` call, like any other client). Every
answer under ``/ui`` carries a strict Content-Security-Policy: scripts and
styles only from these files, no inline code, no framing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

UI_DIR: Final = Path(__file__).parent
PREFIX: Final = "/ui/"

SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate on each load (ETag/Last-Modified make that a 304), so an
    # upgraded relay never runs yesterday's script against today's API.
    "Cache-Control": "no-cache",
}

# Only flat file names: no dots beyond the suffix, no slashes, so no path can
# leave UI_DIR, and this module's own source is never served.
_ASSET: Final = r"{name:[a-z0-9_-]+\.(?:js|css|svg)}"


async def _index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(UI_DIR / "index.html")


async def _asset(request: web.Request) -> web.FileResponse:
    path = UI_DIR / request.match_info["name"]
    if not path.is_file():
        raise web.HTTPNotFound(reason="Not found", text=f"no file {request.path}")
    return web.FileResponse(path)


async def _to_index(_: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(PREFIX)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == PREFIX.rstrip("/") or request.path.startswith(PREFIX):
        response.headers.update(SECURITY_HEADERS)


def add_console(app: web.Application) -> None:
    """Serve the console at /ui/ (and redirect /ui there) with its security headers."""
    app.router.add_get(PREFIX.rstrip("/"), _to_index)
    app.router.add_get(PREFIX, _index)
    app.router.add_get(PREFIX + _ASSET, _asset)
    app.on_response_prepare.append(_security_headers)
