"""wandb-style media: ``Image``, ``Histogram``, ``Table``, ``Plotly``, ``Audio``, ``Video``, ``Html``, ``Object3D``.

Each value is checked and snapshotted when the user builds it (errors surface in their
call, and later changes to their array or figure do not leak in); the sender thread then
writes it with ``to_file`` into the run's files directory. Events carry only the
reference. numpy, Pillow, pandas, matplotlib, plotly and torch are optional: each is
imported only when the user hands over such an object (or, for Pillow, builds an Image);
so are imageio + imageio-ffmpeg (mp4/webm videos) and soundfile (the numbers of non-WAV
audio files). Images, Audio, Video, Html and Object3D are encoded when built, in the user's thread.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import math
import operator
import os
import re
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, cast

import orjson

log = logging.getLogger("runstream")

#: wandb's limit on histogram bins.
MAX_BINS = 512
#: Pillow modes PNG can store; anything else is converted to RGB(A) first.
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


@dataclass(frozen=True)
class MediaFile:
    """A media value written to disk; ``path`` is relative to the run's files directory."""

    path: str
    media_type: str
    size: int
    sha256: str
    meta: dict[str, Any]


class Media:
    """A value ``log()`` stores as a file. Subclasses set the class names and ``_encode``."""

    media_type: ClassVar[str]
    _dir: ClassVar[str]  # the folder under files/media/
    #: How many of this kind one list logged at a step may hold (a gallery); 0: lists of it are refused.
    max_gallery: ClassVar[int] = 0

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        """The blob, its file extension and the event's meta."""
        raise NotImplementedError

    def snapshot(self) -> Media:
        """The value as ``log()`` saw it; values snapshotted when built return themselves."""
        return self

    def to_file(self, files_dir: Path, key: str, step: int) -> MediaFile:
        blob, ext, meta = self._encode()
        return _write(files_dir, f"media/{self._dir}/{_safe_name(key)}_{int(step)}", blob, ext, self.media_type, meta)


class Image(Media):
    """An image from a numpy array (HxW, HxWx1, HxWx3, HxWx4), a PIL image, a matplotlib
    figure, a torch tensor (CxHxW or HxW) or the path of an image file (kept as is).

    The argument order follows ``wandb.Image(data_or_path, mode=None, caption=None)``.
    ``mode`` converts to that Pillow mode (e.g. "L", "RGB"). Float arrays follow wandb:
    values in [0, 1] are scaled to 0..255 and ranges with negatives are stretched onto it.
    """

    media_type = "image"
    _dir = "images"
    max_gallery = 108  # wandb.Image.MAX_ITEMS: wandb keeps the first 108 and warns

    def __init__(self, data_or_path: Any, mode: str | None = None, caption: Any = None) -> None:
        pil = _require("PIL.Image", "pillow", "runstream.Image")
        self.caption = None if caption is None else str(caption)
        pixels: Any = None  # a PIL image, encoded as PNG below
        blob: bytes | None = None  # or an already encoded file (a copied path, a rendered figure)
        self._ext = "png"
        if isinstance(data_or_path, (str, os.PathLike)):
            path = Path(data_or_path)
            try:
                size = path.stat().st_size  # before reading: a 5 GB file is refused, not read first
            except FileNotFoundError:
                raise FileNotFoundError(f"runstream.Image: no file at {os.fspath(path)!r}") from None
            _check_size("runstream.Image", size, "image file")
            blob = path.read_bytes()
            suffix = path.suffix[1:].lower()
            self._ext = suffix if suffix.isalnum() else ""
        elif isinstance(data_or_path, pil.Image):
            pixels = data_or_path  # encoded below, before this call returns: no copy needed
        elif _is_matplotlib(data_or_path):
            blob = _render_figure(data_or_path)
        else:
            pixels = pil.fromarray(_pixels_array(data_or_path))
        if blob is not None:
            _check_size("runstream.Image", len(blob), "image file")
            try:
                with pil.open(io.BytesIO(blob)) as opened:
                    self.format = opened.format.lower()
                    self.width, self.height = opened.size
                    if mode is not None:
                        pixels, blob = opened.convert(mode), None
            except pil.UnidentifiedImageError as exc:
                raise ValueError(f"runstream.Image: {data_or_path!r} is not an image Pillow can read") from exc
            self._ext = self._ext or self.format
        elif mode is not None:
            pixels = pixels.convert(mode)
        if pixels is not None:
            if pixels.mode not in _PNG_MODES:
                pixels = pixels.convert("RGBA" if "A" in pixels.getbands() else "RGB")
            self.format, self._ext = "png", "png"
            self.width, self.height = pixels.size
            # Encoded here, in the user's thread (as Audio and Video are): an image too large to log is refused at
            # their call, and the sender only writes bytes.
            out = io.BytesIO()
            pixels.save(out, format="PNG")
            blob = out.getvalue()
            _check_size("runstream.Image", len(blob), "PNG")
        self._blob: bytes = cast("bytes", blob)

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        meta = {"width": self.width, "height": self.height, "caption": self.caption, "format": self.format}
        return self._blob, self._ext, meta


