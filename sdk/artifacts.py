"""Artifacts: named, typed, versioned collections of files a run logs or uses (docs/artifacts.md).

``Artifact`` is wandb's: add files, directories and references, then ``run.log_artifact(artifact)``;
``run.use_artifact("name:alias")`` returns one to ``download()``.

How a logged artifact leaves the process, never on the caller's thread:

1. ``log_artifact`` hands it to the run's ``Stager`` (a thread of its own), which reads each file once,
   hashing it while it copies it into the run's content-addressed staging folder
   (``<run dir>/artifacts/blobs/<sha[:2]>/<sha>``): a later change to the user's file cannot corrupt the
   upload, and the staging folder outlives the process for ``runstream sync``. It writes the manifest
   (canonical JSON; its SHA-256 is the version's digest) to ``artifacts/manifests/<digest>.json``,
   uploads the version (online runs: again and again, with a backoff, until the server holds it; it
   gives way when the run finishes), then queues the ``artifact`` event (action ``log``) into the run's
   sender and removes the staged copies the server now holds. A version the server will never take (a
   file over its ``max_blob_bytes``, a server without artifacts) fails ``wait()``; its event goes out to
   be set aside (quarantined) with the reason, and the run goes on.
2. An upload (``upload_artifact``) asks the server which blobs it lacks (``blobs/missing``: a file that
   did not change is not sent again) and streams each from the staging folder, going on from where the
   server stands after an interruption; the manifest goes last. The sender runs one too before the event
   goes out (it finds nothing missing when the stager's finished), and so does ``runstream sync``.
3. ``artifact.wait()`` polls the API until the version is readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson

from runstream import events, names
from runstream.run import Error
from runstream.transport import TransportError
from runstream.values import json_safe

if TYPE_CHECKING:
    from runstream.public_api import Api
    from runstream.public_api import Run as ApiRun
    from runstream.run import Run
    from runstream.transport import HttpTransport

log = logging.getLogger("runstream")
T = TypeVar("T")
R = TypeVar("R")

MANIFEST_VERSION = 1
#: A run's staging folder (beside ``files/`` and ``spool/``): ``blobs/`` by SHA-256 and ``manifests/`` by digest.
STAGING_DIR = "artifacts"
#: Files are read, hashed and copied this much at a time.
CHUNK_BYTES = 1 << 20
#: Files uploaded (and downloaded) at once: a server's latency per request overlaps, memory stays a chunk each.
UPLOAD_THREADS = 4
DOWNLOAD_THREADS = 8
#: A run's staging thread ends after this many idle seconds (the next log_artifact starts another).
STAGER_IDLE_S = 10.0
#: The longest metadata an artifact event may carry (an event stays under Kafka's 1 MB message).
MAX_METADATA_BYTES = 512_000
#: The largest manifest the server reads: keep equal to MAX_MANIFEST_BYTES and MAX_MANIFEST_ENTRIES of
#: api/artifacts.py (not imported: the SDK installs without the server). A larger artifact is refused here.
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_ENTRIES = 100_000
#: Files of a version asked for per GET (the API's most, ``files_limit``), and artifacts/versions per list page.
FILES_PAGE = 10_000
LIST_PAGE = 1000
#: How long finish() waits for logged artifacts still being read and copied (a hung disk must not hang it).
STAGE_JOIN_S = 600.0
#: The stager's backoff between two upload tries (s): it starts low and grows; a Retry-After is honoured.
UPLOAD_BACKOFF = (0.5, 60.0)
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_DRIVE = re.compile(r"[A-Za-z]:")


class ChecksumError(Error):
    """A downloaded (or referenced) file whose SHA-256 is not the one its manifest records."""


class StagedFilesGone(OSError):
    """A logged artifact's staged files were removed (or damaged) before the server had them: it cannot be
    uploaded."""


class ArtifactRefused(Error):
    """The server refuses a logged version for good: a file larger than its ``max_blob_bytes``, a server
    without the artifact endpoints. Its event is set aside (quarantined) and ``wait()`` raises this."""


#: digest -> why the server refused the version (this process's uploads): ``wait()`` raises it.
_refused: dict[str, str] = {}


def note_refusal(digest: str, reason: str) -> None:
    if len(_refused) > 10_000:
        _refused.clear()
    _refused[digest] = reason


def _default_file_mode() -> int:
    """0666 less the process's umask: the mode ``open()`` gives a new file (mkstemp's is 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


# -- the manifest -------------------------------------------------------------------------------


@dataclass
class ArtifactEntry:
    """One file of an artifact (wandb's ``ArtifactManifestEntry``): ``path`` inside the artifact, its
    SHA-256 ``digest`` (hex) and ``size``; ``ref`` for a reference (the bytes stay where the URI says)."""

    path: str
    digest: str
    size: int
    ref: str | None = None
    #: Where the bytes are on this machine: the added file (a draft) or the downloaded copy.
    local_path: str | None = None
    _artifact: Artifact | None = field(default=None, repr=False, compare=False)

    def download(self, root: str | os.PathLike[str] | None = None) -> str:
        """Download this file (checked against its SHA-256) under ``root``; the path written."""
        if self._artifact is None:
            raise Error(f"{self.path} belongs to no artifact")
        return str(self._artifact._download_entry(self, Path(root) if root else self._artifact._default_root()))

    def ref_url(self) -> str:
        """The reference's URI, or ``runstream-artifact://<digest>`` for a stored file."""
        return self.ref if self.ref is not None else f"runstream-artifact://{self.digest}"

    def to_manifest(self) -> dict[str, Any]:
        if self.ref is None:
            return {"digest": self.digest, "size": self.size}
        return {"ref": self.ref, "digest": self.digest, "size": self.size}


@dataclass
class ArtifactManifest:
    """What a version holds: its entries by path (wandb's ``artifact.manifest.entries``)."""

    entries: dict[str, ArtifactEntry]

    def to_bytes(self) -> bytes:
        return manifest_bytes(self.entries)

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def manifest_bytes(entries: dict[str, ArtifactEntry]) -> bytes:
    """The canonical manifest (docs/artifacts.md): orjson, sorted keys, no spaces."""
    body = {"version": MANIFEST_VERSION, "entries": {p: e.to_manifest() for p, e in entries.items()}}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def parse_manifest(raw: bytes) -> dict[str, ArtifactEntry]:
    body = orjson.loads(raw)
    return {
        path: ArtifactEntry(path, e.get("digest", ""), int(e.get("size", 0)), e.get("ref"))
        for path, e in body["entries"].items()
    }


