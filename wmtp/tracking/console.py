"""The run's console, the tracking layer; the same concept as wmtp.orchestration.console (its Ray relay).

The researcher's console: one progress line per stage and the end-of-run summary block.

The same `RunConsole` serves both paths, so `--local` and Ray print the same thing:
- in-process (`--local`) it is the `stdout` backend of the run's logger;
- on Ray, rank 0's `stdout` backend forwards every call to the driver (`wmtp.orchestration`),
  whose `RunConsole` renders it; Ray's own per-report echo stays in the Ray session logs.

What it prints:
- a live tqdm bar on a terminal (step/total, loss, the recipe's key metric, tok/s, ETA); off a
  terminal (CI, `ray job logs`) a progress line at each quarter of the run, and the last step;
- one line per validation (metrics appear only once measured: never a placeholder);
- at the end, `finish(status, reason)`: the summary block (status, wall time by phase, final and
  best metrics, where the export / checkpoints / config / MLflow run are, the next commands),
  also written to `<run_dir>/summary.json`.
"""
# One module (over 300 lines): the progress line, the summary block and the failure report share one state and one formatting.

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from wmtp.tracking.base import MetricLogger, MultiLogger
from wmtp.tracking.rerun import command_line

SUMMARY_FILE = "summary.json"

# The validation metric that tells how a recipe is doing (shown on the progress line, "best" in
# the summary): the critic recipe's AUC, unweighted validation CE of head 1 for the others.
KEY_METRIC: dict[str, tuple[str, str]] = {"critic": ("val/critic_auc", "max")}
DEFAULT_KEY_METRIC = ("val/ce", "min")

# The summary's eval commands: one sized to finish in about a minute on a 2-core laptop (the micro
# model samples ~4 completions/s there: 40 tasks × 5 = 200 samples, docs/EVALUATION.md), and the
# full size beside it (every task of the bundled test split, 20 samples each: ~15 minutes).
QUICK_EVAL = "--n 5 --k 1,5 --limit 40"
FULL_EVAL = "--n 20 --k 1,5,10"
NEXT_NOTES = {"eval": "about a minute on a laptop", "eval_full": "full size: every task, 20 samples"}

# Phases in the order a run goes through them (the summary prints the ones measured).
PHASE_ORDER = ("cluster_start", "worker_start", "setup", "steps", "validation", "checkpoints", "export",
               "shutdown")

STATUSES = ("FINISHED", "FAILED", "KILLED")


def key_metric(recipe: str | None) -> tuple[str, str]:
    return KEY_METRIC.get(recipe or "", DEFAULT_KEY_METRIC)


def _fmt(value: float) -> str:
    if value == 0 or (math.isfinite(value) and 1e-3 <= abs(value) < 1e5):
        return f"{value:.4g}" if abs(value) >= 100 else f"{value:.4f}"
    return f"{value:.3g}"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    return str(datetime.timedelta(seconds=round(s)))


def _short(path: str | Path | None) -> str:
    """A path relative to the cwd when it is under it (shorter to read and to paste)."""
    if path is None:
        return "-"
    if "://" in str(path):  # a remote checkpoint (s3://...): as is
        return str(path)
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path.cwd().resolve())
        return str(rel) if str(rel) != "." else "."
    except ValueError:
        return str(p)


def _loss_key(metrics: Mapping[str, float]) -> str | None:
    """`loss` / `train/loss`, else the first training loss (`train/value_loss` of the critic)."""
    for match in (lambda k: k in ("loss", "train/loss"), lambda k: k.startswith("train/") and k.endswith("loss")):
        found = next((k for k in metrics if match(k)), None)
        if found is not None:
            return found
    return None


def latest_checkpoint(candidates: list[Path]) -> Path | None:
    """The newest complete checkpoint among local (`checkpoints/latest` marker) and Ray
    (`checkpoint_step*` folders) checkpoint roots."""
    best: tuple[int, Path] | None = None
    for root in candidates:
        if not root.is_dir():
            continue
        marker = root / "latest"
        found: list[Path] = []
        if marker.is_file() and (root / marker.read_text().strip()).is_dir():
            found.append(root / marker.read_text().strip())
        else:
            found += [p for p in root.iterdir() if p.is_dir() and p.name.startswith(("step_", "checkpoint_step"))]
        for p in found:
            digits = "".join(ch for ch in p.name if ch.isdigit())
            step = int(digits) if digits else -1
            if best is None or step > best[0]:
                best = (step, p)
    return best[1] if best else None