class Histogram(Media):
    """A histogram of a sequence (NaN and Inf are dropped and counted) or of a precomputed
    ``np_histogram=(counts, bin_edges)``. Stored as ``{"bins": edges, "values": counts}``."""

    media_type = "histogram"
    _dir = "histograms"

    def __init__(self, sequence: Any = None, np_histogram: Any = None, num_bins: int = 64) -> None:
        self.nonfinite = 0
        if (sequence is None) == (np_histogram is None):
            raise ValueError("runstream.Histogram takes either a sequence or np_histogram=(counts, bin_edges)")
        if np_histogram is not None:
            try:
                counts, edges = np_histogram
            except (TypeError, ValueError):
                raise ValueError(
                    "np_histogram must be a (counts, bin_edges) pair, as numpy.histogram returns"
                ) from None
            self.histogram, self.bins = _numbers(counts, "counts"), _numbers(edges, "bin_edges")
            if not 1 <= len(self.histogram) <= MAX_BINS or len(self.bins) != len(self.histogram) + 1:
                raise ValueError(
                    f"np_histogram needs 1-{MAX_BINS} counts and one more bin edge than counts, "
                    f"got {len(self.histogram)} counts and {len(self.bins)} edges"
                )
            return
        bins = operator.index(num_bins)
        if bins < 1:
            raise ValueError(f"num_bins must be at least 1, got {bins}")
        bins = min(bins, MAX_BINS)
        if _from(sequence, "torch"):
            sequence = _torch_to_numpy(sequence)
        try:
            import numpy as np
        except ImportError:
            self.histogram, self.bins = self._python_histogram(sequence, bins)
            return
        values = np.asarray(sequence)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"runstream.Histogram takes a sequence of numbers, got {values.dtype} values")
        values = values.astype(np.float64).ravel()
        finite = values[np.isfinite(values)]
        self.nonfinite = values.size - finite.size
        counts, edges = np.histogram(finite, bins=bins)
        self.histogram, self.bins = counts.tolist(), edges.tolist()

    def _python_histogram(self, sequence: Any, bins: int) -> tuple[list[float | int], list[float]]:
        """numpy.histogram's equal-width bins, for installs without numpy."""
        values: list[float] = []
        try:
            for v in sequence:
                if isinstance(v, (str, bytes)):  # float() would parse "1.5"
                    raise TypeError
                values.append(float(v))
        except (TypeError, ValueError):
            raise TypeError(f"runstream.Histogram takes a sequence of numbers, got {sequence!r:.60}") from None
        finite = [v for v in values if math.isfinite(v)]
        self.nonfinite = len(values) - len(finite)
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if lo == hi:  # numpy widens a single value to a unit range around it
            lo, hi = lo - 0.5, hi + 0.5
        step = (hi - lo) / bins
        edges = [lo + i * step for i in range(bins)] + [hi]
        counts: list[float | int] = [0] * bins  # the type of self.histogram, which may hold given floats
        for v in finite:
            i = min(int((v - lo) / step), bins - 1)
            if v < edges[i]:  # float rounding: the edges decide, as in numpy
                i -= 1
            elif i < bins - 1 and v >= edges[i + 1]:
                i += 1
            counts[i] += 1
        return counts, edges

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        meta = {"bins": len(self.histogram), "min": self.bins[0], "max": self.bins[-1], "nonfinite": self.nonfinite}
        return orjson.dumps({"bins": self.bins, "values": self.histogram}), "json", meta


class Table(Media):
    """Rows under named columns, from lists (``data`` or ``rows``), a 2-D numpy array or a
    pandas DataFrame (``dataframe``, or as ``data``). Cells are made JSON-safe as they are
    added: numpy values become Python ones, NaN/Inf/NaT become null, datetimes ISO text."""

    media_type = "table"
    _dir = "tables"

    def __init__(self, columns: Any = None, data: Any = None, rows: Any = None, dataframe: Any = None) -> None:
        if dataframe is None and _is_dataframe(data):
            dataframe, data = data, None
        if dataframe is not None:
            if not _is_dataframe(dataframe):
                raise TypeError(f"Table(dataframe=...) takes a pandas DataFrame, got {type(dataframe).__name__}")
            columns = list(dataframe.columns)
            data = dataframe.astype(object).where(dataframe.notna(), None).to_numpy().tolist()
        elif data is None:
            data = [] if rows is None else rows
        if columns is None:
            columns = ["Input", "Output", "Expected"]  # wandb's default
        elif isinstance(columns, (str, bytes)) or not hasattr(columns, "__iter__"):
            raise TypeError(f"Table columns must be a list of names, got {type(columns).__name__}")
        self.columns = [str(c) for c in columns]
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"Table columns must be unique, got {self.columns}")
        if hasattr(data, "tolist"):  # a 2-D numpy array
            data = data.tolist()
        if not isinstance(data, (list, tuple)):
            raise TypeError(f"Table data must be a list of rows, got {type(data).__name__}")
        self.data: list[list[Any]] = []
        for row in data:
            if not isinstance(row, (list, tuple)):
                raise TypeError(f"each Table row must be a list of cells, got {type(row).__name__}: {row!r:.60}")
            self.add_data(*row)

    def add_data(self, *row: Any) -> None:
        if len(row) != len(self.columns):
            raise ValueError(
                f"Table row has {len(row)} values but the table has {len(self.columns)} columns {self.columns}"
            )
        self.data.append([_cell(v) for v in row])

    def snapshot(self) -> Table:
        """A table keeps growing after it is logged; the logged copy holds the rows it had then."""
        copy = Table.__new__(Table)
        copy.columns, copy.data = list(self.columns), list(self.data)
        return copy

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        blob = orjson.dumps({"columns": self.columns, "data": self.data})
        return blob, "json", {"rows": len(self.data), "columns": len(self.columns)}


class Plotly(Media):
    """A plotly figure, stored as its JSON (``fig.to_json()``)."""

    media_type = "plotly"
    _dir = "plotly"

    def __init__(self, figure: Any) -> None:
        if not _is_plotly(figure):
            hint = " (use runstream.Image for matplotlib figures)" if _is_matplotlib(figure) else ""
            raise TypeError(f"runstream.Plotly takes a plotly Figure, got {type(figure).__name__}{hint}")
        self._json = figure.to_json()

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        return self._json.encode(), "json", {}


# -- audio, video, html, 3D (wandb's Audio, Video, Html, Object3D) ------------------------------------------------
#
# Each is encoded in its constructor, in the user's thread: a bad or oversized value is refused at their call,
# and the sender only writes bytes (it never holds their raw arrays).

#: The most bytes one logged media value may take once encoded; raw arrays handed to Audio and Video are held to it
#: too, before any encoding (a 200 MB video array is refused at once, not after a minute of encoding).
MAX_MEDIA_BYTES = 100 * 2**20
#: Object3D keeps at most this many points of a cloud (a uniform random subsample past it): the viewer draws each.
MAX_POINTS = 300_000
#: More channels than this in an Audio array is almost surely a (channels, samples) array given the wrong way round.
MAX_AUDIO_CHANNELS = 64

AUDIO_FILE_TYPES = ("wav", "mp3", "ogg", "flac", "m4a")
VIDEO_FILE_TYPES = ("mp4", "webm", "gif", "ogg", "mov")
#: What Video encodes arrays as; wandb also offers "ogg", which browsers play unevenly.
VIDEO_FORMATS = ("gif", "mp4", "webm")
#: The fastest frame rate browsers play a GIF at (a 20 ms delay); faster GIFs are stored at this rate.
MAX_GIF_FPS = 50
OBJECT3D_FILE_TYPES = ("obj", "gltf", "glb", "stl", "ply", "pts.json")


