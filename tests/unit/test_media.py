"""Media values: what each writes to the run's files directory, and the errors users see."""

import hashlib
import io
import sys
import wave
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from PIL import Image as PILImage

import runstream
from runstream import media
from runstream.media import Audio, Histogram, Html, Image, Object3D, Plotly, Table, Video, to_media


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


# -- Audio, Video, Html, Object3D ---------------------------------------------------------------------------------


def _wav_samples(blob):
    """(sample rate, channels, sample width, int16 samples as frames x channels) of a WAV."""
    with wave.open(io.BytesIO(blob), "rb") as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), frames.reshape(-1, wav.getnchannels())


def _gif_frames(blob):
    """(size, frames as RGB arrays, per-frame durations in ms) of a GIF."""
    with PILImage.open(io.BytesIO(blob)) as gif:
        frames, durations = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info["duration"])
        return gif.size, frames, durations


def test_the_package_exposes_the_new_wandb_media_names():
    assert runstream.Audio is Audio and runstream.Video is Video
    assert runstream.Html is Html and runstream.Object3D is Object3D


def test_float_audio_is_a_16_bit_wav_clipped_to_minus_1_to_1(tmp_path):
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -2.0], dtype=np.float32)
    stored, blob = _store(Audio(samples, sample_rate=8000, caption="clip"), tmp_path, key="speech", step=2)
    assert stored.media_type == "audio" and stored.path == f"media/audio/speech_2_{stored.sha256[:8]}.wav"
    assert stored.meta == {"sample_rate": 8000, "duration": 7 / 8000, "channels": 1, "caption": "clip", "format": "wav"}
    rate, channels, width, pcm = _wav_samples(blob)
    assert (rate, channels, width) == (8000, 1, 2)
    assert pcm[:, 0].tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]  # round(x * 32767), clipped


def test_stereo_audio_is_samples_by_channels_interleaved():
    left, right = np.linspace(-1, 1, 100), np.linspace(1, -1, 100)
    audio = Audio(np.stack([left, right], axis=1), sample_rate=22050)
    rate, channels, _, pcm = _wav_samples(audio._blob)
    assert (rate, channels, audio.channels, audio.duration) == (22050, 2, 2, 100 / 22050)
    assert np.array_equal(pcm[:, 0], np.round(left * 32767)) and np.array_equal(pcm[:, 1], np.round(right * 32767))


def test_integer_pcm_audio_keeps_its_16_most_significant_bits():
    int16 = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    assert _wav_samples(Audio(int16, sample_rate=8000)._blob)[3][:, 0].tolist() == int16.tolist()
    int32 = np.array([-(2**31), 2**16 * 5, 2**31 - 1], dtype=np.int32)
    assert _wav_samples(Audio(int32, sample_rate=8000)._blob)[3][:, 0].tolist() == [-32768, 5, 32767]


def test_audio_takes_torch_tensors_lists_and_whole_float_sample_rates():
    torch = pytest.importorskip("torch")
    from_tensor = Audio(torch.full((40, 2), 0.25), sample_rate=16000.0)
    assert from_tensor.sample_rate == 16000 and _wav_samples(from_tensor._blob)[3].tolist() == [[8192, 8192]] * 40
    assert _wav_samples(Audio([0.0, 1.0], sample_rate=np.int64(100))._blob)[3][:, 0].tolist() == [0, 32767]


def test_audio_refuses_nan_and_inf_saying_how_to_clean_it():
    samples = np.zeros(100)
    samples[[3, 50]] = np.nan
    samples[7] = np.inf
    with pytest.raises(ValueError, match=r"holds 3 NaN/Inf samples; clean it \(numpy.nan_to_num\) before logging"):
        Audio(samples, sample_rate=8000)


