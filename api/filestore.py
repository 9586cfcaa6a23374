"""Where run files and media blobs live: a local directory by default, anything with the same methods otherwise.

Keys are ``team/project/run_id/<store_key>``. A blob is streamed to a temporary
file, checked against its SHA-256 and size limit, then renamed into place, so a
reader never sees half a blob and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _target(self, key: str) -> Path:
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\\" in key or "\0" in key:
            raise BlobError(400, f"file key {key!r} must be a relative path without '.' or '..' parts")
        return self.root.joinpath(*parts)

    async def put(self, key: str, chunks: AsyncIterator[bytes], sha256: str, max_bytes: int) -> int:
        """Store a blob; its size. BlobError 413 past ``max_bytes``, 400 when the SHA-256 does not match."""
        target = self._target(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
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
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def path(self, key: str) -> Path | None:
        """The blob's file, or None when there is none."""
        target = self._target(key)
        return target if target.is_file() else None