class Audio(Media):
    """Sound from a numpy array or torch tensor of samples (1-D mono, or 2-D samples x channels; floats in
    [-1, 1], clipped, or int16/int32 PCM), stored as a 16-bit PCM WAV, or an audio file (.wav .mp3 .ogg .flac
    .m4a) kept as is. ``wandb.Audio(data_or_path, sample_rate=None, caption=None)``'s arguments."""

    media_type = "audio"
    _dir = "audio"
    max_gallery = 100

    def __init__(self, data_or_path: Any, sample_rate: int | None = None, caption: Any = None) -> None:
        self.caption = _caption(caption)
        if isinstance(data_or_path, (str, os.PathLike)):
            self._blob, self.format = _read_media_file(data_or_path, "runstream.Audio", AUDIO_FILE_TYPES)
            self.sample_rate, self.channels, self.duration = _audio_file_info(self._blob, self.format)
            return
        if sample_rate is None:
            raise ValueError(
                "runstream.Audio needs sample_rate= (samples per second, e.g. 16000) for an array of samples, "
                "as wandb.Audio does"
            )
        sample_rate = _sample_rate(sample_rate)
        samples = _input_array(data_or_path, "runstream.Audio", "an audio file path, a numpy array or a torch tensor")
        self._blob, self.channels, frames = _wav(samples, sample_rate)
        self.format, self.sample_rate, self.duration = "wav", sample_rate, frames / sample_rate

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        meta = {
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "channels": self.channels,
            "caption": self.caption,
            "format": self.format,
        }
        return self._blob, self.format, meta


class Video(Media):
    """A video from a numpy array or torch tensor of frames, (time, channel, height, width) or (batch, time,
    channel, height, width) (a batch is tiled into one grid of videos, as wandb does), uint8 or floats (in [0, 1],
    scaled, or 0..255), 1 or 3 channels (a 4th, alpha, is dropped); or a video file (.mp4 .webm .gif .ogg .mov) or
    file object kept as is (its format: ``format``, its name's, or sniffed from its first bytes). ``wandb.Video(data_or_path, caption=None, fps=None, format=None)``'s arguments: ``fps`` defaults to 4,
    ``format`` ("gif", "mp4" or "webm") to "gif". GIFs are written with Pillow; mp4/webm with imageio's ffmpeg
    plugin (``pip install imageio imageio-ffmpeg``)."""

    media_type = "video"
    _dir = "videos"
    max_gallery = 20

    def __init__(
        self, data_or_path: Any, caption: Any = None, fps: float | None = None, format: str | None = None
    ) -> None:
        self.caption = _caption(caption)
        if format is not None and format not in VIDEO_FORMATS:
            raise ValueError(f"runstream.Video format must be one of {', '.join(VIDEO_FORMATS)}, got {format!r}")
        if isinstance(data_or_path, (str, os.PathLike)) or hasattr(data_or_path, "read"):
            if isinstance(data_or_path, (str, os.PathLike)):
                self._blob, self.format = _read_media_file(data_or_path, "runstream.Video", VIDEO_FILE_TYPES)
            else:  # a file object: its bytes, in the format given, its name's, its content's, or wandb's default
                named = _file_type(str(getattr(data_or_path, "name", "")), VIDEO_FILE_TYPES)
                content = _read_stream(data_or_path, "runstream.Video")
                self._blob = content.encode() if isinstance(content, str) else content
                self.format = format or named or _sniff_video(self._blob) or "gif"
            if fps is not None:
                log.warning("runstream.Video: fps=%s has no effect on a video file; it keeps its own frame rate", fps)
            self.width, self.height, self.frames, self.fps, self.duration = _video_file_info(self._blob, self.format)
            return
        fps = _fps(4 if fps is None else fps)  # 4: wandb's default
        self.format = format or "gif"
        if self.format == "gif" and fps > MAX_GIF_FPS:
            # A GIF stores delays in hundredths of a second, and browsers play delays under 20 ms slower still
            # (often at 10 fps): past 50 fps the stored rate would not be the one seen.
            log.warning(
                "runstream.Video: a GIF plays at most %d fps in browsers; fps=%s is stored as %d. Use format='mp4' "
                "for a faster video",
                MAX_GIF_FPS,
                fps,
                MAX_GIF_FPS,
            )
            fps = MAX_GIF_FPS
        self.fps = fps
        array = _input_array(
            data_or_path, "runstream.Video", "a video file path, a file object, a numpy array or a torch tensor"
        )
        frames = _video_frames(array)
        self.frames, self.height, self.width = frames.shape[:3]
        if self.format == "gif":
            self._blob = _gif(frames, fps)
        else:
            frames = _even_sized(frames)  # H.264 and VP9 in yuv420p need even sides
            self.height, self.width = frames.shape[1:3]
            self._blob = _ffmpeg_video(frames, fps, self.format)
        self.duration = self.frames / fps
        _check_size("runstream.Video", len(self._blob), "encoded video")

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        meta = {
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "fps": self.fps,
            "format": self.format,
            "caption": self.caption,
            "duration": self.duration,
        }
        return self._blob, self.format, meta


class Html(Media):
    """An HTML page: a string of HTML, the path of an .html file, or a file object. ``wandb.Html(data,
    inject=True, data_is_not_path=False)``'s arguments. The UI shows it in a sandboxed iframe (scripts run, but
    without access to the runstream page or its credentials)."""

    media_type = "html"
    _dir = "html"

    def __init__(self, data: Any, inject: bool = True, data_is_not_path: bool = False) -> None:
        # ``inject`` is accepted and ignored: in wandb it adds a <link> to a stylesheet on app.wandb.ai. runstream
        # runs self-hosted and offline, so that would be a request to a third party from every viewer of the page.
        del inject
        if isinstance(data, os.PathLike) and data_is_not_path:
            raise TypeError(
                "runstream.Html got data_is_not_path=True with a path: pass the HTML as a string, or drop "
                "data_is_not_path to read the file"
            )
        is_path = isinstance(data, os.PathLike) or (
            isinstance(data, str)
            and not data_is_not_path
            and data[-5:].lower().endswith((".html", ".htm"))  # the tail only: no copy of a long page
            and os.path.isfile(data)
        )
        if is_path:
            try:
                size = os.stat(data).st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"runstream.Html: no file at {os.fspath(data)!r}") from None
            _check_size("runstream.Html", size, "file")
            self._blob = _utf8(Path(data).read_bytes(), f"runstream.Html: the file {os.fspath(data)!r}").encode()
        elif isinstance(data, str):
            # A str never takes fewer UTF-8 bytes than characters: past the limit, refused before it is copied.
            _check_size("runstream.Html", len(data), "page")
            self._blob = data.encode()
        elif isinstance(data, bytes):
            self._blob = _utf8(data, "runstream.Html: the content").encode()
        elif hasattr(data, "read"):
            content = _read_stream(data, "runstream.Html")
            self._blob = (
                content.encode() if isinstance(content, str) else _utf8(content, "runstream.Html: the content").encode()
            )
        else:
            raise TypeError(
                f"runstream.Html takes a string of HTML, the path of an .html file or a file object, "
                f"got {type(data).__name__}"
            )
        _check_size("runstream.Html", len(self._blob), "page")

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        return self._blob, "html", {"size": len(self._blob)}


