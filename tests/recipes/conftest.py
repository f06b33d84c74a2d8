"""Session fixture: the bundled task (200 problems) generated once into a private cache."""

from __future__ import annotations

import os

import pytest

from tests.recipes.harness import SYNTH_PROBLEMS


@pytest.fixture(scope="session", autouse=True)
def recipe_cache(tmp_path_factory):
    """`WMTP_CACHE` for every recipe test (and their subprocesses), with the data made once."""
    from wmtp.data.bundled import ensure_bundled

    cache = tmp_path_factory.mktemp("wmtp-cache")
    old = os.environ.get("WMTP_CACHE")
    os.environ["WMTP_CACHE"] = str(cache)
    try:
        ensure_bundled(n_problems=SYNTH_PROBLEMS, seed=0)
        yield cache
    finally:
        if old is None:
            os.environ.pop("WMTP_CACHE", None)
        else:
            os.environ["WMTP_CACHE"] = old
