"""``GET /`` and every page of the web UI: its built assets (``api/ui``, shipped in the package)."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent / "ui"


# The UI's policy (defence in depth behind the markdown renderer's escaping): scripts and
# styles from the bundle only (the app sets styles through CSSOM, which CSP allows; index.html
# has no inline <script> or <style>), images from the site, blob: (media fetched with the
# caller's credentials) and data: (the empty favicon); audio and video from blob: too (the
# same fetched media: an <audio src> to the API would carry no key).
UI_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


class UiFiles(StaticFiles):
    """The built UI; any other GET outside /api/ is one of its pages (history routes such as
    /projects/acme/mnist or /share/<token>), so it answers index.html and the app routes it."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            # The request's own path, not ``path`` (normalised, so /api/../x would look like /x).
            if exc.status_code != 404 or scope["method"] not in ("GET", "HEAD") or scope["path"].startswith("/api/"):
                raise
            response = await super().get_response("index.html", scope)
        response.headers["Content-Security-Policy"] = UI_CSP
        return response


def routes() -> list[Mount]:
    """The UI's assets at / (mounted last: every API route matches before it)."""
    return [Mount("/", UiFiles(directory=UI_DIR, html=True), name="ui")]
