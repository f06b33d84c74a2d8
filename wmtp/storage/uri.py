"""Local paths and `s3://bucket/key` URIs: the two kinds of location wmtp reads and writes."""

from __future__ import annotations

from pathlib import Path

from wmtp.storage.errors import StorageError

REMOTE_SCHEMES = ("s3://",)


def is_remote(uri: str | Path) -> bool:
    """True for `s3://...` (S3 or an S3-compatible endpoint); False for local paths."""
    return isinstance(uri, str) and uri.startswith(REMOTE_SCHEMES)


def parse_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`; the key may be empty (bucket root)."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket name: {uri!r} (expected s3://bucket/key)")
    return bucket, key


def join_s3(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
