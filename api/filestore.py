"""Where run files and media blobs live: a local directory by default, anything with the same methods otherwise.

Keys are ``team/project/run_id/<store_key>``. A blob is streamed to a temporary
file, checked against its SHA-256 and size limit, then renamed into place, so a
reader never sees half a blob and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol


class BlobError(ValueError):
    """An upload the store refused: ``status`` is the HTTP status that describes it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UploadOffset(BlobError):
    """A resumable upload sent from an offset other than what the store holds (``received``): 409."""

    def __init__(self, received: int, message: str) -> None:
        super().__init__(409, message)
        self.received = received


#: Content-addressed blobs (artifact files and manifests) live under this folder, per team: a team name
#: starts with a letter or digit, so no team's files can be in it.
BLOBS = "_blobs"


def blob_key(team: str, sha256: str) -> str:
    """The store key of a team's blob: ``_blobs/<team>/<sha[:2]>/<sha>``."""
    return f"{BLOBS}/{team}/{sha256[:2]}/{sha256}"


class FileStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes], sha256: str, max_bytes: int) -> int: ...

    def path(self, key: str) -> Path | None: ...

    def blob_state(self, team: str, sha256: str) -> tuple[int | None, int]: ...

    async def put_blob(
        self,
        team: str,
        sha256: str,
        offset: int,
        size: int,
        body: Callable[[], AsyncIterator[bytes]],
        max_bytes: int,
    ) -> tuple[bool, int]: ...