_subsampled_keys: set[str] = set()  # keys whose point clouds were subsampled, so the warning is given once per key


class Object3D(Media):
    """A 3D point cloud or model. ``wandb.Object3D(data_or_path, caption=None, **kwargs)``'s arguments:

    - a numpy array or torch tensor of points: (N, 3) xyz, (N, 4) xyz + category, (N, 6) xyz + rgb (0-255);
      stored as JSON ``{"type": "points", "points": [...], "boxes": [], "vectors": []}`` (.pts.json). Rows with
      NaN/Inf are dropped (counted in meta.nonfinite); past ``MAX_POINTS`` a uniform random subsample is kept;
    - a file (.obj .gltf .glb .stl .ply kept as is; a wandb .pts.json is read as points), or a file object with
      ``file_type=`` naming its format;
    - wandb's ``{"type": "lidar/beta", "points": ..., "boxes": ..., "vectors": ...}`` (``from_point_cloud``).
    """

    media_type = "object3d"
    _dir = "object3d"
    SUPPORTED_TYPES: ClassVar[tuple[str, ...]] = OBJECT3D_FILE_TYPES
    SUPPORTED_POINT_CLOUD_TYPES: ClassVar[tuple[str, ...]] = ("lidar/beta",)

    def __init__(self, data_or_path: Any, caption: Any = None, **kwargs: Any) -> None:
        file_type = kwargs.pop("file_type", None)
        if kwargs:
            raise TypeError(f"runstream.Object3D got unexpected arguments {sorted(kwargs)}")
        self.caption = _caption(caption)
        self.points: int | None = None
        self.original_points: int | None = None
        self.nonfinite = 0
        if isinstance(data_or_path, (str, os.PathLike)):
            blob, ext = _read_media_file(data_or_path, "runstream.Object3D", OBJECT3D_FILE_TYPES)
            self._set_file(blob, ext)
        elif hasattr(data_or_path, "read"):
            content = _read_stream(data_or_path, "runstream.Object3D")
            name = str(getattr(data_or_path, "name", ""))
            ext = (file_type or _file_type(name, OBJECT3D_FILE_TYPES) or "").lower().lstrip(".")
            if ext not in OBJECT3D_FILE_TYPES:
                raise ValueError(
                    f"runstream.Object3D of a file object needs file_type= one of {', '.join(OBJECT3D_FILE_TYPES)}, "
                    f"got {file_type!r}"
                )
            self._set_file(content.encode() if isinstance(content, str) else content, ext)
        elif isinstance(data_or_path, Mapping):
            kind = data_or_path.get("type")
            if kind not in self.SUPPORTED_POINT_CLOUD_TYPES:
                raise ValueError(f"runstream.Object3D point cloud type must be 'lidar/beta', got {kind!r}")
            self._set_cloud(
                data_or_path.get("points", ()), _items(data_or_path.get("boxes")), _items(data_or_path.get("vectors"))
            )
        else:
            self._set_cloud(data_or_path)

    @classmethod
    def from_numpy(cls, data: Any) -> Object3D:
        """A point cloud from an (N, 3), (N, 4) or (N, 6) array (wandb's ``Object3D.from_numpy``)."""
        if not (hasattr(data, "__array__") or _from(data, "torch")):
            raise ValueError(f"Object3D.from_numpy takes a numpy array, got {type(data).__name__}")
        return cls(data)

    @classmethod
    def from_file(cls, data_or_path: Any, file_type: str | None = None) -> Object3D:
        """A model or cloud from a file path or file object; ``file_type`` names the format of a file object."""
        return cls(data_or_path, file_type=file_type)

    @classmethod
    def from_point_cloud(
        cls,
        points: Any,
        boxes: Sequence[Mapping[str, Any]] = (),
        vectors: Sequence[Mapping[str, Any]] | None = None,
        point_cloud_type: str = "lidar/beta",
    ) -> Object3D:
        """A point cloud with 3D boxes (``{"corners": 8 xyz points, "label": str, "color": (r, g, b), "score"}``)
        and vectors (``{"start": xyz, "end": xyz}``), as wandb's ``Object3D.from_point_cloud``."""
        return cls({"type": point_cloud_type, "points": points, "boxes": _items(boxes), "vectors": _items(vectors)})

    def _set_file(self, blob: bytes, ext: str) -> None:
        if ext == "pts.json":  # wandb's own point files: a list of points, or a lidar/beta scene
            try:
                scene = orjson.loads(blob)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"runstream.Object3D: the .pts.json file is not JSON ({exc})") from None
            if isinstance(scene, dict):
                self._set_cloud(scene.get("points", ()), _items(scene.get("boxes")), _items(scene.get("vectors")))
            else:
                self._set_cloud(scene)
            return
        self._blob, self.format = blob, ext

    def _set_cloud(self, points: Any, boxes: Any = (), vectors: Any = ()) -> None:
        np = _require("numpy", "numpy", "runstream.Object3D of points")
        # No input-size limit here: a large cloud is subsampled rather than refused.
        array = _input_array(points, "runstream.Object3D", "a numpy array, a torch tensor or a file", limit=False)
        if array.ndim == 1 and array.size == 0:
            array = array.reshape(0, 3)  # no points (wandb's default for a scene)
        if array.ndim != 2 or array.shape[1] not in (3, 4, 6):
            raise ValueError(
                "runstream.Object3D points must be an (N, 3) xyz, (N, 4) xyz + category or (N, 6) xyz + rgb array, "
                f"got shape {array.shape}"
            )
        if array.dtype.kind not in "iuf":
            raise TypeError(f"runstream.Object3D points must be numbers, got dtype {array.dtype}")
        self.original_points = len(array)
        # The rows kept are chosen as indices first and the array is copied once, at the end: a cloud of millions
        # of points is not copied whole to drop a few NaN rows and then again to subsample it.
        rows: Any = None  # None: every row, in order
        if array.dtype.kind == "f":
            finite = np.isfinite(array).all(axis=1)
            self.nonfinite = int(len(array) - np.count_nonzero(finite))
            if self.nonfinite:
                rows = np.flatnonzero(finite)
            del finite
        count = len(array) if rows is None else len(rows)
        if count > MAX_POINTS:
            # A fixed seed: the same cloud logged twice keeps the same points (and stores the same file).
            keep = np.sort(np.random.default_rng(0).choice(count, MAX_POINTS, replace=False))  # in order
            rows = keep if rows is None else rows[keep]
        if rows is not None:
            array = array[rows]
        # float32, as the viewer draws them (three.js positions are Float32Array): half the JSON of float64.
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64, copy=False)
        self.points = len(array)
        scene = {
            "type": "points",
            "points": np.ascontiguousarray(array),
            "boxes": [_box(box, i) for i, box in enumerate(boxes)],
            "vectors": [_vector(vector, i) for i, vector in enumerate(vectors)],
        }
        self._blob = orjson.dumps(scene, option=orjson.OPT_SERIALIZE_NUMPY)
        self.format = "pts.json"
        _check_size("runstream.Object3D", len(self._blob), "encoded point cloud")

    def to_file(self, files_dir: Path, key: str, step: int) -> MediaFile:
        finite = (self.original_points or 0) - self.nonfinite
        if finite > MAX_POINTS and key not in _subsampled_keys:  # the sender's thread: once per key, not every step
            _subsampled_keys.add(key)
            log.warning(
                "runstream: Object3D logged under %r holds %d points; a uniform random %d of them are kept "
                "(runstream.media.MAX_POINTS)",
                key,
                finite,
                MAX_POINTS,
            )
        return super().to_file(files_dir, key, step)

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        meta: dict[str, Any] = {"format": self.format, "points": self.points, "caption": self.caption}
        if self.original_points is not None:
            meta.update(original_points=self.original_points, nonfinite=self.nonfinite)
        return self._blob, self.format, meta


