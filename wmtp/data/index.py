"""The metadata index: one parquet row per record, built in one streaming pass, read by offset.

Columns: ``row`` (0-based record number), ``line`` (1-based line in the JSONL), ``offset`` and
``length`` (bytes of the line, newline excluded), ``problem_id``, ``is_correct``, ``difficulty``
(-1 when absent), ``n_tokens`` (BOS + prompt + output + EOS under the index's tokenizer, -1 when
built without one). Samplers work on these columns only; chosen records are read by byte offset,
so a multi-GB dataset never sits in memory.

Freshness: the parquet's schema metadata stores the source's size, mtime_ns, a sha256 of its first
and last MiB, the tokenizer fingerprint and the bad-line policy. An index is reused only when all
match; otherwise it is rebuilt (under a file lock, written to a temp file and renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wmtp.data.errors import DataError
from wmtp.data.locking import file_lock
from wmtp.data.records import ReadStats, Record, check_policy, iter_lines_decoded, parse_record
from wmtp.data.template import format_prompt

INDEX_VERSION = 1
_META_KEY = b"wmtp_index"
_HASH_SPAN = 1 << 20
_ROW_GROUP = 1 << 16

SCHEMA = pa.schema([
    ("row", pa.int64()), ("line", pa.int64()), ("offset", pa.int64()), ("length", pa.int32()),
    ("problem_id", pa.string()), ("is_correct", pa.bool_()), ("difficulty", pa.int16()), ("n_tokens", pa.int32()),
])


def default_index_path(jsonl_path: str | Path) -> Path:
    p = Path(jsonl_path)
    return p.with_name(p.name + ".index.parquet")


def source_signature(path: str | Path) -> dict[str, Any]:
    """Size, mtime and a fast hash (first and last MiB) of a file."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256()
    with p.open("rb") as f:
        h.update(f.read(_HASH_SPAN))
        if st.st_size > _HASH_SPAN:
            f.seek(max(_HASH_SPAN, st.st_size - _HASH_SPAN))
            h.update(f.read(_HASH_SPAN))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_sha256": h.hexdigest()}


def _tok_fingerprint(tokenizer: Any) -> str | None:
    return tokenizer.fingerprint() if tokenizer is not None else None


def read_index_meta(index_path: str | Path) -> dict[str, Any] | None:
    try:
        md = pq.read_metadata(index_path).metadata or {}  # the file footer's key-value metadata
    except (OSError, pa.ArrowInvalid):
        return None
    raw = md.get(_META_KEY)
    return json.loads(raw) if raw else None


def index_is_fresh(jsonl_path: str | Path, index_path: str | Path, tokenizer: Any = None,
                   on_bad_line: str = "error") -> bool:
    meta = read_index_meta(index_path)
    if meta is None or meta.get("version") != INDEX_VERSION:
        return False
    return (meta.get("source") == source_signature(jsonl_path) and meta.get("tokenizer") == _tok_fingerprint(tokenizer)
            and meta.get("on_bad_line") == on_bad_line)


@dataclass
class IndexBuild:
    path: Path
    records: int
    skipped: int
    rebuilt: bool
    skipped_at: list[str]


