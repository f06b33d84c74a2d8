"""Move files and folders between local disk and S3 (or an S3-compatible endpoint) with boto3.

- Credentials come from the environment only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN, a profile, or an instance role: boto3's default chain); wmtp never takes them
  as arguments or config values. The endpoint is `endpoint_url=` or `$AWS_ENDPOINT_URL` (MinIO,
  Ceph, moto).
- Every pushed object carries its SHA-256 as object metadata (`x-amz-meta-sha256`). Pulls verify
  it after download (a mismatch discards the file and raises) and skip files whose local copy
  already matches, so an interrupted pull or push resumes file by file. Large files go through
  boto3's multipart transfers (TransferConfig).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wmtp.storage.errors import StorageError
from wmtp.storage.uri import is_remote, join_s3, parse_s3

log = logging.getLogger(__name__)

CHECKSUM_KEY = "sha256"  # object metadata key
_MiB = 1024 * 1024


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * _MiB, multipart_chunksize=64 * _MiB, max_concurrency=8)


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client for `endpoint_url` or `$AWS_ENDPOINT_URL` (AWS itself when neither)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None)


def sha256_file(path: str | Path, chunk_size: int = 8 * _MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    rel: str  # path relative to the pulled prefix ('' parts joined with '/')


def _storage_error(exc: Exception, uri: str, bucket: str) -> StorageError:
    """Turn botocore failures into messages that name the URI and the likely fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE) in the environment")
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"cannot reach the S3 endpoint for {uri}: {exc} (check AWS_ENDPOINT_URL)")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and "bucket" in str(exc).lower()):
            return StorageError(f"bucket {bucket!r} does not exist ({uri})")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"no such object: {uri}")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"access denied to {uri} ({code}): check the credentials in the environment")
        return StorageError(f"S3 error {code} on {uri}: {exc}")
    return StorageError(f"S3 failure on {uri}: {exc}")


def _check_bucket(client, bucket: str, uri: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"bucket {bucket!r} does not exist ({uri})") from None
        raise _storage_error(exc, uri, bucket) from None
    except BotoCoreError as exc:
        raise _storage_error(exc, uri, bucket) from None


def _remote_checksum(client, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return None
    return head.get("Metadata", {}).get(CHECKSUM_KEY)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: draw only on a terminal.
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if enabled else True, leave=False)


def push(
    local_path: str | Path, uri: str, *, endpoint_url: str | None = None, progress: bool = True
) -> list[str]:
    """Upload a file or a folder (recursively) to `uri`; returns the URIs written or kept.

    A file goes to `uri` itself, or to `uri/<name>` when `uri` ends with '/'. A folder's files go
    to `uri/<relative path>`. Objects whose stored SHA-256 already equals the local file's are
    skipped (an interrupted push resumes).
    """
    src = Path(local_path)
    if not src.exists():
        raise StorageError(f"cannot push {src}: no such file or folder")
    bucket, key = parse_s3(uri)
    if src.is_file():
        items = [(src, key + src.name if (not key or key.endswith("/")) else key)]
    else:
        prefix = key.rstrip("/")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        items = [(p, f"{prefix}/{p.relative_to(src).as_posix()}" if prefix else p.relative_to(src).as_posix())
                 for p in files]
    client = s3_client(endpoint_url)
    _check_bucket(client, bucket, uri)
    written = []
    with _progress(sum(p.stat().st_size for p, _ in items), f"push {uri}", progress) as bar:
        for path, obj_key in items:
            digest = sha256_file(path)
            if _remote_checksum(client, bucket, obj_key) == digest:
                bar.update(path.stat().st_size)
            else:
                try:
                    client.upload_file(str(path), bucket, obj_key, ExtraArgs={"Metadata": {CHECKSUM_KEY: digest}},
                                       Config=transfer_config(), Callback=bar.update)
                except Exception as exc:
                    raise _storage_error(exc, join_s3(bucket, obj_key), bucket) from None
            written.append(join_s3(bucket, obj_key))
    return written


