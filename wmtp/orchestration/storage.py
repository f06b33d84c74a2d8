"""Where Ray Train keeps a run: a local folder or an `s3://bucket/prefix` (S3-compatible too).

For an S3-compatible endpoint (MinIO, moto, Ceph) set `AWS_ENDPOINT_URL`: the storage is then a
pyarrow `S3FileSystem(endpoint_override=...)` plus the path WITHOUT the `s3://` scheme (Ray refuses
a filesystem together with a URI). Credentials come from the usual AWS environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs


@dataclass(frozen=True)
class TrainStorage:
    """`path` and `filesystem` exactly as `ray.train.RunConfig(storage_path=, storage_filesystem=)` take them."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None = None

    @property
    def is_remote(self) -> bool:
        return self.filesystem is not None or "://" in self.path


def resolve_storage(storage_path: str | None, output_dir: str) -> TrainStorage:
    """Storage for `orchestration.storage_path` (default `<output_dir>/ray`, made absolute)."""
    if storage_path is None:
        return TrainStorage(str((Path(output_dir) / "ray").resolve()))
    parsed = urlparse(storage_path)
    if parsed.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            return TrainStorage(storage_path)
        return TrainStorage(f"{parsed.netloc}{parsed.path}".rstrip("/"), s3_filesystem(endpoint))
    if parsed.scheme in ("", "file"):
        return TrainStorage(str(Path(parsed.path if parsed.scheme else storage_path).expanduser().resolve()))
    # gs://, abfs://, ...: pyarrow/fsspec resolve these themselves.
    return TrainStorage(storage_path)


def s3_filesystem(endpoint: str) -> pyarrow.fs.S3FileSystem:
    """A pyarrow S3 filesystem for an S3-compatible endpoint such as `http://127.0.0.1:9000`."""
    parsed = urlparse(endpoint)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=parsed.netloc or parsed.path,
        scheme=parsed.scheme or "https",
        region=os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        allow_bucket_creation=False,
    )
