"""The metadata index: one pass, correct offsets, reuse when fresh, rebuild when stale."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from wmtp.data.dataset import TrainingData
from wmtp.data.errors import DataError
from wmtp.data.index import MetadataIndex, build_index, ensure_index, index_is_fresh, read_records
from wmtp.data.records import iter_records
from wmtp.data.template import format_prompt


def _rec(i, ok=True, diff=1):
    return {"problem_id": f"p{i // 3}", "instruction": f"task {i}", "input": "", "output": f"return {i}\n",
            "is_correct": ok, "difficulty": diff}


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_columns_and_offsets(small_bundle, small_tokenizer):
    t = pq.read_table(small_bundle.train_index)
    assert t.column_names == ["row", "line", "offset", "length", "problem_id", "is_correct", "difficulty", "n_tokens"]
    recs = list(iter_records(small_bundle.train))
    assert t.num_rows == len(recs)
    assert t.column("row").to_pylist() == list(range(len(recs)))
    idx = MetadataIndex.load(small_bundle.train_index)
    rows = np.array([5, 0, len(recs) - 1, 5])
    assert read_records(small_bundle.train, idx.offset[rows], idx.length[rows]) == [recs[i] for i in rows]
    assert read_records(small_bundle.train, idx.offset[rows]) == [recs[i] for i in rows]  # no lengths: readline
    for i in (0, 7):
        r = recs[i]
        want = 2 + len(small_tokenizer.encode(format_prompt(r.instruction, r.input))) + len(small_tokenizer.encode(r.output))
        assert idx.n_tokens[i] == want
        assert idx.problem_id(i) == r.problem_id and idx.is_correct[i] == r.is_correct
        assert idx.difficulty[i] == r.difficulty


def test_reuse_and_rebuild(tmp_path):
    src = _write(tmp_path / "d.jsonl", [_rec(i) for i in range(9)])
    first = ensure_index(src, progress=False)
    assert first.rebuilt and first.records == 9
    again = ensure_index(src, progress=False)
    assert not again.rebuilt
    # appending changes size, mtime and the tail hash: stale
    with src.open("a") as f:
        f.write(json.dumps(_rec(9)) + "\n")
    assert not index_is_fresh(src, first.path)
    third = ensure_index(src, progress=False)
    assert third.rebuilt and third.records == 10
    # same size and content but a new mtime is also treated as stale (conservative)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ensure_index(src, progress=False).rebuilt
    # a different bad-line policy or tokenizer is a different index
    assert not index_is_fresh(src, first.path, on_bad_line="skip")


def test_rebuild_on_same_size_edit(tmp_path):
    src = _write(tmp_path / "d.jsonl", [_rec(i) for i in range(4)])
    b = ensure_index(src, progress=False)
    st = src.stat()
    data = src.read_bytes().replace(b'"return 3', b'"return 4')
    src.write_bytes(data)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the hash catches it
    assert not index_is_fresh(src, b.path)


def test_bad_lines_in_index(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(_rec(0)) + "\n{oops\n" + json.dumps(_rec(1)) + "\n")
    with pytest.raises(DataError, match=f"{src}:2"):
        build_index(src, progress=False)
    res = build_index(src, on_bad_line="skip", progress=False)
    assert (res.records, res.skipped) == (2, 1)
    data = TrainingData(src, on_bad_line="skip")
    assert [r.output for r in data.records([0, 1])] == ["return 0\n", "return 1\n"]
    assert data.index.n_tokens.tolist() == [-1, -1]  # built without a tokenizer
    assert (data.index.sizes() == data.index.length).all()


def test_stale_offsets_are_reported(tmp_path):
    src = _write(tmp_path / "d.jsonl", [_rec(i) for i in range(3)])
    idx = MetadataIndex.load(ensure_index(src, progress=False).path)
    src.write_text("x" * 400)
    with pytest.raises(DataError, match="stale"):
        read_records(src, idx.offset[:1], idx.length[:1])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ensure_index(tmp_path / "nope.jsonl")
