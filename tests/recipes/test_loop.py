"""The run's life, written once (`wmtp.recipes.loop`): the step schedule every recipe's `train()`
runs (log, validate, checkpoint at their own cadences, the last step all three, then the export),
and `run`, which `run_recipe` and the Ray Train worker both end in (setup → the resolved config →
train → report → close, the run's status and the caller's closers however it ended)."""

from __future__ import annotations

import pytest

from tests.recipes.harness import recipe_config, run, steps_of
from wmtp.config.paths import export_dir, run_dir
from wmtp.recipes.loop import run as run_life


def test_the_schedule_logs_validates_and_checkpoints_at_their_cadences(tmp_path):
    cfg = recipe_config("baseline", tmp_path, "train.steps=5", "train.log_every=2", "train.eval_every=3",
                        "train.checkpoint_every=4", "orchestration.keep_checkpoints=5", "train.heatmap_samples=0")
    out = run(cfg)
    assert steps_of(out, "train/loss") == [2, 4, 5]
    assert steps_of(out, "perf/tokens_seen") == [2, 4, 5]  # the meter is read on logging steps
    assert steps_of(out, "val/ce") == [3, 5]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000004", "step_000005"]
    assert (export_dir(cfg) / "params.json").exists() and (out / "config.yaml").exists()


class Logger:
    """Records what the run's life does with its logger (a `MetricLogger` with `end`)."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step: int) -> None:
        pass

    def log_artifact(self, local_path, artifact_path=None) -> None:
        self.calls.append(("artifact", local_path.name))

    def end(self, status: str, reason: str | None) -> None:
        self.calls.append(("end", status, reason))

    def close(self) -> None:
        self.calls.append(("close",))


class Recipe:
    def __init__(self, calls: list, fail_in: str | None = None) -> None:
        self.calls, self.fail_in = calls, fail_in

    def _do(self, what: str) -> None:
        self.calls.append((what,))
        if what == self.fail_in:
            raise RuntimeError(f"{what} failed")

    def setup(self) -> None:
        self._do("setup")

    def train(self) -> dict[str, float]:
        self._do("train")
        return {"train/loss": 1.5}

    def close(self) -> None:
        self._do("close")


def test_run_sets_up_logs_the_config_trains_reports_and_closes_in_order(tmp_path):
    cfg = recipe_config("baseline", tmp_path)
    calls: list = []
    final = run_life(Recipe(calls), cfg, Logger(calls), report=lambda m: calls.append(("report", m)),
                     closers=[lambda: calls.append(("lock released",))])
    assert final == {"train/loss": 1.5}
    assert calls == [("setup",), ("artifact", "config.yaml"), ("train",), ("report", {"train/loss": 1.5}),
                     ("close",), ("end", "FINISHED", None), ("lock released",)]
    assert (run_dir(cfg) / "config.yaml").exists()


@pytest.mark.parametrize("fail_in", ["setup", "train", "close"])
def test_a_failed_run_ends_failed_and_still_closes_everything(tmp_path, fail_in, caplog):
    cfg = recipe_config("baseline", tmp_path)
    calls: list = []
    with pytest.raises(RuntimeError, match=f"{fail_in} failed"):
        run_life(Recipe(calls, fail_in), cfg, Logger(calls),
                 on_failure=lambda e: calls.append(("reported", str(e))),
                 closers=[lambda: calls.append(("lock released",))])
    trained = [("setup",), ("artifact", "config.yaml"), ("train",)]
    steps = {"setup": [("setup",)], "train": trained, "close": [*trained, ("close",)]}[fail_in]
    if fail_in == "close":  # training ended well: the close error is raised after every closer ran
        assert calls == [*steps, ("end", "FINISHED", None), ("lock released",)]
    else:  # the error that ended the run is reported first and the one raised
        assert calls == [*steps, ("reported", f"{fail_in} failed"), ("close",),
                         ("end", "FAILED", f"RuntimeError: {fail_in} failed"), ("lock released",)]
    # The resolved config is written once training starts: a failed setup leaves none.
    assert (run_dir(cfg) / "config.yaml").exists() == (fail_in != "setup")
