"""`wmtp data ...` subcommands through argparse (registered as the CLI does)."""

from __future__ import annotations

import argparse

import pytest

from wmtp.data.commands import register
from wmtp.data.errors import DataError


def _run(argv):
    parser = argparse.ArgumentParser(prog="wmtp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_then_index(tmp_path, capsys):
    assert _run(["data", "synth", "--out", str(tmp_path / "s"), "--n-problems", "40", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and (tmp_path / "s" / "test_eval.jsonl").is_file()
    tok = tmp_path / "s" / "tokenizer.model"
    assert _run(["data", "index", str(tmp_path / "s" / "train.jsonl"), "--tokenizer", str(tok)]) == 0
    assert "up to date, reused" in capsys.readouterr().out
    assert _run(["data", "index", str(tmp_path / "s" / "train.jsonl"), "--tokenizer", str(tok), "--force"]) == 0
    assert "(built)" in capsys.readouterr().out


def test_import_humaneval(tmp_path, capsys):
    assert _run(["data", "import-humaneval", "--out", str(tmp_path / "he.jsonl")]) == 0
    assert "164 HumanEval tasks" in capsys.readouterr().out


def test_user_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        _run(["data", "index", str(tmp_path / "missing.jsonl")])
    with pytest.raises(DataError, match="--tokenizer"):
        _run(["data", "index", str(tmp_path / "missing.jsonl"), "--tokenizer", str(tmp_path / "t.model")])
    with pytest.raises(DataError, match="no such file"):
        _run(["data", "import-codecontests", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "o.jsonl")])
