"""Where uploaded bytes live, behind an interface an object store can fill.

Blobs are named by the hex SHA-256 of their content, computed here while
the bytes stream in: no name a client chose ever becomes a path, and the
same file uploaded twice is stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 64 * 1024


class BlobWriter(Protocol):
    size: int

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> str:
        """Make the blob durable; return its key (hex SHA-256)."""
        ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    async def size(self, key: str) -> int | None:
        """The blob's size, or None when it is missing."""
        ...

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes ``start`` to ``end`` inclusive."""
        ...


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError("blob keys are hex SHA-256 digests")
    return key


class LocalBlobStore:
    """Blobs as files under ``root/ab/cd/<sha256>``, written via a temp file
    and renamed into place only when complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    async def size(self, key: str) -> int | None:
        try:
            stat = await asyncio.to_thread(os.stat, self.path_for(key))
        except FileNotFoundError:
            return None
        return stat.st_size

    async def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(open, self.path_for(key), "rb")
        try:
            await asyncio.to_thread(fh.seek, start)
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(fh.read, min(READ_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)


class LocalBlobWriter:
    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._path = store.tmp / f"upload-{secrets.token_hex(16)}"
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        if self._fh is None:
            self._fh = await asyncio.to_thread(open, self._path, "xb")
        self._hash.update(chunk)
        self.size += len(chunk)
        await asyncio.to_thread(self._fh.write, chunk)

    async def commit(self) -> str:
        key = self._hash.hexdigest()
        final = self._store.path_for(key)
        await asyncio.to_thread(self._finish, final)
        return key

    def _finish(self, final: Path) -> None:
        if self._fh is None:
            self._fh = open(self._path, "xb")  # noqa: SIM115 - closed just below
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same content, same name: replacing an existing blob is harmless.
        os.replace(self._path, final)

    async def abort(self) -> None:
        await asyncio.to_thread(self._discard)

    def _discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._path.unlink(missing_ok=True)
