"""Panel data (docs/panels.md): many runs' values as columns, and which config keys drive a summary metric.

Columns come from one statement over the runs query (``storage.runs.select_runs``), so the filter,
the order and the field names are run search's. Config and summary values are the JSON text the
writer stored, decoded: numbers stay numbers, and non-finite ones are the event contract's strings.

Parameter importance fits scikit-learn's random forest to the runs' config (categorical keys one-hot
encoded, each key's importances summed back) and adds Pearson's r per key. It is CPU work: callers
run it off the event loop, its inputs are bounded (``MAX_RUNS`` × ``MAX_PARAMS``, ``MAX_FEATURES`` columns)
and at most ``MAX_FITS`` run at once in a process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from clickhouse_connect.driver.client import Client

from runstream.events import encode_value
from runstream.storage.errors import QueryError
from runstream.storage.filters import Column, MapKey, resolve_field
from runstream.storage.runs import key_catalog, select_runs, unflatten

MAX_FIELDS = 32
MAX_RUNS = 50_000
DEFAULT_RUNS = 10_000
MAX_PARAMS = 64
MAX_LEVELS = 32  # a string key with more distinct values is not a category (ids, paths): left out by default
MIN_RUNS = 3
N_ESTIMATORS = 100
SEED = 0
# What bounds a fit's time: each tree sees a bootstrap sample of at most this many runs, and each split
# weighs sqrt(features) of them, so 50,000 runs × 64 keys fit in seconds, not minutes, on one core.
MAX_TREE_SAMPLES = 2_000
MIN_OOB_RUNS = 20  # below this, too few runs are left out of each tree for an out-of-bag score to mean anything
# Out-of-bag scoring predicts every run with each tree that did not see it: past this many runs the score
# is R² on ``SCORE_RUNS`` runs held out of the fit instead (the trees see 2,000 runs each either way).
HOLD_OUT_FROM = 8_000
SCORE_RUNS = 2_000
# Columns the forest fits at most: past it, each key's less frequent categories go first (see ``_capped``).
MAX_FEATURES = 512
# Fits at once in this process (each is a core's work for seconds); another is refused with ``Busy``.
MAX_FITS = 2
BUSY_RETRY_S = 5
_FITS = threading.BoundedSemaphore(MAX_FITS)
_NONFINITE = {encode_value(x): x for x in (math.nan, math.inf, -math.inf)}
# A column's value is cut in SQL past this many characters (a string to its first ``MAX_CHARS`` and "…"), and
# an answer whose values add up to more than ``MAX_ANSWER_BYTES`` is refused: 1,000 runs of a 500 KB config
# string would otherwise be a 500 MB answer.
MAX_CHARS = 1_024
ELLIPSIS = "…"
MAX_ANSWER_BYTES = 64 << 20


class Unrankable(QueryError):
    """The runs cannot be ranked (too few with the metric, no config key to rank): the request was
    understood, its data cannot answer it."""


class AnswerTooLarge(QueryError):
    """The columns' values add up to more than ``MAX_ANSWER_BYTES``: fewer runs or fields would fit."""


class Busy(QueryError):
    """``MAX_FITS`` parameter importance fits are under way in this process already: retry later."""

    def __init__(self) -> None:
        super().__init__(
            f"{MAX_FITS} parameter importance fits are running on this server already, the most at once: "
            f"retry after {BUSY_RETRY_S} s",
            retry_after=BUSY_RETRY_S,
        )


# -- columns ---------------------------------------------------------------------------------------


def _json_column(texts: Sequence[str]) -> list[Any]:
    """Stored JSON texts decoded ('' is a key the run lacks: None), in one parse for the whole column."""
    try:
        values = orjson.loads("[" + ",".join(t or "null" for t in texts) + "]")
        if len(values) == len(texts):
            return values
    except orjson.JSONDecodeError:
        pass
    return [_json_value(t) for t in texts]  # some text is not JSON after all: kept as it is


def _json_value(text: str) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _cut_json(text) if text.endswith(ELLIPSIS) else text