# MLflow >= 3.17 picks the UI's view from a global GenAI / Model-training switch (default GenAI,
# remembered per browser), not from the experiment's kind tag; this query selects the model-training
# view, so the printed link opens the run as docs/TRACKING.md shows it.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"


def mlflow_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The page of the run: a server's own URL, or what `mlflow ui` serves on its default port."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"


class RunConsole:
    """Progress and summary of one stage (one run directory).

    run_dir: `<output_dir>/<run name>`; the summary goes to `<run_dir>/summary.json`.
    checkpoint_roots: where this run's checkpoints live (local `checkpoints/`, Ray storage folder).
    brief: a producing stage of a chained command (critic before verifiable): a one-line summary.
    """

    def __init__(
        self,
        total_steps: int | None,
        *,
        run_name: str,
        run_dir: str | Path,
        recipe: str | None = None,
        preset: str | None = None,
        checkpoint_roots: list[Path] | None = None,
        brief: bool = False,
        stream: TextIO | None = None,
        show_bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = total_steps
        self.run_name = run_name
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.preset = preset
        self.checkpoint_roots = checkpoint_roots or [self.run_dir / "checkpoints"]
        self.brief = brief
        self.stream = stream if stream is not None else sys.stdout
        self._bar_enabled = self.stream.isatty() if show_bar is None else show_bar
        self._clock = clock
        self._t0 = clock()
        self._bar: Any = None  # a tqdm bar once the first step is shown
        self._origin: tuple[float, int] | None = None
        self._milestones: set[int] = set()
        self.latest: dict[str, float] = {}
        self.best: dict[str, Any] | None = None
        self.step = 0
        self.phases: dict[str, float] = {}
        self.finished: dict[str, Any] | None = None
        # The newest checkpoint uploaded to remote storage (Ray with an s3:// storage_path), which
        # the local roots cannot show.
        self.remote_checkpoint: str | None = None
        self._key, self._mode = key_metric(recipe)

    # -- MetricLogger -------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass  # the full params are in MLflow and <run_dir>/config.yaml

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass  # listed in metrics.jsonl and MLflow

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.latest.update(values)
        self.step = max(self.step, int(step))
        if self._key in values and math.isfinite(values[self._key]):
            better = self.best is None or (values[self._key] < self.best["value"] if self._mode == "min"
                                           else values[self._key] > self.best["value"])
            if better:
                self.best = {"metric": self._key, "value": values[self._key], "step": int(step)}
        if any(k.startswith(("val/", "eval/")) for k in values):
            self._write_validation(values, step)
        else:
            self._progress(values, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- progress -----------------------------------------------------------------------------

    def _eta(self, step: int) -> float | None:
        now = self._clock()
        if self._origin is None:
            self._origin = (now, step)
        t0, s0 = self._origin
        if not self.total_steps or step <= s0 or now <= t0:
            return None
        return max(0.0, (self.total_steps - step) * (now - t0) / (step - s0))

    def _fields(self, values: Mapping[str, float]) -> dict[str, str]:
        out: dict[str, str] = {}
        loss = _loss_key(values)
        if loss is not None:
            out["loss"] = _fmt(values[loss])
        if self._key in self.latest:
            out[self._key] = _fmt(self.latest[self._key])
        tps = next((v for k, v in values.items() if k.endswith("tokens_per_s")), None)
        if tps is not None:
            out["tok/s"] = f"{tps:.0f}"
        return out

    def _progress(self, values: Mapping[str, float], step: int) -> None:
        fields = self._fields(values)
        eta = self._eta(step)
        if self._bar_enabled:
            from tqdm.auto import tqdm

            if self._bar is None:
                # initial=step: a resumed run's rate and ETA count only the steps run now.
                self._bar = tqdm(total=self.total_steps, initial=step, desc=self.run_name, unit="step",
                                 dynamic_ncols=True, file=self.stream, leave=True)
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(fields, refresh=True)
            return
        total = self.total_steps or 0
        quarter = max(1, total // 4) if total else 1
        milestone = step // quarter
        if step != total and milestone in self._milestones:
            return
        self._milestones.add(milestone)
        body = "  ".join(f"{k} {v}" for k, v in fields.items())
        eta_text = f"  eta {datetime.timedelta(seconds=round(eta))}" if eta is not None and step != total else ""
        self._write(f"[{self.run_name}] step {step}/{total or '?'}  {body}{eta_text}")

    def _write_validation(self, values: Mapping[str, float], step: int) -> None:
        shown = [k for k in values if k.startswith(("val/", "eval/")) and "_head" not in k][:6]
        shown += [k for k in per_head(values, "val/ce_head") if k != "val/ce_head1"]  # head 1 is val/ce
        body = "  ".join(f"{k} {_fmt(values[k])}" for k in shown)
        self._write(f"[{self.run_name}] validation @ step {step}: {body}")

    def resumed(self, step: int, where: str | Path) -> None:
        """The run continues from its checkpoint of `step`: the summary counts from there."""
        self.step = max(self.step, int(step))
        self.info(f"resuming from {where} (step {step}/{self.total_steps})")

    def info(self, line: str) -> None:
        self._write(f"[{self.run_name}] {line}")

    def _write(self, line: str) -> None:
        from wmtp.config.redaction import redact_text

        line = redact_text(line)
        if self._bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    # -- the end ------------------------------------------------------------------------------

    def add_phases(self, phases: Mapping[str, float]) -> None:
        for name, seconds in phases.items():
            self.phases[name] = self.phases.get(name, 0.0) + float(seconds)

    def summary(self, status: str, reason: str | None = None, *, wall_s: float | None = None,
                resume_command: str | None = None) -> dict[str, Any]:
        """The end-of-run record (what `finish` prints and writes)."""
        phases = dict(self.phases)
        loop = phases.pop("loop", None)
        if loop is not None:
            phases["steps"] = max(0.0, loop - phases.get("validation", 0.0) - phases.get("checkpoints", 0.0))
        ordered = {k: round(phases[k], 3) for k in PHASE_ORDER if k in phases}
        ordered.update({k: round(v, 3) for k, v in phases.items() if k not in ordered})
        export = self.run_dir / "export"
        checkpoint = latest_checkpoint(self.checkpoint_roots)
        mlflow = _mlflow_record(self.run_dir)
        config = self.run_dir / "config.yaml"
        nxt: dict[str, str] = {}
        if (export / "params.json").exists() and self.recipe != "critic":
            nxt["eval"] = f"wmtp eval --checkpoint {_short(export)} --benchmark synthetic {QUICK_EVAL}"
            nxt["eval_full"] = f"wmtp eval --checkpoint {_short(export)} --benchmark synthetic {FULL_EVAL}"
        if mlflow:
            uri = mlflow["tracking_uri"]
            nxt["mlflow_ui"] = (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:")
                                else f"open {mlflow['ui_url']}")
        nxt["resume"] = resume_command or command_line()
        return {
            "run_name": self.run_name,
            "recipe": self.recipe,
            "preset": self.preset,
            "status": status,
            "reason": reason,
            "step": self.step,
            "total_steps": self.total_steps,
            "wall_s": round(self._clock() - self._t0 if wall_s is None else wall_s, 3),
            "phases_s": ordered,
            "final": dict(self.latest),
            "best": self.best,
            "paths": {
                "run_dir": str(self.run_dir.resolve()),
                "export": str(export.resolve()) if (export / "params.json").exists() else None,
                "checkpoint": str(checkpoint.resolve()) if checkpoint else self.remote_checkpoint,
                "config": str(config.resolve()) if config.exists() else None,
                "metrics": str((self.run_dir / "metrics.jsonl").resolve()),
                "summary": str((self.run_dir / SUMMARY_FILE).resolve()),
            },
            "mlflow": mlflow,
            "next": nxt,
        }

    def finish(self, status: str, reason: str | None = None, *, wall_s: float | None = None,
               resume_command: str | None = None) -> dict[str, Any]:
        """Print the summary block, write `<run_dir>/summary.json`, return the summary."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        from wmtp.config.redaction import redact_strings

        self.close()
        # Printed, saved and uploaded: no credential (a `user:password@` URI in the command line).
        summary = redact_strings(self.summary(status, reason, wall_s=wall_s, resume_command=resume_command))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.run_dir / SUMMARY_FILE)
        for line in format_summary(summary, brief=self.brief):
            print(line, file=self.stream, flush=True)
        self.finished = summary
        return summary


def _mlflow_record(run_dir: Path) -> dict[str, str] | None:
    path = run_dir / "mlflow_run.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record["ui_url"] = mlflow_ui_url(record["tracking_uri"], record["experiment_id"], record["run_id"])
    return record


WEIGHTS_PREFIX = "train/weights/"


def weights_line(final: Mapping[str, Any]) -> str | None:
    """The token weights' diagnostics (docs/MATH.md "Weight diagnostics") on one line, or None."""
    if f"{WEIGHTS_PREFIX}ess" not in final:
        return None
    quarters = "/".join(_fmt(final.get(f"{WEIGHTS_PREFIX}quarter_{i}", float("nan"))) for i in range(1, 5))
    auc = final.get("weights/decisive_auc")
    decisive = "" if auc is None else f"  decisive-token AUC {_fmt(auc)} (low = the bug gets less weight)"
    return (f"ess {_fmt(final[f'{WEIGHTS_PREFIX}ess'])}  "
            f"spearman(position) {_fmt(final.get(f'{WEIGHTS_PREFIX}position_spearman', float('nan')))}  "
            f"mean by quarter {quarters}{decisive}")


def critic_line(final: Mapping[str, Any]) -> str | None:
    """The critic quality report (docs/RECIPES.md) on one line, or None."""
    auc = final.get("critic_quality/final_value_auc")
    if auc is None:
        return None
    td, n = final.get("critic_quality/decisive_td_auc", float("nan")), final.get("critic_quality/solutions", 0)
    w = final.get("critic_quality/decisive_weight_auc")
    weights = "" if w is None else f"  its weights' AUC there {_fmt(w)} (low = the bug gets less weight)"
    return (f"final-value AUC {_fmt(auc)} (0.5 = chance)  decisive TD-error AUC {_fmt(td)} (0.5 = blind, low = "
            f"sees the bug){weights}  on {int(n)} validation solutions")


def format_summary(summary: Mapping[str, Any], *, brief: bool = False) -> list[str]:
    """The summary block as lines (the same for `--local` and Ray)."""
    status = summary["status"]
    head = f"{summary['run_name']}: {status} at step {summary['step']}/{summary['total_steps']} " \
           f"in {_seconds(summary['wall_s'])}"
    if summary.get("reason"):
        head += f" ({summary['reason']})"
    final = summary["final"]
    loss = _loss_key(final)
    shown = ([loss] if loss else []) + [k for k in final if k.startswith(("val/", "eval/")) and "_head" not in k][:5]
    metrics = "  ".join(f"{k} {_fmt(final[k])}" for k in shown) or "-"
    paths, mlflow, nxt = summary["paths"], summary.get("mlflow"), summary["next"]
    if brief and status == "FINISHED":
        best = summary.get("best")
        best_text = f"; best {best['metric']} {_fmt(best['value'])}" if best else ""
        return [f"== {head}; export {_short(paths['export'])}{best_text}"]
    lines = [f"== {head} " + "=" * max(0, 72 - len(head))]
    lines.append("time      " + "  ".join(f"{k.replace('_', ' ')} {_seconds(v)}"
                                          for k, v in summary["phases_s"].items()))
    lines.append(f"final     {metrics}")
    heads = per_head(final, "train/ce_head") + per_head(final, "val/ce_head")
    if len(heads) > 2:  # an MTP run: every head's loss
        lines.append("per head  " + "  ".join(f"{k} {_fmt(final[k])}" for k in heads))
    for label, line in (("weights", weights_line(final)), ("critic", critic_line(final))):
        if line:
            lines.append(f"{label:<9} {line}")
    best = summary.get("best")
    if best:
        lines.append(f"best      {best['metric']} {_fmt(best['value'])} at step {best['step']}")
    if paths["export"]:
        lines.append(f"export    {_short(paths['export'])}")
    label = "checkpoint" if status == "FINISHED" else "last good checkpoint"
    lines.append(f"{label} {_short(paths['checkpoint'])}")
    lines.append(f"config    {_short(paths['config'])}   metrics {_short(paths['metrics'])}")
    if mlflow:
        lines.append(f"mlflow    run {mlflow['run_id']}  {mlflow['ui_url']}")
    lines.append("next:")
    lines += [f"  {cmd}" + (f"    # {NEXT_NOTES[key]}" if key in NEXT_NOTES else "")
              for key, cmd in nxt.items() if key != "resume"]
    verb = "resume" if status != "FINISHED" else "rerun (resumes; a new run.name starts afresh)"
    lines.append(f"  {nxt['resume']}    # {verb}")
    return lines


def per_head(values: Mapping[str, float], prefix: str) -> list[str]:
    """`prefix1`, `prefix2`, ... present in `values`, in head order (`train/ce_head` → per-head CE)."""
    heads = [k for k in values if k.startswith(prefix) and k[len(prefix):].isdigit()]
    return sorted(heads, key=lambda k: int(k[len(prefix):]))


def report_failure(exc: BaseException) -> None:
    """Print a failed run's traceback before its summary block, so the block is the last thing
    on the console; the CLI then exits 1 (130 for Ctrl-C / SIGTERM) without printing it again.
    User errors (bad config, data) keep their one-line message and no traceback."""
    import traceback

    if getattr(exc, "wmtp_reported", False):
        return
    from wmtp.errors import is_user_error

    if not isinstance(exc, KeyboardInterrupt) and not is_user_error(exc):
        traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()
    try:
        exc.wmtp_reported = True  # type: ignore[attr-defined]
    except AttributeError:
        pass


def tell(logger: Any, line: str) -> None:
    """A line for the run's console: its `info` (on Ray the driver's, through the forwarding
    backend); printed when the logger has no console backend."""
    told = False
    for leaf in _leaves(logger):
        if callable(getattr(leaf, "info", None)):
            leaf.info(line)
            told = True
    if not told:
        print(f"[wmtp] {line}", flush=True)


def _leaves(logger: Any) -> list[Any]:
    if isinstance(logger, MultiLogger):
        return [leaf for inner in logger.loggers for leaf in _leaves(inner)]
    inner = getattr(logger, "inner", None)  # RayMetricLogger wraps rank 0's real backends
    return [logger] if inner is None else _leaves(inner)


def status_of(exc: BaseException | None) -> tuple[str, str | None]:
    """(MLflow status, reason) for how a run ended: none → FINISHED, Ctrl-C / SIGTERM → KILLED."""
    if exc is None:
        return "FINISHED", None
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", str(exc) or "interrupted (Ctrl-C)"
    text = str(exc).strip().splitlines()
    return "FAILED", f"{type(exc).__name__}: {text[0] if text else ''}"[:1000]


def end_run(logger: MetricLogger, status: str = "FINISHED", reason: str | None = None) -> dict | None:
    """Close every backend of `logger` with `status`: the console prints and writes the summary
    (`<run_dir>/summary.json`, then logged as an artifact), MLflow records the status and reason.
    Returns the summary when this process has a `RunConsole`."""
    from wmtp.tracking.phases import phase_seconds

    leaves = _leaves(logger)
    summary = None
    for lg in leaves:
        if isinstance(lg, RunConsole):
            lg.add_phases(phase_seconds())
            summary = lg.finish(status, reason)
    first: BaseException | None = None
    for lg in leaves:
        if isinstance(lg, RunConsole):
            continue
        try:
            if getattr(lg, "logs_summary", False):  # MLflow: the summary file, then the status
                lg.end(status, reason, summary_path=summary["paths"]["summary"] if summary else None)
            elif hasattr(lg, "end"):
                lg.end(status, reason)
            else:
                lg.close()
        except Exception as exc:  # close the others before reporting
            first = first or exc
    if first is not None:
        raise first
    return summary
