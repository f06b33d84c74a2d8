"""Importers: CodeContests-style parquet (written here) and HumanEval's 164 tasks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp.data.errors import DataError
from wmtp.data.importers import humaneval_records, import_codecontests, import_humaneval
from wmtp.data.records import iter_records, read_eval_records

SOLS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])


def _cc_table(rows):
    return pa.table({
        "name": [r[0] for r in rows], "description": [r[1] for r in rows], "difficulty": [r[2] for r in rows],
        "solutions": pa.array([r[3] for r in rows], SOLS), "incorrect_solutions": pa.array([r[4] for r in rows], SOLS),
        "public_tests": [None] * len(rows),  # extra columns are ignored
    })


def test_codecontests_keeps_python3(tmp_path):
    rows = [
        ("1A", "Sum two ints.", 7, {"language": [3, 2, 3], "solution": ["print(1)", "int main(){}", "print(2)"]},
         {"language": [3, 1], "solution": ["print(0)", "print 0"]}),
        ("2B", "Nothing.", 0, {"language": [], "solution": []}, {"language": [4], "solution": ["class A{}"]}),
    ]
    pq.write_table(_cc_table(rows), tmp_path / "cc.parquet")
    st = import_codecontests([tmp_path / "cc.parquet"], tmp_path / "out.jsonl")
    recs = list(iter_records(tmp_path / "out.jsonl"))
    assert [(r.problem_id, r.output, r.is_correct, r.difficulty) for r in recs] == [
        ("1A", "print(1)", True, 7), ("1A", "print(2)", True, 7), ("1A", "print(0)", False, 7)]
    assert recs[0].instruction == "Sum two ints." and recs[0].input == ""
    assert (st.problems, st.correct, st.incorrect, st.dropped_language) == (2, 2, 1, 3)
    st2 = import_codecontests([tmp_path / "cc.parquet"], tmp_path / "cpp.jsonl", languages=["cpp", "java"])
    assert (st2.correct, st2.incorrect) == (1, 1)


def test_codecontests_list_of_structs(tmp_path):
    item = pa.struct([("language", pa.int64()), ("solution", pa.string())])
    t = pa.table({"name": ["x"], "description": ["d"], "difficulty": [None],
                  "solutions": pa.array([[{"language": 3, "solution": "ok()"}]], pa.list_(item)),
                  "incorrect_solutions": pa.array([[]], pa.list_(item))})
    pq.write_table(t, tmp_path / "l.parquet")
    import_codecontests([tmp_path / "l.parquet"], tmp_path / "o.jsonl")
    (rec,) = iter_records(tmp_path / "o.jsonl")
    assert rec.output == "ok()" and rec.difficulty is None


def test_codecontests_errors(tmp_path):
    pq.write_table(pa.table({"name": ["x"], "description": ["d"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="missing CodeContests column"):
        import_codecontests([tmp_path / "bad.parquet"], tmp_path / "o.jsonl")
    (tmp_path / "txt.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        import_codecontests([tmp_path / "txt.parquet"], tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="unknown language 'rust'"):
        import_codecontests([tmp_path / "bad.parquet"], tmp_path / "o.jsonl", languages=["rust"])


def test_humaneval_164(tmp_path):
    assert import_humaneval(tmp_path / "he.jsonl") == 164
    recs = read_eval_records(tmp_path / "he.jsonl")
    assert len(recs) == 164 and recs[0]["task_id"] == "HumanEval/0"
    assert all(r["completion_is_program"] is False and "def check(candidate)" in r["test"] for r in recs)
    # the canonical solutions continue the prompt and pass their tests
    for r in humaneval_records()[:5]:
        ns: dict = {}
        exec(r["prompt"] + r["canonical_solution"], ns)
        exec(r["test"], ns)
        ns["check"](ns[r["entry_point"]])