@pytest.mark.parametrize(
    "data,sample_rate,error,message",
    [
        (np.zeros(10), None, ValueError, "needs sample_rate="),
        (np.zeros(10), 0, ValueError, "sample_rate must be a whole number above 0, got 0"),
        (np.zeros(10), 22050.5, ValueError, "got 22050.5"),
        (np.zeros(10), "16000", ValueError, "got '16000'"),
        (np.zeros(10), True, ValueError, "got True"),
        (np.zeros((2, 3, 4)), 8000, ValueError, r"1-D \(mono\) or 2-D \(samples x channels\) array, got shape"),
        (np.zeros((2, 16000)), 8000, ValueError, r"16000 channels.*transpose a \(channels, samples\) one"),
        (np.zeros(0), 8000, ValueError, "holds no samples"),
        (
            np.zeros(10, dtype=np.int64),
            8000,
            TypeError,
            "float samples in \\[-1, 1\\] or int16/int32 PCM, got dtype int64",
        ),
        (np.array(["a"]), 8000, TypeError, "got dtype <U1"),
        ({"samples": 1}, 8000, TypeError, "takes an audio file path, a numpy array or a torch tensor, got dict"),
    ],
)
def test_audio_refuses_bad_arrays_and_rates_clearly(data, sample_rate, error, message):
    with pytest.raises(error, match=message):
        Audio(data, sample_rate=sample_rate)


