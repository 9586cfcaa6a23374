"""wandb-style media: ``Image``, ``Histogram``, ``Table``, ``Plotly``.

Each value is checked and snapshotted when the user builds it (errors surface in their
call, and later changes to their array or figure do not leak in); the sender thread then
writes it with ``to_file`` into the run's files directory. Events carry only the
reference. numpy, Pillow, pandas, matplotlib, plotly and torch are optional: each is
imported only when the user hands over such an object (or, for Pillow, builds an Image).
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
        self._pixels: Any = None  # a PIL image, encoded as PNG in to_file
        self._blob: bytes | None = None  # or an already encoded file (a copied path, a rendered figure)
        self._ext = "png"
        if isinstance(data_or_path, (str, os.PathLike)):
            path = Path(data_or_path)
            self._blob = path.read_bytes()
            suffix = path.suffix[1:].lower()
            self._ext = suffix if suffix.isalnum() else ""
        elif isinstance(data_or_path, pil.Image):
            self._pixels = data_or_path.copy()
        elif _is_matplotlib(data_or_path):
            self._blob = _render_figure(data_or_path)
        else:
            self._pixels = pil.fromarray(_pixels_array(data_or_path))
        if self._blob is not None:
            try:
                with pil.open(io.BytesIO(self._blob)) as opened:
                    self.format = opened.format.lower()
                    self.width, self.height = opened.size
                    if mode is not None:
                        self._pixels, self._blob = opened.convert(mode), None
            except pil.UnidentifiedImageError as exc:
                raise ValueError(f"runstream.Image: {data_or_path!r} is not an image Pillow can read") from exc
            self._ext = self._ext or self.format
        elif mode is not None:
            self._pixels = self._pixels.convert(mode)
        if self._pixels is not None:
            if self._pixels.mode not in _PNG_MODES:
                self._pixels = self._pixels.convert("RGBA" if "A" in self._pixels.getbands() else "RGB")
            self.format, self._ext = "png", "png"
            self.width, self.height = self._pixels.size

    def _encode(self) -> tuple[bytes, str, dict[str, Any]]:
        blob = self._blob
        if blob is None:
            out = io.BytesIO()
            self._pixels.save(out, format="PNG")
            blob = out.getvalue()
        meta = {"width": self.width, "height": self.height, "caption": self.caption, "format": self.format}
        return blob, self._ext, meta


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

    Media of one kind that supports it (images) are a gallery: one file per item at the
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
            f"log() value for {key!r} is a list of {kind.__name__}: only images can be logged as a list "
            f"(a gallery); log each {kind.__name__} under a key of its own"
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
