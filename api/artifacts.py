"""Artifacts (docs/artifacts.md): content-addressed blobs, versions, their files, aliases and lineage.

The SDK asks which blobs of an artifact are missing (``POST …/blobs/missing``), uploads them
resumably (``PUT …/blobs/{sha256}?offset=&size=``: a cut upload goes on where the server's
partial stops), then sends an ``artifact`` event, which the processor stores as a version
(``storage/artifacts.py``). Reads number versions ``v0, v1, …`` and resolve ``{ref}``: ``v3``,
``latest``, an alias or a 64-hex digest. Alias edits are written by the API straight to
storage (as reports are): they are a user's, and the next read sees them.
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Collection
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec
import orjson
from msgspec import Meta
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from runstream.api import audit, quotas
from runstream.api.auth import PROJECT_INGEST, PROJECT_READ, PROJECT_WRITE, Principal, allows, read_run
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.filestore import BlobError, UploadOffset, blob_key
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, RUN_PATH, project_path, run_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.names import NAME_RULE, is_name
from runstream.storage import artifacts
from runstream.storage.errors import QueryError

BLOBS_PATH = f"{PROJECT_PATH}/blobs"
ARTIFACTS_PATH = f"{PROJECT_PATH}/artifacts"
NAME_PATH = f"{ARTIFACTS_PATH}/{{name}}"
VERSION_PATH = f"{NAME_PATH}/{{ref}}"
MAX_MISSING = 10_000
#: The largest manifest (bytes, entries) the API reads; the SDK builds none larger (docs/artifacts.md).
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_ENTRIES = 100_000
#: The most files one GET of a version answers (``files_limit``), and the default.
MAX_FILES_PAGE = 10_000
#: Manifests kept parsed (by raw bytes, each at most a quarter of it): blobs never change.
_MANIFEST_CACHE_BYTES = 16 << 20
#: The largest size an entry may give: a signed 64-bit integer.
_MAX_ENTRY_SIZE = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class _BlobName(Convertor[str]):
    """A blob's path segment: anything but ``missing`` (POST blobs/missing is another resource, so that
    PUT is not offered there); a segment that is not a SHA-256 gets a 400 saying so."""

    regex = "(?!missing$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("blob", _BlobName())

# -- what a request sends -----------------------------------------------------------------------

Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$", description="a blob's SHA-256, 64 lowercase hex digits")]


class BlobList(msgspec.Struct, forbid_unknown_fields=True):
    sha256: Annotated[
        list[Sha256],
        Meta(
            max_length=MAX_MISSING,
            extra={"error": f"sha256 must be an array of at most {MAX_MISSING:,} SHA-256s (64 lowercase hex digits)"},
        ),
    ]


class BlobQuery(msgspec.Struct, forbid_unknown_fields=True):
    size: Annotated[
        int,
        Meta(
            ge=0, description="the blob's whole size in bytes", extra={"error": "send the blob's size as ?size=<bytes>"}
        ),
    ]
    offset: Annotated[
        int,
        Meta(
            ge=0,
            description="where the body's bytes start in the blob: what the server holds (POST blobs/missing says)",
            extra={"error": "offset must be a whole number of bytes from 0"},
        ),
    ] = 0


class AliasTarget(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=128,
            description="the version: v<number>, a 64-hex digest, latest or another alias",
            extra={"error": "version must name a version: v<number>, a 64-hex digest, latest or an alias"},
        ),
    ]


Limit = Annotated[
    int,
    Meta(
        ge=1,
        le=artifacts.MAX_PAGE,
        description=f"how many to answer (at most {artifacts.MAX_PAGE})",
        extra={"error": f"limit must be a whole number from 1 to {artifacts.MAX_PAGE}"},
    ),
]
Offset = Annotated[
    int, Meta(ge=0, description="how many to skip", extra={"error": "offset must be a whole number from 0"})
]


class ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    type: Annotated[str, Meta(min_length=1, max_length=128, description="only artifacts of this type")] | None = None
    limit: Limit = artifacts.DEFAULT_PAGE
    offset: Offset = 0


class VersionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = artifacts.DEFAULT_PAGE
    offset: Offset = 0


class VersionFilesQuery(msgspec.Struct, forbid_unknown_fields=True):
    files_limit: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_FILES_PAGE,
            description=f"how many of its files to answer, by path (at most {MAX_FILES_PAGE:,})",
            extra={"error": f"files_limit must be a whole number from 0 to {MAX_FILES_PAGE:,}"},
        ),
    ] = MAX_FILES_PAGE
    files_offset: Annotated[
        int,
        Meta(ge=0, description="how many files to skip", extra={"error": "files_offset must be a whole number from 0"}),
    ] = 0


class LineageQuery(msgspec.Struct, forbid_unknown_fields=True):
    hops: Annotated[
        int,
        Meta(
            ge=1,
            le=artifacts.MAX_HOPS,
            description="1: the version's runs; 2: their other artifacts; 3: those artifacts' runs",
            extra={"error": f"hops must be 1 to {artifacts.MAX_HOPS}"},
        ),
    ] = 2


# -- what it answers -----------------------------------------------------------------------------


class Missing(TypedDict):
    missing: Annotated[list[str], Meta(description="the SHA-256s not stored (partly uploaded ones too)")]
    partial: Annotated[dict[str, int], Meta(description="SHA-256 -> bytes received, for partly uploaded blobs")]
    max_blob_bytes: Annotated[
        int,
        Meta(description="the largest blob the server takes (a larger PUT is refused with 413): check before sending"),
    ]


class BlobStored(TypedDict):
    sha256: str
    size: int
    stored: Literal[True]


class BlobPartial(TypedDict):
    sha256: str
    received: Annotated[int, Meta(description="bytes the server holds: the next offset")]
    stored: Literal[False]


class Version(TypedDict):
    team: str
    project: str
    name: str
    type: str
    version: Annotated[str, Meta(description="v<index>")]
    index: Annotated[int, Meta(description="0 for the first version stored")]
    digest: Annotated[str, Meta(description="the manifest blob's SHA-256")]
    aliases: Annotated[list[str], Meta(description="latest on the newest version, and user aliases")]
    description: str
    metadata: dict[str, Any]
    size: Annotated[int, Meta(description="bytes of its files")]
    file_count: int
    run_id: Annotated[str, Meta(description="the run that first logged it")]
    created_at: Time


class ArtifactFile(TypedDict):
    path: str
    digest: Annotated[str, Meta(description="the file's SHA-256 ('' for a reference without one)")]
    size: int
    ref: NotRequired[Annotated[str, Meta(description="the URI of a file stored elsewhere (a reference)")]]


class VersionWithFiles(Version):
    files: Annotated[list[ArtifactFile], Meta(description="a page of its files by path (files_limit, files_offset)")]
    files_total: Annotated[int, Meta(description="how many files it has")]


class Versions(TypedDict):
    versions: Annotated[list[Version], Meta(description="a page, newest first")]
    total: Annotated[int, Meta(description="how many versions it has")]


class ArtifactSummary(TypedDict):
    name: str
    type: str
    versions: Annotated[int, Meta(description="how many")]
    latest: Version
    aliases: list[str]


class Artifacts(TypedDict):
    artifacts: Annotated[list[ArtifactSummary], Meta(description="a page, by name")]
    total: Annotated[int, Meta(description="how many artifacts match")]


class LineageNode(TypedDict, total=False):
    id: Annotated[str, Meta(description="run:<project>/<run_id> or artifact:<project>/<name>@<digest>")]
    kind: Literal["run", "artifact"]
    team: str
    project: str
    run_id: str
    name: str
    state: str
    type: str
    version: str
    index: int
    digest: str
    aliases: list[str]
    description: str
    metadata: dict[str, Any]
    size: int
    file_count: int
    created_at: Time


# "from" is a Python keyword: the functional form declares it.
LineageEdge = TypedDict(
    "LineageEdge",
    {
        "from": Annotated[str, Meta(description="a node id: the run for log, the artifact for use")],
        "to": str,
        "action": Literal["log", "use"],
    },
)


class Lineage(TypedDict):
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    truncated: Annotated[bool, Meta(description=f"more than {artifacts.MAX_LINEAGE_NODES} nodes were found")]


class RunArtifacts(TypedDict):
    logged: list[Version]
    used: list[Version]


# -- helpers ---------------------------------------------------------------------------------------


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not is_name(name):
        raise ApiError(400, f"artifact name {name[:200]!r} is not valid: {NAME_RULE}", details={"field": "name"})
    return name


def _sha(request: Request) -> str:
    sha: str = request.path_params["sha256"]
    if not _SHA256.match(sha):
        raise ApiError(
            400, f"{sha[:100]!r} is not a SHA-256: send 64 lowercase hex digits", details={"field": "sha256"}
        )
    return sha


def _readable(principal: Principal, team: str, project: str) -> Collection[str] | None:
    """The projects of the team whose artifacts and runs the caller may see beside this one: any (None) for a
    member of the team; else (public project, share link, another team's admin) this project only."""
    return None if allows(principal, team, "read") else {project}


def _bad(exc: QueryError) -> ApiError:
    return ApiError(400, exc.message, details=exc.details or None)


async def _version(request: Request, team: str, project: str, name: str, ref: str) -> dict[str, Any]:
    try:
        found = await backend_of(request).run(artifacts.version, team, project, name, ref)
    except QueryError as exc:
        raise _bad(exc) from None
    if found is None:
        raise not_found(f"version {ref} of artifact {name} in {team}/{project}")
    return found


class Manifest:
    """A version's files, checked: path -> entry, and the paths sorted (for pages)."""

    __slots__ = ("entries", "paths")

    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries = entries
        self.paths = sorted(entries)


class ManifestError(ValueError):
    pass


_manifests: OrderedDict[str, tuple[int, Manifest]] = OrderedDict()
_manifests_bytes = 0
_manifests_lock = threading.Lock()


def _read_manifest(path: str) -> Manifest:
    """A manifest blob's entries, each checked (ManifestError names the first bad one). Small manifests
    are kept parsed, at most _MANIFEST_CACHE_BYTES of them (by their size on disk): blobs never change."""
    global _manifests_bytes
    with _manifests_lock:
        if (hit := _manifests.get(path)) is not None:
            _manifests.move_to_end(path)
            return hit[1]
    with open(path, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ApiError(413, f"the manifest is larger than {MAX_MANIFEST_BYTES:,} bytes; the API does not read it")
    manifest = Manifest(parse_manifest(raw))
    if len(raw) <= _MANIFEST_CACHE_BYTES // 4:
        with _manifests_lock:
            if path not in _manifests:
                _manifests[path] = (len(raw), manifest)
                _manifests_bytes += len(raw)
            while _manifests_bytes > _MANIFEST_CACHE_BYTES:
                _manifests_bytes -= _manifests.popitem(last=False)[1][0]
    return manifest


def parse_manifest(raw: bytes) -> dict[str, dict[str, Any]]:
    """The entries of a manifest of docs/artifacts.md, each checked; ManifestError says what is wrong, naming
    the entry: a path that is not relative (or has a '..' part), a size that is not a whole number from 0
    to 2^63 - 1, a digest that is not 64 hex digits ('' only for a reference), a ref that is not a string;
    at most MAX_MANIFEST_ENTRIES entries."""
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"it is not JSON ({exc})") from None
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        raise ManifestError('it has no "entries" object mapping paths to entries')
    if len(entries) > MAX_MANIFEST_ENTRIES:
        raise ManifestError(f"it has {len(entries):,} entries, more than the {MAX_MANIFEST_ENTRIES:,} allowed")
    for path, entry in entries.items():
        if why := _bad_entry(path, entry):
            raise ManifestError(f"entry {path[:200]!r}: {why}")
    return entries


def _bad_entry(path: str, entry: Any) -> str | None:
    if not path or path.startswith("/") or "\0" in path or "\\" in path or ".." in path.split("/"):
        return "the path must be a relative '/'-separated path without '..' parts or '\\'"
    if not isinstance(entry, dict):
        return "an entry must be an object"
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_ENTRY_SIZE:
        return f"size must be a whole number of bytes from 0 to {_MAX_ENTRY_SIZE}, not {str(size)[:40]}"
    ref, digest = entry.get("ref"), entry.get("digest")
    if ref is not None and (not isinstance(ref, str) or not ref):
        return "ref must be a non-empty string (a URI)"
    if not (isinstance(digest, str) and (_SHA256.match(digest) or (digest == "" and ref))):
        return "digest must be a SHA-256 (64 lowercase hex digits), or '' for a reference"
    return None


async def _manifest(request: Request, team: str, version: dict[str, Any]) -> Manifest:
    path = backend_of(request).files.path(blob_key(team, version["digest"]))
    if path is None:
        raise not_found(f"the manifest blob {version['digest']} of {version['name']}:{version['version']}")
    try:
        return await run_in_threadpool(_read_manifest, str(path))
    except ManifestError as exc:
        raise ApiError(422, f"the manifest of {version['name']}:{version['version']} cannot be read: {exc}") from None


def _file(path: str, entry: dict[str, Any]) -> dict[str, Any]:
    out = {"path": path, "digest": entry["digest"], "size": entry["size"]}
    if entry.get("ref"):
        out["ref"] = entry["ref"]
    return out


# -- blobs -------------------------------------------------------------------------------------------


@endpoint(
    summary="Which blobs are missing",
    tags=["artifacts"],
    ok=Answer(Missing, "the SHA-256s not stored, and how much of each partly uploaded one the server holds"),
    access=PROJECT_INGEST,
    body_bytes=MAX_MISSING * 80 + 4096,
)
async def blobs_missing(request: Request, body: BlobList) -> Response:
    """Of these SHA-256s, the blobs the team's store does not hold (upload them with PUT blobs/{sha256}), and
    for those partly uploaded, the offset to go on from."""
    team, _ = project_path(request)
    files = backend_of(request).files

    def look() -> tuple[list[str], dict[str, int]]:
        missing, partial = [], {}
        for sha in dict.fromkeys(body.sha256):
            stored, received = files.blob_state(team, sha)
            if stored is None:
                missing.append(sha)
                if received:
                    partial[sha] = received
        return missing, partial

    missing, partial = await run_in_threadpool(look)
    limit = backend_of(request).settings.max_blob_bytes
    return json_response({"missing": missing, "partial": partial, "max_blob_bytes": limit})


@endpoint(
    summary="Upload a blob",
    tags=["artifacts"],
    ok={
        200: Answer(BlobStored, "the blob is stored (now, or it was already: the body is then not read)"),
        202: Answer(BlobPartial, "the bytes are kept; send the rest from offset received"),
    },
    access=PROJECT_INGEST,
    body_content={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    refusals={
        400: "a bad SHA-256, size or offset; the body runs past size; or the finished blob's SHA-256 differs "
        "(the partial upload is discarded: start again from 0)",
        409: "code upload_offset: offset is not what the server holds (error.received says what it does), or "
        "another upload of the blob is under way",
        413: "size is larger than the server's max_blob_bytes",
    },
)
async def put_blob(request: Request, query: BlobQuery) -> Response:
    """Upload bytes ``offset..`` of a content-addressed blob of ``size`` bytes: an artifact's file or
    manifest, stored once per team. A cut upload keeps what arrived: send the rest from the offset the
    server holds (``received``, or POST blobs/missing). Complete, its SHA-256 is checked."""
    team, _ = project_path(request)
    sha = _sha(request)
    declared = request.headers.get("content-length")
    if query.offset < query.size and (
        declared == "0" or (declared is None and "transfer-encoding" not in request.headers)
    ):
        raise ApiError(400, f"the body is empty: send the blob's bytes from offset {query.offset} as the body")
    backend = backend_of(request)
    stored, _ = await run_in_threadpool(backend.files.blob_state, team, sha)
    if stored is not None:  # content-addressed: the same bytes, whatever this body holds
        if stored != query.size:
            raise ApiError(400, f"blob {sha} has {stored:,} bytes, not the size {query.size:,} sent")
        return json_response({"sha256": sha, "size": stored, "stored": True})
    # Its bytes count against the ingest bytes/s quota, like a run file's: metered once the store has
    # taken the offset (a 409 charges nothing), as the body is read.
    subjects = await quotas.subjects_of(request)
    opened: list[AsyncGenerator[bytes]] = []

    def body() -> AsyncGenerator[bytes]:
        opened.append(quotas.metered(request, subjects))
        return opened[0]

    try:
        done, received = await backend.files.put_blob(
            team, sha, query.offset, query.size, body, backend.settings.max_blob_bytes
        )
    except UploadOffset as exc:
        error = {"code": "upload_offset", "message": exc.message, "details": {"received": exc.received}}
        return json_response({"error": {**error, "received": exc.received}}, status_code=409)
    except BlobError as exc:
        raise ApiError(exc.status, exc.message) from None
    finally:
        for chunks in opened:
            await chunks.aclose()  # charges what streamed in, however the upload ended
    if done:
        return json_response({"sha256": sha, "size": received, "stored": True})
    return json_response({"sha256": sha, "received": received, "stored": False}, status_code=202)


# -- reads -------------------------------------------------------------------------------------------


@endpoint(
    summary="List artifacts",
    tags=["artifacts"],
    ok=Answer(Artifacts, "a page of the project's artifacts, and how many match"),
    access=PROJECT_READ,
    refusals={400: "a bad type, limit or offset"},
)
async def list_artifacts(request: Request, query: ListQuery) -> Response:
    """A page of the project's artifacts by name (of one ``type`` when given), each with its latest version."""
    team, project = project_path(request)
    found, total = await backend_of(request).run(
        artifacts.list_artifacts, team, project, query.type, query.limit, query.offset
    )
    return json_response({"artifacts": found, "total": total})


@endpoint(
    summary="An artifact's versions",
    tags=["artifacts"],
    ok=Answer(Versions, "a page of its versions, newest first, and how many it has"),
    access=PROJECT_READ,
    refusals={400: "a bad artifact name, limit or offset", 404: "no such artifact, or not visible"},
)
async def list_versions(request: Request, query: VersionsQuery) -> Response:
    """A page of an artifact's versions, newest first."""
    team, project = project_path(request)
    name = _name(request)

    def read(client: Any) -> tuple[int, list[dict[str, Any]]]:
        total = artifacts.count_versions(client, team, project, name)
        return total, artifacts.versions(client, team, project, name, query.limit, query.offset) if total else []

    total, found = await backend_of(request).run(read)
    if not total:
        raise not_found(f"artifact {name} in {team}/{project}")
    return json_response({"versions": found, "total": total})


@endpoint(
    summary="An artifact version",
    tags=["artifacts"],
    ok=Answer(VersionWithFiles, "the version and a page of its files"),
    access=PROJECT_READ,
    refusals={
        400: "a bad artifact name, ref, files_limit or files_offset",
        404: "no such version, or not visible",
        413: "its manifest is larger than the API reads (16 MiB)",
        422: "its manifest cannot be read (the message names the bad entry)",
    },
)
async def get_version(request: Request, query: VersionFilesQuery) -> Response:
    """One version (``{ref}``: v<number>, latest, an alias or a 64-hex digest) with a page of its files (its
    manifest), by path: ``files_total`` says how many there are."""
    team, project = project_path(request)
    version = await _version(request, team, project, _name(request), request.path_params["ref"])
    manifest = await _manifest(request, team, version)
    page = manifest.paths[query.files_offset : query.files_offset + query.files_limit]
    files = [_file(path, manifest.entries[path]) for path in page]
    return json_response({**version, "files": files, "files_total": len(manifest.paths)})


@endpoint(
    summary="Download an artifact file",
    tags=["artifacts"],
    access=PROJECT_READ,
    ok=Answer(
        None,
        "the file's bytes",
        content={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        headers={"X-Runstream-Sha256": {"description": "the file's SHA-256", "schema": {"type": "string"}}},
    ),
    refusals={
        400: "a bad artifact name or ref",
        404: "no such version, no such file in it, a reference stored elsewhere, or not visible",
        413: "its manifest is larger than the API reads (16 MiB)",
        422: "its manifest cannot be read (the message names the bad entry)",
    },
)
async def get_file(request: Request) -> Response:
    """A file of a version, by its path in the artifact."""
    team, project = project_path(request)
    version = await _version(request, team, project, _name(request), request.path_params["ref"])
    path = request.path_params["path"]
    entry = (await _manifest(request, team, version)).entries.get(path)
    what = f"file {path[:500]} of {version['name']}:{version['version']}"
    if entry is None:
        raise not_found(what)
    if entry.get("ref"):
        raise not_found(f"{what} is a reference to {entry['ref']}; the server does not hold its bytes, so")
    digest = entry["digest"]
    blob: Path | None = backend_of(request).files.path(blob_key(team, digest))
    if blob is None:
        raise not_found(f"the blob of {what}")
    return FileResponse(
        blob,
        media_type="application/octet-stream",
        filename=posixpath.basename(path) or "file",
        headers={"X-Runstream-Sha256": digest, "X-Content-Type-Options": "nosniff"},
    )


@endpoint(
    summary="An artifact version's lineage",
    tags=["artifacts"],
    ok=Answer(Lineage, "the runs and versions around it, and who logged and used what"),
    access=PROJECT_READ,
    refusals={400: "a bad artifact name, ref or hops", 404: "no such version, or not visible"},
)
async def get_lineage(request: Request, query: LineageQuery, principal: Principal) -> Response:
    """The graph around a version: the runs that logged (produced) and used (consumed) it (hops 1), their
    other artifacts (2), those artifacts' runs (3). Projects the caller cannot read are left out."""
    team, project = project_path(request)
    version = await _version(request, team, project, _name(request), request.path_params["ref"])
    graph = await backend_of(request).run(
        artifacts.lineage,
        team,
        project,
        version["name"],
        version["digest"],
        query.hops,
        _readable(principal, team, project),
    )
    return json_response(graph)


@endpoint(
    summary="A run's artifacts",
    tags=["artifacts"],
    ok=Answer(RunArtifacts, "the versions the run logged and used"),
    access=PROJECT_READ,
    refusals={404: "no such run, or not visible"},
)
async def run_artifacts(request: Request, principal: Principal) -> Response:
    """The artifact versions a run logged and used, oldest first (of the projects the caller may read)."""
    team, project, _ = run_path(request)
    return json_response(await read_run(request, artifacts.run_artifacts, _readable(principal, team, project)))


# -- aliases -----------------------------------------------------------------------------------------


@endpoint(
    summary="Set an alias",
    tags=["artifacts"],
    ok=Answer(Version, "the version it now names"),
    access=PROJECT_WRITE,
    body_bytes=4096,
    refusals={
        400: "a bad artifact name, alias (latest and v<number> are the server's) or version",
        404: "no such version, or not visible",
    },
)
async def put_alias(request: Request, body: AliasTarget, principal: Principal) -> Response:
    """Point an alias (``best``, ``prod``) at a version; it moves from the version it named before."""
    team, project = project_path(request)
    name, alias = _name(request), request.path_params["alias"]
    try:
        artifacts.check_alias(alias)
    except QueryError as exc:
        raise _bad(exc) from None
    version = await _version(request, team, project, name, body.version)
    backend = backend_of(request)
    await backend.run(artifacts.set_alias, team, project, name, alias, version["digest"], time.time())
    details = {"alias": alias, "version": version["version"], "digest": version["digest"]}
    await audit.record(request, principal, team, "artifact.alias", f"{project}/{name}", details)
    return json_response(await _version(request, team, project, name, version["digest"]))


@endpoint(
    summary="Remove an alias",
    tags=["artifacts"],
    ok={204: Answer(None, "removed")},
    access=PROJECT_WRITE,
    refusals={400: "a bad artifact name or alias", 404: "no such alias, or not visible"},
)
async def delete_alias(request: Request, principal: Principal) -> Response:
    """Remove an alias from the version it names."""
    team, project = project_path(request)
    name, alias = _name(request), request.path_params["alias"]
    try:
        removed = await backend_of(request).run(artifacts.remove_alias, team, project, name, alias, time.time())
    except QueryError as exc:
        raise _bad(exc) from None
    if not removed:
        raise not_found(f"alias {alias} of artifact {name} in {team}/{project}")
    await audit.record(request, principal, team, "artifact.unalias", f"{project}/{name}", {"alias": alias})
    return Response(status_code=204)


routes = [
    Route(f"{BLOBS_PATH}/missing", blobs_missing, methods=["POST"]),
    Route(f"{BLOBS_PATH}/{{sha256:blob}}", put_blob, methods=["PUT"]),
    Route(ARTIFACTS_PATH, list_artifacts, methods=["GET"]),
    Route(f"{NAME_PATH}/versions", list_versions, methods=["GET"]),
    Route(f"{NAME_PATH}/aliases/{{alias}}", put_alias, methods=["PUT"]),
    Route(f"{NAME_PATH}/aliases/{{alias}}", delete_alias, methods=["DELETE"]),
    Route(VERSION_PATH, get_version, methods=["GET"]),
    Route(f"{VERSION_PATH}/lineage", get_lineage, methods=["GET"]),
    Route(f"{VERSION_PATH}/files/{{path:path}}", get_file, methods=["GET"]),
    Route(f"{RUN_PATH}/artifacts", run_artifacts, methods=["GET"]),
]
