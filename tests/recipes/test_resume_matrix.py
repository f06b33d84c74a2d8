"""The resume matrix: a run interrupted after a checkpoint and rerun gives the per-step metrics of
the uninterrupted run (1e-6), for every recipe × placement × critic_sync_interval × queue_depth ×
normaliser × grad_accum, on 1 rank in-process and on 1 and 2 Ray workers.

- `test_resume_cell` (slow): every cell through the CLI with SIGKILL: `wmtp train --local` for
  the in-process cells, `wmtp train` on Ray (SIGKILL of the driver, then the same command) for
  the Ray cells, compared with an uninterrupted run of the same command.
- `test_resume_in_process` (CI): a handful of cells in this process, the crash raised from the
  logger right after a checkpoint (what SIGKILL leaves behind: the checkpoint, not the process).
- `test_resume_async_in_process` (CI): async with queue_depth 2 in this process, its experience
  actors on a local Ray cluster, crashed after the step-3 checkpoint the same way.

Placement, interval, queue depth and normaliser belong to the critic-weighted recipe
(verifiable); the other recipes vary grad_accum and ranks. Checkpoints every 3 steps, killed in
step 4: with interval 2 the last publish (step 2) and the checkpoint (step 3) differ, so a
scorer that is not checkpointed shows (the critic snapshot is checkpointed: exact). With async and
queue_depth > 0 the batches scored ahead of the checkpoint by an earlier critic are checkpointed
with their scores (`ExperienceFeed.state_dict`) and queued again as scored on resume.
"""

from __future__ import annotations

import itertools
import subprocess

import pytest

from tests.orchestration.test_resume_on_ray import ray_command, rerun, run_and_kill
from tests.recipes.harness import REPO, cli_command, recipe_config, run, series, steps_of, subprocess_env
from tests.recipes.test_resume import kill_after_checkpoint
from wmtp.config.paths import export_dir

STEPS = 6
COMMON = (f"train.steps={STEPS}", "train.checkpoint_every=3", "train.eval_every=6", "train.heatmap_samples=0",
          "orchestration.report_every=1", "orchestration.max_failures=0")
KEYS = {"baseline": ("train/loss", "train/grad_norm"), "ref_tuning": ("train/loss",),
        "critic": ("train/value_loss",), "rho1_weighted": ("train/loss", "train/weighted_ce_head1"),
        "verifiable": ("train/loss", "train/value_loss", "train/weights/mean")}


def cell_overrides(recipe, placement, interval, depth, normaliser, accum, ranks) -> tuple[str, ...]:
    out = [f"data.grad_accum={accum}"] + ([f"orchestration.num_workers={ranks}"] if ranks else [])  # 0: in-process
    if recipe == "verifiable":
        out += [f"orchestration.placement={placement}", f"stage2.critic_sync_interval={interval}",
                f"orchestration.queue_depth={depth}",
                f"stage2.value_weighting.td_error_normalization={normaliser}"]
        if normaliser == "ema":
            out.append("stage2.value_weighting.ema_warmup_steps=2")
    return tuple(out)


def cells():
    """(id, recipe, ray?, overrides, marks) for every cell of the matrix."""
    out = []
    for recipe in KEYS:
        for accum in (1, 2):
            out.append((recipe, "colocated", 1, 0, "zscore", accum, 0))  # 0 ranks: in-process
            for ranks in (1, 2):
                out.append((recipe, "colocated", 1, 0, "zscore", accum, ranks))
    for placement, interval, depth, normaliser, accum, ranks in itertools.product(
            ("colocated", "async"), (1, 2), (0, 2), ("zscore", "ema"), (1, 2), (0, 1, 2)):
        if placement == "colocated" and depth:
            continue  # queue_depth is the async placement's
        if placement == "async" and ranks == 0:
            continue  # async needs Ray's experience actors
        cell = ("verifiable", placement, interval, depth, normaliser, accum, ranks)
        if cell not in out:
            out.append(cell)
    params = []
    for cell in out:
        recipe, placement, interval, depth, normaliser, accum, ranks = cell
        name = (f"{recipe}-{placement}-i{interval}-q{depth}-{normaliser}-ga{accum}-"
                f"{'local' if ranks == 0 else f'ray{ranks}'}")
        params.append(pytest.param(cell, id=name))
    return params


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A critic and a reference made once, so the cells do not each train their inputs."""
    tmp = tmp_path_factory.mktemp("inputs")
    critic = recipe_config("critic", tmp, "train.heatmap_samples=0")
    reference = recipe_config("ref_tuning", tmp, "train.heatmap_samples=0", "model.n_future_tokens=1")
    run(critic)
    run(reference)
    return (f"value_model.checkpoint={export_dir(critic)}", f"rho1.reference={export_dir(reference)}")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("cell", cells())
def test_resume_cell(cell, inputs, tmp_path):
    recipe, ranks = cell[0], cell[-1]
    overrides = (*COMMON, *inputs, *cell_overrides(*cell))
    name = f"{recipe}-local-light"
    if ranks == 0:
        reference = run(recipe_config(recipe, tmp_path / "straight", *overrides))
        cmd = cli_command(recipe, tmp_path / "killed", *overrides)
        kill_after_checkpoint(cmd, tmp_path / "killed" / name / "checkpoints", 3)
        done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    else:
        straight = rerun(ray_command(recipe, tmp_path / "straight", *overrides))
        assert straight.returncode == 0, straight.stderr[-4000:]
        reference = tmp_path / "straight" / name
        cmd = ray_command(recipe, tmp_path / "killed", *overrides)
        first = run_and_kill(cmd, tmp_path / "killed" / "ray" / name / "checkpoint_step00000003", "driver")
        assert first.returncode != 0
        done = rerun(cmd)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = tmp_path / "killed" / name
    assert steps_of(resumed, KEYS[recipe][0]) == list(range(1, STEPS + 1))
    for key in KEYS[recipe]:
        assert series(resumed, key) == pytest.approx(series(reference, key), rel=1e-6, abs=1e-9), key


class _Crash(Exception):
    pass


class _CrashingLogger:
    """The run's real logger, raising as soon as a step after `after` is logged."""

    def __init__(self, inner, after: int) -> None:
        self._inner, self._after = inner, after

    def log_metrics(self, metrics, step):
        if step > self._after:
            raise _Crash(step)
        self._inner.log_metrics(metrics, step)

    def __getattr__(self, name):
        return getattr(self._inner, name)


