"""The bundled task: generated once (deterministically), reused, safe under concurrent first use."""

from __future__ import annotations

import json
import multiprocessing as mp

from wmtp.data.bundled import cache_root, ensure_bundled
from wmtp.data.records import iter_records, read_eval_records


def test_layout_and_reuse(small_bundle, tmp_path_factory):
    b = small_bundle
    for p in (b.train, b.valid, b.valid_eval, b.test_eval, b.tokenizer, b.train_index, b.valid_index):
        assert p.is_file(), p
    assert b.root.name == "bundled-60-0"
    train = list(iter_records(b.train))
    valid = list(iter_records(b.valid))
    test = read_eval_records(b.test_eval)
    assert train and valid and test
    ids = [{r.problem_id for r in train}, {r.problem_id for r in valid}, {e["task_id"] for e in test}]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    mtimes = {p.name: p.stat().st_mtime_ns for p in b.root.iterdir()}
    again = ensure_bundled(b.root.parent, n_problems=60, seed=0)
    assert again == b
    assert {p.name: p.stat().st_mtime_ns for p in b.root.iterdir()} == mtimes  # nothing rewritten


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WMTP_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("WMTP_CACHE")
    assert cache_root().parts[-2:] == (".cache", "wmtp")


def _worker(root, q):
    b = ensure_bundled(root, n_problems=30, seed=2)
    q.put((str(b.train), b.train.read_bytes(), b.tokenizer.read_bytes()))


def test_concurrent_first_use_and_determinism(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path / "shared", q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    leftovers = [p.name for p in (tmp_path / "shared").iterdir() if "tmp" in p.name]
    assert leftovers == []
    # an independent generation in another folder gives byte-identical files
    other = ensure_bundled(tmp_path / "other", n_problems=30, seed=2)
    assert other.train.read_bytes() == results[0][1] and other.tokenizer.read_bytes() == results[0][2]
    meta = json.loads((other.root / "bundle.json").read_text())
    assert meta["n_problems"] == 30 and meta["seed"] == 2


def test_older_generator_version_is_regenerated(tmp_path):
    b = ensure_bundled(tmp_path, n_problems=20, seed=1)
    meta = json.loads((b.root / "bundle.json").read_text())
    (b.root / "bundle.json").write_text(json.dumps({**meta, "version": 0}))
    b.train.write_text("stale\n")
    again = ensure_bundled(tmp_path, n_problems=20, seed=1)
    assert json.loads((again.root / "bundle.json").read_text())["version"] == meta["version"]
    assert list(iter_records(again.train))  # the stale file was replaced
