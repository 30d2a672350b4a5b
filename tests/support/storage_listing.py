"""List what is really in an archive's storage, behind the blob store's back."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import boto3

from pacs.services import Services


def blob_keys(services: Services) -> set[str]:
    """Every stored object, as the key the index records (relative to the store's root/prefix)."""
    url = services.settings.effective_storage_url
    if url.startswith("file:"):
        root = Path(urlsplit(url).path)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    s3 = boto3.client("s3", endpoint_url=services.settings.s3_endpoint_url, region_name="us-east-1")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=parts.netloc)
        keys = {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    finally:
        s3.close()
    return {key.removeprefix(prefix + "/") if prefix else key for key in keys}