def _sample_rate(value: Any) -> int:
    """A sample rate as an int: 16000, 16000.0 and numpy.int64(16000) are fine; 22050.5, 0 and "16000" are not."""
    try:
        rate = int(value)
        valid = rate == value and rate > 0 and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise ValueError(f"runstream.Audio sample_rate must be a whole number above 0, got {value!r}")
    return rate


def _fps(value: Any) -> float | int:
    try:
        valid = not isinstance(value, bool) and 0 < float(value) <= 1000
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"runstream.Video fps must be a number of frames per second in (0, 1000], got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


def _caption(caption: Any) -> str | None:
    return None if caption is None else str(caption)


def _check_size(what: str, size: int, thing: str) -> None:
    if size > MAX_MEDIA_BYTES:
        raise ValueError(
            f"{what}: the {thing} is {size / 2**20:.1f} MiB, over the {MAX_MEDIA_BYTES / 2**20:.0f} MiB limit "
            "of one media value (runstream.media.MAX_MEDIA_BYTES): log the file as an artifact "
            "(run.log_artifact) or with run.save() instead, or log a smaller one"
        )


def _file_type(name: str, allowed: tuple[str, ...]) -> str | None:
    """The one of ``allowed`` that ``name`` ends with (".pts.json" has two dots), or None."""
    lowered = name.lower()
    return next((ext for ext in allowed if lowered.endswith("." + ext)), None)


def _read_media_file(path: str | os.PathLike[str], what: str, allowed: tuple[str, ...]) -> tuple[bytes, str]:
    """The bytes and type of a media file, its size checked before it is read."""
    ext = _file_type(os.fspath(path), allowed)
    if ext is None:
        raise ValueError(f"{what} takes files of the types {', '.join(allowed)}; got {os.fspath(path)!r}")
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no file at {os.fspath(path)!r}") from None
    _check_size(what, size, "file")
    return Path(path).read_bytes(), ext


def _read_stream(stream: Any, what: str) -> Any:
    """The content of a file object (from its start, when it can seek), its size checked."""
    if callable(getattr(stream, "seek", None)):
        stream.seek(0)
    content = stream.read(MAX_MEDIA_BYTES + 1)  # no more than one past the limit: the check needs no more
    _check_size(what, len(content), "file object's content")
    return content


def _utf8(content: bytes, what: str) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what} is not UTF-8 text ({exc}): decode it yourself (e.g. content.decode('latin-1')) and pass the "
            "text, or save it as UTF-8"
        ) from None


def _input_array(data: Any, what: str, accepted: str, limit: bool = True) -> Any:
    """``data`` as a numpy array; with ``limit``, refused past MAX_MEDIA_BYTES before anything is converted."""
    np = _require("numpy", "numpy", f"{what} of an array")
    if _from(data, "torch") and hasattr(data, "detach"):
        if limit:
            _check_size(what, data.numel() * data.element_size(), "input tensor")
        return _torch_to_numpy(data)
    if not hasattr(data, "__array__") and not isinstance(data, (list, tuple)):
        raise TypeError(f"{what} takes {accepted}, got {type(data).__name__}")
    array = np.asarray(data)
    if limit:
        _check_size(what, array.nbytes, "input array")
    return array


def _wav(samples: Any, sample_rate: int) -> tuple[bytes, int, int]:
    """A 16-bit PCM WAV of ``samples`` (1-D, or samples x channels), with its channel and frame counts."""
    np = _require("numpy", "numpy", "runstream.Audio of an array")
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2:
        raise ValueError(
            f"runstream.Audio takes a 1-D (mono) or 2-D (samples x channels) array, got shape {samples.shape}"
        )
    frames, channels = samples.shape
    if channels > MAX_AUDIO_CHANNELS:
        raise ValueError(
            f"runstream.Audio: an array of shape {samples.shape} would be {channels} channels; arrays are "
            "(samples, channels): transpose a (channels, samples) one (torchaudio's layout) with .T"
        )
    if frames == 0 or channels == 0:
        raise ValueError(f"runstream.Audio: the array holds no samples (shape {samples.shape})")
    _check_size("runstream.Audio", 44 + frames * channels * 2, "16-bit WAV")
    kind = samples.dtype.kind
    if kind == "f":
        bad = int(samples.size - np.count_nonzero(np.isfinite(samples)))
        if bad:
            raise ValueError(
                f"runstream.Audio: the audio holds {bad} NaN/Inf samples; clean it (numpy.nan_to_num) before logging"
            )
        # In float32: float16 cannot hold 32767 (1.0 * 32767 rounds to 32768 and wraps to -32768 as int16).
        pcm = np.round(np.clip(samples.astype(np.float32, copy=False), -1.0, 1.0) * 32767)
    elif samples.dtype == np.int16:
        pcm = samples
    elif samples.dtype == np.int32:
        pcm = samples >> 16  # the 16 most significant bits
    else:
        raise TypeError(
            f"runstream.Audio takes float samples in [-1, 1] or int16/int32 PCM, got dtype {samples.dtype}: "
            "convert it (e.g. samples.astype(numpy.float32) / 32768 for other integer PCM)"
        )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())  # interleaved, little-endian
    return out.getvalue(), channels, frames