def check_entry_path(name: str) -> str:
    """A path inside an artifact as the file store takes it: relative, '/'-separated, no '.' or '..' parts."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an artifact file name must be a non-empty string, got {name!r}")
    posix = name.replace(os.sep, "/") if os.sep != "/" else name
    parts = posix.split("/")
    if posix.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in posix or "\0" in posix:
        raise ValueError(f"an artifact file name must be a relative path without '.' or '..' parts, got {name!r}")
    return posix


def check_served_path(name: Any) -> str:
    """A file path from a server's manifest, safe to write under a download's root: relative, '/'-separated,
    no '.' or '..' parts, no '\\' or NUL, no drive letter (``C:``), and on Windows no ':' at all (a stream);
    else ``Error``."""
    if (
        not isinstance(name, str)
        or not name
        or name.startswith("/")
        or any(c in name for c in "\\\0")
        or _DRIVE.match(name)
        or (os.name == "nt" and ":" in name)
        or any(p in ("", ".", "..") for p in name.split("/"))
    ):
        raise Error(f"the server's manifest names a file {str(name)[:200]!r}, which is not a safe relative path")
    return name


def _check_name(value: Any, what: str) -> str:
    if not names.is_name(value):
        raise ValueError(f"{what} must be {names.NAME_RULE}, got {value!r}")
    return value


def check_aliases(aliases: Any) -> list[str]:
    if aliases is None:
        return []
    if isinstance(aliases, str):
        aliases = [aliases]
    aliases = list(dict.fromkeys(aliases))
    if len(aliases) > 100:
        raise ValueError(f"an artifact version takes at most 100 aliases, got {len(aliases)}")
    for alias in aliases:
        if alias != "latest" and not events.is_alias(alias):
            raise ValueError(
                f"an artifact alias must be {events.ALIAS_PATTERN} and neither 'latest' nor v<digits> "
                f"(those are the server's), got {alias!r}"
            )
    return aliases


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _entry_digest(entry: ArtifactEntry) -> tuple[str, int]:
    """(SHA-256, size) of a draft's entry, read from this machine ('', 0 for a reference to elsewhere)."""
    if entry.ref is None:
        assert entry.local_path is not None  # a draft's file entry always has one
        return sha256_file(Path(entry.local_path))
    local = _local_ref_path(entry.ref)
    return sha256_file(local) if local is not None else ("", 0)


def _copied_ref(entry: ArtifactEntry) -> bool:
    """A reference ``download()`` copies: a ``file://`` one recorded with a real SHA-256 (checked once copied)."""
    return entry.ref is not None and _local_ref_path(entry.ref) is not None and bool(_SHA256.match(entry.digest))