def _cut_json(text: str) -> str:
    """A JSON text ``_cut`` shortened: a string's start decoded (less an escape cut in half) and "…"; any
    other value's first ``MAX_CHARS`` characters of JSON and "…", a string."""
    start = text[: -len(ELLIPSIS)]
    if start.startswith('"'):
        for end in range(len(start), max(len(start) - 6, 0), -1):  # an escape is at most 6 characters (\uXXXX)
            try:
                return orjson.loads(start[:end] + '"') + ELLIPSIS
            except orjson.JSONDecodeError:
                continue
    return start[:MAX_CHARS] + ELLIPSIS


def _cut(sql: str, json: bool) -> str:
    """``sql``'s value cut to ``MAX_CHARS`` characters and "…" (JSON text: its quotes are not counted)."""
    longest = MAX_CHARS + 2 if json else MAX_CHARS
    keep = MAX_CHARS + 1 if json else MAX_CHARS
    return f"if(lengthUTF8({sql}) > {longest}, concat(substringUTF8({sql}, 1, {keep}), '{ELLIPSIS}'), {sql})"


def _field_sql(
    target: Column | MapKey, name: str, params: dict[str, Any], parent: bool = False
) -> tuple[list[str], Callable[..., list]]:
    """The SQL reading a field (one or more columns) and how they decode to one; map keys are bound as
    ``name`` (and ``name_alt``, ``name_tree``). ``parent``: the map key has keys below it (``_parents``)."""
    if isinstance(target, MapKey):
        names = iter((name, f"{name}_alt"))

        def placeholder(value: str) -> str:
            bound = next(names)
            params[bound] = value
            return f"{{{bound}:String}}"

        key = target.key_sql(placeholder)
        if not parent:
            return [_cut(f"{target.text}[{key}]", json=True)], _json_column
        # A key holding an object was flattened ("d" is stored as "d.x", "d.y"): its keys, read where the key
        # itself is missing, come back as the object, as run search shows it.
        params[f"{name}_tree"] = f"{target.key}."
        inner = f"substring(k, {len(target.key.encode()) + 2})"
        tree = (
            f"if(mapContains({target.text}, {key}), map(), mapApply((k, v) -> ({inner}, {_cut('v', json=True)}), "
            f"mapFilter((k, v) -> startsWith(k, {{{name}_tree:String}}), {target.text})))"
        )
        return [_cut(f"{target.text}[{key}]", json=True), tree], _json_or_tree
    if target.kind == "time":
        return [f"toUnixTimestamp64Milli({target.sql})"], lambda col: [None if v is None else v / 1000 for v in col]
    if target.kind == "string":
        return [_cut(target.sql, json=False)], lambda col: [v or None for v in col]
    return [target.sql], lambda col: [list(v) if isinstance(v, (list, tuple)) else v for v in col]


def _json_or_tree(texts: Sequence[str], trees: Sequence[Mapping[str, str]]) -> list[Any]:
    """A map key's values, or where a run lacks the key, the object its dotted keys make (else None)."""
    values = _json_column(texts)
    return [
        unflatten({k: _json_value(v) for k, v in tree.items()}) if tree and not text else value
        for value, text, tree in zip(values, texts, trees)
    ]


