"""The web UI's assets and page routes as the app serves them (api/home.py)."""

from __future__ import annotations

from runstream.api.home import UI_DIR


def test_pages_answer_index_html(api) -> None:
    index = (UI_DIR / "index.html").read_text()
    for path in ("/", "/projects/acme/mnist", "/projects/acme/mnist/runs/abc123", "/share/some-token", "/settings"):
        response = api.http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert response.text == index


def test_assets_are_served(api) -> None:
    js = api.http.get("/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    css = api.http.get("/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_unknown_api_paths_stay_json_errors(api) -> None:
    response = api.http.get("/api/v1/no-such-endpoint")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert api.http.get("/api/v1/health").json()["status"] == "ok"