class LocalFileStore:
    """Blobs under ``root``, never outside it: each folder is opened relative to the one above with
    ``O_NOFOLLOW``, so a symbolic link found under the root is refused (409 on upload, missing on read)
    rather than followed; the root itself may be a link (a data directory on another disk)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # (st_dev, st_ino) of a partial upload -> ((its size, mtime_ns) when last written here, its SHA-256 so far)
        self._digests: OrderedDict[tuple[int, int], tuple[tuple[int, int], Any]] = OrderedDict()
        self._digests_lock = threading.Lock()

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\\" in key or "\0" in key:
            raise BlobError(400, f"file key {key!r} must be a relative path without '.' or '..' parts")
        return parts

    def _open_folder(self, parts: list[str], create: bool) -> int:
        """A descriptor of the folder ``parts`` under the root (made if ``create``), each level opened without
        following links. FileNotFoundError when missing (and not ``create``); BlobError 409 when a level is a
        file or a link."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # a folder already (checked as it is opened), or a file or link (refused there)
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except (NotADirectoryError, OSError) as exc:
                    if isinstance(exc, (FileNotFoundError, PermissionError)):
                        raise
                    where = "/".join(parts[: i + 1])
                    raise BlobError(
                        409, f"{where} is {_what(fd, part)}, so it cannot hold files; {_USE_ANOTHER}"
                    ) from None
                os.close(fd)
                fd = inner
            return fd
        except BaseException:
            os.close(fd)
            raise

    async def put(self, key: str, chunks: AsyncIterator[bytes], sha256: str, max_bytes: int) -> int:
        """Store a blob; its size. BlobError 413 past ``max_bytes``, 400 when the SHA-256 does not match,
        409 when the key's place is taken by a folder, or a folder on its way by a file or a link."""
        parts = self._parts(key)
        name = parts[-1]
        folder = self._open_folder(parts[:-1], create=True)
        tmp = f".upload-{secrets.token_hex(8)}"
        try:
            kind = _what(folder, name)
            if kind not in ("missing", "a file"):
                raise BlobError(409, f"{key} is {kind}, so a file cannot be stored there; {_USE_ANOTHER}")
            digest, size = hashlib.sha256(), 0
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=folder), "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobError(413, f"the file is larger than the limit of {max_bytes:,} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise BlobError(
                    400,
                    f"the upload's SHA-256 is {digest.hexdigest()}, not the {sha256} sent; "
                    "it was changed or cut in transit: send it again",
                )
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)  # a link there is replaced, not followed
        finally:
            try:
                os.unlink(tmp, dir_fd=folder)
            except FileNotFoundError:
                pass
            os.close(folder)
        return size

    def path(self, key: str) -> Path | None:
        """The blob's file, or None when there is none (or a link, or a link on its way, is in its place)."""
        parts = self._parts(key)
        try:
            folder = self._open_folder(parts[:-1], create=False)
        except (FileNotFoundError, BlobError):
            return None
        try:
            return self.root.joinpath(*parts) if _what(folder, parts[-1]) == "a file" else None
        finally:
            os.close(folder)

    # -- content-addressed, resumable blobs ----------------------------------------------------------
    # A blob upload appends to ``.partials/<sha>-<size>`` beside where the blob goes (the size the upload
    # declared is in the name), from the offset the client says and the store holds; once ``size`` bytes
    # are there their SHA-256 is checked and the partial is renamed into place (a mismatch discards it).
    # One upload of a blob at a time: the partial is locked. An upload that declares another size, or
    # starts at offset 0, starts the blob again (a cut or bad upload cannot block the real one); partials
    # of the folder untouched for STALE_PARTIAL_SECONDS are removed when an upload starts there.

    def blob_state(self, team: str, sha256: str) -> tuple[int | None, int]:
        """(the stored blob's size or None, the bytes a partial upload of it holds: 0 when none)."""
        parts = self._parts(blob_key(team, sha256))
        try:
            folder = self._open_folder(parts[:-1], create=False)
        except (FileNotFoundError, BlobError):
            return None, 0
        try:
            stored = _regular_size(folder, sha256)
            if stored is not None:
                return stored, 0
        finally:
            os.close(folder)
        try:
            partials = self._open_folder([*parts[:-1], PARTIALS], create=False)
        except (FileNotFoundError, BlobError):
            return None, 0
        try:
            sizes = [_regular_size(partials, n) for n in os.listdir(partials) if n.startswith(f"{sha256}-")]
            return None, max((n for n in sizes if n is not None), default=0)
        finally:
            os.close(partials)

    async def put_blob(
        self,
        team: str,
        sha256: str,
        offset: int,
        size: int,
        body: Callable[[], AsyncIterator[bytes]],
        max_bytes: int,
    ) -> tuple[bool, int]:
        """Store bytes ``offset..`` of a blob of ``size`` bytes: (stored, bytes held). ``body()`` opens the
        bytes, called only once the offset is known to fit (a stored blob answers (True, its size) without
        it). UploadOffset (409) when ``offset`` is neither 0 nor what the store holds, or another upload of
        the blob is under way; BlobError 413 past ``max_bytes``, 400 when the body runs past ``size`` (what
        it added is dropped) or the finished blob's SHA-256 differs (the partial is discarded). Every file
        operation runs in a thread: the event loop never waits on the disk."""
        if size > max_bytes:
            raise BlobError(413, f"the blob is {size:,} bytes, more than the limit of {max_bytes:,}")
        if not 0 <= offset <= size:
            raise BlobError(400, f"offset must be from 0 to the size ({size:,}), got {offset:,}")
        upload = await asyncio.to_thread(self._begin_blob, team, sha256, offset, size)
        if isinstance(upload, int):
            return True, upload
        try:
            pending: list[bytes] = []
            buffered = 0
            async for chunk in body():
                if upload.received + buffered + len(chunk) > size:
                    await asyncio.to_thread(upload.roll_back)
                    raise BlobError(
                        400, f"the body holds more than the {size - offset:,} bytes from offset {offset} to size"
                    )
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= _WRITE_BYTES:
                    await asyncio.to_thread(upload.append, b"".join(pending))
                    pending, buffered = [], 0
            if pending:
                await asyncio.to_thread(upload.append, b"".join(pending))
            done = await asyncio.to_thread(upload.finish, size)
            return done, upload.received
        finally:
            await asyncio.to_thread(upload.close)

    def _begin_blob(self, team: str, sha256: str, offset: int, size: int) -> int | _BlobUpload:
        """The stored blob's size, or its partial upload opened, locked and checked against ``offset``."""
        parts = self._parts(blob_key(team, sha256))
        folder = self._open_folder(parts[:-1], create=True)
        partials = -1
        fd = -1
        try:
            stored = _regular_size(folder, sha256)
            if stored is not None:
                return stored
            partials = self._open_folder([*parts[:-1], PARTIALS], create=True)
            name = f"{sha256}-{size}"
            _sweep(partials, sha256, name)
            kind = _what(partials, name)
            if kind not in ("missing", "a file"):
                raise BlobError(409, f"the partial upload of {sha256} is {kind}; it cannot be resumed")
            fd = _locked_partial(partials, name, sha256)
            stored = _regular_size(folder, sha256)  # finished by the upload that held the lock before
            if stored is not None:
                if os.fstat(fd).st_size == 0:
                    _unlink(partials, name)
                return stored
            received = os.fstat(fd).st_size
            if offset == 0 and received:  # a new start: what an earlier (cut, or bad) upload left goes
                os.ftruncate(fd, 0)
                received = 0
            if offset != received:
                if received == 0:  # nothing kept: no partial left behind
                    _unlink(partials, name)
                raise UploadOffset(
                    received, f"the server holds {received:,} bytes of blob {sha256}: send from offset {received}"
                )
            upload = _BlobUpload(self, folder, partials, fd, name, sha256, received, self._digest_of(fd, received))
            folder = partials = fd = -1  # the upload holds them now
            return upload
        finally:
            for held in (fd, partials, folder):
                if held >= 0:
                    os.close(held)

    def _digest_of(self, fd: int, received: int) -> Any:
        """The SHA-256 state of a partial's ``received`` bytes when this store kept it (the upload that wrote
        them ran here and nothing changed the file since), a new one for an empty partial, else None: the
        whole blob is then hashed once, when complete."""
        if received == 0:
            return hashlib.sha256()
        st = os.fstat(fd)
        with self._digests_lock:
            kept = self._digests.pop((st.st_dev, st.st_ino), None)
        if kept is not None and kept[0] == (st.st_size, st.st_mtime_ns):
            return kept[1]
        return None

    def _keep_digest(self, fd: int, digest: Any) -> None:
        st = os.fstat(fd)
        with self._digests_lock:
            self._digests[(st.st_dev, st.st_ino)] = ((st.st_size, st.st_mtime_ns), digest)
            self._digests.move_to_end((st.st_dev, st.st_ino))
            while len(self._digests) > _KEPT_DIGESTS:
                self._digests.popitem(last=False)


