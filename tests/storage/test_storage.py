"""Storage: URIs, push/pull/materialize on a moto S3 server, checksums and resume."""

from __future__ import annotations

import hashlib
import os

import pytest

from wmtp.storage import StorageError, is_remote, materialize, parse_s3, pull, push
from wmtp.storage import s3 as s3mod


def test_uri_parsing():
    assert is_remote("s3://b/k") and not is_remote("/tmp/x") and not is_remote("runs/s3:/x")
    assert parse_s3("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert parse_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(StorageError, match="without a bucket"):
        parse_s3("s3:///key")
    with pytest.raises(StorageError, match="not an s3"):
        parse_s3("/local/path")


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "params.json").write_text('{"dim": 8}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_pull_folder_and_file(moto_s3, tmp_path):
    bucket = moto_s3.create_bucket()
    expected = _tree(tmp_path / "ckpt")
    uris = push(tmp_path / "ckpt", f"s3://{bucket}/models/ckpt", progress=False)
    assert sorted(uris) == [f"s3://{bucket}/models/ckpt/params.json", f"s3://{bucket}/models/ckpt/sub/weights.bin"]
    head = moto_s3.client().head_object(Bucket=bucket, Key="models/ckpt/sub/weights.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(expected["sub/weights.bin"]).hexdigest()

    out = pull(f"s3://{bucket}/models/ckpt/", tmp_path / "dl", progress=False)
    assert out == tmp_path / "dl"
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == expected  # no leftover .part files either

    single = pull(f"s3://{bucket}/models/ckpt/params.json", tmp_path / "one", progress=False)
    assert single == tmp_path / "one" / "params.json" and single.read_bytes() == expected["params.json"]

    push(tmp_path / "ckpt" / "params.json", f"s3://{bucket}/cfg/", progress=False)
    assert moto_s3.client().get_object(Bucket=bucket, Key="cfg/params.json")["Body"].read() == expected["params.json"]


def test_resume_skips_verified_files_and_repairs_bad_ones(moto_s3, tmp_path, monkeypatch):
    bucket = moto_s3.create_bucket()
    expected = _tree(tmp_path / "src")
    push(tmp_path / "src", f"s3://{bucket}/d", progress=False)
    dest = pull(f"s3://{bucket}/d", tmp_path / "dl", progress=False)

    downloads, uploads = [], []
    real_client = s3mod.s3_client

    def counting_client(endpoint_url=None):
        client = real_client(endpoint_url)
        orig_dl, orig_ul = client.download_file, client.upload_file
        client.download_file = lambda b, k, *a, **kw: (downloads.append(k), orig_dl(b, k, *a, **kw))[1]
        client.upload_file = lambda f, b, k, *a, **kw: (uploads.append(k), orig_ul(f, b, k, *a, **kw))[1]
        return client

    monkeypatch.setattr(s3mod, "s3_client", counting_client)
    (dest / "sub" / "weights.bin").write_bytes(b"x" * 3000)  # same size, corrupted local copy
    pull(f"s3://{bucket}/d", dest, progress=False)
    assert downloads == ["d/sub/weights.bin"]  # the intact file was skipped
    assert (dest / "sub" / "weights.bin").read_bytes() == expected["sub/weights.bin"]

    push(tmp_path / "src", f"s3://{bucket}/d", progress=False)  # all objects already match
    assert uploads == []


def test_corrupted_download_is_detected(moto_s3, tmp_path):
    bucket = moto_s3.create_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="w.bin", Body=b"payload",
                                Metadata={"sha256": hashlib.sha256(b"other").hexdigest()})
    with pytest.raises(StorageError, match=f"checksum mismatch for s3://{bucket}/w.bin"):
        pull(f"s3://{bucket}/w.bin", tmp_path / "dl", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []  # nothing half-written is left behind


def test_clear_errors(moto_s3, tmp_path):
    bucket = moto_s3.create_bucket()
    with pytest.raises(StorageError, match=r"bucket 'nope' does not exist \(s3://nope/x\)"):
        pull("s3://nope/x", tmp_path, progress=False)
    with pytest.raises(StorageError, match=f"no object or folder at s3://{bucket}/missing"):
        pull(f"s3://{bucket}/missing", tmp_path, progress=False)
    (tmp_path / "f").write_text("1")
    with pytest.raises(StorageError, match="bucket 'nope' does not exist"):
        push(tmp_path / "f", "s3://nope/f", progress=False)
    with pytest.raises(StorageError, match="no such file or folder"):
        push(tmp_path / "absent", f"s3://{bucket}/f", progress=False)
    with pytest.raises(StorageError, match="does not exist"):
        materialize(tmp_path / "absent")


def test_materialize_local_passthrough_and_s3_cache(moto_s3, tmp_path):
    assert materialize(tmp_path) == tmp_path
    bucket = moto_s3.create_bucket()
    expected = _tree(tmp_path / "critic")
    push(tmp_path / "critic", f"s3://{bucket}/runs/critic/final", progress=False)
    cache = tmp_path / "cache"
    path = materialize(f"s3://{bucket}/runs/critic/final", cache, progress=False)
    assert path == cache / bucket / "runs" / "critic" / "final"
    assert (path / "sub" / "weights.bin").read_bytes() == expected["sub/weights.bin"]
    f = materialize(f"s3://{bucket}/runs/critic/final/params.json", cache, progress=False)
    assert f == path / "params.json"
