"""Every file of pydicom's test corpus through STOW-RS, then back through WADO-RS.

Files pydicom reads and that carry the four identifying UIDs are stored; everything else gets
a FailedSOP item with a reason (never a 500). Each stored instance must come back unchanged:
the file byte for byte, its metadata as pydicom renders it, its frames as pydicom cuts them.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.encaps import generate_frames
from starlette.testclient import TestClient

from dicomweb.multipart import iter_multipart, multipart_content_type, new_boundary
from pacs.app import build_app
from pacs.config import Settings
from pacs.services import Services
from tests.conftest import bearer_headers, make_settings
from tests.support.factories import split_multipart

STOW_BATCH = 20
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UID_FORMAT = re.compile(r"[0-9]+(\.[0-9]+)*")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# pydicom reads these, but a value (pixel data, a plan's sequence) ends before its declared
# length: half an object must not be archived as if it were whole.
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
UNCOMPRESSED = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
}


@dataclass
class CorpusFile:
    path: Path
    data: bytes
    dataset: pydicom.Dataset | None  # None: pydicom cannot read it
    should_store: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def has_part10_header(self) -> bool:
        return self.data[128:132] == b"DICM"

    @property
    def sop_instance_uid(self) -> str:
        assert self.dataset is not None
        return str(self.dataset.SOPInstanceUID)

    @property
    def transfer_syntax(self) -> str:
        assert self.dataset is not None
        meta = getattr(self.dataset, "file_meta", None)
        syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
        if syntax:
            return syntax
        implicit, little = self.dataset.original_encoding
        return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


def _read(path: Path) -> CorpusFile:
    data = path.read_bytes()
    with warnings.catch_warnings():
        # Many corpus files are deliberately odd (bad VRs, wrong lengths): pydicom warns.
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            uids = [str(ds.get(k, "") or "").strip().rstrip("\x00") for k in REQUIRED_UIDS]
            for _ in ds.iterall():
                pass  # converts every raw element now, so later reads do not warn again
        except Exception:
            return CorpusFile(path, data, None, False)
    valid = all(uid and len(uid) <= 64 and UID_FORMAT.fullmatch(uid) for uid in uids)
    return CorpusFile(path, data, ds, valid and path.name not in TRUNCATED)


def _corpus() -> list[CorpusFile]:
    # Never download: names pydicom knows but pydicom-data lacks are skipped.
    paths = sorted({Path(p) for p in get_testdata_files() if os.path.isfile(p)})
    return [_read(p) for p in paths]


CORPUS = _corpus()


def _representative(count: int = 25) -> list[CorpusFile]:
    """A few files per transfer syntax, plus a few that must be refused."""
    chosen: list[CorpusFile] = []
    per_syntax: dict[str, int] = {}
    for item in sorted(CORPUS, key=lambda c: len(c.data)):
        if item.should_store:
            syntax = item.transfer_syntax
            if per_syntax.get(syntax, 0) < 2:
                per_syntax[syntax] = per_syntax.get(syntax, 0) + 1
                chosen.append(item)
    refused = [c for c in CORPUS if not c.should_store]
    chosen += refused[: max(3, count - len(chosen))]
    names = {c.name for c in chosen}
    chosen += [c for c in CORPUS if c.name in TRUNCATED and c.name not in names]
    return chosen


def _quietly(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a request while the server parses odd corpus files: pydicom warns about their
    invalid values (the server runs in this process, so pytest's "error" filter would turn
    each warning into an exception inside it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return call(*args, **kwargs)


def _stow(client: TestClient, files: list[CorpusFile]) -> dict[str, Any]:
    boundary = new_boundary()
    body = b"".join(iter_multipart([({"Content-Type": "application/dicom"}, [f.data]) for f in files], boundary))
    response = _quietly(
        client.post, "/dicom-web/studies", content=body,
        headers={"Content-Type": multipart_content_type("application/dicom", boundary)},
    )
    assert response.status_code in (200, 202, 409), (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def _sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return answer.get(tag, {}).get("Value", [])


def _uid_of(item: dict[str, Any]) -> str | None:
    value = item.get("00081155", {}).get("Value")
    return value[0] if value else None


def _store_corpus(client: TestClient, files: list[CorpusFile]) -> dict[str, tuple[CorpusFile, str]]:
    """STOW every file; check each one's fate; return {SOP UID: (file that holds it, URL)}."""
    held: dict[str, tuple[CorpusFile, str]] = {}
    for start in range(0, len(files), STOW_BATCH):
        batch = files[start : start + STOW_BATCH]
        answer = _stow(client, batch)
        stored = _sequence(answer, "00081199")
        failed = _sequence(answer, "00081198")
        assert len(stored) + len(failed) == len(batch), answer
        for item in failed:
            assert item["00081197"]["Value"][0] in (0xC000, 0xA900, 0x0110), item
            assert item["00091001"]["Value"][0], item  # a reason in words
        stored_uids = [_uid_of(item) for item in stored]
        failed_uids = [_uid_of(item) for item in failed]
        for item in stored:
            assert item["00081150"]["Value"][0]
            url = item["00081190"]["Value"][0]
            assert url.endswith(f"/instances/{_uid_of(item)}")
        for corpus_file in batch:
            if corpus_file.should_store:
                uid = corpus_file.sop_instance_uid
                assert uid in stored_uids, f"{corpus_file.name} was not stored: {answer}"
                stored_uids.remove(uid)
                # Keep policy: a later file with an already-held SOP Instance UID is acknowledged
                # but the first copy stays.
                if uid not in held:
                    url = next(i["00081190"]["Value"][0] for i in stored if _uid_of(i) == uid)
                    held[uid] = (corpus_file, url)
            elif corpus_file.dataset is not None and _has_uid(corpus_file):
                assert corpus_file.sop_instance_uid in failed_uids or None in failed_uids, corpus_file.name
        assert stored_uids == [], f"stored something unexpected: {stored_uids}"
        reasons = [item["00091001"]["Value"][0] for item in failed]
        truncated = [f.name for f in batch if f.name in TRUNCATED]
        assert len([r for r in reasons if "truncated" in r]) >= len(truncated), (truncated, reasons)
    return held