def test_audio_files_are_kept_as_is_with_what_can_be_read_of_them(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    wav_path = tmp_path / "tone.wav"
    wav_path.write_bytes(Audio(np.zeros((80, 2)), sample_rate=8000)._blob)
    stored, blob = _store(Audio(wav_path, caption="from a file"), tmp_path / "files", key="a")
    assert blob == wav_path.read_bytes() and stored.path.endswith(".wav")
    assert stored.meta == {
        "sample_rate": 8000,
        "duration": 0.01,
        "channels": 2,
        "caption": "from a file",
        "format": "wav",
    }
    flac_path = tmp_path / "tone.flac"
    soundfile.write(flac_path, np.zeros(16000), 16000)
    stored, blob = _store(Audio(str(flac_path), sample_rate=999), tmp_path / "files", key="b")  # a file keeps its rate
    assert blob == flac_path.read_bytes() and stored.path.endswith(".flac")
    assert (stored.meta["format"], stored.meta["sample_rate"], stored.meta["duration"]) == ("flac", 16000, 1.0)
    m4a = tmp_path / "unknown.m4a"
    m4a.write_bytes(b"not really")  # kept, without numbers nothing can read
    assert Audio(m4a)._encode()[2]["sample_rate"] is None
    with pytest.raises(ValueError, match=r"takes files of the types wav, mp3, ogg, flac, m4a; got '.*notes.txt'"):
        Audio(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match=r"runstream.Audio: no file at '.*missing.wav'"):
        Audio(tmp_path / "missing.wav")


def test_a_list_of_audio_is_a_gallery_of_at_most_100(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(media, "_capped_keys", set())
    clips = [Audio(np.full(8, i / 200), sample_rate=8000, caption=f"clip {i}") for i in range(101)]
    with caplog.at_level("WARNING", logger="runstream"):
        items = media.sequence_to_media("speech", clips)
    assert len(items) == 100 and "holds 101 Audios; only the first 100 are kept" in caplog.text
    stored = [_store(item.snapshot(), tmp_path, key="speech", step=1)[0] for item in items[:2]]
    assert [(s.media_type, s.meta["index"], s.meta["count"], s.meta["caption"]) for s in stored] == [
        ("audio", 0, 100, "clip 0"),
        ("audio", 1, 100, "clip 1"),
    ]
    assert stored[1].path.startswith("media/audio/speech_1_001_")


def test_gray_frames_are_a_looping_gif_at_4_fps_by_default(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (5, 1, 6, 8), dtype=np.uint8)  # time, channel, height, width
    stored, blob = _store(Video(frames, caption="rollout"), tmp_path, key="policy", step=9)
    assert stored.media_type == "video" and stored.path == f"media/videos/policy_9_{stored.sha256[:8]}.gif"
    assert stored.meta == {
        "width": 8,
        "height": 6,
        "frames": 5,
        "fps": 4,
        "format": "gif",
        "caption": "rollout",
        "duration": 1.25,
    }
    size, decoded, durations = _gif_frames(blob)
    assert size == (8, 6) and durations == [250] * 5
    assert all(np.array_equal(got[:, :, 0], want[0]) for got, want in zip(decoded, frames, strict=True))


def test_float_rgba_frames_are_scaled_from_0_1_and_lose_their_alpha():
    frames = np.zeros((3, 4, 4, 4), dtype=np.float32)
    frames[:, 0] = 1.0  # red
    frames[1, 0] = 0.0
    frames[1, 2] = 1.0  # blue
    frames[:, 3] = 0.0  # alpha: dropped, not applied
    video = Video(frames, fps=10)
    _, decoded, durations = _gif_frames(video._blob)
    assert durations == [100] * 3
    assert [tuple(int(c) for c in f[0, 0]) for f in decoded] == [(255, 0, 0), (0, 0, 255), (255, 0, 0)]


def test_a_batch_of_videos_is_tiled_into_a_grid_as_wandb_does():
    batch = np.stack([np.full((2, 1, 3, 5), 40 * (b + 1), dtype=np.uint8) for b in range(3)])
    video = Video(batch)  # 3 videos: padded to 4 with a black one, in 1 row of 4
    assert (video.width, video.height, video.frames) == (20, 3, 2)
    _, decoded, _ = _gif_frames(video._blob)
    assert decoded[0][0, ::5, 0].tolist() == [40, 80, 120, 0]
    square = Video(np.stack([np.full((2, 1, 3, 5), 60 * b, dtype=np.uint8) for b in range(4)]))
    assert (square.width, square.height) == (10, 6)  # 4 videos: 2 rows of 2
    _, decoded, _ = _gif_frames(square._blob)
    assert [decoded[0][y, x, 0] for y, x in ((0, 0), (0, 5), (3, 0), (3, 5))] == [0, 60, 120, 180]


def test_mp4_and_webm_go_through_ffmpeg_with_even_sides(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    torch = pytest.importorskip("torch")
    frames = torch.zeros(6, 3, 15, 21)
    frames[:, 1] = 0.8  # green
    stored, blob = _store(Video(frames, fps=12, format="mp4", caption="m"), tmp_path)
    assert stored.path.endswith(".mp4") and blob[4:8] == b"ftyp"
    assert stored.meta == {
        "width": 22,
        "height": 16,
        "frames": 6,
        "fps": 12,
        "format": "mp4",
        "caption": "m",
        "duration": 0.5,
    }
    decoded = iio.imread(blob, extension=".mp4", plugin="FFMPEG")
    assert decoded.shape == (6, 16, 22, 3)
    assert abs(int(decoded[:, 4:10, 4:10, 1].mean()) - 204) < 12 and decoded[:, 4:10, 4:10, 0].mean() < 20
    webm = Video(np.full((4, 1, 8, 8), 128, dtype=np.uint8), format="webm")
    assert webm._blob[:4] == b"\x1a\x45\xdf\xa3"  # Matroska/WebM
    assert iio.imread(webm._blob, extension=".webm", plugin="FFMPEG").shape == (4, 8, 8, 3)


def test_a_200_mb_video_array_is_refused_before_any_encoding(monkeypatch):
    def encoding_started(*args):
        raise AssertionError("the array was encoded")

    monkeypatch.setattr(media, "_video_frames", encoding_started)
    frames = np.zeros((50, 4, 1024, 1024), dtype=np.uint8)  # 200 MiB (np.zeros does not touch the pages)
    with pytest.raises(ValueError) as refused:
        Video(frames, format="mp4")
    message = str(refused.value)
    assert "runstream.Video: the input array is 200.0 MiB, over the 100 MiB limit" in message
    assert "run.log_artifact" in message and "run.save()" in message


def test_the_encoded_size_is_held_to_max_media_bytes_too(monkeypatch):
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 800)  # the frames are 768 bytes; their GIF is more
    with pytest.raises(ValueError, match=r"runstream.Video: the encoded video is .* MiB, over the"):
        Video(np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 200)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"runstream.Audio: the input tensor is"):
        Audio(torch.zeros(100), sample_rate=8000)
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 300)
    with pytest.raises(ValueError, match=r"runstream.Audio: the 16-bit WAV is"):
        Audio(np.zeros(140, dtype=np.int16), sample_rate=8000)  # 280 bytes in, 324 bytes of WAV
    with pytest.raises(ValueError, match=r"runstream.Html: the page is"):
        Html("x" * 301)
    with pytest.raises(ValueError, match=r"log\(\) of a table: the encoded file is"):
        Table(columns=["a"], data=[["y" * 400]]).to_file(Path("/nonexistent"), "t", 0)