def _list(client, bucket: str, key: str, uri: str) -> tuple[bool, list[_Object]]:
    """(is_single_object, objects) for `key`: an exact object, else everything under `key/`."""
    from botocore.exceptions import BotoCoreError, ClientError

    _check_bucket(client, bucket, uri)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return True, [_Object(key, head["ContentLength"], key.rsplit("/", 1)[-1])]
        except ClientError:
            pass  # not an object: try it as a prefix
    prefix = key.rstrip("/") + "/" if key else ""
    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # skip "folder" marker objects
                    objects.append(_Object(item["Key"], item["Size"], item["Key"][len(prefix):]))
    except (ClientError, BotoCoreError) as exc:
        raise _storage_error(exc, uri, bucket) from None
    if not objects:
        raise StorageError(f"no object or folder at {uri} (bucket {bucket!r} has nothing under {key!r})")
    return False, objects


def _download(client, bucket: str, objects: Iterable[_Object], dest_root: Path, desc: str, progress: bool) -> None:
    objects = list(objects)
    root = dest_root.resolve()
    with _progress(sum(o.size for o in objects), desc, progress) as bar:
        for obj in objects:
            dest = (root / obj.rel).resolve()
            if root != dest and root not in dest.parents:
                raise StorageError(f"refusing to write {join_s3(bucket, obj.key)} outside {root}")
            expected = _remote_checksum(client, bucket, obj.key)
            if expected is None:
                log.warning("%s has no sha256 metadata (not pushed by wmtp): downloading unverified",
                            join_s3(bucket, obj.key))
            elif dest.exists() and dest.stat().st_size == obj.size and sha256_file(dest) == expected:
                bar.update(obj.size)
                continue  # already here and intact: resume skips it
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Unique temporary name: two ranks materializing the same cache never clash.
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            try:
                client.download_file(bucket, obj.key, str(tmp), Config=transfer_config(), Callback=bar.update)
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                raise _storage_error(exc, join_s3(bucket, obj.key), bucket) from None
            if expected is not None:
                got = sha256_file(tmp)
                if got != expected:
                    tmp.unlink(missing_ok=True)
                    raise StorageError(
                        f"checksum mismatch for {join_s3(bucket, obj.key)}: expected sha256 {expected}, "
                        f"downloaded {got}; the download was discarded (retry, or push the file again)"
                    )
            os.replace(tmp, dest)


def pull(uri: str, local_dir: str | Path, *, endpoint_url: str | None = None, progress: bool = True) -> Path:
    """Download `uri` into `local_dir`; returns the local file (single object) or `local_dir`.

    A single object lands at `local_dir/<basename>`; a prefix's objects at `local_dir/<relative
    key>`. Checksums are verified; files already present with the right checksum are skipped.
    """
    bucket, key = parse_s3(uri)
    client = s3_client(endpoint_url)
    single, objects = _list(client, bucket, key, uri)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    _download(client, bucket, objects, local_dir, f"pull {uri}", progress)
    return local_dir / objects[0].rel if single else local_dir


def cache_root() -> Path:
    """Where wmtp caches what it downloads or generates: `$WMTP_CACHE`, else `~/.cache/wmtp`."""
    base = os.environ.get("WMTP_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "wmtp"


def default_cache_dir() -> Path:
    """`<cache_root>/s3`."""
    return cache_root() / "s3"


def materialize(
    uri_or_path: str | Path, cache_dir: str | Path | None = None, *, endpoint_url: str | None = None,
    progress: bool = True,
) -> Path:
    """A local path for a checkpoint/tokenizer/data location given as a path or an `s3://` URI.

    Local paths pass through (they must exist). `s3://bucket/key` is pulled into
    `<cache_dir>/bucket/key` (a file, or a folder for a prefix) and that path returned; a second
    call finds the files already verified and downloads nothing.
    """
    if not is_remote(uri_or_path):
        path = Path(uri_or_path).expanduser()
        if not path.exists():
            raise StorageError(f"{path} does not exist")
        return path
    uri = str(uri_or_path)
    bucket, key = parse_s3(uri)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    client = s3_client(endpoint_url)
    single, objects = _list(client, bucket, key, uri)
    if single:
        dest_root = (cache / bucket / key).parent
    else:
        dest_root = cache / bucket / key.rstrip("/") if key else cache / bucket
    dest_root.mkdir(parents=True, exist_ok=True)
    _download(client, bucket, objects, dest_root, f"pull {uri}", progress)
    return dest_root / objects[0].rel if single else dest_root
