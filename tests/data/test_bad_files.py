"""Every user-supplied file fails as a user error: exit 2, the file (and line) named, no traceback.

Tokenizer models that are not one (empty, text, garbage bytes), record text that cannot reach the
tokenizer (a lone surrogate, a NUL), and datasets with no record (empty, whitespace only)."""

from __future__ import annotations

import json

import pytest

from tests.recipes.harness import TINY
from wmtp.cli import main
from wmtp.data.dataset import TrainingData
from wmtp.data.errors import DataError
from wmtp.data.records import iter_records
from wmtp.errors import WMTPUserError
from wmtp.model.tokenizer import Tokenizer

GOOD = {"problem_id": "p1", "instruction": "add", "input": "", "output": "def f():\n    return 1", "is_correct": True}

BAD_MODELS = {
    "empty": (b"", "tokenizer model is empty"),
    "text": (b"this is not a model\nsecond line\n", "not a SentencePiece tokenizer.model"),
    "garbage": (bytes(range(256)) * 8, "not a SentencePiece tokenizer.model"),
}
# A lone surrogate as JSON writes it (`\ud800`), and a NUL (`\u0000`): both valid JSON.
BAD_TEXT = {
    "surrogate": (json.dumps(GOOD).replace('"def f', '"\\ud800def f'), "lone surrogate"),
    "nul": (json.dumps({**GOOD, "instruction": "a\u0000b"}), "NUL character"),
}


def _train(capsys, tmp_path, *overrides):
    code = main(["train", "--local", "--recipe", "baseline", "--preset", "local-light", *TINY,
                 f"run.output_dir={tmp_path / 'runs'}", "train.steps=1", *overrides])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("kind", BAD_MODELS)
def test_bad_tokenizer_model_is_named(tmp_path, kind):
    data, reason = BAD_MODELS[kind]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(WMTPUserError, match=reason) as e:
        Tokenizer(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kind", BAD_TEXT)
def test_text_that_cannot_be_encoded_names_file_and_line(tmp_path, kind):
    line, reason = BAD_TEXT[kind]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=reason) as e:
        list(iter_records(path))
    assert f"{path}:2:" in str(e.value)


@pytest.mark.parametrize("text", ["", "  \n\n\t\n"])
def test_empty_dataset_is_named(tmp_path, text):
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{path} is empty"):
        TrainingData(path)


def test_cli_exits_2_for_each_bad_file(tmp_path, capsys):
    """Through `wmtp train --local`: the first bad file stops the run before any step."""
    cases = []
    for kind, (data, reason) in BAD_MODELS.items():
        path = tmp_path / f"{kind}.model"
        path.write_bytes(data)
        cases.append((f"model.tokenizer={path}", str(path), reason))
    for kind, (line, reason) in BAD_TEXT.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
        cases.append((f"data.train={path}", f"{path}:2", reason))
    for kind, text in (("empty", ""), ("blank", " \n\n")):
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(text)
        cases.append((f"data.train={path}", f"{path} is empty", "is empty"))
    for override, named, reason in cases:
        code, text = _train(capsys, tmp_path, override)
        assert code == 2, (override, text)
        assert named in text and reason in text and "Traceback" not in text, (override, text)