def _size(value: Any) -> int:
    """About how many bytes a column value takes (the answer budget's estimate)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(len(k) + len(v) for k, v in value.items())
    return 8


def _parents(client: Client, team: str, project: str) -> set[tuple[str, str]]:
    """The config and summary keys with keys below them (``("config", "model")`` for ``model.depth``): only
    these read their object's keys too, which costs a scan of every run's map."""
    catalog = key_catalog(client, team, project)
    return {
        (kind, ".".join(parts[:n]))
        for kind in ("config", "summary")
        for parts in (entry["key"].split(".") for entry in catalog[kind])
        for n in range(1, len(parts))
    }


def _columns(
    client: Client,
    team: str,
    project: str,
    fields: Sequence[str],
    filters: Mapping[str, Any] | None,
    order: str,
    limit: int,
) -> tuple[list[str], list[str], dict[str, list[Any]], int]:
    params: dict[str, Any] = {}
    select, decoders, summaries = ["run_id", "name"], [], False
    targets = [resolve_field(name) for name in fields]
    parents = _parents(client, team, project) if any(isinstance(t, MapKey) for t in targets) else set()
    for i, target in enumerate(targets):
        summaries |= isinstance(target, MapKey) and target.prefix == "summary"
        parent = isinstance(target, MapKey) and (target.prefix, target.key) in parents
        sql, decode = _field_sql(target, f"p{i}", params, parent)
        decoders.append((len(select), len(sql), decode))
        select.extend(sql)
    found, total = select_runs(client, team, project, select, params, filters, order, limit, summaries=summaries)
    size = sum(_size(v) for col in found[2:] for v in col)
    if size > MAX_ANSWER_BYTES:
        raise AnswerTooLarge(
            f"the {len(fields)} fields of {len(found[0]):,} runs hold about {size:,} bytes, more than an answer "
            f"carries ({MAX_ANSWER_BYTES:,}); ask for fewer runs (limit) or fields",
            limit=MAX_ANSWER_BYTES,
        )
    columns = {name: decode(*found[at : at + n]) for name, (at, n, decode) in zip(fields, decoders)}
    return list(found[0]), list(found[1]), columns, total


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RUNS:
        raise QueryError(f"limit must be a whole number of runs from 1 to {MAX_RUNS:,}, not {limit!r}", field="limit")
    return limit


def run_columns(
    client: Client,
    team: str,
    project: str,
    fields: Sequence[str],
    filters: Mapping[str, Any] | None = None,
    order: str = "-created_at",
    limit: int = DEFAULT_RUNS,
) -> dict[str, Any]:
    """``{"run_ids", "names", "columns": {field: [value | None, ...]}, "total"}``: the matching runs in ``order``
    (at most ``limit``; ``total`` counts them all), each field's values one per run."""
    fields = list(dict.fromkeys(fields))  # a field asked twice (an axis and the colour) is one column
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise QueryError(f"fields must name 1 to {MAX_FIELDS} fields", field="fields")
    run_ids, names, columns, total = _columns(client, team, project, fields, filters, order, _check_limit(limit))
    return {"run_ids": run_ids, "names": names, "columns": columns, "total": total}


# -- parameter importance --------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A config or summary value as a number (bools as 0/1, the contract's strings as non-finite), else None."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return None


