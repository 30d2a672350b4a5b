"""Blob storage for DICOM files: one ``BlobStore`` protocol, a filesystem and an S3 backend.

``open_blob_store(url)`` picks the backend from a URL. ``S3BlobStore`` is imported on first
use so that a filesystem-only deployment never imports boto3.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .base import BlobStore, validate_key
from .fs import FileBlobStore

if TYPE_CHECKING:
    from .s3 import S3BlobStore

__all__ = ["BlobStore", "FileBlobStore", "S3BlobStore", "open_blob_store", "validate_key"]

# At least two characters, so a Windows drive letter ("C:\\data") still reads as a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def __getattr__(name: str) -> Any:
    if name == "S3BlobStore":
        from .s3 import S3BlobStore

        return S3BlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_blob_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    create_bucket: bool = False,
) -> BlobStore:
    """Build the store named by ``url``.

    * ``file:///abs/path``, ``file://relative/path`` or a bare path -> FileBlobStore
    * ``s3://bucket`` or ``s3://bucket/some/prefix`` -> S3BlobStore

    ``endpoint_url``, ``region`` and ``create_bucket`` only matter for S3.
    """
    if not url:
        raise ValueError("blob store URL must not be empty")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if not scheme:
        return FileBlobStore(Path(url))
    if scheme == "file":
        return FileBlobStore(_file_url_path(url))
    if scheme == "s3":
        bucket, prefix = _parse_s3_url(url)
        from .s3 import S3BlobStore

        return S3BlobStore(
            bucket, prefix, endpoint_url=endpoint_url, region=region, create_bucket=create_bucket
        )
    raise ValueError(
        f"unsupported blob store URL scheme {scheme!r} in {url!r}; "
        "use file:///abs/path, file://relative/path, a plain path, or s3://bucket/prefix"
    )


def _file_url_path(url: str) -> Path:
    # Deliberately not RFC 8089: "file://relative/path" names a path relative to the working
    # directory (its "host" part is the first path segment), which is what configs expect.
    rest = url[len("file:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"blob store URL {url!r} has no path")
    return Path(unquote(rest))


def _parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not url.lower().startswith("s3://") or not parts.netloc:
        raise ValueError(f"S3 blob store URL {url!r} must look like s3://bucket/optional/prefix")
    if parts.query or parts.fragment:
        raise ValueError(f"S3 blob store URL {url!r} must not carry a query or fragment")
    return parts.netloc, parts.path.strip("/")