@pytest.mark.parametrize(
    "data,kwargs,error,message",
    [
        (np.zeros((3, 8, 8)), {}, ValueError, r"\(time, channel, height, width\) or \(batch, .*got shape \(3, 8, 8\)"),
        (np.zeros((3, 8, 8, 3)), {}, ValueError, r"with 1, 3 or 4 channels, got shape \(3, 8, 8, 3\).*transpose"),
        (np.zeros((0, 3, 8, 8)), {}, ValueError, "holds no frames"),
        (np.zeros((2, 3, 8, 8)), {"format": "avi"}, ValueError, "format must be one of gif, mp4, webm, got 'avi'"),
        (np.zeros((2, 3, 8, 8)), {"fps": 0}, ValueError, r"fps must be a number of frames per second in \(0, 1000\]"),
        (np.zeros((2, 3, 8, 8)), {"fps": "fast"}, ValueError, "got 'fast'"),
        (np.zeros((2, 3, 8, 8)), {"fps": True}, ValueError, "got True"),
        (np.zeros((2, 3, 8, 8), dtype=complex), {}, TypeError, "must be numbers"),
        (42, {}, TypeError, "takes a video file path, a file object, a numpy array or a torch tensor, got int"),
    ],
)
def test_video_refuses_bad_arrays_and_arguments_clearly(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        Video(data, **kwargs)


def test_video_without_imageio_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ImportError, match=r"pip install imageio imageio-ffmpeg"):
        Video(np.zeros((2, 3, 8, 8), dtype=np.uint8), format="mp4")
    assert Video(np.zeros((2, 3, 8, 8), dtype=np.uint8)).format == "gif"  # GIFs need only Pillow


def test_video_files_and_file_objects_are_kept_as_is(tmp_path, caplog):
    mp4 = Video(np.zeros((8, 3, 16, 16), dtype=np.uint8), fps=8, format="mp4")._blob
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4)
    with caplog.at_level("WARNING", logger="runstream"):
        from_file = Video(path, fps=30, caption="kept")
    assert "fps=30 has no effect on a video file" in caplog.text
    stored, blob = _store(from_file, tmp_path / "files")
    assert blob == mp4 and stored.path.endswith(".mp4")
    assert stored.meta == {
        "width": 16,
        "height": 16,
        "frames": 8,
        "fps": 8.0,
        "format": "mp4",
        "caption": "kept",
        "duration": 1.0,
    }
    gif = Video(np.random.default_rng(3).integers(0, 256, (3, 1, 4, 6), dtype=np.uint8), fps=5)._blob
    gif_path = tmp_path / "anim.GIF"
    gif_path.write_bytes(gif)
    assert Video(str(gif_path))._encode()[2] | {"caption": None} == {
        "width": 6,
        "height": 4,
        "frames": 3,
        "fps": 5.0,
        "format": "gif",
        "caption": None,
        "duration": 0.6,
    }
    from_stream = Video(io.BytesIO(mp4), format="mp4")
    assert from_stream._blob == mp4 and from_stream.format == "mp4" and from_stream.frames == 8
    with open(path, "rb") as named:
        assert Video(named).format == "mp4"  # a named file object: its name's type
    with pytest.raises(ValueError, match=r"takes files of the types mp4, webm, gif, ogg, mov; got '.*clip.avi'"):
        Video(tmp_path / "clip.avi")


