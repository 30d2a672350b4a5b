"""The BlobStore protocol: where DICOM files live once ingest has accepted them.

Every backend speaks only in domain errors (see ``pacs.errors``):

* ``NotFound``            the key does not exist;
* ``StorageUnavailable``  the backend failed (unreachable, refused, disk full, ...);
* ``ValueError``          the key itself is malformed (a programming error, not a client one).

Library exceptions (``OSError``, botocore's) never cross this interface, so the protocol
edges can map storage failures in their single error table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

DEFAULT_CHUNK_SIZE = 1 << 20

# Keys double as relative file paths and as S3 object names, so the alphabet is kept to
# characters that mean the same thing in both places and need no quoting anywhere.
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a well-formed blob key, else raise ValueError.

    Segments must be non-empty and not ``.`` or ``..``: that keeps every key inside the
    store's root on disk and gives each object exactly one spelling on S3.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("blob key must be a non-empty string")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError(f"blob key {key!r} may only contain A-Z a-z 0-9 . _ / -")
    if key.startswith("/"):
        raise ValueError(f"blob key {key!r} must be relative (no leading '/')")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"blob key {key!r} has an empty, '.' or '..' segment")
    return key


def check_range(start: int, length: int | None, chunk_size: int) -> None:
    """Reject nonsensical range arguments before touching the backend."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0 or None, got {length}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class RangeChunks(Iterator[bytes]):
    """Yield at most ``length`` bytes of an already-opened stream in ``chunk_size`` pieces.

    Backends open the stream *before* building this iterator so that a missing key raises
    ``NotFound`` from ``iter_range`` itself, while an HTTP handler can still choose its status.
    The stream is closed when exhausted, on ``close()``, or when the iterator is collected,
    so an abandoned iterator never holds a file handle or pooled connection.
    """

    def __init__(
        self,
        stream: _Readable,
        length: int | None,
        chunk_size: int,
        errors: Callable[[], AbstractContextManager[object]],
    ) -> None:
        self._stream: _Readable | None = stream
        self._remaining = length
        self._chunk_size = chunk_size
        self._errors = errors

    def __iter__(self) -> RangeChunks:
        return self

    def __next__(self) -> bytes:
        if self._stream is None:
            raise StopIteration
        want = self._chunk_size if self._remaining is None else min(self._chunk_size, self._remaining)
        chunk = b""
        if want > 0:
            try:
                with self._errors():
                    chunk = self._stream.read(want)
            except BaseException:
                self.close()
                raise
        if not chunk:
            self.close()
            raise StopIteration
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __del__(self) -> None:
        self.close()


@runtime_checkable
class BlobStore(Protocol):
    """Durable storage of whole files under opaque keys (see ``validate_key``)."""

    def put_file(self, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        """Store the file at ``path`` under ``key`` durably; return its size.

        When ``move`` is True the store consumes the file (it is gone afterwards, whichever
        backend is used); otherwise the file is left untouched. Returns only once durable:
        fs = written to a temp file in the destination directory, fsync'd, atomically
        renamed, directory fsync'd; S3 = upload completed (multipart above ~16 MiB).
        ``synced``: the caller has fsync'd the file's content already (a folder store moving
        it then makes only the rename durable).
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> int:
        """Store ``data`` under ``key`` with the same durability as ``put_file``."""
        ...

    def iter_range(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Stream bytes ``[start, start+length)`` (to the end when ``length`` is None).

        Never loads the whole object. ``NotFound`` is raised by the call itself, not on the
        first ``next()``. A range running past the end is cut short, like ``file.read``.
        """
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return bytes ``[start, start+length)``; fewer when the object ends first."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable file object positioned at 0; the caller closes it."""
        ...

    def size(self, key: str) -> int:
        """Size of the stored object in bytes."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def close(self) -> None:
        """Release clients and pools; the store is unusable afterwards."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The real file path for ``key`` (lets callers sendfile or mmap), or None when the
        backend has no local files. The path is computed, not checked for existence."""
        ...