def _has_uid(corpus_file: CorpusFile) -> bool:
    assert corpus_file.dataset is not None
    value = str(corpus_file.dataset.get("SOPInstanceUID", "") or "").strip()
    return bool(UID_FORMAT.fullmatch(value))


def _check_retrieved(client: TestClient, corpus_file: CorpusFile, url: str) -> None:
    answer = _quietly(client.get, url, headers={"Accept": INSTANCE_ACCEPT})
    assert answer.status_code == 200, (corpus_file.name, answer.text)
    [(headers, retrieved)] = split_multipart(answer.headers["content-type"], answer.content)
    assert headers["content-type"].startswith("application/dicom")
    if corpus_file.has_part10_header:
        assert retrieved == corpus_file.data, corpus_file.name
    else:
        # A bare data set gains preamble and File Meta Information, its bytes unchanged.
        assert retrieved[128:132] == b"DICM"
        assert retrieved.endswith(corpus_file.data), corpus_file.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.dcmread(io.BytesIO(retrieved)).file_meta
        assert meta.MediaStorageSOPInstanceUID == corpus_file.sop_instance_uid
        assert meta.TransferSyntaxUID == corpus_file.transfer_syntax


def _ordinary_json(corpus_file: CorpusFile) -> dict[str, Any]:
    """pydicom's DICOM JSON for the elements stored inline (no binary values, no pixels)."""
    assert corpus_file.dataset is not None
    rendered: dict[str, Any] = {}
    for element in corpus_file.dataset:
        if element.VR in BINARY_VRS or element.tag.group in (0x0002, 0x7FE0):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rendered[f"{element.tag:08X}"] = element.to_json_dict(None, 1 << 62)
            except ValueError:
                continue  # a value pydicom cannot render (IS "1A")
    return rendered


def _check_metadata(client: TestClient, corpus_file: CorpusFile, url: str) -> None:
    answer = _quietly(client.get, url + "/metadata", headers={"Accept": "application/dicom+json"})
    assert answer.status_code == 200, (corpus_file.name, answer.text)
    [served] = answer.json()
    expected = _ordinary_json(corpus_file)
    for tag, value in expected.items():
        assert served.get(tag) == value, (corpus_file.name, tag, served.get(tag), value)
    assert served["00083002"]["Value"] == [corpus_file.transfer_syntax]
    pixel = served.get("7FE00010") or served.get("7FE00008") or served.get("7FE00009")
    if corpus_file.dataset is not None and "PixelData" in corpus_file.dataset:
        assert pixel is not None and pixel["BulkDataURI"] == url + "/bulk/7FE00010", corpus_file.name


def _number_of_frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1) if _valid_number_of_frames(ds) else 1


def _valid_number_of_frames(ds: pydicom.Dataset) -> bool:
    try:
        int(ds.get("NumberOfFrames", 1) or 1)
    except ValueError:
        return False  # badVR.dcm says "1A": the server serves one frame
    return True