def _unit(values: np.ndarray) -> np.ndarray:
    """Values scaled into [-1, 1] (NaN kept), so sums of squares cannot overflow; r and importances do not change."""
    finite = np.abs(values[np.isfinite(values)])
    largest = finite.max() if len(finite) else 0.0
    return values / largest if largest > 0 else values


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r over the runs where ``x`` is finite; None where either side does not vary."""
    kept = np.isfinite(x)
    x, y = x[kept], y[kept]
    if len(x) < 2 or x.min() == x.max() or y.min() == y.max():
        return None
    r = float(np.corrcoef(_unit(x), _unit(y))[0, 1])
    return r if math.isfinite(r) else None


def _varies(column: np.ndarray) -> bool:
    finite = column[np.isfinite(column)]
    return len(finite) > 0 and finite.min() < finite.max()


def _encode(values: Sequence[Any], explicit: bool) -> tuple[list[np.ndarray], np.ndarray | None] | None:
    """A key's columns for the forest and the runs that have it (None for numbers, NaN where missing): one
    column of numbers, or one 0/1 column per category, most frequent first; None when the key is left out
    (only keys not asked for by name are)."""
    # A string other than the contract's non-finite ones makes the key categorical, usually at its first value.
    categorical = any(isinstance(v, str) and v not in _NONFINITE for v in values)
    numbers = [] if categorical else [_number(v) for v in values]
    if not categorical and all(n is not None or v is None for n, v in zip(numbers, values)):
        column = np.array([math.nan if n is None else n for n in numbers], dtype=float)
        column[~np.isfinite(column)] = math.nan
        if not explicit and not _varies(column):
            return None  # a constant explains nothing
        return [column], None
    present = np.array([v is not None for v in values])
    labels = [v if isinstance(v, str) else orjson.dumps(v).decode() for v in values if v is not None]
    # Codes in order of first appearance (a dict: no sort of the strings), each run's the code of its value.
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(label, len(first)) for label in labels), dtype=np.int64, count=len(labels))
    distinct, counts = list(first), np.bincount(inverse, minlength=len(first))
    if not explicit and not 2 <= len(distinct) <= MAX_LEVELS:
        return None
    # A value only one run has is an id, not a category: a column of it would fit noise.
    ranked = sorted(range(len(distinct)), key=lambda i: (-counts[i], distinct[i]))
    levels = [i for i in ranked if counts[i] > 1][:MAX_LEVELS]
    codes = np.full(len(values), -1)
    codes[present] = inverse
    return [(codes == level).astype(float) for level in levels], present


def _capped(encoded: Mapping[str, list[np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """The columns that vary, at most ``MAX_FEATURES``: past it, every key's first column (its number, or
    its most frequent category), then every key's second, and so on, so each key keeps its most frequent."""
    features = [(rank, name, col) for name, cols in encoded.items() for rank, col in enumerate(cols) if _varies(col)]
    features.sort(key=lambda f: f[0])  # stable: keys in their order within a rank
    return [(name, col) for _, name, col in features[:MAX_FEATURES]]


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The forest's feature importances and its R² out of bag (up to ``HOLD_OUT_FROM`` runs) or on
    ``SCORE_RUNS`` runs held out of the fit; None under ``MIN_OOB_RUNS`` runs."""
    from sklearn.ensemble import RandomForestRegressor  # heavy: imported on first use

    held = np.zeros(len(y), dtype=bool)
    if len(y) >= HOLD_OUT_FROM:
        held[np.random.default_rng(SEED).choice(len(y), SCORE_RUNS, replace=False)] = True
    oob = len(y) >= MIN_OOB_RUNS and not held.any()
    forest = RandomForestRegressor(
        n_estimators=N_ESTIMATORS,
        random_state=SEED,
        n_jobs=1,
        max_samples=min(len(y) - SCORE_RUNS * held.any(), MAX_TREE_SAMPLES),
        max_features="sqrt",
        oob_score=oob,
    )
    forest.fit(x[~held], y[~held])
    score = forest.score(x[held], y[held]) if held.any() else forest.oob_score_ if oob else None
    return forest.feature_importances_, float(score) if score is not None and math.isfinite(score) else None


def rank_params(
    metric: Sequence[Any], params: Mapping[str, Sequence[Any]], explicit: bool = True, metric_name: str = "metric"
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """How much each parameter explains the metric: ``([{param, importance, correlation}], model, runs)``.

    ``metric`` and each of ``params`` hold one value per run (None where a run lacks it). Runs without a
    finite numeric metric are left out. Numbers (bools as 0/1) are one feature each, missing values left to
    the forest; other values are categories, one-hot encoded (the ``MAX_LEVELS`` most frequent values that
    more than one run has, at most ``MAX_FEATURES`` columns in all), their importances summed back and their
    correlation the strongest level's over the runs that have the key. Importances sum to 1 (all 0 when
    nothing varies). ``explicit=False`` leaves out constant keys and strings of too many distinct values.
    Raises ``Unrankable`` for fewer than ``MIN_RUNS`` runs, or (``explicit=False``) no key left, and ``Busy``
    while ``MAX_FITS`` rankings run already.
    """
    if not _FITS.acquire(blocking=False):
        raise Busy()
    try:
        return _rank(metric, params, explicit, metric_name)
    finally:
        _FITS.release()


def _rank(
    metric: Sequence[Any], params: Mapping[str, Sequence[Any]], explicit: bool, metric_name: str
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    y = np.array([math.nan if n is None else n for n in map(_number, metric)])
    rows = np.flatnonzero(np.isfinite(y))
    if len(rows) < MIN_RUNS:
        raise Unrankable(
            f"{len(rows)} of the runs have a numeric {metric_name}; ranking parameters needs at least {MIN_RUNS}",
            runs=len(rows),
        )
    y = y[rows]
    encoded: dict[str, tuple[list[np.ndarray], np.ndarray | None]] = {}
    for name, values in params.items():
        found = _encode([values[i] for i in rows.tolist()], explicit)
        if found is not None:
            encoded[name] = found
    if not encoded:
        raise Unrankable("no config key of the runs varies as a number or a category of a few values; name params")
    # The forest sees the columns that vary; a key without any gets importance 0.
    features = _capped({name: cols for name, (cols, _) in encoded.items()})
    importance = dict.fromkeys(encoded, 0.0)
    model: dict[str, Any] = {
        "kind": "random_forest",
        "n_estimators": N_ESTIMATORS,
        "random_state": SEED,
        "features": len(features),
        "oob_r2": None,
    }
    if features and y.min() < y.max():
        # The forest works in float32: each column scaled into [-1, 1] first, as the metric is (splits and
        # normalised importances are the same), so a value beyond float32's range is no error.
        x = np.empty((len(y), len(features)), dtype=np.float32)
        for j, (_, col) in enumerate(features):
            x[:, j] = _unit(col)
        shares, model["oob_r2"] = _fit(x, _unit(y))
        for (name, _), share in zip(features, shares):
            importance[name] += float(share) if math.isfinite(share) else 0.0
        total = sum(importance.values())
        importance = {name: share / total if total > 0 else 0.0 for name, share in importance.items()}

    def correlation(cols: list[np.ndarray], present: np.ndarray | None) -> float | None:
        # A category's levels are 0/1 over the runs that have the key; runs without it are left out.
        pairs = [(col, y) if present is None else (col[present], y[present]) for col in cols]
        found = [r for r in (_pearson(x, ys) for x, ys in pairs) if r is not None]
        return max(found, key=abs) if found else None

    scored = sorted(
        ((name, importance[name], correlation(cols, present)) for name, (cols, present) in encoded.items()),
        key=lambda p: (-p[1], -abs(p[2] or 0.0), p[0]),
    )
    ranked = [{"param": name, "importance": share, "correlation": r} for name, share, r in scored]
    return ranked, model, len(rows)


def _default_params(client: Client, team: str, project: str) -> list[str]:
    """The config keys a panel ranks when it names none: those holding numbers, bools or strings (not
    W&B's internal ``_`` keys), the first ``MAX_PARAMS`` by name."""
    keys = [
        entry["key"]
        for entry in key_catalog(client, team, project)["config"]
        if not entry["key"].startswith("_") and {"number", "bool", "string"} & set(entry["types"])
    ]
    return [f"config.{key}" for key in keys[:MAX_PARAMS]]


def importance(
    client: Client,
    team: str,
    project: str,
    metric: str,
    params: Sequence[str] | None = None,
    filters: Mapping[str, Any] | None = None,
    limit: int = DEFAULT_RUNS,
) -> dict[str, Any]:
    """``{"metric", "runs", "params": [{param, importance, correlation}], "model"}`` over the newest ``limit``
    matching runs that have the metric (``rank_params``); ``params`` default to the project's config keys."""
    target = resolve_field(metric)
    if not (isinstance(target, MapKey) and target.prefix == "summary"):
        raise QueryError(f"metric must be a summary key (summary.<key>), not {metric!r}", field="metric")
    explicit = params is not None
    names = list(dict.fromkeys(params)) if params is not None else _default_params(client, team, project)
    if len(names) > MAX_PARAMS:
        raise QueryError(f"params names at most {MAX_PARAMS} config keys", field="params")
    for name in names:
        found = resolve_field(name)
        if not (isinstance(found, MapKey) and found.prefix == "config"):
            raise QueryError(f"params are config keys (config.<key>), not {name!r}", field="params")
    has_metric = {metric: {"$exists": True}}
    where = {"$and": [filters, has_metric]} if filters else has_metric
    _, _, columns, _ = _columns(client, team, project, [metric, *names], where, "-created_at", _check_limit(limit))
    ranked, model, runs = rank_params(columns[metric], {name: columns[name] for name in names}, explicit, metric)
    return {"metric": metric, "runs": runs, "params": ranked, "model": model}
