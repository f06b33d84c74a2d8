"""Training and evaluation record schemas, validation, and JSONL streaming.

Training record (one JSON object per line, one per solution)::

    {"problem_id": str, "instruction": str, "input": str, "output": str,
     "is_correct": bool, "difficulty": int | null, "family": str (optional),
     "decisive_span": [start, end] (optional: where a synthetic mutant differs from a correct variant)}

Evaluation record (HumanEval format)::

    {"task_id": str, "prompt": str, "entry_point": str, "test": str, "canonical_solution": str,
     "completion_is_program": bool (optional), "family": str (optional)}

A malformed line raises :class:`DataError` naming ``file:line`` (policy ``on_bad_line="error"``),
or is skipped and counted (``on_bad_line="skip"``); nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wmtp.data.errors import DataError

BadLinePolicy = Literal["error", "skip"]
BAD_LINE_POLICIES = ("error", "skip")

_REQUIRED: dict[str, tuple[type, ...]] = {
    "problem_id": (str,),
    "instruction": (str,),
    "output": (str,),
    "is_correct": (bool,),
}
_EVAL_REQUIRED = ("task_id", "prompt", "entry_point", "test")


@dataclass(frozen=True)
class Record:
    """One training sample: a solution to a problem, labelled by execution."""

    problem_id: str
    instruction: str
    input: str
    output: str
    is_correct: bool
    difficulty: int | None = None
    family: str | None = None
    # Synthetic mutants: the [start, end) character span of `output` where it differs from the
    # closest correct variant of its problem (the decisive tokens); None elsewhere.
    decisive_span: tuple[int, int] | None = None

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "problem_id": self.problem_id, "instruction": self.instruction, "input": self.input,
            "output": self.output, "is_correct": self.is_correct, "difficulty": self.difficulty,
        }
        if self.family is not None:
            d["family"] = self.family
        if self.decisive_span is not None:
            d["decisive_span"] = list(self.decisive_span)
        return json.dumps(d, ensure_ascii=False)


@dataclass
class ReadStats:
    """Counts of a streaming read: lines seen, records kept, bad lines skipped (with locations)."""

    lines: int = 0
    records: int = 0
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)  # first few "file:line: reason"


def check_policy(on_bad_line: str) -> None:
    if on_bad_line not in BAD_LINE_POLICIES:
        raise DataError(f"on_bad_line={on_bad_line!r}: allowed values are {', '.join(BAD_LINE_POLICIES)}")


def check_text(key: str, text: str) -> None:
    """Raise ValueError when `text` cannot reach the tokenizer: a lone surrogate (JSON allows
    `\\ud800`; it has no UTF-8 form) or a NUL character (C strings end there)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"field {key!r} has a lone surrogate {text[e.start]!r} at character {e.start}: "
                         "not valid Unicode text (fix the encoder that wrote the file)") from None
    if (at := text.find("\x00")) >= 0:
        raise ValueError(f"field {key!r} has a NUL character at character {at}: not text")


def parse_record(obj: Any) -> Record:
    """Validate a decoded JSON object as a training record; raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key, types in _REQUIRED.items():
        if key not in obj:
            raise ValueError(f"missing required field {key!r}")
        if not isinstance(obj[key], types):
            raise ValueError(f"field {key!r} must be {types[0].__name__}, got {type(obj[key]).__name__}")
    inp = obj.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise ValueError(f"field 'input' must be str, got {type(inp).__name__}")
    diff = obj.get("difficulty")
    if diff is not None and (isinstance(diff, bool) or not isinstance(diff, int)):
        raise ValueError(f"field 'difficulty' must be an int or null, got {diff!r}")
    fam = obj.get("family")
    if fam is not None and not isinstance(fam, str):
        raise ValueError(f"field 'family' must be str, got {type(fam).__name__}")
    span = obj.get("decisive_span")
    if span is not None:
        if (not isinstance(span, list) or len(span) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in span)
                or not 0 <= span[0] <= span[1] <= len(obj["output"])):
            raise ValueError(f"field 'decisive_span' must be [start, end] with 0 <= start <= end <= len(output), got {span!r}")
        span = (span[0], span[1])
    for key in ("problem_id", "instruction", "output"):
        check_text(key, obj[key])
    check_text("input", inp)
    if fam is not None:
        check_text("family", fam)
    return Record(obj["problem_id"], obj["instruction"], inp, obj["output"], obj["is_correct"], diff, fam, span)


def decode_line(raw: bytes | str, path: str | Path, lineno: int) -> Record:
    """Decode and validate one JSONL line; errors name ``path:lineno``."""
    try:
        return parse_record(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{lineno}: malformed JSON ({e})") from None
    except ValueError as e:
        raise DataError(f"{path}:{lineno}: {e}") from None


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(lineno (1-based), byte offset, raw line without newline)`` for non-blank lines."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    offset = 0
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            n = len(raw)
            stripped = raw.rstrip(b"\r\n")
            if stripped.strip():
                yield lineno, offset, stripped
            offset += n


def iter_lines_decoded(path: str | Path, on_bad_line: str = "error",
                       stats: ReadStats | None = None) -> Iterator[tuple[int, int, bytes, Record]]:
    """`(line number, byte offset, raw line, record)` for each valid line, under a bad-line
    policy: "error" raises `DataError` naming file:line; "skip" counts it in `stats`."""
    check_policy(on_bad_line)
    stats = stats if stats is not None else ReadStats()
    for lineno, offset, raw in iter_jsonl_lines(path):
        stats.lines += 1
        try:
            rec = decode_line(raw, path, lineno)
        except DataError as e:
            if on_bad_line == "error":
                raise
            stats.skipped += 1
            if len(stats.skipped_at) < 20:
                stats.skipped_at.append(str(e))
            continue
        yield lineno, offset, raw, rec


def iter_records(path: str | Path, on_bad_line: str = "error",
                 stats: ReadStats | None = None) -> Iterator[Record]:
    """Stream validated records from a JSONL file under a bad-line policy."""
    stats = stats if stats is not None else ReadStats()
    for _, _, _, rec in iter_lines_decoded(path, on_bad_line, stats):
        stats.records += 1
        yield rec


def write_jsonl(path: str | Path, items: Any) -> int:
    """Write records (``Record`` or dicts) one per line; returns the count."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for it in items:
            f.write(it.to_json() if isinstance(it, Record) else json.dumps(it, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_eval_records(path: str | Path) -> list[dict[str, Any]]:
    """Load HumanEval-format evaluation records, checking the required keys (errors name file:line)."""
    out = []
    for lineno, _, raw in iter_jsonl_lines(path):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e})") from None
        missing = [k for k in _EVAL_REQUIRED if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise DataError(f"{path}:{lineno}: evaluation record lacks {', '.join(missing)}")
        out.append(obj)
    return out
