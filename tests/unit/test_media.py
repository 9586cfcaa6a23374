"""Media values: what each writes to the run's files directory, and the errors users see."""

import hashlib
import io
import sys

import numpy as np
import orjson
import pandas as pd
import pytest
from PIL import Image as PILImage

import runstream
from runstream import media
from runstream.media import Histogram, Image, Plotly, Table, to_media


def _store(item, files_dir, key="k", step=3):
    stored = item.to_file(files_dir, key, step)
    blob = (files_dir / stored.path).read_bytes()
    assert stored.size == len(blob) and stored.sha256 == hashlib.sha256(blob).hexdigest()
    return stored, blob


def _pixels(blob):
    with PILImage.open(io.BytesIO(blob)) as im:
        return im.mode, np.asarray(im)


def test_rgb_array_round_trips_as_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    stored, blob = _store(Image(arr, caption="sample 1"), tmp_path, key="examples", step=3)
    assert stored.path == f"media/images/examples_3_{stored.sha256[:8]}.png"
    assert stored.media_type == "image"
    assert stored.meta == {"width": 7, "height": 5, "caption": "sample 1", "format": "png"}
    mode, pixels = _pixels(blob)
    assert mode == "RGB" and np.array_equal(pixels, arr)


def test_the_array_is_snapshotted_when_the_image_is_built(tmp_path):
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    image = Image(arr)
    arr[:] = 255  # a reused buffer, before the sender encodes
    assert _pixels(_store(image, tmp_path)[1])[1].max() == 0


def test_float_images_are_scaled_like_wandb(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]])
    assert _pixels(_store(Image(unit), tmp_path)[1])[1].tolist() == [[0, 127, 255]]  # truncated, as wandb
    signed = np.array([[-1.0, 0.0, 1.0]])  # stretched onto 0..1 first
    assert _pixels(_store(Image(signed), tmp_path)[1])[1].tolist() == [[0, 127, 255]]
    wide = np.array([[0.0, 100.0, 300.0]])  # already 0..255: clipped
    assert _pixels(_store(Image(wide), tmp_path)[1])[1].tolist() == [[0, 100, 255]]
    broken = np.array([[np.nan, 0.5, np.inf]])
    assert _pixels(_store(Image(broken), tmp_path)[1])[1].tolist() == [[0, 127, 255]]


