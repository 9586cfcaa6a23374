"""Writes the API's OpenAPI document to web/openapi.json, which `npm run types` turns into src/api-types.ts.

The document is what GET /api/v1/openapi.json answers: the app built by create_app, asked
through a TestClient without its lifespan, so no database is opened (building the document
needs none). Run it with the project's Python: `.venv/bin/python web/openapi_dump.py`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from starlette.testclient import TestClient

from runstream.api.app import create_app
from runstream.settings import Settings

OUT = Path(__file__).resolve().parent / "openapi.json"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runstream-openapi-") as data_dir:
        app = create_app(Settings(clickhouse_dsn=f"chdb://{data_dir}/chdb", data_dir=data_dir))
        answer = TestClient(app).get("/api/v1/openapi.json")
        answer.raise_for_status()
    # Sorted and indented, so a change of the API reads as a small diff of this file.
    OUT.write_text(json.dumps(answer.json(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