CI_CELLS = [
    pytest.param(("verifiable", "colocated", 1, 0, "zscore", 2, 0), id="verifiable-i1-zscore-ga2"),
    pytest.param(("rho1_weighted", "colocated", 1, 0, "zscore", 2, 0), id="rho1_weighted-ga2"),
    pytest.param(("critic", "colocated", 1, 0, "zscore", 1, 0), id="critic-ga1"),
    pytest.param(("verifiable", "colocated", 2, 0, "ema", 1, 0), id="verifiable-i2-ema-ga1"),
]


@pytest.mark.parametrize("cell", CI_CELLS)
def test_resume_in_process(cell, inputs, tmp_path):
    from wmtp.recipes import run_recipe
    from wmtp.tracking.registry import build_run_logger

    recipe = cell[0]
    overrides = (*COMMON, *inputs, *cell_overrides(*cell), "orchestration.num_workers=1")
    reference = run(recipe_config(recipe, tmp_path / "straight", *overrides))
    cfg = recipe_config(recipe, tmp_path / "crashed", *overrides)
    with pytest.raises(_Crash):
        run_recipe(cfg, make_logger=lambda c: _CrashingLogger(build_run_logger(c), after=3))
    resumed = run(cfg)
    assert steps_of(resumed, KEYS[recipe][0]) == list(range(1, STEPS + 1))
    for key in KEYS[recipe]:
        assert series(resumed, key) == pytest.approx(series(reference, key), rel=1e-6, abs=1e-9), key




def run_async_in_process(cfg, attempt: str, crash_after: int | None = None) -> None:
    """`cfg` (placement async) in this process with experience actors on the test's Ray cluster:
    what a Ray Train worker builds (`wmtp.orchestration.launch`), without Ray Train. `attempt`
    names the actors (a killed attempt's names may not be free yet)."""
    from wmtp.checkpoint import LocalCheckpointSink
    from wmtp.config.paths import run_dir
    from wmtp.orchestration.experience import async_scorer_factory
    from wmtp.recipes import build_recipe
    from wmtp.tracking.registry import build_run_logger

    logger = build_run_logger(cfg)
    if crash_after is not None:
        logger = _CrashingLogger(logger, after=crash_after)
    recipe = build_recipe(cfg, logger=logger, checkpoint_sink=LocalCheckpointSink(run_dir(cfg)),
                          scorer_factory=async_scorer_factory(cfg, run=f"resume-{attempt}", rank=0))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.close()
        logger.close()


@pytest.mark.ray
def test_resume_async_in_process(ray_cluster, inputs, tmp_path):
    """Async, queue_depth 2, interval 1: before the in-flight batches were checkpointed, step 4
    after the resume scored with the step-3 critic what the uninterrupted run scored with the
    step-1 one (train/value_loss differed from step 4 on)."""
    cell = ("verifiable", "async", 1, 2, "zscore", 1, 1)
    overrides = (*COMMON, *inputs, *cell_overrides(*cell))
    straight = recipe_config("verifiable", tmp_path / "straight", *overrides)
    run_async_in_process(straight, "straight")
    crashed = recipe_config("verifiable", tmp_path / "crashed", *overrides)
    with pytest.raises(_Crash):
        run_async_in_process(crashed, "crashed", crash_after=3)
    run_async_in_process(crashed, "resumed")
    reference, resumed = tmp_path / "straight" / "verifiable-local-light", tmp_path / "crashed" / "verifiable-local-light"
    assert steps_of(resumed, "train/loss") == list(range(1, STEPS + 1))
    assert max(series(reference, "train/critic_staleness")) == 2  # batches were scored ahead
    for key in (*KEYS["verifiable"], "train/critic_staleness"):
        assert series(resumed, key) == pytest.approx(series(reference, key), rel=1e-6, abs=1e-9), key
