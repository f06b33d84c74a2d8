"""`wmtp train` on Ray: one Ray Train V2 `TorchTrainer` whose workers run the recipe.

    run_training(cfg) -> final metrics of rank 0

Each worker builds the recipe with Ray-aware seams (wmtp/orchestration/reporting.py: logger, sink,
the final `ray.train.report`) and runs it through `wmtp.recipes.loop.run`, as the in-process path
does. Ray Train creates the torch.distributed process group (gloo on CPU, NCCL on GPU) before the
loop starts; the recipe detects it and shards models and data. Rerunning with the same run name and storage path resumes
from the run's latest checkpoint.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from wmtp.config.paths import run_dir, run_name, write_resolved_config
from wmtp.config.schema import WMTPConfig
from wmtp.orchestration.dashboard import DashboardMetrics
from wmtp.orchestration.home import anchor_outputs
from wmtp.orchestration.ray_runtime import ensure_ray
from wmtp.orchestration.reporting import (
    RayCheckpointSink,
    RayMetricLogger,
    ReportState,
    checkpoint_dir_step,
    repair_checkpoint_snapshot,
    user_error_of,
)
from wmtp.orchestration.resources import check_fits, run_resources
from wmtp.orchestration.storage import resolve_storage
from wmtp.tracking.registry import GIT_COMMIT_ENV_VAR, git_commit

# The validation metric that ranks a recipe's checkpoints (keep-N best), as the recipe logs it at
# every evaluation: unweighted validation CE of head 1 (comparable across weightings), or the
# critic's AUC for critic pre-training.
CHECKPOINT_SCORE: dict[str, tuple[str, str]] = {"critic": ("val/critic_auc", "max")}
DEFAULT_CHECKPOINT_SCORE = ("val/ce", "min")

RecipeBuilder = Callable[..., Any]


def checkpoint_score(cfg: WMTPConfig) -> tuple[str, str]:
    """(metric, "min"|"max") ranking the checkpoints of `cfg.recipe`."""
    return CHECKPOINT_SCORE.get(cfg.recipe, DEFAULT_CHECKPOINT_SCORE)


def build_trainer(
    cfg: WMTPConfig,
    *,
    recipe_builder: RecipeBuilder | None = None,
    callbacks: list[Any] | None = None,
    parent_run_id: str | None = None,
    console: Any | None = None,
    label: str | None = None,
) -> TorchTrainer:
    """A TorchTrainer for `cfg` (does not start it). `recipe_builder` defaults to `build_recipe`;
    `console`: the driver's console relay (`wmtp.orchestration.console`) rank 0 reports to;
    `label`: the MLflow run name (Tune trials show their sampled values)."""
    orch = cfg.orchestration
    cfg = with_absolute_paths(cfg)
    score_metric, score_mode = checkpoint_score(cfg)
    storage = resolve_storage(orch.storage_path, cfg.run.output_dir)
    need = run_resources(cfg)
    resources: dict[str, float] = {"CPU": need.cpus_per_worker}
    if need.gpus_per_worker:
        resources["GPU"] = need.gpus_per_worker
    return TorchTrainer(
        wmtp_learner_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "recipe_builder": recipe_builder,
            "parent_run_id": parent_run_id,
            "driver_cwd": os.getcwd(),
            "git_commit": git_commit(),  # the driver knows it (checkout or job metadata); workers may not
            "console": console,
            "label": label,
        },
        torch_config=TorchConfig(backend="nccl" if orch.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=orch.num_workers, use_gpu=orch.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name(cfg),
            storage_path=storage.path,
            storage_filesystem=storage.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=orch.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=orch.keep_checkpoints,
                checkpoint_score_attribute=score_metric,
                checkpoint_score_order=score_mode,
            ),
            callbacks=callbacks,
        ),
    )


def run_training(cfg: WMTPConfig, *, recipe_builder: RecipeBuilder | None = None,
                 brief: bool = False) -> dict[str, float]:
    """Train `cfg` on Ray (joining `orchestration.address` or a local cluster); returns rank 0's final metrics.

    The driver prints the run's progress line and summary block (`brief`: a producing stage's
    one-line summary); chained stages reuse the cluster the first one started."""
    import functools
    import time

    from wmtp.orchestration.console import fit_with_console

    t0 = time.monotonic()
    need = run_resources(cfg)
    ensure_ray(cfg.orchestration.address, local_cpus=need.cpus, job_name=run_name(cfg))
    cluster_start_s = time.monotonic() - t0
    check_fits(need, ray.cluster_resources(), what=f"run {run_name(cfg)!r}")
    cfg = with_absolute_paths(cfg)
    if recipe_builder is None:
        from wmtp.recipes.chain import resolve_inputs

        # A missing critic / reference is produced first (local presets), on Ray as well.
        cfg = resolve_inputs(cfg, functools.partial(run_training, brief=True))
    from wmtp.recipes.loop import claim
    from wmtp.tracking.registry import end_dead_attempt

    lock = claim(cfg, end_dead_attempt)  # a killed driver's run: KILLED before it is continued
    try:
        storage = resolve_storage(cfg.orchestration.storage_path, cfg.run.output_dir)
        repair_checkpoint_snapshot(storage, run_name(cfg), *checkpoint_score(cfg))
        root = None if storage.is_remote else Path(storage.path) / run_name(cfg)
        remote = f"{cfg.orchestration.storage_path.rstrip('/')}/{run_name(cfg)}" if storage.is_remote else None  # type: ignore[union-attr]  # set when the storage is remote
        try:
            result = fit_with_console(
                cfg, lambda console: build_trainer(cfg, recipe_builder=recipe_builder, console=console),
                brief=brief, cluster_start_s=cluster_start_s, checkpoint_root=root, remote_root=remote)
        except ray.train.TrainingFailedError as e:
            cause = user_error_of(e)
            if cause is None:
                raise
            raise cause from None
        # After training (rank 0 wrote it once setup succeeded, maybe on another node): a run that
        # fails before training leaves an earlier run's config.yaml alone.
        write_resolved_config(cfg)
    finally:
        lock.release()
    return dict(result.metrics or {})


def worker_thread_name(run: str, rank: int) -> str:
    """`wmtp <run> rank <rank>`: the name of a learner rank's training thread."""
    return f"wmtp {run} rank {rank}"