class _BlobUpload:
    """One upload of a blob into its locked partial (every method blocks: call them in a thread)."""

    def __init__(
        self,
        store: LocalFileStore,
        folder: int,
        partials: int,
        fd: int,
        name: str,
        sha256: str,
        received: int,
        digest: Any,
    ) -> None:
        self.store, self.folder, self.partials, self.fd, self.name, self.sha256 = (
            store,
            folder,
            partials,
            fd,
            name,
            sha256,
        )
        self.start = self.received = received
        self.digest = digest  # the running SHA-256 of the partial's bytes, or None: hashed when complete
        self.start_digest = digest.copy() if digest is not None else None
        self.done = False

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        if self.digest is not None:
            self.digest.update(data)
        self.received += len(data)

    def roll_back(self) -> None:
        """Drop what this upload added (the partial goes back to where it was; an empty one goes)."""
        os.ftruncate(self.fd, self.start)
        self.received, self.digest = self.start, self.start_digest
        if self.start == 0:
            _unlink(self.partials, self.name)
            self.done = True

    def finish(self, size: int) -> bool:
        """True when the blob is complete, checked and in place; False while bytes are still due."""
        if self.received < size:
            return False
        digest = self.digest if self.digest is not None else _hash_prefix(self.fd, size)
        if digest.hexdigest() != self.sha256:
            _unlink(self.partials, self.name)
            self.done = True
            raise BlobError(
                400,
                f"the blob's SHA-256 is {digest.hexdigest()}, not {self.sha256}; it was changed or cut in transit "
                "and is discarded: upload it again from offset 0",
            )
        os.fsync(self.fd)
        os.replace(self.name, self.sha256, src_dir_fd=self.partials, dst_dir_fd=self.folder)
        self.done = True
        return True

    def close(self) -> None:
        """Keep the running digest for the next part (a cut upload's too), let go of the lock."""
        try:
            if not self.done and self.digest is not None and self.received > 0:
                self.store._keep_digest(self.fd, self.digest)
        finally:
            for fd in (self.fd, self.partials, self.folder):
                os.close(fd)