class _TokenCounter:
    """n_tokens = 1 (BOS) + |prompt| + |output| + 1 (EOS); the last prompt is cached (solutions of one
    problem are usually adjacent and share it)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self._key: tuple[str, str] | None = None
        self._n = 0

    def __call__(self, rec: Record) -> int:
        if self.tok is None:
            return -1
        key = (rec.instruction, rec.input)
        if key != self._key:
            self._key, self._n = key, len(self.tok.encode(format_prompt(rec.instruction, rec.input)))
        return 2 + self._n + len(self.tok.encode(rec.output))


def build_index(jsonl_path: str | Path, index_path: str | Path | None = None, tokenizer: Any = None, *,
                on_bad_line: str = "error", progress: bool = True) -> IndexBuild:
    """One streaming pass over ``jsonl_path`` writing the parquet index (row groups of 65536 rows)."""
    from tqdm import tqdm

    check_policy(on_bad_line)
    src = Path(jsonl_path)
    out = Path(index_path) if index_path is not None else default_index_path(src)
    sig = source_signature(src)
    count = _TokenCounter(tokenizer)
    stats = ReadStats()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    cols: dict[str, list] = {n: [] for n in SCHEMA.names}
    writer = pq.ParquetWriter(tmp, SCHEMA)

    def flush() -> None:
        if cols["row"]:
            writer.write_table(pa.table({n: pa.array(v, SCHEMA.field(n).type) for n, v in cols.items()}, schema=SCHEMA))
            for v in cols.values():
                v.clear()

    try:
        with tqdm(total=sig["size"], unit="B", unit_scale=True, desc=f"index {src.name}", disable=not progress,
                  mininterval=0.5) as bar:
            last = 0
            for lineno, offset, raw, rec in iter_lines_decoded(src, on_bad_line, stats):
                cols["row"].append(stats.records)
                cols["line"].append(lineno)
                cols["offset"].append(offset)
                cols["length"].append(len(raw))
                cols["problem_id"].append(rec.problem_id)
                cols["is_correct"].append(rec.is_correct)
                cols["difficulty"].append(-1 if rec.difficulty is None else rec.difficulty)
                cols["n_tokens"].append(count(rec))
                stats.records += 1
                if len(cols["row"]) >= _ROW_GROUP:
                    flush()
                    bar.update(offset - last)
                    last = offset
            flush()
            bar.update(sig["size"] - last)
        meta = {"version": INDEX_VERSION, "source": sig, "source_path": str(src.resolve()),
                "tokenizer": _tok_fingerprint(tokenizer), "on_bad_line": on_bad_line,
                "records": stats.records, "skipped": stats.skipped, "skipped_at": stats.skipped_at}
        writer.add_key_value_metadata({_META_KEY.decode(): json.dumps(meta)})
        writer.close()
        writer = None
        tmp.replace(out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return IndexBuild(out, stats.records, stats.skipped, True, stats.skipped_at)


def ensure_index(jsonl_path: str | Path, index_path: str | Path | None = None, tokenizer: Any = None, *,
                 on_bad_line: str = "error", progress: bool = True) -> IndexBuild:
    """Reuse the index when fresh, else build it; a file lock makes concurrent ranks build it once."""
    check_policy(on_bad_line)
    out = Path(index_path) if index_path is not None else default_index_path(jsonl_path)
    if not Path(jsonl_path).is_file():
        raise DataError(f"{jsonl_path}: no such file")
    with file_lock(out.with_name(out.name + ".lock")):
        if index_is_fresh(jsonl_path, out, tokenizer, on_bad_line):
            meta = read_index_meta(out) or {}
            return IndexBuild(out, meta.get("records", 0), meta.get("skipped", 0), False, meta.get("skipped_at", []))
        return build_index(jsonl_path, out, tokenizer, on_bad_line=on_bad_line, progress=progress)


def require_records(jsonl_path: str | Path, build: IndexBuild) -> None:
    """A dataset a run reads from has records: else `DataError` naming the file (not a sampler's
    "no samples" later)."""
    if build.records:
        return
    if build.skipped:
        raise DataError(f"{jsonl_path}: no valid records ({build.skipped} bad lines skipped, "
                        f"e.g. {build.skipped_at[0] if build.skipped_at else '?'})")
    raise DataError(f"{jsonl_path} is empty (no records: every line is blank)")


@dataclass
class MetadataIndex:
    """The index columns as numpy arrays ([N] each); problem ids dictionary-encoded to int32 codes."""

    offset: np.ndarray  # int64
    length: np.ndarray  # int32
    is_correct: np.ndarray  # bool
    difficulty: np.ndarray  # int16, -1 = unknown
    n_tokens: np.ndarray  # int32, -1 = unknown
    problem_code: np.ndarray  # int32 into problem_names
    problem_names: pa.Array  # string dictionary (kept in Arrow: compact)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def load(cls, index_path: str | Path, source: str | Path | None = None) -> MetadataIndex:
        """Read the index row group by row group into preallocated arrays (a whole-table read
        peaks at several times the columns' size)."""
        pf = pq.ParquetFile(index_path, read_dictionary=["problem_id"], pre_buffer=False)
        n = pf.metadata.num_rows
        arrays = {"offset": np.empty(n, np.int64), "length": np.empty(n, np.int32), "is_correct": np.empty(n, bool),
                  "difficulty": np.empty(n, np.int16), "n_tokens": np.empty(n, np.int32)}
        local_codes = np.empty(n, np.int32)
        dicts: list[Any] = []
        dict_base: list[int] = []
        pos = 0
        for g in range(pf.num_row_groups):
            rg = pf.read_row_group(g, columns=[*arrays, "problem_id"], use_threads=False)
            k = rg.num_rows
            for name, arr in arrays.items():
                arr[pos:pos + k] = rg.column(name).to_numpy(zero_copy_only=False)
            pid = rg.column("problem_id").combine_chunks()
            if not pa.types.is_dictionary(pid.type):
                pid = pc.dictionary_encode(pid)
            dict_base.append(sum(len(d) for d in dicts))
            local_codes[pos:pos + k] = pid.indices.to_numpy(zero_copy_only=False) + dict_base[-1]
            dicts.append(pid.dictionary)
            pos += k
        # Row groups have their own dictionaries (a problem may straddle two): unify them.
        if dicts:
            merged = pc.dictionary_encode(pa.concat_arrays(dicts))
            remap = merged.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            codes, names = remap[local_codes], merged.dictionary
        else:
            codes, names = local_codes, pa.array([], pa.string())
        if source is None:
            meta = read_index_meta(index_path) or {}
            source = meta.get("source_path")
        return cls(**arrays, problem_code=codes, problem_names=names, source=Path(source) if source else None)

    def problem_id(self, row: int) -> str:
        return self.problem_names[int(self.problem_code[row])].as_py()

    def sizes(self) -> np.ndarray:
        """Per-row length for length balancing: token count, or bytes when built without a tokenizer."""
        return np.where(self.n_tokens >= 0, self.n_tokens, self.length).astype(np.int64)


def read_records(path: str | Path, offsets: Sequence[int] | np.ndarray,
                 lengths: Sequence[int] | np.ndarray | None = None) -> list[Record]:
    """Read the records at byte ``offsets`` (in the given order) without scanning the file."""
    out = []
    with Path(path).open("rb") as f:
        fd = f.fileno()
        for i, off in enumerate(offsets):
            if lengths is not None:
                raw = os.pread(fd, int(lengths[i]), int(off))
            else:
                f.seek(int(off))
                raw = f.readline().rstrip(b"\r\n")
            try:
                out.append(parse_record(json.loads(raw)))
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: record at byte offset {int(off)} is unreadable ({e}); "
                                "the index may be stale, rebuild it with `wmtp data index`") from None
    return out
