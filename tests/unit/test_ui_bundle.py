"""The committed web UI bundle (api/ui) is built from the committed sources (web/).

web/build.mjs writes api/ui/manifest.json with a SHA-256 over every source file under
web/ and the SHA-256 of each built file. Changing a source without rebuilding (`make ui`),
or editing the bundle by hand, fails here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
UI = ROOT / "api" / "ui"
BUILT = ("index.html", "app.js", "app.css")


def source_files() -> list[str]:
    """What build.mjs hashes: every file under web/ but node_modules and dotfiles, as sorted posix paths."""
    files = []
    for path in WEB.rglob("*"):
        rel = path.relative_to(WEB)
        if any(part == "node_modules" or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        files.append(rel.as_posix())
    return sorted(files)


def sources_hash() -> str:
    lines = "".join(f"{p}\0{hashlib.sha256((WEB / p).read_bytes()).hexdigest()}\n" for p in source_files())
    return hashlib.sha256(lines.encode()).hexdigest()


def manifest() -> dict:
    return json.loads((UI / "manifest.json").read_text())


def test_bundle_files_exist() -> None:
    for name in (*BUILT, "manifest.json"):
        assert (UI / name).is_file(), f"api/ui/{name} is missing: run `make ui` and commit api/ui"
    html = (UI / "index.html").read_text()
    assert "/app.js?v=" in html and "/app.css?v=" in html


def test_sources_include_the_build_inputs() -> None:
    files = source_files()
    for needed in ("package.json", "package-lock.json", "build.mjs", "index.html", "src/main.ts"):
        assert needed in files


def test_bundle_matches_its_sources() -> None:
    assert manifest()["sources_sha256"] == sources_hash(), (
        "web/ changed since api/ui was built: run `make ui` (npm ci && npm run build in web/) and commit api/ui"
    )


def test_bundle_files_are_the_built_ones() -> None:
    files = manifest()["files"]
    for name in BUILT:
        actual = hashlib.sha256((UI / name).read_bytes()).hexdigest()
        assert files[name] == actual, f"api/ui/{name} differs from what the build wrote: run `make ui`, don't edit it"


def test_the_ui_types_come_from_the_api_as_it_is() -> None:
    """web/openapi.json (what src/api-types.ts is generated from) is the document the API serves now:
    changing an endpoint's declaration without `make ui` fails here."""
    from starlette.testclient import TestClient

    from runstream.api.app import create_app
    from runstream.settings import Settings

    app = create_app(Settings(clickhouse_dsn="chdb://unused", data_dir="unused"))
    served = TestClient(app).get("/api/v1/openapi.json").json()  # no lifespan: nothing starts
    assert served == json.loads((WEB / "openapi.json").read_text()), "run `make ui` to regenerate the UI's types"
