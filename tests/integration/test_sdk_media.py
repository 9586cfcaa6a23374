"""Lists of images (galleries) and DataFrames logged by the real SDK into the real embedded
server (the API in embedded mode, served by uvicorn, on the embedded ClickHouse engine), read
back through the API as the web UI reads them.

W&B's behaviour pinned down: a list of images logged under a key is a gallery of them all at that
step, with their captions; a pandas DataFrame logged directly is a Table (wandb's ``val_to_json``)."""

import io

import numpy as np
import pandas as pd
from PIL import Image as PILImage

import runstream
from tests.helpers import ServedApp, unique

QUIET = {"console": False, "system_metrics": False, "git": False}


def test_a_gallery_and_a_dataframe_reach_the_run_media_endpoint(api, tmp_path):
    headers = api.key("acme", "alice")
    project = unique("media")
    gray = np.full((4, 6), 90, dtype=np.uint8)
    white = np.full((4, 6), 255, dtype=np.uint8)
    df = pd.DataFrame({"label": ["cat", "dog"], "score": [0.9, np.nan]})
    with ServedApp(api.app) as url:
        run = runstream.init(
            entity="acme",
            project=project,
            id="gallery",
            dir=tmp_path,
            settings={**QUIET, "url": url, "api_key": headers["Authorization"].removeprefix("Bearer ")},
        )
        run.log({"examples": [runstream.Image(gray)]}, step=1)  # a gallery of one
        # Two equal images in one gallery: each must still be its own entry on the server.
        examples = [
            runstream.Image(gray, caption="a"),
            runstream.Image(gray, caption="b"),
            runstream.Image(white, caption="c"),
        ]
        run.log({"examples": examples, "preds": df, "empty": []}, step=7)
        assert run.finish().unacked_events == 0

    base = f"/api/v1/runs/acme/{project}/gallery"
    answer = api.http.get(base + "/media", params={"key": "examples"}, headers=headers)
    assert answer.status_code == 200, answer.text
    media = answer.json()["media"]
    assert [(m["step"], m["meta"]["index"], m["meta"]["count"], m["meta"]["caption"]) for m in media] == [
        (1, 0, 1, None),
        (7, 0, 3, "a"),
        (7, 1, 3, "b"),
        (7, 2, 3, "c"),
    ]
    assert all(m["media_type"] == "image" for m in media)
    pixels = []
    for m in media[1:]:
        blob = api.http.get(m["url"], headers=headers)
        assert blob.status_code == 200
        with PILImage.open(io.BytesIO(blob.content)) as image:
            pixels.append(int(np.asarray(image).max()))
    assert pixels == [90, 90, 255]

    (table,) = api.http.get(base + "/media", params={"key": "preds"}, headers=headers).json()["media"]
    assert (
        table["media_type"] == "table"
        and table["step"] == 7
        and table["meta"] == {"rows": 2, "columns": 2, "key": "preds"}
    )
    assert api.http.get(table["url"], headers=headers).json() == {
        "columns": ["label", "score"],
        "data": [["cat", 0.9], ["dog", None]],
    }
    assert api.http.get(base + "/media", params={"key": "empty"}, headers=headers).json()["media"] == []