def wmtp_learner_loop(loop_config: Mapping[str, Any]) -> None:
    """One Ray Train worker: the recipe with Ray seams (named so the dashboard's task list reads well)."""
    cfg = WMTPConfig.model_validate(loop_config["cfg"])
    if Path(loop_config["driver_cwd"]).is_dir():
        # Relative data/tokenizer paths in the config mean the driver's folder (same node or
        # `ray job submit --working-dir`, where both are the unpacked working dir).
        os.chdir(loop_config["driver_cwd"])
    if loop_config.get("git_commit"):  # rank 0's MLflow tags (wmtp.tracking.registry.git_commit)
        os.environ.setdefault(GIT_COMMIT_ENV_VAR, loop_config["git_commit"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    name = run_name(cfg)
    # Ray 2.60 cannot name Ray Train's worker actors or keep a process title (docs/DASHBOARD.md,
    # "Naming the workers"); the training thread's name is ours: the dashboard's Stack Trace
    # (py-spy) of a `RayTrainWorker` shows it.
    threading.current_thread().name = worker_thread_name(name, rank)
    state = ReportState(*checkpoint_score(cfg))
    dashboard = DashboardMetrics(name, rank)
    relay = loop_config.get("console")
    forward = None
    if rank == 0 and relay is not None:
        from wmtp.orchestration.console import ForwardingConsole

        forward = ForwardingConsole(relay)
        forward.mark("setup_start")
    if rank == 0 and (latest := ray.train.get_checkpoint()) is not None:
        if forward is not None:  # the driver's console prints it (worker stdout is quiet by default)
            forward.resumed(checkpoint_dir_step(latest.path), latest.path)
        else:
            print(f"[wmtp] {name}: resuming from {latest.path}", flush=True)
    logger = RayMetricLogger(
        _tracking_logger(cfg, loop_config.get("parent_run_id"), forward, loop_config.get("label"))
        if rank == 0 else None,
        state,
        report_every=cfg.orchestration.report_every,
        dashboard=dashboard,
    )
    # A checkpoint the storage never took is kept in the run folder; rank 0 tells the driver of each upload.
    sink = RayCheckpointSink(state, keep_dir=run_dir(cfg) / "checkpoints_not_uploaded",
                             on_saved=forward.saved if forward is not None else None)
    scorer_factory = None
    if cfg.orchestration.placement == "async":
        from wmtp.orchestration.experience import async_scorer_factory

        scorer_factory = async_scorer_factory(cfg, run=name, rank=rank, on_stats=dashboard.set_values)
    builder = loop_config.get("recipe_builder") or _default_recipe_builder()
    recipe = builder(cfg, logger=logger, checkpoint_sink=sink, scorer_factory=scorer_factory)

    def report(final: dict[str, float]) -> None:
        """The last report every rank makes: the run's result metrics."""
        state.update(final or {}, int(state.latest.get("step", cfg.train.steps)))
        ray.train.report(state.payload(int(state.latest["step"])))
    from wmtp.recipes.loop import run

    # The run's life as in one process; the resolved config is written on this node (it may be
    # another one than the driver's), by rank 0.
    run(recipe, cfg, logger, log_config=rank == 0, report=report, closers=[sink.close])


def _tracking_logger(cfg: WMTPConfig, parent_run_id: str | None, console: Any | None = None,
                     label: str | None = None) -> Any:
    """Rank 0's real tracking backends (stdout, MLflow, JSONL) in `<output_dir>/<run name>`;
    `console`: where the stdout backend's calls go (the driver's console), else this worker's stdout."""
    from wmtp.tracking.registry import build_run_logger

    return build_run_logger(cfg, is_main=True, parent_run_id=parent_run_id, console=console, label=label)


def _default_recipe_builder() -> RecipeBuilder:
    from wmtp.recipes import build_recipe

    return build_recipe


def with_absolute_paths(cfg: WMTPConfig) -> WMTPConfig:
    """Workers may run in another folder: anchor the run's outputs (wmtp.orchestration.home)."""
    return anchor_outputs(cfg)