def _audio_file_info(blob: bytes, ext: str) -> tuple[int | None, int | None, float | None]:
    """(sample rate, channels, duration) of an audio file, where the stdlib or soundfile can read it."""
    if ext == "wav":
        try:
            with wave.open(io.BytesIO(blob), "rb") as wav:
                rate, channels, frames = wav.getframerate(), wav.getnchannels(), wav.getnframes()
            if rate <= 0:
                raise ValueError(
                    f"runstream.Audio: the WAV file's header gives a sample rate of {rate}, so it cannot be played; "
                    "the file is damaged: write it again (e.g. with soundfile or the wave module)"
                )
            return rate, channels, frames / rate
        except (wave.Error, EOFError):
            pass  # e.g. float WAVs: soundfile may know them
    try:
        soundfile = importlib.import_module("soundfile")  # optional, and untyped
        info = soundfile.info(io.BytesIO(blob))
        return int(info.samplerate), int(info.channels), float(info.duration)
    except Exception:  # noqa: BLE001 - soundfile missing or the format unknown to it: the file is kept all the same
        return None, None, None


def _video_frames(video: Any) -> Any:
    """Frames as a (time, height, width, channels) uint8 array with 1 or 3 channels; batches tiled as a grid."""
    np = _require("numpy", "numpy", "runstream.Video of an array")
    given = tuple(video.shape)
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5:
        raise ValueError(
            "runstream.Video takes a (time, channel, height, width) or (batch, time, channel, height, width) "
            f"array, got shape {given}"
        )
    batch, time, channels, height, width = video.shape
    if channels not in (1, 3, 4):
        raise ValueError(
            f"runstream.Video: frames must be (time, channel, height, width) with 1, 3 or 4 channels, got shape "
            f"{given}: frames in (time, height, width, channel) order need .transpose(0, 3, 1, 2) first"
        )
    if min(batch, time, height, width) == 0:
        raise ValueError(f"runstream.Video: the array holds no frames (shape {video.shape})")
    video = _to_uint8(video[:, :, :3], np)  # alpha dropped: neither GIF nor yuv420p keeps it
    channels = video.shape[2]
    # A batch of videos is shown as one grid (as wandb does): padded with black ones to a power of two,
    # then laid out in 2 ** ((batch.bit_length() - 1) // 2) rows.
    padded = 1 << (batch - 1).bit_length()
    if padded != batch:
        video = np.concatenate([video, np.zeros((padded - batch, *video.shape[1:]), np.uint8)])
    rows = 2 ** ((batch.bit_length() - 1) // 2)
    cols = padded // rows
    grid = video.reshape(rows, cols, time, channels, height, width).transpose(2, 0, 4, 1, 5, 3)
    return np.ascontiguousarray(grid.reshape(time, rows * height, cols * width, channels))


def _to_uint8(video: Any, np: ModuleType) -> Any:
    kind = video.dtype.kind
    if video.dtype == np.uint8:
        return video
    if kind == "b":
        return video.astype(np.uint8) * 255
    if kind in "iu":
        return video.clip(0, 255).astype(np.uint8)
    if kind != "f":
        raise TypeError(
            f"runstream.Video frames must be numbers (uint8, or floats in [0, 1] or 0..255), got {video.dtype}"
        )
    # As runstream.Image: floats whose finite values all lie in [0, 1] are scaled by 255; any larger and they are
    # taken as 0..255 already (wandb casts them to uint8 as they are). float32: float16 rounds 255 * 0.999 badly.
    video = video.astype(np.float32, copy=False)
    top = float(np.max(video, where=np.isfinite(video), initial=-np.inf))
    if top <= 1.0:
        video = video * 255
    # NaN becomes black, +Inf white. Rounded: 0.5 is 128, as most image libraries do.
    return np.round(np.nan_to_num(video, nan=0.0, posinf=255.0, neginf=0.0).clip(0.0, 255.0)).astype(np.uint8)


def _even_sized(frames: Any) -> Any:
    """Frames padded with black to even height and width, which yuv420p video needs."""
    np = _require("numpy", "numpy", "runstream.Video of an array")
    _, height, width, _ = frames.shape
    if height % 2 == 0 and width % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))


def _gif(frames: Any, fps: float) -> bytes:
    """An animated GIF, looping. Pillow merges identical consecutive frames into one longer frame."""
    pil = _require("PIL.Image", "pillow", "runstream.Video as a GIF")
    images = [pil.fromarray(frame[:, :, 0] if frame.shape[2] == 1 else frame) for frame in frames]
    out = io.BytesIO()
    # GIF delays are in hundredths of a second: the closest Pillow can store to 1/fps.
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    return out.getvalue()


def _ffmpeg_video(frames: Any, fps: float, format: str) -> bytes:
    """An H.264 mp4 or VP9 webm through imageio's ffmpeg plugin (an optional dependency)."""
    # Both named in the hint: imageio alone cannot write video.
    iio = _require("imageio.v3", "imageio imageio-ffmpeg", f"runstream.Video(format={format!r})")
    _require("imageio_ffmpeg", "imageio imageio-ffmpeg", f"runstream.Video(format={format!r})")
    np = _require("numpy", "numpy", "runstream.Video of an array")
    if frames.shape[3] == 1:
        frames = np.repeat(frames, 3, axis=3)
    options: dict[str, Any] = (
        {"codec": "libx264", "output_params": ["-movflags", "+faststart"]}  # faststart: plays before it has loaded
        if format == "mp4"
        else {"codec": "libvpx-vp9"}
    )
    return cast(
        "bytes",
        iio.imwrite(
            "<bytes>",
            frames,
            extension="." + format,
            plugin="FFMPEG",
            fps=fps,
            macro_block_size=2,  # frames are padded to even sides already: imageio must not resize them
            ffmpeg_log_level="error",
            **options,
        ),
    )


def _sniff_video(blob: bytes) -> str | None:
    """The container a video file's first bytes name (mp4, webm or gif), or None."""
    if blob[4:8] == b"ftyp":  # ISO base media: a box size, then "ftyp" and the brand ("qt  " for QuickTime)
        return "mov" if blob[8:12] == b"qt  " else "mp4"
    if blob[:4] == b"\x1a\x45\xdf\xa3":  # EBML, the Matroska/WebM header
        return "webm"
    if blob[:4] == b"GIF8":
        return "gif"
    return None