def _local_ref_path(uri: str) -> Path | None:
    """The local path a ``file://`` URI names, else None."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(urllib.parse.unquote(parsed.path))


# -- the artifact --------------------------------------------------------------------------------


class Artifact:
    """A named, typed collection of files, versioned by its contents (wandb's ``Artifact``).

    A draft (made here) takes files with ``add_file``, ``add_dir``, ``new_file`` and ``add_reference``; once
    logged (``run.log_artifact``) it is final, and ``wait()`` returns when its version is readable. One read
    through the API (``run.use_artifact``, ``Api().artifact``) has a ``version``, ``aliases`` and files to
    ``download()``.
    """

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        **ignored: Any,
    ) -> None:
        self._name = _check_name(name, "an artifact name")
        self._type = _check_name(type, "an artifact type")
        self._description = _check_description(description)
        self._metadata = _check_metadata(metadata)
        self._entries: dict[str, ArtifactEntry] = {}
        self._tmp_dir: tempfile.TemporaryDirectory[str] | None = None  # new_file()'s files
        self._final = False  # logged or read: no more changes
        self._entity: str | None = None
        self._project: str | None = None
        self._version: str | None = None
        self._digest: str | None = None
        self._aliases: list[str] = []
        self._size: int | None = None
        self._file_count: int | None = None
        self._run_id: str | None = None
        self._created_at: float | None = None
        self._manifest_loaded = True  # a draft's entries are all here; a read one loads them on first use
        self._staged = threading.Event()  # logged: staged, its digest known (or failed: _error)
        self._staged.set()
        self._error: BaseException | None = None
        self._api: Api | None = None
        self._offline_reason = ""  # why this logged artifact cannot be read back through the API

    # -- what it is ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """``name:v3`` once it has a version (as wandb's), else the name it was made with."""
        return f"{self._name}:{self._version}" if self._version else self._name

    @property
    def source_name(self) -> str:
        return self.name

    @property
    def type(self) -> str:
        return self._type

    @property
    def description(self) -> str | None:
        return self._description

    @description.setter
    def description(self, value: str | None) -> None:
        self._check_draft()
        self._description = _check_description(value)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._check_draft()
        self._metadata = _check_metadata(value)

    @property
    def entity(self) -> str:
        return self._logged(self._entity, "entity")

    @property
    def project(self) -> str:
        return self._logged(self._project, "project")

    @property
    def version(self) -> str:
        """``v3``: known once the server stored the version (``wait()``)."""
        return self._logged(self._version, "version")

    @property
    def qualified_name(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}"

    @property
    def id(self) -> str | None:
        """The version's identity: its digest (None for a draft not yet staged)."""
        return self._digest

    @property
    def digest(self) -> str:
        """The SHA-256 of the version's manifest; for a logged artifact known once its files were read."""
        if self._digest is None and self._final:
            self._staged.wait()
            self._raise_error()
        if self._digest is None:  # a draft: its files are read now (logging reads them again, as they are then)
            entries = {}
            for path, entry in self._entries.items():
                digest, size = _entry_digest(entry)
                entries[path] = replace(entry, digest=digest, size=size)
            return hashlib.sha256(manifest_bytes(entries)).hexdigest()
        return self._digest

    @property
    def aliases(self) -> list[str]:
        return list(self._aliases)

    @aliases.setter
    def aliases(self, value: list[str]) -> None:
        self._aliases = check_aliases(value)

    @property
    def state(self) -> str:
        """``PENDING`` (a draft, or logged and not yet known to be stored) or ``COMMITTED``."""
        return "COMMITTED" if self._version else "PENDING"

    def is_draft(self) -> bool:
        return not self._final

    @property
    def manifest(self) -> ArtifactManifest:
        if self._final:
            self._staged.wait()  # a logged folder is walked by the stager
        self._load_manifest()
        return ArtifactManifest(dict(self._entries))

    @property
    def size(self) -> int:
        if self._size is not None:
            return self._size
        return sum(e.size for e in self.manifest.entries.values())

    @property
    def file_count(self) -> int:
        return self._file_count if self._file_count is not None else len(self.manifest.entries)

    @property
    def created_at(self) -> float | None:
        return self._created_at

    def files(self) -> list[ArtifactEntry]:
        return list(self.manifest.entries.values())

    def __repr__(self) -> str:
        where = f"{self._entity}/{self._project}/" if self._entity else ""
        return f"<Artifact {where}{self.name} ({self._type})>"

    # -- filling a draft ------------------------------------------------------------------------
    def add_file(self, local_path: str | os.PathLike[str], name: str | None = None, **ignored: Any) -> ArtifactEntry:
        """Add a local file as ``name`` (default: its file name); read when the artifact is logged."""
        self._check_draft()
        source = Path(local_path)
        if not source.is_file():
            raise ValueError(f"add_file takes a file, and {str(local_path)!r} is not one")
        path = check_entry_path(name if name is not None else source.name)
        return self._add(ArtifactEntry(path, "", source.stat().st_size, local_path=str(source.absolute())))

    def add_dir(self, local_path: str | os.PathLike[str], name: str | None = None, **ignored: Any) -> None:
        """Add every file under a directory, each as its path relative to it (under ``name/`` when given)."""
        self._check_draft()
        root = Path(local_path)
        if not root.is_dir():
            raise ValueError(f"add_dir takes a directory, and {str(local_path)!r} is not one")
        self._add_dir(root, check_entry_path(name) + "/" if name else "")

    def _add_dir(self, root: Path, prefix: str = "") -> None:
        """add_dir's walk (log_artifact(path) runs it on the stager's thread). Symbolic links to folders are not
        followed, nor links to files outside ``root``: each is skipped with a warning."""
        inside = root.resolve()
        skipped: list[str] = []
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            skipped.extend(str(Path(folder) / d) for d in dirs if (Path(folder) / d).is_symlink())
            for file_name in sorted(files):
                source = Path(folder) / file_name
                if not source.is_file():  # a broken link, a socket...
                    continue
                if source.is_symlink() and not source.resolve().is_relative_to(inside):
                    skipped.append(str(source))
                    continue
                path = check_entry_path(prefix + source.relative_to(root).as_posix())
                self._add(ArtifactEntry(path, "", source.stat().st_size, local_path=str(source.absolute())))
        if skipped:
            log.warning(
                "runstream: artifact %s: %d symbolic link(s) under %s were not followed (links to folders, and to "
                "files outside it, are skipped): %s",
                self._name,
                len(skipped),
                root,
                ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""),
            )

    def add_reference(self, uri: str, name: str | None = None, **ignored: Any) -> list[ArtifactEntry]:
        """Record a URI instead of the bytes. A local ``file://`` file is recorded with its SHA-256 and size
        (read when the artifact is logged; a directory adds each file under it); any other URI as it is."""
        self._check_draft()
        if not isinstance(uri, str) or "://" not in uri:
            raise ValueError(f"add_reference takes a URI (scheme://...), got {uri!r}")
        local = _local_ref_path(uri)
        if local is not None and local.is_dir():
            prefix = check_entry_path(name) + "/" if name else ""
            added = []
            for source in sorted(p for p in local.rglob("*") if p.is_file()):
                relative = source.relative_to(local).as_posix()
                added.append(self._add(ArtifactEntry(prefix + relative, "", 0, ref=source.absolute().as_uri())))
            return added
        if local is not None and not local.is_file():
            raise ValueError(f"add_reference: {uri!r} names no file on this machine")
        default = PurePosixPath(urllib.parse.urlparse(uri).path).name or urllib.parse.urlparse(uri).netloc
        path = check_entry_path(name if name is not None else default)
        return [self._add(ArtifactEntry(path, "", 0, ref=uri))]

    @contextlib.contextmanager
    def new_file(self, name: str, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
        """Open a new file inside the artifact (written to a temporary folder); added once closed."""
        self._check_draft()
        path = check_entry_path(name)
        if path in self._entries:
            raise ValueError(f"{path!r} is already in artifact {self._name}")
        if self._tmp_dir is None:
            self._tmp_dir = tempfile.TemporaryDirectory(prefix="runstream-artifact-")
        target = Path(self._tmp_dir.name, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, mode, encoding=encoding) as f:
            yield f
        self.add_file(target, path)

    def _add(self, entry: ArtifactEntry) -> ArtifactEntry:
        known = self._entries.get(entry.path)
        if known is not None and (known.local_path, known.ref) != (entry.local_path, entry.ref):
            raise ValueError(f"{entry.path!r} is already in artifact {self._name} (from another source)")
        if known is None and len(self._entries) >= MAX_MANIFEST_ENTRIES:
            raise ValueError(
                f"artifact {self._name} would have more than {MAX_MANIFEST_ENTRIES:,} files, the most a server takes "
                "in one version: split it into several artifacts (or archive small files together)"
            )
        entry._artifact = self
        self._entries[entry.path] = entry
        return entry

    def remove(self, item: str | ArtifactEntry) -> None:
        self._check_draft()
        path = item.path if isinstance(item, ArtifactEntry) else check_entry_path(item)
        if self._entries.pop(path, None) is None:
            raise FileNotFoundError(f"{path!r} is not in artifact {self._name}")

    def _check_draft(self) -> None:
        if self._final:
            raise Error(f"artifact {self.name} is logged and cannot change; log a new Artifact instead")

    # -- reading ----------------------------------------------------------------------------------
    def get_entry(self, name: str) -> ArtifactEntry:
        entry = self.manifest.entries.get(check_entry_path(name))
        if entry is None:
            raise KeyError(f"{name!r} is not in artifact {self.name}")
        return entry

    def get_path(self, name: str) -> ArtifactEntry:
        return self.get_entry(name)

    def download(self, root: str | os.PathLike[str] | None = None, **ignored: Any) -> str:
        """Download every file (references to local files are copied) under ``root`` (default
        ``./artifacts/<name>:<version>``), each checked against its SHA-256; the root. Files already there
        with the right contents are kept; references to other URIs are not fetched."""
        target = Path(root) if root else self._default_root()
        entries = self.manifest.entries
        if self._file_count is not None and len(entries) != self._file_count:
            raise Error(
                f"artifact {self.qualified_name} has {self._file_count:,} files, but {len(entries):,} were listed: "
                "nothing was downloaded; try again"
            )
        for entry in entries.values():
            check_served_path(entry.path)  # all of them, before anything is written
        target.mkdir(parents=True, exist_ok=True)
        wanted = [e for e in entries.values() if e.ref is None or _copied_ref(e)]
        each(lambda entry: self._download_entry(entry, target), wanted, DOWNLOAD_THREADS)
        return str(target)

    def _default_root(self) -> Path:
        return Path("artifacts") / (f"{self._name}:{self._version}" if self._version else self._name)

    def _download_entry(self, entry: ArtifactEntry, root: Path) -> Path:
        self._committed("download")
        target = root / check_served_path(entry.path)
        if not target.resolve().is_relative_to(root.resolve()):  # a link inside root pointing out of it
            raise Error(f"{entry.path} of artifact {self.qualified_name} would be written outside {root}")
        if entry.ref is not None and not _copied_ref(entry):
            raise Error(f"{entry.path} is a reference to {entry.ref}, which runstream does not fetch")
        if target.is_file() and target.stat().st_size == entry.size and sha256_file(target)[0] == entry.digest:
            entry.local_path = str(target)
            return target  # already here
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            os.chmod(partial, _FILE_MODE)  # as open() would make it, not mkstemp's 0600
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in self._entry_chunks(entry):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != entry.digest:
                raise ChecksumError(
                    f"{entry.path} of artifact {self.qualified_name} arrived with SHA-256 {digest.hexdigest()}, "
                    f"not {entry.digest} as its manifest says: it was not written; download again"
                )
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        entry.local_path = str(target)
        return target

    def _entry_chunks(self, entry: ArtifactEntry) -> Iterator[bytes]:
        if entry.ref is not None:
            local = _local_ref_path(entry.ref)
            if local is None:
                raise Error(f"{entry.path} is a reference to {entry.ref}, which runstream does not fetch")
            left = entry.size  # what was recorded, no more (then checked against its SHA-256)
            with open(local, "rb") as f:
                while left > 0 and (chunk := f.read(min(CHUNK_BYTES, left))):
                    left -= len(chunk)
                    yield chunk
            return
        import http.client

        from runstream.public_api import ApiError

        api = self._client()
        path = f"{self._route()}/files/{urllib.parse.quote(entry.path, safe='/')}"
        with api._open("GET", path, what=f"{entry.path} of artifact {self.qualified_name}") as response:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    yield chunk
            except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                raise ApiError(
                    0, "incomplete", f"the download of {entry.path} stopped before its end ({exc}); retry"
                ) from exc

    # -- its version on the server ---------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Artifact:
        """Wait until the logged artifact is stored and readable (its ``version`` is then known); raises
        ``ArtifactRefused`` (an ``Error``) as soon as this process learns the server refused it for good."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._staged.wait(timeout):
            raise TimeoutError(f"artifact {self._name}: its files were still being read after {timeout} s")
        self._raise_error()
        if self._version is not None:
            return self
        if not self._final:
            raise Error(f"artifact {self._name} is a draft: log it with run.log_artifact() first")
        from runstream.public_api import ApiError

        api = self._client()
        pause = 0.1
        while True:
            self._raise_error()  # the server refused the version (learnt by the run's stager or sender)
            try:
                self._apply(api._request("GET", self._route(), what=f"artifact {self._name}"))
                return self
            except ApiError as exc:
                if exc.status not in (0, 404):  # not yet stored; the server restarting
                    raise
            if deadline is not None and time.monotonic() + pause > deadline:
                raise TimeoutError(f"artifact {self._name} ({self._digest}) was not stored within {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def save(self) -> None:
        """Store the aliases set on a logged version (``artifact.aliases = ["prod"]``): added ones move here from
        the version they named, removed ones go. A draft is saved by ``run.log_artifact``."""
        if not self._final:
            raise Error(f"artifact {self._name} is a draft: log it with run.log_artifact()")
        wanted = [a for a in self._aliases if a != "latest"]
        self._committed("save")  # (refreshes what the server holds: the aliases set above are kept)
        api = self._client()
        base = f"{_project_route(self.entity, self.project)}/artifacts/{_q(self._name)}/aliases"
        current = api._request("GET", self._route(), what=f"artifact {self.name}").get("aliases", [])
        for alias in wanted:
            if alias not in current:
                api._request("PUT", f"{base}/{_q(alias)}", body={"version": self.digest}, what=f"artifact {self.name}")
        for alias in current:
            if alias != "latest" and alias not in wanted:
                api._request("DELETE", f"{base}/{_q(alias)}", what=f"alias {alias} of artifact {self.name}")
        self._apply(api._request("GET", self._route(), what=f"artifact {self.name}"))

    def logged_by(self) -> ApiRun | None:
        """The run that first logged this version."""
        self._committed("logged_by")
        if not self._run_id:
            return None
        return self._client().run(f"{self._entity}/{self._project}/{self._run_id}")

    def used_by(self) -> list[ApiRun]:
        """The runs that used this version (its lineage's consumers)."""
        self._committed("used_by")
        api = self._client()
        graph = api._request("GET", f"{self._route()}/lineage", params={"hops": 1}, what=f"artifact {self.name}")
        nodes = {n.get("id"): n for n in graph.get("nodes", [])}
        runs = []
        for edge in graph.get("edges", []):
            node = nodes.get(edge.get("to"))
            if edge.get("action") == "use" and node and node.get("kind") == "run":
                runs.append(api.run(f"{node.get('team', self._entity)}/{node['project']}/{node['run_id']}"))
        return runs

    def _route(self) -> str:
        return f"{_project_route(self.entity, self.project)}/artifacts/{_q(self._name)}/{self.digest}"

    def _client(self) -> Api:
        if self._api is None:
            raise Error(self._offline_reason or f"artifact {self._name} is a draft: it is on no server yet")
        return self._api

    def _committed(self, what: str) -> None:
        if self._final and self._version is None:
            self.wait()
        elif not self._final:
            raise Error(f"artifact {self._name} is a draft: {what} needs a logged artifact")

    def _logged(self, value: str | None, what: str) -> str:
        if value is None and self._final and self._api is not None and what == "version":
            self.wait()
            value = self._version
        if value is None:
            raise Error(f"artifact {self._name} has no {what} yet: log it (and wait()) first")
        return value

    def _raise_error(self) -> None:
        if self._error is None and self._digest is not None and self._digest in _refused:
            self._error = ArtifactRefused(_refused[self._digest])
        if self._error is not None:
            raise Error(f"artifact {self._name} could not be logged: {self._error}") from self._error

    def _load_manifest(self) -> None:
        """Every file of the version, a page (``files_limit``) at a time until ``files_total``."""
        if self._manifest_loaded:
            return
        api = self._client()
        files: list[dict[str, Any]] = []
        while True:
            params = {"files_offset": len(files), "files_limit": FILES_PAGE}
            page = api._request("GET", self._route(), params=params, what=f"artifact {self.name}")
            got = page.get("files") or []
            files.extend(got)
            total = page.get("files_total")
            if not got or not isinstance(total, int) or len(files) >= total:
                break
        self._apply({**page, "files": files, "files_total": len(files)})

    def _apply(self, version: dict[str, Any]) -> None:
        """Take what the server says of this version (``VERSION``, with ``files`` when asked for one)."""
        self._final = True
        self._entity, self._project = version["team"], version["project"]
        self._name, self._type = version["name"], version.get("type", self._type)
        self._version, self._digest = version["version"], version["digest"]
        self._aliases = [a for a in version.get("aliases", []) if a]
        self._description = version.get("description") or None
        metadata = version.get("metadata")
        if isinstance(metadata, str):
            metadata = orjson.loads(metadata) if metadata else {}
        self._metadata = metadata or {}
        self._size, self._file_count = version.get("size"), version.get("file_count")
        self._run_id, self._created_at = version.get("run_id") or None, version.get("created_at")
        files = version.get("files")
        total = version.get("files_total")
        if files is not None and (not isinstance(total, int) or len(files) >= total):  # all of them: else paged
            self._entries = {
                f["path"]: ArtifactEntry(f["path"], f.get("digest", ""), int(f.get("size", 0)), f.get("ref"))
                for f in files
            }
            for entry in self._entries.values():
                entry._artifact = self
            self._manifest_loaded = True

    @classmethod
    def _from_version(cls, api: Api, version: dict[str, Any]) -> Artifact:
        artifact = cls(version["name"], version.get("type") or "unspecified")
        artifact._api = api
        artifact._manifest_loaded = False
        artifact._apply(version)
        return artifact


def _check_description(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"an artifact's description must be a string or None, got {type(value).__name__}")
    if value is not None and len(value) > events.MAX_TEXT_LEN:
        raise ValueError(f"an artifact's description is longer than {events.MAX_TEXT_LEN:,} characters")
    return value


def _check_metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"an artifact's metadata must be a dict, got {type(value).__name__}")
    safe = json_safe(value)
    if not events.is_tree(safe):
        raise ValueError(f"an artifact's metadata must be {events._TREE}")
    if len(orjson.dumps(safe)) > MAX_METADATA_BYTES:
        raise ValueError(f"an artifact's metadata is larger than {MAX_METADATA_BYTES:,} bytes as JSON")
    return safe


# -- staging: reading, hashing and copying a logged artifact's files (the stager's thread) --------


def blob_path(staging: Path, sha256: str) -> Path:
    return staging / "blobs" / sha256[:2] / sha256


def manifest_path(staging: Path, digest: str) -> Path:
    return staging / "manifests" / f"{digest}.json"


@dataclass
class _Job:
    """One logged artifact on its way: staged (its digest known, or failed), uploaded, then its event queued once."""

    artifact: Artifact
    event: dict[str, Any]
    #: log_artifact(path)'s walk of a folder (or its one file), done by the stager rather than the caller.
    fill: Callable[[], None] | None = None
    staged: threading.Event = field(default_factory=threading.Event)
    queued: bool = False
    refused: bool = False  # the server will never take it: its event goes out to be set aside with the reason
    uploaded: bool = False  # the server holds every blob: the staged copies may go
    shas: set[str] = field(default_factory=set)  # the staged blobs it uses


class _Worker:
    """A thread that handles a queue's items in order; started by the first item, it ends once idle for
    ``STAGER_IDLE_S`` (a process of many runs keeps none per run)."""

    def __init__(self, name: str, handle: Callable[[_Job], None]) -> None:
        self._name, self._handle = name, handle
        self._items: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: _Job) -> None:
        with self._lock:  # (the thread decides to end under it too: no item is left without one)
            self._items.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._items.get(timeout=STAGER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._items.empty():
                        self._thread = None
                        return
                continue
            self._handle(job)


_stagers: weakref.WeakSet[Stager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: its stagers start afresh (the parent's jobs are the
    parent's)."""
    for stager in list(_stagers):
        stager._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Stager:
    """A run's artifact worker: stages each logged artifact in turn on a thread of its own, then queues its
    event. ``put(type, data)`` is the run's sender's; it returns False once the run has finished.

    With an ``uploader`` (an online run), a second thread uploads each staged version before its event is
    queued, trying again (with a growing backoff, as a Retry-After asks) until it is up: a large checkpoint goes
    up beside the run's metrics and its event enters the spool only once the server holds its files, so no event
    waits behind it. A version the server refuses for good (a file over its ``max_blob_bytes``, a server without
    artifacts) fails ``wait()`` at once, and its event goes out to be set aside with the reason. Once up, the
    version's staged copies are removed (those another pending version shares are kept). When the run
    finishes (``join``) the upload gives way: the events are queued at once, in order, and the sender uploads
    the rest.
    """

    def __init__(
        self, staging: Path, put: Any, uploader: HttpTransport | None = None, team: str = "", project: str = ""
    ) -> None:
        self.staging = staging
        self._put = put
        self._uploader, self._team, self._project = uploader, team, project
        #: (path, size, mtime_ns, inode) -> SHA-256 of a file staged before: re-logging it reads nothing.
        self._known: dict[tuple[str, int, int, int], str] = {}
        self._reset()
        _stagers.add(self)

    def _reset(self) -> None:
        self._finishing = threading.Event()
        self._pending: list[_Job] = []  # submitted, event not yet queued (in order)
        self._holding: list[_Job] = []  # submitted, not yet known to be on the server: their blobs stay
        self._lock = threading.Lock()
        self._staging = _Worker("runstream-artifacts", self._stage_job)
        self._uploads = _Worker("runstream-artifact-upload", self._upload_job)

    def submit(self, artifact: Artifact, event: dict[str, Any], fill: Callable[[], None] | None = None) -> None:
        artifact._staged.clear()
        job = _Job(artifact, event, fill)
        with self._lock:
            self._pending.append(job)
            self._holding.append(job)
        self._staging.submit(job)

    def join(self, timeout: float = STAGE_JOIN_S) -> None:
        """Wait until every artifact logged so far is staged, and queue the events (finish() calls this).

        Reading and copying files is local work and is waited for (up to ``timeout`` s in all: then the artifacts
        still being read fail); an upload is not (a stalled network must not hold up finish()): it stops, and
        the sender uploads the rest before the event goes out."""
        self._finishing.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending)
        for job in pending:
            if not job.staged.wait(max(0.0, deadline - time.monotonic())):
                job.artifact._error = Error(
                    f"its files were still being read {timeout:g} s after finish() began: it was not logged"
                )
                log.warning("runstream: artifact %s was not logged: %s", job.artifact._name, job.artifact._error)
            self._queue_event(job)

    def _stage_job(self, job: _Job) -> None:
        try:
            if job.fill is not None:
                job.fill()
            self._stage(job)
        except BaseException as exc:  # noqa: BLE001 - reported, and raised by artifact.wait()
            job.artifact._error = exc
            log.warning("runstream: artifact %s could not be logged: %s", job.artifact._name, exc)
        job.staged.set()
        job.artifact._staged.set()  # its digest is known (or its error): wait() polls the server from here
        if self._uploader is not None:
            self._uploads.submit(job)  # (its event after those before it)
        else:
            self._queue_event(job)

    def _upload_job(self, job: _Job) -> None:
        if job.artifact._error is None and not job.queued:
            self._upload(job)
        with self._lock:  # queued before the upload ended (finish): the sender may be reading the copies
            clean = job.uploaded and not job.queued
        self._queue_event(job)
        if clean:
            self._drop_staged(job)

    def _upload(self, job: _Job) -> None:
        """Upload ``job``'s version until the server holds it, it refuses it for good, or the run finishes."""
        assert self._uploader is not None
        digest = job.event["digest"]
        failures = 0
        while not self._finishing.is_set():
            try:
                stop = self._finishing.is_set
                upload_artifact(self._uploader, self._team, self._project, self.staging, digest, stop)
                job.uploaded = True
                return
            except ArtifactRefused as exc:
                job.refused = True
                job.artifact._error = exc
                note_refusal(digest, str(exc))
                log.warning(
                    "runstream: artifact %s was refused: %s (the run goes on; its event is set aside)",
                    job.artifact._name,
                    exc,
                )
                return
            except StagedFilesGone:
                return  # the sender finds the same, and sets the event aside with the reason
            except Exception as exc:  # noqa: BLE001 - a network failure, a 5xx, a 429...: tried again
                failures += 1
                low, high = UPLOAD_BACKOFF
                delay = min(low * 2 ** (failures - 1), high)
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                log.debug("runstream: artifact %s: upload failed (%s); again in %.1f s", job.artifact._name, exc, delay)
                self._finishing.wait(delay)

    def _drop_staged(self, job: _Job) -> None:
        """Remove the staged copies of an uploaded version, but those a version not yet uploaded uses."""
        with self._lock:
            if job in self._holding:
                self._holding.remove(job)
            kept = set().union(*(other.shas for other in self._holding))
            for sha in job.shas - kept:
                with contextlib.suppress(OSError):
                    blob_path(self.staging, sha).unlink()
            job.shas = set()
            digest = job.event.get("digest")
            if digest and not any(other.event.get("digest") == digest for other in self._holding):
                with contextlib.suppress(OSError):
                    manifest_path(self.staging, digest).unlink()

    def _queue_event(self, job: _Job) -> None:
        """Queue ``job``'s event, once (the threads and finish() may each get here)."""
        with self._lock:
            if job.queued:
                return
            job.queued = True
            self._pending.remove(job)
            if (job.artifact._error is None or job.refused) and not self._put(events.ARTIFACT, job.event):
                job.artifact._error = Error("the run had finished; the artifact was not logged")
        job.artifact._staged.set()

    def _stage(self, job: _Job) -> None:
        artifact, event = job.artifact, job.event
        if len(artifact._entries) > MAX_MANIFEST_ENTRIES:
            raise ValueError(
                f"it has {len(artifact._entries):,} files, more than the {MAX_MANIFEST_ENTRIES:,} a server takes in "
                "one version: split it into several artifacts"
            )
        entries: dict[str, ArtifactEntry] = {}
        for path, entry in sorted(artifact._entries.items()):
            if entry.ref is None:
                assert entry.local_path is not None  # a file entry always has one
                digest, size = self.stage_file(Path(entry.local_path), job)
            else:
                digest, size = _entry_digest(entry)
            entries[path] = replace(entry, digest=digest, size=size)
        raw = manifest_bytes(entries)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(
                f"its manifest is {len(raw):,} bytes, more than the {MAX_MANIFEST_BYTES:,} a server reads (long "
                "paths or references): split it into several artifacts"
            )
        digest = hashlib.sha256(raw).hexdigest()
        target = manifest_path(self.staging, digest)
        if not target.exists():
            _write_atomic(target, raw)
        for entry in entries.values():
            entry._artifact = artifact
        artifact._entries = entries
        artifact._digest = digest
        artifact._size = sum(e.size for e in entries.values())
        artifact._file_count = len(entries)
        event.update(digest=digest, size=artifact._size, file_count=len(entries))

    def stage_file(self, source: Path, job: _Job | None = None) -> tuple[str, int]:
        """Copy ``source`` into the staging folder under its SHA-256, reading it once; (sha256, size).

        A file that changes while it is copied is copied again (up to three times; then what was read is kept).
        The blob is claimed for ``job`` (under the lock an upload's cleanup takes) as soon as it is in place.
        """
        before = source.stat()
        key = (str(source), before.st_size, before.st_mtime_ns, before.st_ino)
        known = self._known.get(key)
        if known is not None:
            with self._lock:
                if blob_path(self.staging, known).exists():
                    if job is not None:
                        job.shas.add(known)
                    return known, before.st_size
        blobs = self.staging / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            fd, partial = tempfile.mkstemp(prefix=".staging-", dir=blobs)
            try:
                digest, size = hashlib.sha256(), 0
                with open(source, "rb") as f, os.fdopen(fd, "wb") as out:
                    while chunk := f.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                after = source.stat()
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) and attempt < 2:
                    before = after  # changed while read: again
                    os.unlink(partial)
                    continue
                sha = digest.hexdigest()
                target = blob_path(self.staging, sha)
                with self._lock:
                    if target.exists():
                        os.unlink(partial)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(partial, target)
                    if job is not None:
                        job.shas.add(sha)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
            self._known[(str(source), after.st_size, after.st_mtime_ns, after.st_ino)] = sha
            return sha, size
        raise AssertionError("unreachable")  # the third attempt always returns


def _write_atomic(target: Path, raw: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=".manifest-", dir=target.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    os.replace(partial, target)


# -- uploading (the sender's, before a log event goes out; also runstream sync's) ------------------


def upload_artifact(
    uploader: HttpTransport,
    team: str,
    project: str,
    staging: Path,
    digest: str,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Upload the blobs of the staged version ``digest`` that the server lacks, the manifest last; the bytes sent.

    Blocking: the sender calls it on a thread. Raises ``TransportError`` as the transport does,
    ``StagedFilesGone`` when a blob the server lacks is no longer in the staging folder (or damaged), and
    ``ArtifactRefused`` when the server will never take the version: a file larger than its
    ``max_blob_bytes`` (said by ``blobs/missing``: nothing is sent), a server without the blob endpoints
    (404/405), a blob it refuses (413/422). ``stop()`` true ends it early (``TransportError``): the server
    keeps what arrived.
    """
    try:
        raw = manifest_path(staging, digest).read_bytes()
    except FileNotFoundError:
        raw = b""
    if raw and hashlib.sha256(raw).hexdigest() != digest:
        raw = b""  # damaged: only the server's copy can help now
    entries = parse_manifest(raw) if raw else {}
    sizes = {e.digest: e.size for e in entries.values() if e.ref is None}
    if raw:
        sizes[digest] = len(raw)
    where = getattr(uploader, "base", "the server")
    try:
        missing, partial = uploader.missing_blobs(team, project, sorted({*sizes, digest}))
    except TransportError as exc:
        if exc.status in (404, 405):  # an older server: no blob endpoints
            raise ArtifactRefused(
                f"the server at {where} does not take artifacts; upgrade it (HTTP {exc.status} on blobs/missing)"
            ) from exc
        if exc.rejected:
            raise ArtifactRefused(f"the server at {where} refused the version's blobs ({exc.reason})") from exc
        raise
    if not missing:
        return 0
    if not raw:
        raise StagedFilesGone(f"the manifest {manifest_path(staging, digest)} is gone and the server lacks it")
    limit = getattr(uploader, "max_blob_bytes", None)
    too_large = sorted(e.path for e in entries.values() if e.digest in missing and limit is not None and e.size > limit)
    if too_large:
        raise ArtifactRefused(
            f"{len(too_large)} of its files are larger than the {limit:,} bytes the server at {where} takes "
            f"(its max_blob_bytes): {', '.join(too_large[:5])}{', ...' if len(too_large) > 5 else ''}"
        )

    def put(sha: str) -> int:
        source = manifest_path(staging, digest) if sha == digest else blob_path(staging, sha)
        if not source.is_file():
            raise StagedFilesGone(f"{source} (one of the artifact's files) is gone and the server lacks it")
        try:
            return uploader.put_blob(team, project, sha, source, sizes[sha], partial.get(sha, 0), stop)
        except TransportError as exc:  # 400: the bytes arrived with another SHA-256; damaged here?
            if exc.status == 400 and sha256_file(source)[0] != sha:
                raise StagedFilesGone(f"{source} was damaged after it was staged (its SHA-256 changed)") from exc
            if exc.status in (404, 405):
                raise ArtifactRefused(f"the server at {where} does not take artifacts; upgrade it") from exc
            if exc.rejected:
                raise ArtifactRefused(f"the server at {where} refused blob {sha} ({exc.reason})") from exc
            raise

    sent = sum(each(put, sorted(missing - {digest}), UPLOAD_THREADS))
    return sent + (put(digest) if digest in missing else 0)  # the manifest once its files are there


def each(fn: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """``fn`` of every item, on up to ``workers`` threads; the first failure is raised once the others stopped.

    Threads of their own, not a ``ThreadPoolExecutor``: the last uploads of a script that never calls finish()
    happen at interpreter exit, when executors refuse new work.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pending: queue.SimpleQueue[T] = queue.SimpleQueue()
    for item in items:
        pending.put(item)
    results: list[R] = []
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results.append(fn(item))
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread below
                errors.append(exc)

    threads = [
        threading.Thread(target=work, name="runstream-artifact-io", daemon=True)
        for _ in range(min(workers, len(items)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# -- the run's side: log_artifact, use_artifact -----------------------------------------------------


def _run_api(run: Run) -> tuple[Api | None, str]:
    """A read client for the run's server, or None and why not (offline, a Kafka run without files_url)."""
    from runstream.public_api import Api

    settings = run.settings
    if run.mode != "online":
        return None, f"the run is {run.mode}: artifacts are read through the server (runstream sync sends them)"
    url = settings.url if settings.url.startswith(("http://", "https://")) else settings.files_url
    if not url:
        return None, f"the run sends to {settings.url} and has no files_url (RUNSTREAM_FILES_URL, the API's address)"
    return Api(url=url, api_key=settings.api_key, entity=run.entity), ""


def log_artifact(
    run: Run,
    artifact_or_path: Artifact | str | os.PathLike[str],
    name: str | None = None,
    type: str | None = None,
    aliases: list[str] | str | None = None,
) -> Artifact:
    """``run.log_artifact``: stage the artifact's files off the caller's thread (a folder is walked there too),
    then send its event."""
    fill: Callable[[], None] | None = None
    if isinstance(artifact_or_path, Artifact):
        artifact = artifact_or_path
        if name is not None or type is not None:
            raise ValueError("log_artifact takes name= and type= only with a path; set them on the Artifact")
    elif isinstance(artifact_or_path, (str, os.PathLike)):
        source = Path(artifact_or_path)
        default = f"run-{run.id}-{source.name}"
        artifact = Artifact(name or default, type or "unspecified")
        if source.is_dir():
            folder = artifact
            fill = lambda: folder._add_dir(source)  # noqa: E731 - the stager walks it
        elif source.is_file():
            artifact.add_file(source)
        else:
            raise ValueError(f"log_artifact: {str(artifact_or_path)!r} is neither a file nor a directory")
    else:
        raise TypeError(f"log_artifact takes an Artifact or a path, got {artifact_or_path.__class__.__name__}")
    chosen = check_aliases(aliases) if aliases is not None else list(artifact._aliases)
    artifact._check_draft()
    if run._finished:
        raise Error(f"run {run.path} has finished: log_artifact must come before finish()")
    api, why = _run_api(run) if run.mode != "disabled" else (None, "")
    if api is None and run.mode == "online":
        raise Error(f"log_artifact cannot upload the files: {why}")
    artifact._final = True
    artifact._entity, artifact._project = run.entity, run.project
    artifact._aliases = chosen
    artifact._api, artifact._offline_reason = api, why
    if run.mode == "disabled":
        return artifact
    event: dict[str, Any] = {
        "action": "log",
        "name": artifact._name,
        "type": artifact._type,
        "description": artifact._description or "",
        "metadata": artifact._metadata,
        "aliases": chosen,
    }
    run._artifact_stager().submit(artifact, event, fill)
    return artifact


def use_artifact(
    run: Run,
    artifact_or_name: Artifact | str,
    type: str | None = None,
) -> Artifact:
    """``run.use_artifact``: resolve the version through the API, record the use, return it (downloadable)."""
    if run._finished:
        raise Error(f"run {run.path} has finished: use_artifact must come before finish()")
    if isinstance(artifact_or_name, Artifact):
        artifact = artifact_or_name
        if artifact.is_draft():
            raise Error(f"artifact {artifact._name} is a draft: log it first (or pass its name)")
        artifact.wait()
    elif isinstance(artifact_or_name, str):
        api, why = _run_api(run)
        if api is None:
            raise Error(f"use_artifact reads the artifact from the server, but {why}")
        artifact = fetch_artifact(api, artifact_or_name, type, project=run.project)
    else:
        raise TypeError(f"use_artifact takes an Artifact or 'name:alias', got {artifact_or_name.__class__.__name__}")
    if artifact.entity != run.entity:
        raise Error(f"run {run.path} cannot use {artifact.qualified_name}: a run uses artifacts of its own team")
    if run.mode != "disabled":
        data = {"action": "use", "project": artifact.project, "name": artifact._name, "digest": artifact.digest}
        if not run._sender.put(events.ARTIFACT, data):
            raise Error(f"run {run.path} has finished: use_artifact must come before finish()")
    return artifact


def log_model(
    run: Run, path: str | os.PathLike[str], name: str | None = None, aliases: list[str] | None = None
) -> Artifact:
    """``run.log_model``: a file or directory logged as an artifact of type ``model``."""
    return log_artifact(run, path, name=name or f"run-{run.id}-{Path(path).name}", type="model", aliases=aliases)


def use_model(run: Run, name: str) -> str:
    """``run.use_model``: use a ``model`` artifact and download it; the local path."""
    artifact = use_artifact(run, name)
    if "model" not in artifact.type.lower():
        raise ValueError(f"use_model takes a model artifact, and {artifact.qualified_name} is a {artifact.type!r}")
    return artifact.download()


# -- reading through the API (runstream.Api's artifact methods call these) ---------------------------


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _project_route(team: str, project: str) -> str:
    return f"/projects/{_q(team)}/{_q(project)}"


def parse_artifact_path(api: Api, path: str, project: str | None = None) -> tuple[str, str, str, str]:
    """``team/project/name:ref``, ``project/name:ref`` or ``name:ref`` (``ref`` defaults to ``latest``) as
    (team, project, name, ref), the missing parts from ``project`` (else the Api's ``default_project``, if it
    has one) and the Api's ``entity``."""
    if not isinstance(path, str) or not path.strip("/"):
        raise ValueError(f"expected an artifact path 'team/project/name:ref', got {path!r}")
    parts = path.strip("/").split("/")
    last, _, ref = parts[-1].partition(":")
    parts[-1] = last
    if len(parts) == 1:
        project = project or getattr(api, "default_project", None)
        if not project:
            raise ValueError(f"{path!r} names no project: use 'project/name:ref' or 'team/project/name:ref'")
        parts.insert(0, project)
    if len(parts) == 2:
        parts.insert(0, api.entity)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"expected an artifact path 'team/project/name:ref', got {path!r}")
    team, project, name = parts
    return team, project, _check_name(name, "an artifact name"), ref or "latest"


def fetch_artifact(api: Api, path: str, type: str | None = None, project: str | None = None) -> Artifact:
    """One version (``"team/project/name:ref"``, ref ``v3``, an alias, ``latest`` or a digest), with its files;
    ``project`` is the one a ``"name:ref"`` path means."""
    team, project, name, ref = parse_artifact_path(api, path, project)
    route = f"{_project_route(team, project)}/artifacts/{_q(name)}/{_q(ref)}"
    artifact = Artifact._from_version(api, api._request("GET", route, what=f"artifact {team}/{project}/{name}:{ref}"))
    if type is not None and artifact.type != type:
        raise ValueError(f"artifact {artifact.qualified_name} is of type {artifact.type!r}, not {type!r}")
    return artifact


def artifact_versions(api: Api, path: str) -> list[Artifact]:
    """Every version of ``"team/project/name"`` (a ``:ref`` is ignored), newest first."""
    team, project, name, _ = parse_artifact_path(api, path)
    route = f"{_project_route(team, project)}/artifacts/{_q(name)}/versions"
    found = _all_pages(api, route, "versions", {}, f"artifact {team}/{project}/{name}")
    return [Artifact._from_version(api, v) for v in found]


def _all_pages(api: Api, route: str, key: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """Every item of a paged list (``limit``/``offset``, ``total``), a page at a time."""
    found: list[dict[str, Any]] = []
    while True:
        body = api._request("GET", route, params={**params, "limit": LIST_PAGE, "offset": len(found)}, what=what)
        page = body.get(key) or []
        found.extend(page)
        total = body.get("total")
        if not page or not isinstance(total, int) or len(found) >= total:
            return found


def artifact_collections(api: Api, project_path: str, type: str | None = None) -> list[dict[str, Any]]:
    """The artifact names of ``"team/project"`` (or ``"project"``): name, type, versions, latest, aliases."""
    parts = project_path.strip("/").split("/")
    if len(parts) == 1:
        parts.insert(0, api.entity)
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected a project path 'team/project' or 'project', got {project_path!r}")
    route = f"{_project_route(*parts)}/artifacts"
    return _all_pages(api, route, "artifacts", {"type": type}, f"project {parts[0]}/{parts[1]}")


def run_artifacts(api: Api, team: str, project: str, run_id: str, which: str) -> list[Artifact]:
    """The versions a run logged (``which="logged"``) or used (``"used"``)."""
    if which not in ("logged", "used"):
        raise ValueError(f"which must be 'logged' or 'used', got {which!r}")
    route = "/runs/" + "/".join(_q(p) for p in (team, project, run_id)) + "/artifacts"
    body = api._request("GET", route, what=f"run {team}/{project}/{run_id}")
    return [Artifact._from_version(api, v) for v in body[which]]
