"""Store instances: validate -> write blob durably -> commit the index. Shared by STOW-RS,
C-STORE and `minipacs import`.

A crash after the blob write and before the commit leaves an unreferenced blob, never a
half-indexed instance; a success is reported only after both steps.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from pacs.dicom.attributes import Level
from pacs.dicom.instance import HEAD_BYTES, ParsedInstance, inspect_instance
from pacs.errors import (
    DuplicateInstance,
    InstanceMismatch,
    InvalidDicom,
    InvalidInput,
    PacsError,
    StorageUnavailable,
    StudyMismatch,
)
from pacs.group_commit import GroupCommitter
from pacs.index.repository import CommitResult, IndexRepository, NewInstance, Outcome, check_same_place
from storage.base import BlobStore

log = logging.getLogger(__name__)
_SPARE_TEMP_FILES = 8  # per process: enough for the parts that arrive while one batch is stored


@dataclass(frozen=True)
class StoreReport:
    """What happened to one received object."""

    source: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    outcome: Outcome | None = None
    error: PacsError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Arrival:
    """What the receiver of a file to store still holds of it: its first bytes (HEAD_BYTES, or
    the whole file when shorter), its size, and whether its content is synced to disk. The
    header is read from ``head`` and a synced file is moved into storage without another sync."""

    head: bytes
    size: int
    synced: bool = False


class ArrivalNotes:
    """What a writer of a file to store notes of it as it writes: its head and its size."""

    __slots__ = ("head", "size")

    def __init__(self) -> None:
        self.head = bytearray()
        self.size = 0

    def wrote(self, data: bytes | memoryview) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.size += len(data)

    def arrival(self, *, synced: bool) -> Arrival:
        return Arrival(head=bytes(self.head), size=self.size, synced=synced)


class IngestService:
    def __init__(
        self, index: IndexRepository, blobs: BlobStore, *, duplicate_policy: str, temp_dir: Path,
        compression: dict[str, str] | None = None,
    ) -> None:
        self.index = index
        self.compression = compression or {}  # modality -> transfer syntax to store it in
        self.committer = GroupCommitter(index, duplicate_policy)
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.temp_dir = temp_dir
        # Called after each commit with the instances it newly indexed (order reconciliation).
        # A listener's failure is logged: it must never turn a durable store into an error.
        self.stored_listeners: list[Callable[[list[ParsedInstance]], None]] = []
        temp_dir.mkdir(parents=True, exist_ok=True)
        self._spares: queue.SimpleQueue[tuple[int, Path]] = queue.SimpleQueue()
        self.spare_dir = temp_dir.with_name(temp_dir.name + "-spare")

    def temp_file(self) -> tuple[int, Path]:
        """A temp file on the data volume, so the folder store can rename it into place."""
        fd, name = tempfile.mkstemp(prefix="recv-", suffix=".dcm", dir=self.temp_dir)
        return fd, Path(name)

    def spare_temp_file(self) -> tuple[int, Path] | None:
        """A temp file made beforehand, or None: creating one can wait on the filesystem
        journal, which an event loop must not; ingest threads make the spares."""
        try:
            return self._spares.get_nowait()
        except queue.Empty:
            return None

    def _make_spares(self) -> None:
        while self._spares.qsize() < _SPARE_TEMP_FILES:
            # Beside the temp folder (the same volume), so a spare is never taken for a leftover.
            self.spare_dir.mkdir(exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="recv-", suffix=".dcm", dir=self.spare_dir)
            self._spares.put((fd, Path(name)))

    def store_file(
        self, path: Path, *, consume: bool = False, expected_study: str | None = None,
        announced: tuple[str, str] | None = None, arrival: Arrival | None = None,
    ) -> StoreReport:
        """Store one file. ``announced`` is the (SOP Class, SOP Instance) UID pair a C-STORE
        command named: a data set carrying other UIDs is refused (PS3.7 9.1.1.1), since the peer
        reads our answer as the fate of the instance it named."""
        arrivals = {path: arrival} if arrival is not None else None
        return self.store_files([path], consume=consume, expected_study=expected_study, announced=announced,
                                arrivals=arrivals)[0]

    def store_files(
        self, paths: Sequence[Path], *, consume: bool = False, expected_study: str | None = None,
        announced: tuple[str, str] | None = None, arrivals: Mapping[Path, Arrival] | None = None,
    ) -> list[StoreReport]:
        """Store a batch; the index is written in one transaction for the whole batch.
        With ``consume`` the files are moved into storage (or deleted) whatever happens."""
        reports: list[StoreReport | None] = [None] * len(paths)
        pending: list[tuple[int, ParsedInstance, Path]] = []
        moved: set[Path] = set()  # consumed by the store: nothing left to remove
        arrivals = arrivals or {}
        try:
            for i, path in enumerate(paths):
                parsed, report = self._validate(path, expected_study, announced, arrivals.get(path))
                if report is not None:
                    reports[i] = report
                else:
                    assert parsed is not None
                    pending.append((i, parsed, path))
            self._skip_known_duplicates(pending, reports)
            written = self._write_blobs(pending, reports, consume, moved, arrivals)
            self._commit(written, reports)
        finally:
            if consume:
                for path in paths:
                    if path not in moved:
                        _unlink(path)
            self._make_spares()
        return [r for r in reports if r is not None]

    def _validate(
        self, path: Path, expected_study: str | None, announced: tuple[str, str] | None, arrival: Arrival | None,
    ) -> tuple[ParsedInstance | None, StoreReport | None]:
        try:
            parsed = inspect_instance(path) if arrival is None else inspect_instance(path, arrival.head, arrival.size)
        except InvalidDicom as exc:
            return None, StoreReport(str(path), error=exc)
        except OSError as exc:  # vanished or unreadable (an import source, not a STOW part)
            return None, StoreReport(str(path), error=InvalidInput(f"cannot read the file: {exc.strerror or exc}"))
        if expected_study and parsed.study_instance_uid != expected_study:
            error = StudyMismatch(
                f"StudyInstanceUID {parsed.study_instance_uid} does not match the target study {expected_study}"
            )
            return None, _report(path, parsed, error=error)
        if announced and (parsed.sop_class_uid, parsed.sop_instance_uid) != announced:
            mismatch = InstanceMismatch(
                f"the data set is SOP Instance {parsed.sop_instance_uid} of class {parsed.sop_class_uid}, "
                f"not the {announced[1]} of class {announced[0]} the command announced"
            )
            return None, _report(path, parsed, error=mismatch)
        return parsed, None

    def _skip_known_duplicates(self, pending: list[tuple[int, ParsedInstance, Path]], reports: list[StoreReport | None]) -> None:
        """With keep/reject, a copy we already hold needs no blob write at all. A lone instance
        (C-STORE, one-part STOW) skips this look-up: the commit settles duplicates anyway, and
        one transaction less per instance is worth more than the rare wasted write."""
        if self.duplicate_policy == "overwrite" or len(pending) < 2:
            return
        known = self.index.find_existing(p.sop_instance_uid for _, p, _ in pending)
        for entry in [e for e in pending if e[1].sop_instance_uid in known]:
            i, parsed, path = entry
            if self.duplicate_policy == "reject":
                reports[i] = _report(path, parsed, error=DuplicateInstance(f"SOP Instance {parsed.sop_instance_uid} is already stored"))
            else:
                try:
                    check_same_place(parsed, *known[parsed.sop_instance_uid])
                    reports[i] = _report(path, parsed, outcome=Outcome.ALREADY_STORED)
                except StudyMismatch as exc:
                    reports[i] = _report(path, parsed, error=exc)
            pending.remove(entry)

    def _write_blobs(
        self, pending: list[tuple[int, ParsedInstance, Path]], reports: list[StoreReport | None], consume: bool,
        moved: set[Path], arrivals: Mapping[Path, Arrival],
    ) -> list[tuple[int, NewInstance, Path]]:
        """Each pending instance's blob; a source moved into the store is added to ``moved``."""
        written = []
        for i, parsed, path in pending:
            try:
                source, move = path, consume
                arrival = arrivals.get(path)
                if not parsed.has_part10_header:
                    source, move = self._with_part10_header(path, parsed), True
                    parsed = inspect_instance(source)
                compressed = self._compressed(source, parsed)
                if compressed is not None:
                    if move:
                        _unlink(source)
                    source, move = compressed, True
                    parsed = inspect_instance(source)
                key = blob_key(parsed)
                synced = source is path and arrival is not None and arrival.synced
                try:
                    size = self.blobs.put_file(key, source, move=move, synced=synced)
                except BaseException:
                    if move:
                        _unlink(source)
                    raise
                if move:
                    moved.add(source)  # put_file consumes what it moves (BlobStore.put_file)
                written.append((i, NewInstance(parsed, key, size), path))
            except PacsError as exc:
                reports[i] = _report(path, parsed, error=exc)
            except OSError as exc:
                reports[i] = _report(path, parsed, error=StorageUnavailable(f"cannot write to storage: {exc.strerror}"))
        return written

    def _compressed(self, source: Path, parsed: ParsedInstance) -> Path | None:
        """A compressed copy when the policy names this modality and the data is uncompressed;
        None to store the file as sent (also when the encoder cannot take this image)."""
        modality = str(parsed.attributes[Level.SERIES].get("modality") or "").upper()
        target = self.compression.get(modality)
        if target is None or parsed.transfer_syntax_uid not in _NATIVE_SYNTAXES or parsed.layout is None:
            return None
        from pacs.pixels.transcode import transcode_file

        fd, destination = self.temp_file()
        os.close(fd)
        try:
            transcode_file(source, target, destination)
        except PacsError as exc:
            _unlink(destination)
            log.warning("%s kept as sent, not compressed: %s", parsed.sop_instance_uid, type(exc).__name__)
            return None
        return destination

    def _with_part10_header(self, path: Path, parsed: ParsedInstance) -> Path:
        """Prefix a bare dataset with preamble and File Meta Information (PS3.10 7.1)."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(parsed.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(parsed.sop_instance_uid)
        meta.TransferSyntaxUID = UID(parsed.transfer_syntax_uid)
        fd, target = self.temp_file()
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            out.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
            while chunk := src.read(1 << 20):
                out.write(chunk)
        return target

    def _commit(self, written: list[tuple[int, NewInstance, Path]], reports: list[StoreReport | None]) -> None:
        if not written:
            return
        try:
            results: list[CommitResult | Exception] = self.committer.commit([item for _, item, _ in written])
        except PacsError as exc:
            for i, item, path in written:
                self._discard(item.blob_key)
                reports[i] = _report(path, item.parsed, error=exc)
            return
        except Exception:
            # Unexpected (a bug, a value the database refuses): nothing was indexed, so the
            # blobs just written must not stay behind; the caller reports the error.
            for _, item, _ in written:
                self._discard(item.blob_key)
            raise
        for (i, item, path), result in zip(written, results):
            if isinstance(result, PacsError):
                self._discard(item.blob_key)
                reports[i] = _report(path, item.parsed, error=result)
                continue
            assert isinstance(result, CommitResult)
            if result.obsolete_blob_key:
                self._discard(result.obsolete_blob_key)
            reports[i] = _report(path, item.parsed, outcome=result.outcome)
        self._notify([item.parsed for (_, item, _), r in zip(written, results)
                      if isinstance(r, CommitResult) and r.outcome is not Outcome.ALREADY_STORED])

    def _notify(self, stored: list[ParsedInstance]) -> None:
        if not stored:
            return
        for listener in self.stored_listeners:
            try:
                listener(stored)
            except Exception:
                log.exception("a stored-instance listener failed; the instances stay stored")

    def _discard(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except PacsError:
            log.warning("could not delete unreferenced blob %s; it can be removed by hand", key)

    def close(self) -> None:
        while (spare := self.spare_temp_file()) is not None:
            os.close(spare[0])
            _unlink(spare[1])

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> int:
        keys = self.index.delete(study_uid, series_uid, sop_uid)
        for key in keys:
            self._discard(key)
        return len(keys)


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def blob_key(parsed: ParsedInstance) -> str:
    """Opaque, unique per write: an overwrite never clobbers the blob the index still points at."""
    return f"{parsed.study_instance_uid}/{parsed.series_instance_uid}/{parsed.sop_instance_uid}.{uuid.uuid4().hex[:12]}.dcm"


def _report(path: Path, parsed: ParsedInstance, *, outcome: Outcome | None = None, error: PacsError | None = None) -> StoreReport:
    return StoreReport(
        str(path), parsed.sop_class_uid, parsed.sop_instance_uid, parsed.study_instance_uid,
        parsed.series_instance_uid, outcome, error,
    )


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