def _expected_frames(corpus_file: CorpusFile) -> list[bytes] | None:
    ds = corpus_file.dataset
    assert ds is not None
    if "PixelData" not in ds:
        return None
    frames = _number_of_frames(ds)
    syntax = corpus_file.transfer_syntax
    data = ds.PixelData
    if syntax not in UNCOMPRESSED:
        return list(generate_frames(data, number_of_frames=frames))
    if syntax == "1.2.840.10008.1.2.2" and ds.BitsAllocated > 8:
        word = ds.BitsAllocated // 8
        data = np.frombuffer(data, dtype=f">u{word}").astype(f"<u{word}").tobytes()
    return [data]  # uncompressed: compared after joining the frames


def _check_frames(client: TestClient, corpus_file: CorpusFile, url: str) -> None:
    expected = _expected_frames(corpus_file)
    if expected is None:
        return
    ds = corpus_file.dataset
    assert ds is not None
    count = _number_of_frames(ds)
    numbers = ",".join(str(n) for n in range(1, count + 1))
    answer = _quietly(client.get, f"{url}/frames/{numbers}", headers={"Accept": FRAME_ACCEPT})
    assert answer.status_code == 200, (corpus_file.name, answer.text)
    frames = [body for _, body in split_multipart(answer.headers["content-type"], answer.content)]
    assert len(frames) == count, corpus_file.name
    if corpus_file.transfer_syntax not in UNCOMPRESSED:
        assert frames == expected, corpus_file.name
        return
    joined = b"".join(frames)
    if int(ds.BitsAllocated) == 1:
        # 1-bit frames are repacked one by one: compare the pixels, not the padding bits.
        per_frame = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        bits = np.unpackbits(np.frombuffer(expected[0], np.uint8), bitorder="little")[: per_frame * count]
        got = np.concatenate(
            [np.unpackbits(np.frombuffer(f, np.uint8), bitorder="little")[:per_frame] for f in frames]
        )
        assert np.array_equal(bits, got), corpus_file.name
        return
    assert joined == expected[0][: len(joined)], corpus_file.name
    if _valid_number_of_frames(ds):
        # Only an odd-length pad byte may be left out.
        assert len(expected[0]) - len(joined) <= 1, corpus_file.name


def _sweep(client: TestClient, files: list[CorpusFile]) -> dict[str, tuple[CorpusFile, str]]:
    held = _store_corpus(client, files)
    for corpus_file, url in held.values():
        _check_retrieved(client, corpus_file, url)
        _check_metadata(client, corpus_file, url)
        _check_frames(client, corpus_file, url)
    return held


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[TestClient]:
    services = Services.build(Settings.from_mapping({"data_dir": tmp_path / "data"}))
    try:
        with TestClient(
            build_app(services.settings, services), raise_server_exceptions=False, headers=bearer_headers(services)
        ) as client:
            yield client
    finally:
        services.close()


@pytest.fixture
def postgres_client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    for settings in make_settings("postgres-s3", tmp_path, request):
        services = Services.build(settings)
        try:
            with TestClient(
                build_app(settings, services), raise_server_exceptions=False, headers=bearer_headers(services)
            ) as client:
                yield client
        finally:
            services.close()


def test_corpus_has_the_files_it_is_meant_to_have() -> None:
    # A guard for the sweep itself: without pydicom-data it would prove much less.
    assert len(CORPUS) > 200
    syntaxes = {c.transfer_syntax for c in CORPUS if c.should_store}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.1.99"} <= syntaxes


def test_whole_corpus_round_trips_on_sqlite_and_folder(sqlite_client: TestClient) -> None:
    held = _sweep(sqlite_client, CORPUS)
    expected = {c.sop_instance_uid for c in CORPUS if c.should_store}
    assert set(held) == expected
    studies = sqlite_client.get("/dicom-web/studies", params={"limit": 1000}).json()
    assert sum(s["00201208"]["Value"][0] for s in studies) == len(expected)


def test_representative_corpus_round_trips_on_postgres_and_s3(postgres_client: TestClient) -> None:
    files = _representative()
    assert len({f.transfer_syntax for f in files if f.should_store}) >= 10
    held = _sweep(postgres_client, files)
    assert set(held) == {f.sop_instance_uid for f in files if f.should_store}


def test_refused_corpus_files_leave_nothing_behind(sqlite_client: TestClient, tmp_path: Path) -> None:
    refused = [c for c in CORPUS if not c.should_store]
    assert len(refused) > 20
    for start in range(0, len(refused), STOW_BATCH):
        answer = _stow(sqlite_client, refused[start : start + STOW_BATCH])
        assert "00081199" not in answer
        assert len(_sequence(answer, "00081198")) == len(refused[start : start + STOW_BATCH])
    assert sqlite_client.get("/dicom-web/studies").json() == []
    storage = tmp_path / "data" / "storage"
    assert [p for p in storage.rglob("*") if p.is_file()] == []
    assert [p for p in (tmp_path / "data" / "tmp").rglob("*") if p.is_file()] == []