def test_a_list_of_videos_is_a_gallery_of_at_most_20(monkeypatch):
    monkeypatch.setattr(media, "_capped_keys", set())
    clip = Video(np.zeros((2, 1, 2, 2), dtype=np.uint8))
    items = media.sequence_to_media("rollouts", [clip] * 21)
    assert len(items) == 20 and {i.count for i in items} == {20} and items[0].item is clip


def test_html_from_a_string_a_path_or_a_file_object(tmp_path):
    page = "<html><head><title>t</title></head><body><p>ünïcode</p></body></html>"
    stored, blob = _store(Html(page), tmp_path, key="report")
    # inject=True (the default) leaves the page as given: no stylesheet from a third party is added.
    assert blob == page.encode() and stored.meta == {"size": len(page.encode())}
    assert (
        stored.media_type == "html" and stored.path.startswith("media/html/report_3_") and stored.path.endswith(".html")
    )
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    assert Html(str(path))._blob == Html(path)._blob == page.encode()
    assert Html(str(path), data_is_not_path=True)._blob == str(path).encode()
    assert Html("missing.html")._blob == b"missing.html"  # not a file: literal HTML, as in wandb
    assert Html(io.StringIO(page))._blob == Html(io.BytesIO(page.encode()))._blob == page.encode()
    assert Html(page.encode(), inject=False)._blob == page.encode()


def test_html_refuses_what_is_not_html_text():
    with pytest.raises(TypeError, match=r"takes a string of HTML, the path of an .html file or a file object, got int"):
        Html(3)
    with pytest.raises(ValueError, match=r"runstream.Html: the content is not UTF-8 text"):
        Html(b"\xff\xfe<p>")
    with pytest.raises(TypeError, match=r"'pages' is a list of Html"):
        media.sequence_to_media("pages", [Html("a"), Html("b")])


def _scene(blob):
    scene = orjson.loads(blob)
    assert set(scene) == {"type", "points", "boxes", "vectors"} and scene["type"] == "points"
    return scene


@pytest.mark.parametrize("columns", [3, 4, 6])
def test_point_clouds_are_stored_as_points_json(tmp_path, columns):
    points = np.arange(5 * columns, dtype=np.float64).reshape(5, columns) / 4
    stored, blob = _store(Object3D(points, caption="scan"), tmp_path, key="lidar")
    assert stored.media_type == "object3d"
    assert stored.path == f"media/object3d/lidar_3_{stored.sha256[:8]}.pts.json"
    assert stored.meta == {"format": "pts.json", "points": 5, "caption": "scan", "original_points": 5, "nonfinite": 0}
    scene = _scene(blob)
    assert scene["points"] == points.tolist() and scene["boxes"] == scene["vectors"] == []


