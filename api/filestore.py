"""Where run files and media blobs live: a local directory by default, anything with the same methods otherwise.

Keys are ``team/project/run_id/<store_key>``. A blob is streamed to a temporary
file, checked against its SHA-256 and size limit, then renamed into place, so a
reader never sees half a blob and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class BlobError(ValueError):
    """An upload the store refused: ``status`` is the HTTP status that describes it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FileStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes], sha256: str, max_bytes: int) -> int: ...

    def path(self, key: str) -> Path | None: ...


class LocalFileStore:
    """Blobs under ``root``, never outside it: each folder is opened relative to the one above with
    ``O_NOFOLLOW``, so a symbolic link found under the root is refused (409 on upload, missing on read)
    rather than followed; the root itself may be a link (a data directory on another disk)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

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


_USE_ANOTHER = "store the file under another path"


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