def test_grayscale_rgba_bool_and_wide_integer_arrays(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for arr in (gray, gray[:, :, None]):
        mode, pixels = _pixels(_store(Image(arr), tmp_path)[1])
        assert mode == "L" and np.array_equal(pixels, gray)
    rgba = np.random.default_rng(1).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    mode, pixels = _pixels(_store(Image(rgba), tmp_path)[1])
    assert mode == "RGBA" and np.array_equal(pixels, rgba)
    assert _pixels(_store(Image(np.array([[True, False]])), tmp_path)[1])[1].tolist() == [[255, 0]]
    wide = np.array([[-5, 7, 1000]], dtype=np.int32)
    assert _pixels(_store(Image(wide), tmp_path)[1])[1].tolist() == [[0, 7, 255]]


def test_pil_images_and_mode_conversion(tmp_path):
    pil = PILImage.new("RGB", (3, 2), (10, 200, 30))
    mode, pixels = _pixels(_store(Image(pil), tmp_path)[1])
    assert mode == "RGB" and pixels[0, 0].tolist() == [10, 200, 30]
    mode, pixels = _pixels(_store(Image(pil, mode="L"), tmp_path)[1])
    assert mode == "L" and pixels.shape == (2, 3)
    cmyk = PILImage.new("CMYK", (2, 2))  # PNG cannot hold CMYK: stored as RGB
    assert _pixels(_store(Image(cmyk), tmp_path)[1])[0] == "RGB"


def test_an_image_file_is_copied_as_is_and_keeps_its_format(tmp_path):
    source = tmp_path / "photo.JPG"
    PILImage.new("RGB", (6, 4), (255, 0, 0)).save(source, format="JPEG")
    original = source.read_bytes()
    image = Image(str(source))
    source.write_bytes(b"overwritten")  # read when built, not when the sender gets to it
    stored, blob = _store(image, tmp_path / "files", key="photo", step=0)
    assert blob == original
    assert stored.path.endswith(".jpg") and stored.meta == {"width": 6, "height": 4, "caption": None, "format": "jpeg"}


def test_a_path_image_with_a_mode_is_converted_to_png(tmp_path):
    source = tmp_path / "color.png"
    PILImage.new("RGB", (2, 2), (0, 0, 255)).save(source)
    stored, blob = _store(Image(source, mode="L"), tmp_path / "files")
    assert stored.path.endswith(".png") and _pixels(blob)[0] == "L"


class _Tensor:
    """Just enough of a torch tensor: the SDK must use it without importing torch."""

    def __init__(self, values):
        self._values = values
        self.dtype = "torch.float32"

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._values


_Tensor.__module__ = "torch"


def test_torch_tensors_are_read_as_channels_first(tmp_path):
    chw = np.zeros((3, 2, 5), dtype=np.float32)
    chw[0] = 1.0  # a red image
    _stored, blob = _store(Image(_Tensor(chw)), tmp_path)
    mode, pixels = _pixels(blob)
    assert mode == "RGB" and pixels.shape == (2, 5, 3)
    assert (pixels[:, :, 0] == 255).all() and (pixels[:, :, 1:] == 0).all()


def test_matplotlib_figures_become_png_images(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([1, 2, 3])
    image = to_media(fig)
    assert isinstance(image, Image)
    stored, blob = _store(image, tmp_path)
    assert stored.meta["width"] == 100 and stored.meta["height"] == 50
    assert _pixels(blob)[1].shape[:2] == (50, 100)
    assert isinstance(to_media(plt), Image)  # wandb.log({"chart": plt}): the current figure
    plt.close(fig)


def test_histogram_counts_equal_numpys(tmp_path):
    values = np.random.default_rng(2).normal(size=1000)
    stored, blob = _store(Histogram(values, num_bins=20), tmp_path, key="weights")
    counts, edges = np.histogram(values, bins=20)
    assert orjson.loads(blob) == {"bins": edges.tolist(), "values": counts.tolist()}
    assert stored.path.startswith("media/histograms/weights_3_") and stored.path.endswith(".json")
    assert stored.media_type == "histogram"
    assert stored.meta == {"bins": 20, "min": edges[0], "max": edges[-1], "nonfinite": 0}
    assert len(Histogram(values, num_bins=10_000).histogram) == media.MAX_BINS  # capped, like wandb


def test_nan_and_inf_are_dropped_and_counted(tmp_path):
    stored, blob = _store(Histogram([1.0, float("nan"), 2.0, float("inf"), -float("inf"), 3.0], num_bins=2), tmp_path)
    assert orjson.loads(blob)["values"] == [1, 2]
    assert stored.meta["nonfinite"] == 3 and stored.meta["min"] == 1.0 and stored.meta["max"] == 3.0


def test_a_precomputed_numpy_histogram_is_accepted(tmp_path):
    counts, edges = np.histogram([1, 2, 2, 3], bins=3)
    stored, blob = _store(Histogram(np_histogram=(counts, edges)), tmp_path)
    assert orjson.loads(blob) == {"bins": edges.tolist(), "values": [1, 2, 1]}
    assert stored.meta["bins"] == 3


def test_histograms_without_numpy_match_numpys(monkeypatch):
    samples = [
        np.random.default_rng(3).normal(size=500).tolist(),
        [0.1, 0.2, 0.30000000000000004, 0.7, 1.0],
        [5.0, 5.0],  # a single value: numpy widens it to 4.5..5.5
        [],
        [1, 2, float("nan")],
    ]
    expected = []
    for sample in samples:
        finite = [v for v in sample if v == v]
        counts, edges = np.histogram(finite, bins=7)
        expected.append((counts.tolist(), edges.tolist()))
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` now fails
    for sample, (counts, edges) in zip(samples, expected):
        h = Histogram(sample, num_bins=7)
        assert h.histogram == counts and h.bins == pytest.approx(edges, rel=1e-12, abs=1e-15)
    assert Histogram([1, 2, float("nan")], num_bins=7).nonfinite == 1
    with pytest.raises(TypeError):
        Histogram(["1.5", 2])


def test_table_from_rows_and_add_data(tmp_path):
    table = Table(
        columns=["id", "label", "score"], data=[[1, "cat", np.float32(0.5)], (np.int64(2), "dog", float("nan"))]
    )
    table.add_data(3, None, {"top": [np.int8(1), 2.5]})
    stored, blob = _store(table, tmp_path, key="predictions", step=0)
    assert orjson.loads(blob) == {
        "columns": ["id", "label", "score"],
        "data": [[1, "cat", 0.5], [2, "dog", None], [3, None, {"top": [1, 2.5]}]],
    }
    assert stored.path.startswith("media/tables/predictions_0_") and stored.media_type == "table"
    assert stored.meta == {"rows": 3, "columns": 3}
    assert Table(columns=["a"], rows=[[1]]).data == [[1]]
    assert Table(columns=["a", "b"], data=np.arange(4).reshape(2, 2)).data == [[0, 1], [2, 3]]
    assert Table().columns == ["Input", "Output", "Expected"]  # wandb's default


def test_table_from_a_dataframe(tmp_path):
    df = pd.DataFrame(
        {
            "x": [1.5, np.nan],
            "name": ["a", None],
            "when": [pd.Timestamp("2024-01-02 03:04:05"), pd.NaT],
            "n": pd.array([7, None], dtype="Int64"),
        }
    )
    expected = {
        "columns": ["x", "name", "when", "n"],
        "data": [[1.5, "a", "2024-01-02T03:04:05", 7], [None, None, None, None]],
    }
    for table in (Table(dataframe=df), Table(data=df)):
        stored, blob = _store(table, tmp_path)
        assert orjson.loads(blob) == expected and stored.meta == {"rows": 2, "columns": 4}


def test_table_errors_are_raised_where_the_user_builds_it():
    with pytest.raises(ValueError, match="2 values"):
        Table(columns=["a", "b", "c"], data=[[1, 2]])
    table = Table(columns=["a"])
    with pytest.raises(ValueError):
        table.add_data(1, 2)
    with pytest.raises(TypeError, match="Image"):
        table.add_data(Image(np.zeros((2, 2), dtype=np.uint8)))
    with pytest.raises(TypeError):
        Table(columns=["a"], data=[1, 2])  # rows must be lists
    with pytest.raises(TypeError):
        Table(columns="abc")
    with pytest.raises(ValueError, match="unique"):
        Table(columns=["a", "a"])
    with pytest.raises(TypeError):
        Table(dataframe=[[1]])


class _FakePlotlyFigure:
    def to_json(self):
        return '{"data":[{"type":"scatter","y":[1,2]}],"layout":{}}'


_FakePlotlyFigure.__module__ = "plotly.graph_objs._figure"


def test_plotly_figures_are_stored_as_their_json(tmp_path):
    fig = _FakePlotlyFigure()
    for item in (Plotly(fig), to_media(fig)):
        assert isinstance(item, Plotly)
        stored, blob = _store(item, tmp_path, key="chart")
        assert blob == fig.to_json().encode()
        assert stored.media_type == "plotly" and stored.path.startswith("media/plotly/chart_3_")


def test_a_real_plotly_figure(tmp_path):
    go = pytest.importorskip("plotly.graph_objects")
    fig = go.Figure(go.Scatter(y=[1, 3, 2]))
    _stored, blob = _store(to_media(fig), tmp_path)
    assert orjson.loads(blob)["data"][0]["y"] == [1, 3, 2]


@pytest.mark.parametrize(
    "key", ["../../escape", "/etc/passwd", "..", "val/examples", "a\\..\\b", "", "x" * 300, ".hidden"]
)
def test_keys_cannot_escape_the_files_directory(tmp_path, key):
    files_dir = tmp_path / "run" / "files"
    stored, _ = _store(Histogram([1, 2]), files_dir, key=key)
    parts = stored.path.split("/")
    assert parts[:2] == ["media", "histograms"] and len(parts) == 3
    assert ".." not in parts[2] and not parts[2].startswith(".") and len(parts[2]) < 150
    assert (files_dir / stored.path).resolve().is_relative_to(files_dir.resolve())


def test_wrong_inputs_raise_when_built(tmp_path):
    with pytest.raises(TypeError):
        Image(123)
    with pytest.raises(TypeError):
        Image([[0, 1], [1, 0]])  # wandb wants an array here too
    with pytest.raises(ValueError, match="shape"):
        Image(np.zeros((3, 4, 5)))  # numpy CxHxW: transpose first
    with pytest.raises(ValueError, match="shape"):
        Image(np.zeros((0, 4)))
    with pytest.raises(TypeError, match="dtype"):
        Image(np.zeros((2, 2), dtype=complex))
    with pytest.raises(FileNotFoundError):
        Image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        Image(tmp_path / "notes.txt")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not an image"):
        Image(tmp_path / "empty.png")
    with pytest.raises(ValueError):
        Histogram()
    with pytest.raises(ValueError):
        Histogram([1], np_histogram=([1], [0, 1]))
    with pytest.raises(TypeError):
        Histogram(["a", "b"])
    with pytest.raises(ValueError):
        Histogram([1, 2], num_bins=0)
    with pytest.raises(ValueError):
        Histogram(np_histogram=([1, 2], [0, 1]))  # one edge too few
    with pytest.raises(ValueError):
        Histogram(np_histogram=([1] * 513, list(range(514))))
    with pytest.raises(ValueError):
        Histogram(np_histogram=[1, 2, 3])
    with pytest.raises(TypeError):
        Plotly({"data": []})


def test_a_missing_optional_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        Image(np.zeros((2, 2)))


def test_to_media_converts_only_media_and_figures():
    for value in (1.5, 3, "text", [1, 2], np.zeros(3), None, {"a": 1}):
        assert to_media(value) is None
    histogram = Histogram([1, 2])
    assert to_media(histogram) is histogram


def test_the_package_exposes_the_wandb_names():
    assert runstream.Image is Image and runstream.Histogram is Histogram
    assert runstream.Table is Table and runstream.Plotly is Plotly


# -- lists of media (galleries) and DataFrames, as log() turns values into media ---------------


def _image(value: int, caption=None) -> Image:
    return Image(np.full((2, 3), value, dtype=np.uint8), caption=caption)


def test_a_list_of_images_is_a_gallery_one_file_per_image(tmp_path):
    same = _image(7, "a cat")
    items = media.sequence_to_media("val/examples", [same, same, _image(200, 3)])  # equal images, twice
    stored = [_store(item.snapshot(), tmp_path, key="val/examples", step=5)[0] for item in items]
    assert [s.meta["index"] for s in stored] == [0, 1, 2] and {s.meta["count"] for s in stored} == {3}
    assert [s.meta["caption"] for s in stored] == ["a cat", "a cat", "3"]
    assert all(s.media_type == "image" for s in stored)
    # The server keeps one entry per path: each image has its own, in index order.
    assert [s.path for s in stored] == sorted({s.path for s in stored})
    assert stored[0].path == f"media/images/val_examples_5_000_{stored[0].sha256[:8]}.png"
    assert stored[0].sha256 == stored[1].sha256 != stored[2].sha256
    assert _pixels((tmp_path / stored[2].path).read_bytes())[1].max() == 200


def test_a_tuple_of_matplotlib_figures_is_a_gallery_of_images():
    plt = pytest.importorskip("matplotlib.pyplot")
    figures = (plt.figure(figsize=(1, 1)), plt.figure(figsize=(1, 1)))
    try:
        items = media.sequence_to_media("plots", figures)
    finally:
        for fig in figures:
            plt.close(fig)
    assert [(type(i.item), i.index, i.count) for i in items] == [(Image, 0, 2), (Image, 1, 2)]


def test_lists_of_numbers_stay_histograms_and_empty_lists_store_nothing(tmp_path):
    for values in ([1, 2, 2, 3], (1.0, 2.0, 2.0, 3.0), [[1, 2], [2, 3]]):
        (item,) = media.sequence_to_media("h", values)
        assert isinstance(item, Histogram) and sum(item.histogram) == 4
    assert media.sequence_to_media("h", []) == [] and media.sequence_to_media("h", ()) == []


@pytest.mark.parametrize(
    "values,message",
    [
        (lambda: [1.0, _image(1)], "'bad' mixes media with other values"),
        (lambda: [_image(1), 1.0], "'bad' mixes Image with float"),
        (lambda: [_image(1), Table(columns=["a"])], "'bad' mixes Image with Table"),
        (lambda: [Table(columns=["a"]), Table(columns=["a"])], "'bad' is a list of Table"),
        (lambda: [Histogram([1]), Histogram([2])], "'bad' is a list of Histogram"),
        (lambda: [_FakePlotlyFigure()], "'bad' is a list of Plotly"),
        (lambda: ["a", "b"], "'bad': runstream.Histogram takes a sequence of numbers"),
    ],
)
def test_mixed_and_unsupported_lists_are_refused_naming_the_key(values, message):
    with pytest.raises(TypeError, match=message):
        media.sequence_to_media("bad", values())


def test_a_gallery_keeps_wandbs_first_108_images_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(media, "_capped_keys", set())
    images = [_image(i) for i in range(110)]
    with caplog.at_level("WARNING", logger="runstream"):
        items = media.sequence_to_media("many", images)
        media.sequence_to_media("many", images)
    assert len(items) == 108 and items[-1].item is images[107] and {i.count for i in items} == {108}
    assert [r.getMessage() for r in caplog.records] == [
        "runstream: log() value for 'many' holds 110 Images; only the first 108 are kept, as in wandb"
    ]


def test_a_dataframe_becomes_a_table_as_in_wandb(tmp_path):
    df = pd.DataFrame({"label": ["cat", None], "score": [0.5, np.nan]})
    table = to_media(df)
    assert isinstance(table, Table)
    stored, blob = _store(table, tmp_path, key="preds")
    assert stored.media_type == "table" and stored.path.startswith("media/tables/preds_3_")
    assert orjson.loads(blob) == {"columns": ["label", "score"], "data": [["cat", 0.5], [None, None]]}
    assert to_media(df["score"]) is None  # a Series is numbers: a histogram, as before


def test_log_stores_galleries_dataframes_and_histograms_at_the_step(tmp_path):
    from runstream import events
    from tests.helpers import spooled_events

    run = runstream.init(
        project="p", mode="offline", dir=tmp_path, settings={"console": False, "system_metrics": False, "git": False}
    )
    run.log(
        {"examples": [_image(1, "one"), _image(2, "two")], "df": pd.DataFrame({"a": [1]}), "h": [1, 2], "empty": []},
        step=4,
    )
    with pytest.raises(TypeError, match="'mixed' mixes Image with int"):
        run.log({"mixed": [_image(1), 2]})
    run.finish()
    stored = sorted(
        (
            e.data["meta"]["key"],
            e.data["step"],
            e.data["media_type"],
            e.data["meta"].get("index"),
            e.data["meta"].get("caption"),
        )
        for e in spooled_events(run.dir)
        if e.type == events.FILE and e.data["kind"] == "media"
    )
    assert stored == [
        ("df", 4, "table", None, None),
        ("examples", 4, "image", 0, "one"),
        ("examples", 4, "image", 1, "two"),
        ("h", 4, "histogram", None, None),
    ]