def test_point_clouds_take_tensors_and_integers_and_drop_nonfinite_rows():
    torch = pytest.importorskip("torch")
    points = torch.tensor([[0.0, 1.0, 2.0], [float("nan"), 0.0, 0.0], [3.0, 4.0, float("inf")], [5.0, 6.0, 7.0]])
    cloud = Object3D.from_numpy(points)
    assert (cloud.points, cloud.original_points, cloud.nonfinite) == (2, 4, 2)
    assert _scene(cloud._blob)["points"] == [[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]
    ints = Object3D(np.array([[1, 2, 3, 255, 0, 0]], dtype=np.uint8))
    assert _scene(ints._blob)["points"] == [[1, 2, 3, 255, 0, 0]]


def test_a_cloud_past_max_points_is_a_uniform_subsample_with_one_warning_per_key(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(media, "_subsampled_keys", set())
    rng = np.random.default_rng(2)
    points = np.c_[np.arange(400_000, dtype=np.float64), rng.random((400_000, 2))]
    points[5] = np.nan
    cloud = Object3D(points)
    assert (cloud.points, cloud.original_points, cloud.nonfinite) == (300_000, 400_000, 1)
    with caplog.at_level("WARNING", logger="runstream"):
        stored, blob = _store(cloud, tmp_path, key="scan", step=1)
        _store(cloud, tmp_path, key="scan", step=2)
        _store(Object3D(points[:10]), tmp_path, key="small", step=2)
    assert stored.meta["points"] == 300_000 and stored.meta["original_points"] == 400_000
    assert [r.getMessage() for r in caplog.records] == [
        "runstream: Object3D logged under 'scan' holds 399999 points; a uniform random 300000 of them are kept "
        "(runstream.media.MAX_POINTS)"
    ]
    kept = np.array(_scene(blob)["points"])[:, 0]
    assert len(np.unique(kept)) == 300_000 and np.all(np.diff(kept) > 0) and 5 not in kept  # distinct, in order
    per_quarter = np.histogram(kept, bins=4, range=(0, 400_000))[0]
    assert np.all(np.abs(per_quarter - 75_000) < 2_000)  # uniform over the cloud


def test_a_point_cloud_with_boxes_and_vectors_as_wandb_builds_it():
    corners = [[x, y, z] for x in (0, 1) for y in (0, 2) for z in (0, 3)]
    cloud = Object3D.from_point_cloud(
        points=np.zeros((2, 3)),
        boxes=[{"corners": np.array(corners), "label": "car", "color": (0, 255, 0), "score": np.float32(0.5)}],
        vectors=[{"start": (0, 0, 0), "end": (1, 1, 1)}],
    )
    scene = _scene(cloud._blob)
    assert scene["boxes"] == [{"corners": corners, "label": "car", "color": [0, 255, 0], "score": 0.5}]
    assert scene["vectors"] == [{"start": [0, 0, 0], "end": [1, 1, 1]}]
    assert _scene(Object3D({"type": "lidar/beta"})._blob)["points"] == []  # wandb's dict form, empty


@pytest.mark.parametrize(
    "build,error,message",
    [
        (lambda: Object3D(np.zeros((4, 5))), ValueError, r"\(N, 3\) xyz, \(N, 4\) .*got shape \(4, 5\)"),
        (lambda: Object3D(np.array([["a", "b", "c"]])), TypeError, "points must be numbers, got dtype <U1"),
        (lambda: Object3D.from_numpy("cloud.obj"), ValueError, "from_numpy takes a numpy array, got str"),
        (lambda: Object3D({"type": "mesh"}), ValueError, "point cloud type must be 'lidar/beta', got 'mesh'"),
        (
            lambda: Object3D.from_point_cloud(np.zeros((1, 3)), point_cloud_type="radar"),
            ValueError,
            "must be 'lidar/beta', got 'radar'",
        ),
        (
            lambda: Object3D.from_point_cloud(np.zeros((1, 3)), boxes=[{"corners": np.zeros((7, 3))}]),
            ValueError,
            r"box 0 corners must be finite numbers of shape \(8, 3\)",
        ),
        (
            lambda: Object3D.from_point_cloud(np.zeros((1, 3)), boxes=[{"label": "x"}]),
            ValueError,
            "box 0 must be a dict with 'corners'",
        ),
        (
            lambda: Object3D.from_point_cloud(np.zeros((1, 3)), vectors=[{"start": (0, 0, 0)}]),
            ValueError,
            "vector 0 must be a dict with 'start' and 'end'",
        ),
        (lambda: Object3D(np.zeros((1, 3)), colour="red"), TypeError, r"unexpected arguments \['colour'\]"),
        (lambda: Object3D(io.BytesIO(b"v 0 0 0")), ValueError, "needs file_type= one of obj, gltf"),
        (lambda: Object3D("scene.xyz"), ValueError, "takes files of the types obj, gltf, glb, stl, ply, pts.json"),
        (lambda: media.sequence_to_media("k", [Object3D(np.zeros((1, 3)))] * 2), TypeError, "a list of Object3D"),
    ],
)
def test_object3d_refuses_bad_input_clearly(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_3d_model_files_are_kept_as_is_and_wandb_point_files_are_read(tmp_path):
    obj = tmp_path / "cube.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    stored, blob = _store(Object3D(obj, caption="mesh"), tmp_path / "files", key="model")
    assert blob == obj.read_bytes() and stored.path.endswith(".obj")
    assert stored.meta == {"format": "obj", "points": None, "caption": "mesh"}
    glb = Object3D.from_file(io.BytesIO(b"glTF\x02\x00\x00\x00"), file_type="glb")
    assert glb._encode()[1:] == ("glb", {"format": "glb", "points": None, "caption": None})
    pts = tmp_path / "scan.pts.json"
    pts.write_bytes(orjson.dumps([[0, 0, 0], [1, 2, 3]]))  # what wandb writes for an array
    assert _scene(Object3D(pts)._blob)["points"] == [[0, 0, 0], [1, 2, 3]]
    with open(obj) as named:
        assert Object3D(named).format == "obj"  # a named file object: its name's type


def test_log_stores_the_new_media_and_galleries_at_the_step(tmp_path):
    from runstream import events
    from tests.helpers import spooled_events

    run = runstream.init(
        project="p", mode="offline", dir=tmp_path, settings={"console": False, "system_metrics": False, "git": False}
    )
    clips = [Audio(np.zeros(8), sample_rate=8000, caption=c) for c in ("a", "b")]
    video = Video(np.zeros((2, 1, 4, 4), dtype=np.uint8))
    run.log({"clips": clips, "video": video, "page": Html("<p>hi</p>"), "cloud": Object3D(np.zeros((3, 3)))}, step=6)
    with pytest.raises(ValueError, match=r"NaN/Inf"):
        run.log({"broken": Audio(np.full(4, np.nan), sample_rate=8000)})
    run.log({"loss": 0.5}, step=7)
    run.finish()
    spooled = list(spooled_events(run.dir))
    stored = sorted(
        (e.data["meta"]["key"], e.data["step"], e.data["media_type"], e.data["meta"].get("index"))
        for e in spooled
        if e.type == events.FILE and e.data["kind"] == "media"
    )
    assert stored == [
        ("clips", 6, "audio", 0),
        ("clips", 6, "audio", 1),
        ("cloud", 6, "object3d", None),
        ("page", 6, "html", None),
        ("video", 6, "video", None),
    ]
    assert any(e.type == events.METRICS and "loss" in str(e.data) for e in spooled)


# -- review fixes (issue 19) ------------------------------------------------------------------------------------


def test_float_video_frames_above_1_are_taken_as_0_to_255_as_images_are():
    wide = np.full((2, 3, 4, 4), 100.0, dtype=np.float32)  # wandb users' float frames in 0..255
    wide[0, 0, 0, 0], wide[0, 0, 0, 1] = np.nan, 300.0
    _, frames, _ = _gif_frames(Video(wide)._blob)
    assert frames[0][1, 1].tolist() == [100, 100, 100]  # not scaled by 255 into white
    assert frames[0][0, 0, 0] == 0 and frames[0][0, 1, 0] == 255  # NaN black, past 255 clipped
    unit = np.full((2, 3, 4, 4), 0.5, dtype=np.float16)  # all within [0, 1]: scaled, as before
    assert _gif_frames(Video(unit)._blob)[1][0][0, 0].tolist() == [128, 128, 128]


def test_numpy_boxes_and_vectors_are_taken_as_wandbs_lists():
    corners = [[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    boxes = np.array([{"corners": corners, "label": "car"}, {"corners": corners, "label": "bus"}])
    vectors = np.array([{"start": (0, 0, 0), "end": (1, 1, 1)}])
    scene = _scene(
        Object3D({"type": "lidar/beta", "points": np.zeros((2, 3)), "boxes": boxes, "vectors": vectors})._blob
    )
    assert [box["label"] for box in scene["boxes"]] == ["car", "bus"] and len(scene["vectors"]) == 1
    one = _scene(Object3D.from_point_cloud(np.zeros((2, 3)), boxes=boxes[:1], vectors=np.array([]))._blob)
    assert [box["label"] for box in one["boxes"]] == ["car"] and one["vectors"] == []
    empty = _scene(Object3D({"type": "lidar/beta", "points": np.zeros((1, 3)), "boxes": np.array([])})._blob)
    assert empty["boxes"] == [] and empty["vectors"] == []


def test_float16_audio_at_full_scale_does_not_wrap():
    audio = Audio(np.array([1.0, 0.9999, -1.0, 2.0], dtype=np.float16), sample_rate=8000)
    with wave.open(io.BytesIO(audio._blob)) as wav:
        assert np.frombuffer(wav.readframes(4), "<i2").tolist() == [32767, 32767, -32767, 32767]


def test_an_image_past_the_size_limit_is_refused_when_built(monkeypatch, tmp_path):
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 2**16)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB as PNG
    with pytest.raises(ValueError, match=r"runstream.Image: the PNG is 0.\d MiB, over the 0 MiB limit"):
        Image(noise)
    with pytest.raises(ValueError, match=r"runstream\.Image: the PNG"):
        Image(PILImage.fromarray(noise))
    small = Image(noise[:10, :10])
    assert (
        isinstance(small._blob, bytes) and _pixels(_store(small, tmp_path)[1])[1].tolist() == noise[:10, :10].tolist()
    )
    # The writer's own guard stays, and names the media grammatically.
    with pytest.raises(ValueError, match=r"log\(\) of an image: the encoded file"):
        media._write(tmp_path, "media/images/k_1", b"x" * (2**16 + 1), "png", "image", {})
    big_file = tmp_path / "big.png"
    big_file.write_bytes(b"x" * (2**16 + 1))
    with pytest.raises(ValueError, match=r"runstream\.Image: the image file is"):
        Image(big_file)  # refused on its size, before it is read
    with pytest.raises(FileNotFoundError, match=r"runstream\.Image: no file at"):
        Image(tmp_path / "missing.png")


def test_smaller_review_fixes_for_audio_html_and_video(tmp_path, caplog):
    silent = io.BytesIO()
    with wave.open(silent, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(8000), wav.writeframes(b"\0\0" * 10)
    damaged = bytearray(silent.getvalue())
    damaged[24:28] = (0).to_bytes(4, "little")  # the header's sample rate
    (tmp_path / "zero.wav").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="sample rate of 0, so it cannot be played; the file is damaged"):
        Audio(tmp_path / "zero.wav")
    with pytest.raises(FileNotFoundError, match=r"runstream\.Html: no file at"):
        Html(tmp_path / "missing.html")
    (tmp_path / "latin.html").write_bytes("<p>caf\xe9</p>".encode("latin-1"))
    with pytest.raises(ValueError, match=r"runstream.Html: the file .*latin.html' is not UTF-8 text"):
        Html(str(tmp_path / "latin.html"))
    with pytest.raises(TypeError, match="data_is_not_path=True with a path"):
        Html(tmp_path / "latin.html", data_is_not_path=True)
    with caplog.at_level("WARNING", logger="runstream"):
        fast = Video(np.random.default_rng(0).integers(0, 256, (3, 1, 4, 4), dtype=np.uint8), fps=200)
    assert fast.fps == 50 and "fps=200 is stored as 50" in caplog.text
    assert _gif_frames(fast._blob)[2] == [20, 20, 20]
    assert Video(io.BytesIO(b"\0\0\0\x18ftypisom" + b"\0" * 20)).format == "mp4"  # sniffed, not gif
    assert Video(io.BytesIO(b"\x1a\x45\xdf\xa3" + b"\0" * 20)).format == "webm"
