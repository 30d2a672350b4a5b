"""FileBlobStore: blobs as plain files under one root directory.

Durability follows the classic recipe: write a uniquely named temp file in the destination
directory, fsync it, ``os.replace`` it over the final name, then fsync the directory so the
rename itself survives a crash. Readers therefore see either the old or the new file, never a
partial one, and concurrent writers of one key simply race to the last rename.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pacs.errors import NotFound, StorageUnavailable

from .base import DEFAULT_CHUNK_SIZE, RangeChunks, check_range, validate_key

# errno values that mean "this key has no file": the key may name a directory, or run
# through a path component that is a file.
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
_TEMP_SUFFIX = ".tmp"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    # O_DIRECTORY makes a mistaken non-directory fail loudly instead of fsyncing a file.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """A BlobStore on a local (or network-mounted) filesystem rooted at ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        with self._errors("create root"):
            self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    # -- writing ------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        dest = self._path(key)
        with self._errors(f"store {key!r}"):
            self._ensure_dir(dest.parent)
            if move:
                # Measured before the rename: afterwards a concurrent put may own ``dest``.
                size = Path(path).stat().st_size
                if self._try_move(Path(path), dest, synced=synced):
                    return size
            size = self._write_atomically(dest, lambda tmp: shutil.copyfile(path, tmp))
            if move:
                # Crossed a filesystem boundary: the copy is durable, so consume the source.
                Path(path).unlink(missing_ok=True)
            return size

    def put_bytes(self, key: str, data: bytes) -> int:
        dest = self._path(key)
        with self._errors(f"store {key!r}"):
            self._ensure_dir(dest.parent)
            return self._write_atomically(dest, lambda tmp: tmp.write_bytes(data))

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(f"delete {key!r}"):
            try:
                path.unlink()
            except _MISSING:
                pass

    # -- reading ------------------------------------------------------------------------

    def iter_range(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(start, length, chunk_size)
        fh = self.open(key)
        try:
            with self._errors(f"read {key!r}"):
                fh.seek(start)
        except BaseException:
            fh.close()
            raise
        return RangeChunks(fh, length, chunk_size, lambda: self._errors(f"read {key!r}"))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length, DEFAULT_CHUNK_SIZE)
        with self.open(key) as fh, self._errors(f"read {key!r}"):
            fh.seek(start)
            return fh.read(length)

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        with self._errors(f"open {key!r}", key=key):
            return path.open("rb")

    def size(self, key: str) -> int:
        path = self._path(key)
        with self._errors(f"stat {key!r}", key=key):
            st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"blob {key!r} not found")
        return st.st_size

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors(f"stat {key!r}"):
            try:
                return stat.S_ISREG(path.stat().st_mode)
            except _MISSING:
                return False

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def close(self) -> None:
        # Nothing is held open between calls.
        return None

    # -- helpers ------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents, fsyncing each new entry's parent
        so a freshly stored blob cannot vanish with its directory after a crash."""
        if directory.is_dir():
            return
        missing: list[Path] = []
        while not directory.exists() and directory != self.root:
            missing.append(directory)
            directory = directory.parent
        for new_dir in reversed(missing):
            try:
                new_dir.mkdir()
            except FileExistsError:
                pass  # a concurrent put created it first; if it is a file, the write fails
            _fsync_dir(new_dir.parent)

    def _write_atomically(self, dest: Path, fill: Callable[[Path], object]) -> int:
        # A dot-prefixed, uniquely suffixed temp name: concurrent puts of one key never
        # share a temp file, and directory listings can tell leftovers apart.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_TEMP_SUFFIX, dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fill(tmp)
            _fsync_path(tmp)
            size = tmp.stat().st_size
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        return size

    def _try_move(self, source: Path, dest: Path, *, synced: bool = False) -> bool:
        """Rename ``source`` onto ``dest`` if both are on one filesystem; False otherwise."""
        if not synced:
            _fsync_path(source)
        try:
            os.replace(source, dest)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        _fsync_dir(dest.parent)
        return True

    @contextmanager
    def _errors(self, action: str, *, key: str | None = None) -> Iterator[None]:
        """Translate OSError into domain errors; ``key`` set means "missing file = NotFound"."""
        try:
            yield
        except _MISSING as exc:
            if key is None:
                raise StorageUnavailable(f"cannot {action} in {self.root}: {exc.strerror}") from exc
            raise NotFound(f"blob {key!r} not found") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot {action} in {self.root}: {exc.strerror or exc}") from exc
