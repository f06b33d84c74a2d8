"""The bundled default data: the synthetic task generated on first use, reused afterwards.

``ensure_bundled()`` writes into ``<root>/bundled-<n>-<seed>/`` where root is ``cache_dir``, else
``$WMTP_CACHE``, else ``~/.cache/wmtp``. Generation runs under a file lock into a temp folder that
is renamed into place, so concurrent processes (Ray workers, ranks) never see a partial folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from wmtp.data.index import ensure_index
from wmtp.data.locking import file_lock
from wmtp.data.records import write_jsonl
from wmtp.data.synth import generate
from wmtp.data.template import format_prompt
from wmtp.model.tokenizer import train_tokenizer

BUNDLE_VERSION = 2  # bump whenever the generator, template or tokenizer training changes the output (2: decisive_span)
_DONE = "bundle.json"


@dataclass(frozen=True)
class BundledData:
    root: Path
    train: Path
    valid: Path
    valid_eval: Path
    test_eval: Path
    tokenizer: Path
    train_index: Path
    valid_index: Path
    stats: dict


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else wmtp's cache root (`wmtp.storage.s3.cache_root`)."""
    from wmtp.storage.s3 import cache_root as wmtp_cache_root

    return Path(cache_dir) if cache_dir is not None else wmtp_cache_root()


def _paths(root: Path, stats: dict) -> BundledData:
    return BundledData(root, root / "train.jsonl", root / "valid.jsonl", root / "valid_eval.jsonl",
                       root / "test_eval.jsonl", root / "tokenizer.model", root / "train.jsonl.index.parquet",
                       root / "valid.jsonl.index.parquet", stats)


def write_synthetic(out_dir: str | Path, *, n_problems: int, seed: int, vocab_size: int = 1000,
                    workers: int | None = None, progress: bool = False) -> BundledData:
    """Generate the task, train the tokenizer on the training texts, and build both indexes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = generate(n_problems, seed, workers=workers)
    b = _paths(out, ds.stats())
    write_jsonl(b.train, ds.records("train"))
    write_jsonl(b.valid, ds.records("valid"))
    write_jsonl(b.valid_eval, ds.eval_records("valid"))
    write_jsonl(b.test_eval, ds.eval_records("test"))
    # The tokenizer sees the training split only: prompts once per problem, every solution.
    corpus = [format_prompt(p.instruction, p.input) for p in ds.split("train")]
    corpus += [r.output for r in ds.records("train")]
    tok = train_tokenizer(corpus, b.tokenizer, vocab_size=vocab_size, seed=seed)
    ensure_index(b.train, b.train_index, tok, progress=progress)
    ensure_index(b.valid, b.valid_index, tok, progress=progress)
    (out / _DONE).write_text(json.dumps({"version": BUNDLE_VERSION, "n_problems": n_problems, "seed": seed,
                                         "vocab_size": vocab_size, "stats": b.stats}, indent=1))
    return b


def _is_current(done: Path) -> bool:
    """The folder is complete and was made by this generator version (older ones are regenerated)."""
    try:
        return json.loads(done.read_text()).get("version") == BUNDLE_VERSION
    except (OSError, ValueError):
        return False


def ensure_bundled(cache_dir: str | Path | None = None, *, n_problems: int = 2000, seed: int = 0) -> BundledData:
    """The bundled synthetic task for ``(n_problems, seed)``, generated deterministically on first use."""
    root = cache_root(cache_dir)
    final = root / f"bundled-{n_problems}-{seed}"
    done = final / _DONE
    if not _is_current(done):
        with file_lock(root / f"bundled-{n_problems}-{seed}.lock"):
            if not _is_current(done):  # another process may have finished while we waited
                tmp = root / f".bundled-{n_problems}-{seed}.tmp-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    write_synthetic(tmp, n_problems=n_problems, seed=seed)
                    if final.exists():  # made by an older generator version
                        shutil.rmtree(final)
                    tmp.rename(final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(done.read_text())
    # The indexes were built with the bundle; `TrainingData` checks them against the tokenizer and
    # bad-line policy it actually uses (checking here too would rebuild them twice under another policy).
    return _paths(final, meta.get("stats", {}))
