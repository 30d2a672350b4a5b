"""One behaviour suite for every BlobStore backend: a temp directory and a real S3 server (moto)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

import storage
from pacs.errors import NotFound, StorageUnavailable
from storage import BlobStore, FileBlobStore, open_blob_store
from storage.s3 import S3BlobStore
from tests.support.s3server import free_port, running_s3_server, s3_test_env

MiB = 1 << 20


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_test_env().items():
            mp.setenv(name, value)
        # A developer's profile must not override the fake credentials above.
        mp.delenv("AWS_PROFILE", raising=False)
        with running_s3_server() as endpoint:
            yield endpoint


def _new_s3_store(endpoint: str, prefix: str = "") -> S3BlobStore:
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    return S3BlobStore(bucket, prefix, endpoint_url=endpoint, create_bucket=True)


@pytest.fixture(params=["fs", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store: BlobStore
    if request.param == "fs":
        store = FileBlobStore(tmp_path / "blobs")
    else:
        store = _new_s3_store(request.getfixturevalue("s3_endpoint"))
    yield store
    store.close()


@pytest.fixture
def fs_blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def raw_s3_client(endpoint: str) -> Any:
    """A plain client to inspect what the store wrote, independently of the store's code."""
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every offset differs from its neighbours."""
    block = hashlib.sha256(str(seed).encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


# -- writing and reading back ---------------------------------------------------------------


def test_put_bytes_round_trip(blobs: BlobStore) -> None:
    data = payload(12_345)
    assert blobs.put_bytes("1.2.3/4.5.6/7.8.9.dcm", data) == len(data)
    assert blobs.read_range("1.2.3/4.5.6/7.8.9.dcm", 0, len(data)) == data
    with blobs.open("1.2.3/4.5.6/7.8.9.dcm") as fh:
        assert fh.read() == data
    assert blobs.size("1.2.3/4.5.6/7.8.9.dcm") == len(data)
    assert blobs.exists("1.2.3/4.5.6/7.8.9.dcm")


def test_put_file_copies_and_keeps_source(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "incoming.dcm"
    source.write_bytes(payload(777))
    assert blobs.put_file("a/b.dcm", source) == 777
    assert source.read_bytes() == payload(777)
    assert b"".join(blobs.iter_range("a/b.dcm")) == payload(777)


def test_put_file_move_consumes_source(blobs: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "incoming.dcm"
    source.write_bytes(payload(4096, seed=1))
    assert blobs.put_file("moved/x.dcm", source, move=True) == 4096
    assert not source.exists()
    assert b"".join(blobs.iter_range("moved/x.dcm")) == payload(4096, seed=1)


def test_put_replaces_existing_object(blobs: BlobStore) -> None:
    blobs.put_bytes("k", b"first version, longer")
    blobs.put_bytes("k", b"second")
    assert blobs.read_range("k", 0, 100) == b"second"
    assert blobs.size("k") == 6


def test_empty_object(blobs: BlobStore) -> None:
    assert blobs.put_bytes("empty", b"") == 0
    assert blobs.size("empty") == 0
    assert list(blobs.iter_range("empty")) == []
    assert list(blobs.iter_range("empty", 5)) == []
    assert blobs.read_range("empty", 0, 10) == b""


def test_open_is_seekable(blobs: BlobStore) -> None:
    data = payload(5000)
    blobs.put_bytes("seek", data)
    with blobs.open("seek") as fh:
        assert fh.seekable()
        fh.seek(4000)
        assert fh.read(10) == data[4000:4010]
        fh.seek(0)
        assert fh.read(3) == data[:3]


# -- ranges ---------------------------------------------------------------------------------

ODD_SIZE = 10_007
CHUNK = 64


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, None),
        (0, CHUNK),  # exactly one chunk
        (CHUNK, CHUNK),  # starts on a chunk boundary
        (CHUNK - 1, 2 * CHUNK + 2),  # straddles boundaries on both ends
        (3 * CHUNK, None),
        (ODD_SIZE - 1, None),  # last byte only
        (ODD_SIZE - 5, 100),  # runs past the end: cut short
        (0, ODD_SIZE + 100),
        (ODD_SIZE, None),  # starts at the end
        (ODD_SIZE + 50, 10),  # starts past the end
        (500, 0),
    ],
)
def test_iter_range(blobs: BlobStore, start: int, length: int | None) -> None:
    data = payload(ODD_SIZE)
    blobs.put_bytes("ranged", data)
    chunks = list(blobs.iter_range("ranged", start, length, chunk_size=CHUNK))
    end = None if length is None else start + length
    assert b"".join(chunks) == data[start:end]
    assert all(0 < len(chunk) <= CHUNK for chunk in chunks)


def test_iter_range_default_chunk_size(blobs: BlobStore) -> None:
    data = payload(3 * MiB + 3)
    blobs.put_bytes("big", data)
    chunks = list(blobs.iter_range("big", 1))
    assert b"".join(chunks) == data[1:]
    assert max(len(chunk) for chunk in chunks) <= MiB


def test_iter_range_abandoned_early_is_closed(blobs: BlobStore) -> None:
    blobs.put_bytes("partial", payload(10_000))
    chunks = blobs.iter_range("partial", chunk_size=100)
    assert next(chunks) == payload(10_000)[:100]
    chunks.close()  # type: ignore[attr-defined]
    assert list(chunks) == []


@pytest.mark.parametrize(("start", "length"), [(0, 1), (100, 901), (ODD_SIZE - 3, 3), (ODD_SIZE - 3, 50)])
def test_read_range(blobs: BlobStore, start: int, length: int) -> None:
    data = payload(ODD_SIZE)
    blobs.put_bytes("ranged", data)
    assert blobs.read_range("ranged", start, length) == data[start : start + length]


def test_negative_range_is_rejected(blobs: BlobStore) -> None:
    blobs.put_bytes("k", b"abc")
    with pytest.raises(ValueError):
        blobs.iter_range("k", -1)
    with pytest.raises(ValueError):
        blobs.read_range("k", 0, -1)
    with pytest.raises(ValueError):
        blobs.iter_range("k", chunk_size=0)


def test_large_object_round_trip(blobs: BlobStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # 40 MiB crosses the 16 MiB multipart threshold (3 parts on S3) and open()'s 32 MiB spool.
    source = tmp_path / "large.bin"
    digest = hashlib.sha256()
    with source.open("wb") as fh:
        for i in range(40):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    expected = digest.hexdigest()
    third_part = source.read_bytes()[32 * MiB : 32 * MiB + 10]

    assert blobs.put_file("large/obj.bin", source) == 40 * MiB
    assert blobs.size("large/obj.bin") == 40 * MiB

    streamed = hashlib.sha256()
    for chunk in blobs.iter_range("large/obj.bin"):
        streamed.update(chunk)
    assert streamed.hexdigest() == expected

    with blobs.open("large/obj.bin") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == expected  # type: ignore[arg-type]
    # A range across the boundary between the second and third upload parts.
    assert blobs.read_range("large/obj.bin", 32 * MiB - 5, 15)[5:] == third_part

    if isinstance(blobs, S3BlobStore):
        endpoint = request.getfixturevalue("s3_endpoint")
        etag = raw_s3_client(endpoint).head_object(Bucket=blobs.bucket, Key="large/obj.bin")["ETag"]
        assert etag.strip('"').endswith("-3"), f"expected a 3-part multipart ETag, got {etag}"


# -- existence, deletion, missing keys --------------------------------------------------------


def test_size_exists_delete(blobs: BlobStore) -> None:
    assert not blobs.exists("d/e.dcm")
    blobs.put_bytes("d/e.dcm", b"12345")
    assert blobs.exists("d/e.dcm")
    assert blobs.size("d/e.dcm") == 5
    blobs.delete("d/e.dcm")
    assert not blobs.exists("d/e.dcm")
    blobs.delete("d/e.dcm")  # deleting a missing key is not an error
    blobs.delete("never/there")


def test_a_key_prefix_is_not_an_object(blobs: BlobStore) -> None:
    blobs.put_bytes("study/series/instance", b"x")
    assert not blobs.exists("study/series")
    with pytest.raises(NotFound):
        blobs.size("study/series")
    with pytest.raises(NotFound):
        blobs.open("study")


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda s: s.iter_range("missing/key"), id="iter_range"),
        pytest.param(lambda s: s.iter_range("missing/key", 10, 5), id="iter_range-ranged"),
        pytest.param(lambda s: s.iter_range("missing/key", 0, 0), id="iter_range-empty"),
        pytest.param(lambda s: s.read_range("missing/key", 0, 10), id="read_range"),
        pytest.param(lambda s: s.open("missing/key"), id="open"),
        pytest.param(lambda s: s.size("missing/key"), id="size"),
    ],
)
def test_missing_key_raises_not_found(blobs: BlobStore, read: Callable[[BlobStore], object]) -> None:
    # Raised by the call itself: a streaming endpoint can still answer 404 before any byte.
    with pytest.raises(NotFound):
        read(blobs)


@pytest.mark.parametrize(
    "key",
    [
        "", "/abs", "../escape", "a/../../b", "a//b", "a/", "./a", "a/./b", "..",
        "sp ace", "back\\slash", "ü", "a:b",
    ],
)
def test_invalid_keys_are_rejected(blobs: BlobStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: blobs.put_bytes(key, b"x"),
        lambda: blobs.put_file(key, source),
        lambda: blobs.iter_range(key),
        lambda: blobs.read_range(key, 0, 1),
        lambda: blobs.open(key),
        lambda: blobs.size(key),
        lambda: blobs.exists(key),
        lambda: blobs.delete(key),
        lambda: blobs.local_path(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert source.exists()


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_puts_of_distinct_keys(blobs: BlobStore) -> None:
    keys = [f"study/{i % 4}/{i}.dcm" for i in range(48)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        sizes = list(pool.map(lambda k: blobs.put_bytes(k, k.encode() * 100), keys))
    assert sizes == [len(k) * 100 for k in keys]
    for key in keys:
        assert blobs.read_range(key, 0, 10_000) == key.encode() * 100


def test_concurrent_puts_of_one_key_never_mix(blobs: BlobStore) -> None:
    versions = [bytes([i]) * 50_000 for i in range(8)]
    barrier = threading.Barrier(len(versions))

    def put(data: bytes) -> None:
        barrier.wait()
        blobs.put_bytes("contended", data)

    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        list(pool.map(put, versions))
    assert blobs.read_range("contended", 0, 100_000) in versions


# -- filesystem specifics ------------------------------------------------------------------------


def test_fs_leaves_no_temp_files(fs_blobs: FileBlobStore, tmp_path: Path) -> None:
    fs_blobs.put_bytes("s/one.dcm", b"1")
    copied = tmp_path / "copied"
    copied.write_bytes(b"2")
    fs_blobs.put_file("s/two.dcm", copied)
    moved = tmp_path / "moved"
    moved.write_bytes(b"3")
    fs_blobs.put_file("s/three.dcm", moved, move=True)
    assert sorted(p.name for p in (fs_blobs.root / "s").iterdir()) == ["one.dcm", "three.dcm", "two.dcm"]


def test_fs_local_path_is_the_stored_file(fs_blobs: FileBlobStore) -> None:
    fs_blobs.put_bytes("x/y.dcm", b"content")
    path = fs_blobs.local_path("x/y.dcm")
    assert path is not None and path.read_bytes() == b"content"
    assert path.is_relative_to(fs_blobs.root)


def test_s3_has_no_local_path(s3_endpoint: str) -> None:
    store = _new_s3_store(s3_endpoint)
    store.put_bytes("k", b"v")
    assert store.local_path("k") is None
    store.close()


def test_fs_disk_full_is_storage_unavailable(
    fs_blobs: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("storage.fs.os.fsync", no_space)
    with pytest.raises(StorageUnavailable, match="No space left"):
        fs_blobs.put_bytes("full/disk.dcm", b"x" * 1000)
    monkeypatch.undo()
    assert not fs_blobs.exists("full/disk.dcm")
    assert list((fs_blobs.root / "full").iterdir()) == []  # the temp file was cleaned up


def test_fs_move_across_filesystems_falls_back_to_copy(
    fs_blobs: FileBlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "other-device.dcm"
    source.write_bytes(payload(3000))
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(src) == source:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_replace(src, dst)

    monkeypatch.setattr("storage.fs.os.replace", replace)
    assert fs_blobs.put_file("x/moved.dcm", source, move=True) == 3000
    assert not source.exists()
    assert fs_blobs.read_range("x/moved.dcm", 0, 5000) == payload(3000)
    assert [p.name for p in (fs_blobs.root / "x").iterdir()] == ["moved.dcm"]


def test_fs_key_below_a_file_is_storage_unavailable(fs_blobs: FileBlobStore) -> None:
    fs_blobs.put_bytes("plain", b"x")
    with pytest.raises(StorageUnavailable):
        fs_blobs.put_bytes("plain/child", b"y")


def test_fs_missing_source_is_storage_unavailable(fs_blobs: FileBlobStore, tmp_path: Path) -> None:
    for move in (False, True):
        with pytest.raises(StorageUnavailable):
            fs_blobs.put_file("k", tmp_path / "does-not-exist", move=move)


# -- S3 specifics --------------------------------------------------------------------------------


def test_s3_prefix_is_joined_without_double_slashes(s3_endpoint: str) -> None:
    store = _new_s3_store(s3_endpoint, prefix="/archive/v1/")
    assert store.prefix == "archive/v1"
    store.put_bytes("a/b.dcm", b"prefixed")
    listing = raw_s3_client(s3_endpoint).list_objects_v2(Bucket=store.bucket)
    assert [item["Key"] for item in listing["Contents"]] == ["archive/v1/a/b.dcm"]
    store.close()


def test_s3_create_bucket_is_idempotent(s3_endpoint: str) -> None:
    store = _new_s3_store(s3_endpoint)
    store.put_bytes("k", b"kept")
    again = S3BlobStore(store.bucket, endpoint_url=s3_endpoint, create_bucket=True)
    assert again.read_range("k", 0, 10) == b"kept"
    again.close()
    store.close()


S3Operation = Callable[[S3BlobStore, Path], object]
S3_OPERATIONS = [
    pytest.param(lambda s, p: s.put_bytes("k", b"x"), id="put_bytes"),
    pytest.param(lambda s, p: s.put_file("k", p), id="put_file"),
    pytest.param(lambda s, p: s.iter_range("k"), id="iter_range"),
    pytest.param(lambda s, p: s.read_range("k", 0, 1), id="read_range"),
    pytest.param(lambda s, p: s.open("k"), id="open"),
    pytest.param(lambda s, p: s.size("k"), id="size"),
    pytest.param(lambda s, p: s.exists("k"), id="exists"),
    pytest.param(lambda s, p: s.delete("k"), id="delete"),
]


@pytest.mark.parametrize("operation", S3_OPERATIONS)
def test_s3_unreachable_endpoint_is_storage_unavailable(operation: S3Operation, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_test_env().items():
            mp.setenv(name, value)
        # Nothing listens on a port we just released: refused at once, no retries, no hang.
        closed = f"http://127.0.0.1:{free_port()}"
        store = S3BlobStore("bucket", endpoint_url=closed, connect_timeout=1, retries=0)
        with pytest.raises(StorageUnavailable):
            operation(store, source)
        store.close()


@pytest.mark.parametrize(
    "operation",
    [p for p in S3_OPERATIONS if p.id not in {"size", "exists"}],
)
def test_s3_missing_bucket_is_storage_unavailable_not_not_found(
    s3_endpoint: str, operation: S3Operation, tmp_path: Path
) -> None:
    # size/exists are left out on purpose: S3 answers HEAD with a bodiless 404 for a missing
    # bucket and a missing key alike, so those two report "not found" here.
    source = tmp_path / "f"
    source.write_bytes(b"x")
    store = S3BlobStore(f"absent-{uuid.uuid4().hex[:12]}", endpoint_url=s3_endpoint)
    with pytest.raises(StorageUnavailable):
        operation(store, source)
    store.close()


# -- open_blob_store ------------------------------------------------------------------------------


def test_open_file_url_absolute(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}/abs")
    assert isinstance(store, FileBlobStore) and store.root == tmp_path / "abs"
    assert (tmp_path / "abs").is_dir()


def test_open_file_url_relative_and_bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_blob_store("file://rel/blobs")
    bare = open_blob_store("bare/blobs")
    bare_abs = open_blob_store(str(tmp_path / "bare-abs"))
    assert isinstance(relative, FileBlobStore) and relative.root == tmp_path / "rel" / "blobs"
    assert isinstance(bare, FileBlobStore) and bare.root == tmp_path / "bare" / "blobs"
    assert isinstance(bare_abs, FileBlobStore) and bare_abs.root == tmp_path / "bare-abs"


def test_open_file_url_is_percent_decoded(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}/with%20space")
    assert isinstance(store, FileBlobStore) and store.root == tmp_path / "with space"


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("s3://{bucket}", ""),
        ("s3://{bucket}/", ""),
        ("s3://{bucket}/dicom/v1", "dicom/v1"),
        ("s3://{bucket}/p/", "p"),
    ],
)
def test_open_s3_url(s3_endpoint: str, url: str, prefix: str) -> None:
    bucket = f"url-{uuid.uuid4().hex[:12]}"
    store = open_blob_store(url.format(bucket=bucket), endpoint_url=s3_endpoint, create_bucket=True)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (bucket, prefix)
    store.put_bytes("k", b"v")
    assert store.read_range("k", 0, 1) == b"v"
    store.close()


@pytest.mark.parametrize(
    "url", ["", "http://example.com/x", "gs://bucket/x", "s3://", "s3:bucket", "s3://b/p?x=1", "file://"]
)
def test_open_blob_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_blob_store(url)


def test_unknown_scheme_message_names_the_scheme() -> None:
    with pytest.raises(ValueError, match="'ftp'.*s3://bucket"):
        open_blob_store("ftp://host/path")


def test_importing_storage_does_not_import_boto3(tmp_path: Path) -> None:
    code = (
        "import sys, storage\n"
        f"storage.open_blob_store({str(tmp_path / 'b')!r}).put_bytes('k', b'v')\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'\n"
        "assert storage.S3BlobStore.__name__ == 'S3BlobStore'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(storage.__file__).parent.parent)


def test_stores_satisfy_the_protocol(tmp_path: Path, s3_endpoint: str) -> None:
    s3 = _new_s3_store(s3_endpoint)
    assert isinstance(FileBlobStore(tmp_path), BlobStore)
    assert isinstance(s3, BlobStore)
    s3.close()
