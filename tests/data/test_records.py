"""Record validation: malformed lines name file:line, or are skipped and counted."""

from __future__ import annotations

import json

import pytest

from wmtp.data.errors import DataError
from wmtp.data.records import ReadStats, Record, iter_records, read_eval_records, write_jsonl
from wmtp.data.template import format_prompt

GOOD = {"problem_id": "p1", "instruction": "do it", "input": "", "output": "x", "is_correct": True, "difficulty": 1}


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "malformed JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "output"}), "missing required field 'output'"),
    (json.dumps({**GOOD, "is_correct": "yes"}), "'is_correct' must be bool"),
    (json.dumps({**GOOD, "difficulty": "hard"}), "'difficulty' must be an int"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, reason):
    p = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(GOOD), bad])
    with pytest.raises(DataError) as e:
        list(iter_records(p))
    assert f"{p}:3" in str(e.value) and reason in str(e.value)


def test_skip_policy_counts(tmp_path):
    p = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), "{bad", "", json.dumps({**GOOD, "input": None}), "[]"])
    stats = ReadStats()
    recs = list(iter_records(p, on_bad_line="skip", stats=stats))
    assert len(recs) == 2 and recs[1].input == ""
    assert (stats.lines, stats.records, stats.skipped) == (4, 2, 2)  # the blank line is not a record
    assert f"{p}:2" in stats.skipped_at[0] and f"{p}:5" in stats.skipped_at[1]
    with pytest.raises(DataError, match="allowed values are error, skip"):
        list(iter_records(p, on_bad_line="ignore"))


def test_round_trip(tmp_path):
    rec = Record("p", "ins", "inp", "def f():\n    pass\n", False, None, "fam")
    write_jsonl(tmp_path / "r.jsonl", [rec])
    assert list(iter_records(tmp_path / "r.jsonl")) == [rec]


def test_eval_records_need_fields(tmp_path):
    p = _write(tmp_path / "e.jsonl", [json.dumps({"task_id": "a", "prompt": "", "entry_point": "f", "test": ""}),
                                      json.dumps({"task_id": "b"})])
    with pytest.raises(DataError, match=f"{p}:2: evaluation record lacks prompt, entry_point, test"):
        read_eval_records(p)


def test_alpaca_template():
    with_input = format_prompt("Add.", "def f(x):")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nAdd.\n\n### Input:\ndef f(x):\n\n### Response:\n")
    no_input = format_prompt("Add.", "")
    assert "### Input:" not in no_input
    assert no_input.endswith("### Instruction:\nAdd.\n\n### Response:\n")
