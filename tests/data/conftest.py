"""Fixtures of the data tests: one small bundled task (60 problems) shared by the session."""

from __future__ import annotations

import pytest

from wmtp.data.bundled import ensure_bundled
from wmtp.data.synth import generate
from wmtp.model.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    return ensure_bundled(tmp_path_factory.mktemp("wmtp-cache"), n_problems=60, seed=0)


@pytest.fixture(scope="session")
def small_tokenizer(small_bundle) -> Tokenizer:
    return Tokenizer(small_bundle.tokenizer)


@pytest.fixture(scope="session")
def synth60():
    return generate(60, seed=0, workers=0)