_USE_ANOTHER = "store the file under another path"
#: The folder (beside the blobs) that holds partial uploads, ``<sha>-<size>``.
PARTIALS = ".partials"
#: A partial upload untouched this long is removed when an upload in its folder starts.
STALE_PARTIAL_SECONDS = 24 * 3600
#: Bytes gathered before a write (each write runs in a thread).
_WRITE_BYTES = 1 << 20
#: Running digests of partial uploads kept for their next part.
_KEPT_DIGESTS = 1024


def _sweep(partials: int, sha256: str, keep: str) -> None:
    """Remove this blob's partials of another declared size (its upload starts again; UploadOffset while
    one of them is being written) and any partial untouched for STALE_PARTIAL_SECONDS."""
    now = time.time()
    for name in os.listdir(partials):
        if name == keep:
            continue
        ours = name.startswith(f"{sha256}-")
        try:
            st = os.stat(name, dir_fd=partials, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not ours and now - st.st_mtime < STALE_PARTIAL_SECONDS:
            continue
        if stat.S_ISLNK(st.st_mode):
            _unlink(partials, name)  # not ours: a link is never followed, only removed
        elif stat.S_ISREG(st.st_mode):
            _remove_unlocked(partials, name, sha256 if ours else None)


def _remove_unlocked(partials: int, name: str, sha256: str | None) -> None:
    """Unlink a partial under its lock; when another upload holds it: UploadOffset for ``sha256``'s own
    partial, else left alone."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=partials)
    except (FileNotFoundError, OSError):
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if sha256 is None:
                return
            raise UploadOffset(
                0, f"another upload of blob {sha256}, of another size, is under way; resume after it stops"
            ) from None
        try:
            named = os.stat(name, dir_fd=partials, follow_symlinks=False)
        except FileNotFoundError:
            return
        held = os.fstat(fd)
        if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            os.unlink(name, dir_fd=partials)
    finally:
        os.close(fd)


def _locked_partial(folder: int, partial: str, sha256: str) -> int:
    """The partial upload ``partial`` in ``folder`` (made empty if missing), opened without following links
    and locked for this upload; UploadOffset while another upload holds it. The lock is taken on the file the
    name holds at the time: every change of the name (rename, unlink) happens under the lock, so a file
    unlinked or renamed after it was opened here and before it was locked is let go and opened again."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
    for _ in range(5):
        fd = os.open(partial, flags, 0o600, dir_fd=folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            received = os.fstat(fd).st_size
            os.close(fd)
            raise UploadOffset(
                received, f"another upload of blob {sha256} is under way; resume after it stops"
            ) from None
        try:
            named = os.stat(partial, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        held = os.fstat(fd)
        if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # renamed into place or discarded meanwhile: the name holds another file now
    raise UploadOffset(0, f"uploads of blob {sha256} keep racing this one; resume in a moment")


def _regular_size(folder: int, name: str) -> int | None:
    """The size of ``name`` in ``folder`` when it is a regular file (links not followed), else None."""
    try:
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _unlink(folder: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


def _hash_prefix(fd: int, size: int) -> Any:
    """The SHA-256 state of the first ``size`` bytes of ``fd`` (a blob whose running digest was not kept)."""
    digest = hashlib.sha256()
    position = 0
    while position < size:
        block = os.pread(fd, min(8 << 20, size - position), position)
        if not block:
            break
        digest.update(block)
        position += len(block)
    return digest


def _what(folder: int, name: str) -> str:
    """What ``name`` in ``folder`` is, links not followed: "missing", "a file", "a folder", "a symbolic link"..."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link (the file store does not follow links)"
    return "not a regular file"
