"""``GET /``: the web UI when its built assets are installed, else a plain page listing the projects.

The plain page is what a newcomer sees before the UI is built: every project the
caller can read, with links to its runs and alerts in the JSON API.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from runstream.api.auth import authenticate
from runstream.storage import accounts

UI_DIR = Path(__file__).resolve().parent / "ui"


async def home(request: Request) -> Response:
    principal = await authenticate(request)
    backend = request.app.state.backend
    if principal.local_admin:
        projects = await backend.run(accounts.list_projects, None, True)
    else:
        projects = await backend.run(accounts.list_projects, [principal.team] if principal.team else [], True)
    rows = "".join(
        f"<tr><td>{html.escape(p['team'])}/{html.escape(p['project'])}</td><td>{p['run_count']}</td>"
        f"<td>{html.escape(p['visibility'])}</td>"
        f"<td><a href='/api/v1/projects/{html.escape(p['team'])}/{html.escape(p['project'])}/runs?limit=100'>runs</a> · "
        f"<a href='/api/v1/projects/{html.escape(p['team'])}/{html.escape(p['project'])}/alerts'>alerts</a></td></tr>"
        for p in projects)
    body = (
        "<!doctype html><meta charset=utf-8><title>runstream</title>"
        "<style>body{font:15px system-ui;margin:2em}td,th{padding:.3em 1em;text-align:left}</style>"
        "<h1>runstream</h1><p>Projects you can see:</p>"
        f"<table><tr><th>project</th><th>runs</th><th>visibility</th><th></th></tr>{rows}</table>"
        + ("" if projects else "<p>None yet: log a run (<code>runstream demo</code>) and reload.</p>")
        + "<p>API: <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a> · "
          "health: <a href='/api/v1/health'>/api/v1/health</a></p>")
    return HTMLResponse(body)


# The UI's policy (defence in depth behind the markdown renderer's escaping): scripts and
# styles from the bundle only (the app sets styles through CSSOM, which CSP allows; index.html
# has no inline <script> or <style>), images from the site, blob: (media fetched with the
# caller's credentials) and data: (the empty favicon).
UI_CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
          "frame-ancestors 'none'")


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


def routes() -> list[Route | Mount]:
    """The UI's assets at / when they are built into the package, else the plain page."""
    if (UI_DIR / "index.html").is_file():
        return [Mount("/", UiFiles(directory=UI_DIR, html=True), name="ui")]
    return [Route("/", home, methods=["GET"], include_in_schema=False)]