def _video_file_info(blob: bytes, ext: str) -> tuple[int | None, int | None, int | None, float | None, float | None]:
    """(width, height, frames, fps, duration) of a video file, where Pillow (GIF) or ffmpeg can read it."""
    if ext == "gif":
        try:
            pil = _require("PIL.Image", "pillow", "runstream.Video of a GIF")
            with pil.open(io.BytesIO(blob)) as gif:
                width, height = gif.size
                frames = getattr(gif, "n_frames", 1)
                millis = 0
                for index in range(frames):
                    gif.seek(index)
                    millis += gif.info.get("duration", 0)
            duration = millis / 1000
            return width, height, frames, (frames / duration if duration else None), duration
        except Exception:  # noqa: BLE001 - not a GIF Pillow reads: kept as is, without its numbers
            return None, None, None, None, None
    try:
        import imageio.v3 as iio

        info = iio.immeta(blob, extension="." + ext, plugin="FFMPEG")
        width, height = info["size"]
        fps, duration = float(info["fps"]), float(info["duration"])
        return int(width), int(height), round(fps * duration), fps, duration
    except Exception:  # noqa: BLE001 - imageio/ffmpeg missing or the container unknown: kept as is all the same
        return None, None, None, None, None


def _items(value: Any) -> list[Any]:
    """Boxes or vectors as a list: None is none; a numpy array of dicts (wandb's documented form) is fine too,
    where ``value or ()`` would ask an array for its truth."""
    return [] if value is None else list(value)


def _box(box: Any, index: int) -> dict[str, Any]:
    """A 3D box as wandb's ``box3d`` gives it, checked: 8 finite xyz corners, an optional label, colour and score."""
    if not isinstance(box, Mapping) or "corners" not in box:
        raise ValueError(
            f"runstream.Object3D box {index} must be a dict with 'corners' (8 xyz points) and optional "
            f"'label', 'color' (r, g, b) and 'score', got {box!r:.80}"
        )
    corners = _finite_points(box["corners"], (8, 3), f"box {index} corners")
    color = box.get("color")
    if color is not None:
        color = _finite_points(color, (3,), f"box {index} color")
    score = box.get("score")
    if score is not None:
        score = _finite_points(score, (), f"box {index} score")
    label = box.get("label")
    return {"corners": corners, "label": None if label is None else str(label), "color": color, "score": score}


def _vector(vector: Any, index: int) -> dict[str, Any]:
    if not isinstance(vector, Mapping) or "start" not in vector or "end" not in vector:
        raise ValueError(f"runstream.Object3D vector {index} must be a dict with 'start' and 'end' xyz points")
    return {
        "start": _finite_points(vector["start"], (3,), f"vector {index} start"),
        "end": _finite_points(vector["end"], (3,), f"vector {index} end"),
    }


def _finite_points(value: Any, shape: tuple[int, ...], what: str) -> Any:
    np = _require("numpy", "numpy", "runstream.Object3D")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"runstream.Object3D {what} must be numbers, got {value!r:.80}") from None
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"runstream.Object3D {what} must be finite numbers of shape {shape}, got {value!r:.80}")
    return array.tolist()


class Chart(Media):
    """A custom chart (wandb's ``CustomChart``), as ``runstream.plot`` builds it: its kind, which column plays
    which role (``fields``) and the rows, stored as one JSON file the UI draws from:
    ``{"spec": {"kind", "title", "fields", ...}, "columns": [...], "data": [[...], ...]}``.
    ``runstream.plot`` checks the rows against each kind's limits; the JSON is encoded here, when built."""

    media_type = "chart"
    _dir = "charts"
    KINDS: ClassVar[tuple[str, ...]] = (
        "line", "scatter", "bar", "histogram", "line_series", "confusion_matrix", "pr_curve", "roc_curve",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,
        columns: Sequence[str],
        data: list[list[Any]],
        fields: Mapping[str, str],
        title: str = "",
        **spec: Any,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"chart kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.columns = [str(c) for c in columns]
        unknown = {role: name for role, name in fields.items() if name not in self.columns}
        if unknown:
            raise ValueError(f"{kind} chart fields {unknown} name no column of {self.columns}")
        self.kind, self.title, self.rows = kind, str(title), len(data)
        self.spec: dict[str, Any] = {"kind": kind, "title": self.title, "fields": dict(fields), **spec}
        # numpy scalars and other odd cells go through _cell; NaN becomes null (orjson's own rule).
        body = {"spec": self.spec, "columns": self.columns, "data": data}
        # Only the JSON is kept, not the rows besides it: a chart of 100,000 rows is held once.
        self._blob = orjson.dumps(body, default=_cell, option=orjson.OPT_SERIALIZE_NUMPY)
        _check_size(f"runstream.plot.{kind}", len(self._blob), "chart's JSON")  # long text cells can add up

    @property
    def data(self) -> list[list[Any]]:
        """The chart's rows as stored (read back from its JSON: JSON values, NaN as None)."""
        return cast("list[list[Any]]", orjson.loads(self._blob)["data"])

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        return self._blob, "json", {"chart": self.kind, "title": self.title, "rows": self.rows}


class GalleryItem:
    """One item of a list of media logged under one key at one step (a gallery, as wandb shows it)."""

    def __init__(self, item: Media, index: int, count: int) -> None:
        self.item, self.index, self.count = item, index, count

    def snapshot(self) -> GalleryItem:
        return GalleryItem(self.item.snapshot(), self.index, self.count)

    def to_file(self, files_dir: Path, key: str, step: int) -> MediaFile:
        blob, ext, meta = self.item._encode()
        # The index is part of the path: the server keeps one entry per path, so two equal
        # images of one gallery must not share one. Zero-padded, so path order is index order.
        stem = f"media/{self.item._dir}/{_safe_name(key)}_{int(step)}_{self.index:03d}"
        return _write(
            files_dir, stem, blob, ext, self.item.media_type, {**meta, "index": self.index, "count": self.count}
        )


def to_media(value: Any) -> Media | None:
    """The media ``log()`` stores for ``value``, or None when it is not media.

    matplotlib figures (and the ``pyplot`` module, meaning its current figure) become
    images; plotly figures are kept as plotly JSON; pandas DataFrames become tables, as
    ``wandb.log`` does.
    """
    if isinstance(value, Media):
        return value
    if _is_matplotlib(value):
        return Image(value)
    if _is_plotly(value):
        return Plotly(value)
    if _is_dataframe(value):
        return Table(dataframe=value)
    return None


_capped_keys: set[str] = set()  # keys whose gallery was cut, so the warning is given once per key


def sequence_to_media(key: str, values: Sequence[Any]) -> list[Media] | list[GalleryItem]:
    """What ``log()`` stores for a list or tuple logged under ``key``.

    Media of one kind that supports it (images, audio, videos) are a gallery: one file per item at the
    step, whose meta gives its ``index`` and the gallery's ``count``; at most
    ``max_gallery`` items are kept (wandb's cap), with a warning. Numbers are a histogram.
    An empty list stores nothing (wandb has nothing to show for it either). Mixed lists
    and lists of media that has no gallery (tables, histograms, plotly) raise TypeError.
    """
    if not values:
        return []
    if not _is_media(values[0]):  # checking only the first keeps long lists of numbers cheap
        try:
            histogram: list[Media] = [Histogram(values)]  # wandb turns sequences into histograms too
        except TypeError as exc:
            if any(_is_media(v) for v in values):
                raise TypeError(f"log() value for {key!r} mixes media with other values") from None
            raise TypeError(f"log() value for {key!r}: {exc}") from None
        return histogram
    items = [to_media(v) for v in values]
    kind = cast("type[Media]", type(items[0]))  # values[0] is media, so items[0] is not None
    odd = next((i for i, item in enumerate(items) if type(item) is not kind), None)
    if odd is not None:
        raise TypeError(
            f"log() value for {key!r} mixes {kind.__name__} with {type(values[odd]).__name__} (item {odd}): "
            "a list logged under one key must hold media of one kind"
        )
    if not kind.max_gallery:
        raise TypeError(
            f"log() value for {key!r} is a list of {kind.__name__}: only images, audio and videos can be logged "
            f"as a list (a gallery); log each {kind.__name__} under a key of its own"
        )
    if len(items) > kind.max_gallery:
        if key not in _capped_keys:
            _capped_keys.add(key)
            log.warning(
                "runstream: log() value for %r holds %d %ss; only the first %d are kept, as in wandb",
                key,
                len(items),
                kind.__name__,
                kind.max_gallery,
            )
        items = items[: kind.max_gallery]
    return [GalleryItem(item, i, len(items)) for i, item in enumerate(items)]  # type: ignore[arg-type]


# -- helpers ------------------------------------------------------------------------


def _from(value: Any, library: str) -> bool:
    """Whether ``value``'s type comes from ``library``: checked without importing it."""
    module = getattr(type(value), "__module__", None) or ""
    return module == library or module.startswith(library + ".")


def _is_matplotlib(value: Any) -> bool:
    if isinstance(value, ModuleType):
        return value.__name__ == "matplotlib.pyplot"
    return _from(value, "matplotlib") and hasattr(value, "savefig")


def _is_plotly(value: Any) -> bool:
    return _from(value, "plotly") and hasattr(value, "to_json")


def _is_dataframe(value: Any) -> bool:
    return _from(value, "pandas") and hasattr(value, "columns") and hasattr(value, "notna")


def _is_media(value: Any) -> bool:
    """Whether ``to_media`` makes media of ``value``, without building it."""
    return isinstance(value, Media) or _is_matplotlib(value) or _is_plotly(value) or _is_dataframe(value)


def _write(files_dir: Path, stem: str, blob: bytes, ext: str, media_type: str, meta: dict[str, Any]) -> MediaFile:
    """Write ``blob`` into the run's files directory at ``stem``, the content hash and ``ext`` appended."""
    article = "an" if media_type[:1] in "aeiou" else "a"
    _check_size(f"log() of {article} {media_type}", len(blob), "encoded file")  # the last guard, for kinds encoded here
    digest = hashlib.sha256(blob).hexdigest()
    # The content hash keeps two different values logged under one key and step apart.
    path = f"{stem}_{digest[:8]}.{ext}"
    target = Path(files_dir) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob)
    return MediaFile(path, media_type, len(blob), digest, meta)


