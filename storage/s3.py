"""S3BlobStore: blobs as objects in one S3 (or S3-compatible) bucket.

This is the only module that imports boto3. Each store owns one boto3 session and client:
clients are thread-safe once built, but the default session is not, so sharing
``boto3.client(...)`` across stores built from different threads is avoided.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
import botocore.session
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import FatalError, RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

from pacs.errors import NotFound, StorageUnavailable

from .base import DEFAULT_CHUNK_SIZE, RangeChunks, check_range, validate_key

MiB = 1 << 20
# Above this size uploads and downloads go multipart / ranged in parallel parts.
MULTIPART_THRESHOLD = 16 * MiB
# open() keeps objects up to this size in memory, larger ones spill to a temp file.
SPOOL_MAX_SIZE = 32 * MiB
# Many request threads (DIMSE associations, HTTP workers, transfer threads) share one client;
# botocore's default pool of 10 connections would make them queue for a socket.
MAX_POOL_CONNECTIONS = 32

# "404" is what HEAD answers (a HEAD response has no body to carry an error code).
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_ALREADY_OURS_CODES = frozenset({"BucketAlreadyOwnedByYou"})
_BACKEND_ERRORS = (
    BotoCoreError,
    Boto3Error,
    FatalError,
    RetriesExceededError,
    S3DownloadFailedError,
    S3UploadFailedError,
    OSError,
)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_range(start: int, length: int | None) -> str:
    # RFC 9110 byte ranges are inclusive at both ends.
    return f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"


class S3BlobStore:
    """A BlobStore on the bucket ``bucket``, every key stored as ``prefix/key``.

    ``client`` lets callers bring their own configured client (it is then theirs to close);
    otherwise one is built from the standard AWS credential chain with path-style addressing
    whenever ``endpoint_url`` points at an S3-compatible server (MinIO, Ceph, moto), since
    those rarely resolve ``bucket.host`` names.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        create_bucket: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name must not be empty")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self._owns_client = client is None
        self._client = client or self._build_client(
            endpoint_url, region, connect_timeout=connect_timeout, read_timeout=read_timeout, retries=retries
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4,  # 4 x 16 MiB in flight keeps a 2 GB upload well under the memory budget
            use_threads=True,
            # The CRT client, when installed, behaves differently on errors; stay predictable.
            preferred_transfer_client="classic",
        )
        if create_bucket:
            self._ensure_bucket()

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @staticmethod
    def _build_client(
        endpoint_url: str | None,
        region: str | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
    ) -> Any:
        config = Config(
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # botocore counts max_attempts here as retries after the first try.
            retries={"mode": "standard", "max_attempts": retries},
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        session = boto3.session.Session(botocore_session=_botocore_session())
        return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    # -- writing ------------------------------------------------------------------------

    def put_file(self, key: str, path: Path, *, move: bool = False, synced: bool = False) -> int:
        name = self._name(key)
        with self._errors(f"upload {key!r}"):
            size = Path(path).stat().st_size
            if size < MULTIPART_THRESHOLD:
                # One PUT of the open file: upload_file's transfer manager (threads, futures,
                # callbacks) cost a third more CPU per instance than the request itself.
                with open(path, "rb") as body:
                    self._client.put_object(Bucket=self.bucket, Key=name, Body=body)
            else:
                # Returns only after CompleteMultipartUpload succeeded.
                self._client.upload_file(str(path), self.bucket, name, Config=self._transfer)
            if move:
                # Same contract as the filesystem store: a moved source is gone afterwards.
                Path(path).unlink(missing_ok=True)
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        name = self._name(key)
        with self._errors(f"upload {key!r}"):
            self._client.put_object(Bucket=self.bucket, Key=name, Body=data)
        return len(data)

    def delete(self, key: str) -> None:
        name = self._name(key)
        # DeleteObject succeeds for a missing key, which is exactly the contract.
        with self._errors(f"delete {key!r}"):
            self._client.delete_object(Bucket=self.bucket, Key=name)

    # -- reading ------------------------------------------------------------------------

    def iter_range(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(start, length, chunk_size)
        name = self._name(key)
        if length == 0:
            self.size(key)  # an empty range still has to report a missing key
            return iter(())
        whole = start == 0 and length is None
        body = self._get_body(key, name, None if whole else _http_range(start, length))
        if body is None:
            return iter(())
        return RangeChunks(body, length, chunk_size, lambda: self._errors(f"read {key!r}"))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return b"".join(self.iter_range(key, start, length, chunk_size=max(length, 1)))

    def open(self, key: str) -> BinaryIO:
        name = self._name(key)
        # One streamed GET rather than download_fileobj: the managed download starts with a
        # HEAD, whose bodiless 404 cannot tell a missing key from a missing bucket.
        body = self._get_body(key, name, None)
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_SIZE)
        try:
            with self._errors(f"download {key!r}"):
                for chunk in body.iter_chunks(DEFAULT_CHUNK_SIZE):
                    spool.write(chunk)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        finally:
            body.close()
        return cast(BinaryIO, spool)

    def size(self, key: str) -> int:
        name = self._name(key)
        with self._errors(f"stat {key!r}", key=key):
            head = self._client.head_object(Bucket=self.bucket, Key=name)
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # -- helpers ------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _get_body(self, key: str, name: str, http_range: str | None) -> Any:
        """GetObject's streaming body, or None when ``http_range`` starts past the end."""
        extra = {"Range": http_range} if http_range else {}
        with self._errors(f"read {key!r}", key=key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=name, **extra)["Body"]
            except ClientError as exc:
                # 416: the object exists but is shorter than ``start``; read() would give b"".
                if _error_code(exc) == "InvalidRange":
                    return None
                raise

    def _ensure_bucket(self) -> None:
        with self._errors("create bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            region = self._client.meta.region_name
            extra: dict[str, Any] = {}
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            if region and region not in ("us-east-1", "aws-global"):
                extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._client.create_bucket(Bucket=self.bucket, **extra)
            except ClientError as exc:
                if _error_code(exc) not in _ALREADY_OURS_CODES:
                    raise

    @contextmanager
    def _errors(self, action: str, *, key: str | None = None) -> Iterator[None]:
        """Translate boto errors; with ``key`` set, a missing object becomes NotFound."""
        try:
            yield
        except ClientError as exc:
            code = _error_code(exc)
            if key is not None and code in _MISSING_KEY_CODES:
                raise NotFound(f"blob {key!r} not found") from exc
            raise StorageUnavailable(f"S3 {action} in bucket {self.bucket!r} failed: {code or exc}") from exc
        except _BACKEND_ERRORS as exc:
            raise StorageUnavailable(f"S3 {action} in bucket {self.bucket!r} failed: {exc}") from exc


_LOADER_LOCK = threading.Lock()
_shared_loader: Any = None


def _botocore_session() -> Any:
    """A new botocore session reading service models through one loader per process: its cache
    of parsed models (megabytes of JSON for S3) is then loaded once, and when preload_models()
    ran before the server forked its workers, shared by all of them."""
    global _shared_loader
    session = botocore.session.Session()
    with _LOADER_LOCK:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
    session.register_component("data_loader", _shared_loader)
    return session


def preload_models() -> None:
    """Parse what an S3 client is built from (service model, endpoints, partitions) now."""
    _botocore_session().create_client("s3", region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-")