def _require(module: str, package: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {package}: pip install {package}") from exc


def _render_figure(figure: Any) -> bytes:
    if isinstance(figure, ModuleType):  # wandb.log({"chart": plt}) logs the current figure
        figure = figure.gcf()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _torch_to_numpy(tensor: Any) -> Any:
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def _pixels_array(data: Any) -> Any:
    """An image array or tensor as a fresh HxW or HxWxC uint8 array for Pillow."""
    is_tensor = _from(data, "torch") and hasattr(data, "detach")
    if not is_tensor and not hasattr(data, "__array__"):
        raise TypeError(
            "runstream.Image takes a numpy array, a torch tensor, a PIL image, a matplotlib figure "
            f"or an image file path, got {type(data).__name__}"
        )
    np = _require("numpy", "numpy", "runstream.Image of an array")
    array = _torch_to_numpy(data) if is_tensor else np.asarray(data)
    if is_tensor and array.ndim == 3:
        array = array.transpose(1, 2, 0)  # torch images are CxHxW
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or array.size == 0:
        raise ValueError(
            f"runstream.Image takes an HxW, HxWx1, HxWx3 or HxWx4 array (CxHxW for torch tensors), "
            f"got shape {array.shape}"
        )
    kind = array.dtype.kind
    if kind == "u" and array.dtype.itemsize == 1:
        return array.copy()  # the user may reuse their buffer before the sender encodes it
    if kind == "b":
        return array.astype(np.uint8) * 255
    if kind in "iu":
        return array.clip(0, 255).astype(np.uint8)
    if kind != "f":
        raise TypeError(f"runstream.Image arrays must hold numbers, got dtype {array.dtype}")
    finite = array[np.isfinite(array)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    array = array.astype(np.float64)
    if lo < 0:  # like wandb: e.g. -1..1 is stretched onto 0..1
        array = (array - lo) / ((hi - lo) or 1.0)
        hi = 1.0
    if hi <= 1.0:
        array = array * 255
    # Truncation, as wandb does; NaN becomes black, +Inf white.
    return np.nan_to_num(array, nan=0.0, posinf=255.0, neginf=0.0).clip(0, 255).astype(np.uint8)


def _numbers(values: Any, what: str) -> list[float | int]:
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"np_histogram {what} must be finite numbers, got {v!r}")
    return values


def _safe_name(key: str) -> str:
    """A log key as one file name ("val/examples" -> "val_examples"): it cannot leave its folder."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    name = re.sub(r"\.{2,}", ".", name).lstrip(".-")
    return name[:100] or "media"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):  # numpy.float64 is a float too
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Media):
        raise TypeError(f"Table cells cannot hold {type(value).__name__} yet: log the media under its own key")
    if isinstance(value, Mapping):
        return {str(k): _cell(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cell(v) for v in value]
    if callable(getattr(value, "tolist", None)):  # numpy and torch scalars and arrays
        return _cell(value.tolist())
    if callable(getattr(value, "isoformat", None)):  # datetime, date, pandas Timestamp
        return value.isoformat()
    return str(value)
