"""`wmtp ...` and `python -m wmtp ...`.

    python -m wmtp --config configs/defaults.yaml --recipe configs/recipe.verifiable.yaml \\
        --preset local-light --use-micro-model --dry-run [key.sub=value ...]

No subcommand means `train`. `config show|validate` print or check the resolved config; `data`,
`eval` and `tune` come from `register(subparsers)` in wmtp.data.commands, wmtp.evaluation.commands
and wmtp.orchestration.commands (each sets `func=handler`, `handler(args) -> int`).
User mistakes print one message on stderr and exit 2, without a traceback.
"""
# One module (over 300 lines): the parser and the dry-run plan, which prints from the same parsed config; subcommands live in their floors.

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.config.arguments import add_config_arguments, config_from_args
from wmtp.config.loader import dump_config
from wmtp.config.schema import WMTPConfig
from wmtp.errors import is_user_error

# Recipes whose run trains (or at least loads) a critic next to, or instead of, the policy.
CRITIC_RECIPES = {"verifiable": "trained (value loss)", "critic": "trained (pre-training)"}


# ---------------------------------------------------------------------------------------------
# Parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmtp", description="Weighted Multi-Token Prediction on Ray. Without a subcommand: train.",
        epilog="example: python -m wmtp --config configs/defaults.yaml --recipe configs/recipe.verifiable.yaml "
               "--preset local-light --use-micro-model --dry-run")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train a recipe (the default command)")
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    config = sub.add_parser("config", help="show or validate the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    add_config_arguments(show)
    show.set_defaults(func=run_config_show)
    validate = config_sub.add_parser("validate", help="validate the layered config; exit 2 naming bad keys")
    add_config_arguments(validate)
    validate.set_defaults(func=run_config_validate)

    from wmtp.data import commands as data_commands
    from wmtp.evaluation import commands as eval_commands
    from wmtp.orchestration import commands as tune_commands
    from wmtp.recipes import commands as recipe_commands
    from wmtp.study import command as study_command

    recipe_commands.register(data_commands.register(sub))  # `wmtp data score-reference` scores with a recipe's code
    for module in (eval_commands, tune_commands, study_command):
        module.register(sub)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and print the config, build the model, print the plan; do not train")
    parser.add_argument("--trace", action="store_true",
                        help="with --dry-run: trace the recipe's setup and two optimizer steps on fake tensors "
                             "(fake process group of orchestration.num_workers ranks) and print the measured peak")
    parser.add_argument("--cluster", metavar="FILE",
                        help="with --dry-run: check the plan against a cluster file's nodes (GPUs, memory per GPU, "
                             "disk, the wmtp_experience resource), e.g. cluster/a100x4.yaml; exit 2 naming a fix")
    parser.add_argument("--local", action="store_true",
                        help="train in this process without Ray (sets orchestration.enabled=false)")
    parser.add_argument("--verbose", action="store_true",
                        help="show every log line (Ray workers' output, Ray Train's reports, MLflow's set-up)")


# ---------------------------------------------------------------------------------------------
# Commands
def run_config_show(args: argparse.Namespace) -> int:
    print(dump_config(config_from_args(args)), end="")
    return 0


def run_config_validate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(f"ok: recipe={cfg.recipe} model={cfg.model.preset} preset={cfg.run.preset or '-'}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, ["orchestration.enabled=false"] if args.local else [])
    check_local_paths(cfg)  # before any cluster or worker starts: exit 2 in seconds, not a worker traceback
    if args.dry_run:
        print(dump_config(cfg), end="")
        plan = build_plan(cfg)
        print(format_plan(plan))
        if args.cluster:  # refuses (exit 2) with every problem and its fix, after the plan it checked
            from wmtp.orchestration.cluster_fit import require_fit

            print(require_fit(plan, cfg, args.cluster))
        if args.trace:
            from wmtp.trace.memory import trace_in_subprocess

            traced = trace_in_subprocess(cfg)
            print(traced.summary(formula_gib=plan.memory_gib))
            print(f"traced_peak_gib_per_gpu: {traced.peak_gib:.2f}")
        return 0
    if args.verbose:
        os.environ["WMTP_VERBOSE"] = "1"
    previous = signal.signal(signal.SIGTERM, _stopped)  # `ray job stop`, `kill`: KILLED, not FAILED
    try:
        if cfg.orchestration.enabled:
            from wmtp.orchestration.launch import run_training

            result = run_training(cfg)
        else:
            from wmtp.recipes import run_recipe
            from wmtp.tracking.registry import build_run_logger, end_dead_attempt

            result = run_recipe(cfg, make_logger=build_run_logger, end_dead_attempt=end_dead_attempt)
    except BaseException as e:
        # The run already printed its traceback and summary block (last on the console).
        if getattr(e, "wmtp_reported", False) and not is_user_error(e):
            return 130 if isinstance(e, KeyboardInterrupt) else 1
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else 0


def _stopped(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name} (e.g. ray job stop)")


# ---------------------------------------------------------------------------------------------
# Dry-run plan: parameters, memory per GPU, FLOPs per token, tokens per step, Ray resources.
@dataclass
class Plan:
    device: str
    policy_params: int
    trunk_params: int
    head_params: list[int]
    output_params: int
    policy_trained: bool
    critic_params: int | None
    critic_role: str | None
    memory_gib: dict[str, float]
    flops_per_token: float
    tokens_per_step: int
    resources: dict[str, float | int | str]
    notes: list[str] = field(default_factory=list)
    weight_sync: dict[str, float | str] = field(default_factory=dict)  # wmtp.parallel.weight_sync
    loading: dict[str, float | str] = field(default_factory=dict)  # wmtp.parallel.materialize
    checkpoint_io: dict[str, float | str] = field(default_factory=dict)  # wmtp.checkpoint.dcp
    gradient_sync: dict[str, float | str] = field(default_factory=dict)  # wmtp.parallel.fsdp.hsdp_sync_cost


def check_local_paths(cfg: WMTPConfig) -> None:
    """Every local file the run would read exists where its workers will look."""
    from wmtp.orchestration.home import check_inputs_where_workers_look

    check_inputs_where_workers_look(cfg)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_plan(cfg: WMTPConfig) -> Plan:
    """Build the model(s) (meta device above model.meta_device_threshold) and size the run."""
    from wmtp.model.transformer import build_model
    from wmtp.model.value import build_value_model
    from wmtp.parallel.build import critic_args as critic_args_for
    from wmtp.parallel.build import policy_args

    check_local_paths(cfg)
    args = policy_args(cfg)
    shapes = build_model(args, device="meta")  # shapes only: decides where the real build goes
    total = count(shapes)
    device = "meta" if total > cfg.model.meta_device_threshold else "cpu"
    policy = shapes if device == "meta" else build_model(args, device="cpu", seed=cfg.run.seed)
    heads = [count(b) for b in policy.head_blocks()]
    output = count(policy.output) + count(policy.norm)
    trunk = total - sum(heads) - output

    critic_params = critic_role = critic_args = None
    if cfg.recipe in CRITIC_RECIPES:
        critic_args = critic_args_for(cfg, args)
        critic = build_value_model(critic_args, cfg.value_model.head, device=device, seed=cfg.run.seed)
        critic_params, critic_role = count(critic), CRITIC_RECIPES[cfg.recipe]
        if not critic_is_trained(cfg):
            critic_role = "frozen (stage2.value_loss.enabled=false)"

    policy_trained = cfg.recipe != "critic"  # the critic recipe reads the policy only to initialise
    memory, flops = estimate_run(cfg, args, policy_trained, critic_args)
    orch = cfg.orchestration
    tokens = cfg.data.batch_size * cfg.data.max_seq_len * cfg.data.grad_accum * orch.num_workers
    notes = []
    if cfg.model.checkpoint:
        from wmtp.checkpoint import describe_args

        source = ("params.json of " if "://" not in cfg.model.checkpoint else
                  "the preset (an s3:// checkpoint is read when the run pulls it, not by the dry run): ")
        notes.append(f"policy shapes from {source}{cfg.model.checkpoint}: {describe_args(args)}")
    if device == "meta":
        notes.append(f"{total:,} parameters > model.meta_device_threshold={cfg.model.meta_device_threshold:,}: "
                     "built on the meta device (shapes only)")
    if not cfg.data.train:
        notes.append(f"data: bundled synthetic task, {cfg.data.synth_problems} problems "
                     f"(seed {cfg.data.synth_seed}), generated on first training run")
    notes.append("memory excludes the CUDA context and allocator fragmentation (budget 1-3 GiB); "
                 "formulas: docs/MEMORY.md")
    from wmtp.parallel.weight_sync import weight_sync_cost

    # What a publish moves: the critic, or (Rho-1) the reference (the one-head policy's shape).
    synced = critic_params if critic_params is not None else total - sum(heads[1:])
    largest = max(p.numel() for p in shapes.parameters())  # the embedding / output projection
    gradient_sync = {}
    if orch.enabled and orch.fsdp and orch.fsdp_replicas > 1:
        from wmtp.parallel.fsdp import hsdp_sync_cost

        trained = (total if policy_trained else 0) + ((critic_params or 0) if critic_is_trained(cfg) else 0)
        gradient_sync = hsdp_sync_cost(trained, world_size=orch.num_workers, replicas=orch.fsdp_replicas,
                                       grad_accum=cfg.data.grad_accum)
    return Plan(device, total, trunk, heads, output, policy_trained, critic_params, critic_role, memory, flops,
                tokens, ray_resources(cfg), notes, weight_sync_cost(cfg, synced, nodes=orch.fsdp_replicas).as_dict(),
                loading_plan(cfg, total, critic_params, largest), checkpoint_plan(cfg, total, critic_params),
                gradient_sync)


def loading_plan(cfg: WMTPConfig, policy_params: int, critic_params: int | None, largest: int) -> dict[str, float | str]:
    """How the models reach the ranks and the host memory it takes on the busiest node (rank 0's),
    by the loading code's own rule (`wmtp.parallel.materialize.load_host_bytes`)."""
    from wmtp.parallel.materialize import FP32_BYTES, load_host_bytes

    orch = cfg.orchestration
    if not (orch.enabled and orch.fsdp and orch.num_workers > 1):
        return {"method": "built whole on each rank's device, then replicated (no FSDP sharding)"}
    # The critic recipe reads the policy only when it has a checkpoint (to shape and start the critic).
    models = [("policy", policy_params, bool(cfg.model.checkpoint))] if (cfg.recipe != "critic"
                                                                         or cfg.model.checkpoint) else []
    if critic_params is not None:
        models.append(("critic", critic_params, bool(cfg.value_model.checkpoint)))
    live_reference = cfg.recipe == "rho1_weighted" and not cfg.data.reference_losses
    if live_reference and orch.placement == "colocated":
        # Sharded like the policy (Rho1WeightedRecipe.sharded_reference): rank 0 reads it, one head.
        models.append(("reference", policy_params - extra_head_params(cfg), True))
    ranks_on_node = orch.num_workers // orch.fsdp_replicas
    host = load_host_bytes([(n, largest, ckpt) for _, n, ckpt in models],
                           ranks_on_node=ranks_on_node, transients_on_host=not orch.use_gpu)
    fp32_copy = max(n for _, n, _ in models) * FP32_BYTES
    gib = 1024 ** 3
    out: dict[str, Any] = {
        "method": "meta device -> activation checkpointing + FSDP2 -> rank 0 scatters each full tensor into the shards",
    }
    for name, _, ckpt in models:
        out[name] = "read from its checkpoint by rank 0 only" if ckpt else "initialised from the seed on rank 0's device"
    if live_reference and orch.placement != "colocated":
        # async: every rank reads the whole reference (one head) on its host in the compute dtype
        # and rank 0 publishes it to the experience actors once (rho1_weighted.build_scorer).
        from wmtp.model.memory import COMPUTE_BYTES

        reference = (policy_params - extra_head_params(cfg)) * COMPUTE_BYTES[cfg.train.precision]
        host = max(host, ranks_on_node * reference)
        out["reference"] = (f"read whole by each of the {ranks_on_node} ranks of a node (compute dtype), "
                            "published once to the experience actors")
    if critic_params is not None and not cfg.value_model.checkpoint and cfg.value_model.init_from_policy:
        out["critic"] += ", then its trunk copied from the policy's shards (no communication)"
    out.update(host_peak_per_node_gib=host / gib, fp32_copy_gib=fp32_copy / gib, host_peak_vs_fp32_copy=host / fp32_copy)
    return out


def extra_head_params(cfg: WMTPConfig) -> int:
    """Parameters of the policy's extra heads (the one-head reference drops them)."""
    from wmtp.model.transformer import build_model
    from wmtp.parallel.build import policy_args

    policy = build_model(policy_args(cfg), device="meta")
    return sum(p.numel() for p in policy.extra_heads.parameters())


def checkpoint_plan(cfg: WMTPConfig, policy_params: int, critic_params: int | None) -> dict[str, float | str]:
    """One checkpoint's bytes, what a resume reads per rank and downloads per node, and the disk a
    node needs (`wmtp.checkpoint.dcp.checkpoint_io_cost`), for the models the recipe saves
    (`LoopState`: trained models with AdamW, the critic snapshot without)."""
    from wmtp.checkpoint import checkpoint_io_cost, checkpointed_bytes_per_param
    from wmtp.model.memory import COMPUTE_BYTES

    orch = cfg.orchestration
    models = []
    if cfg.recipe != "critic":
        models.append((policy_params, checkpointed_bytes_per_param(True)))
    if critic_params is not None and critic_is_trained(cfg):
        models.append((critic_params, checkpointed_bytes_per_param(True)))
        if cfg.recipe == "verifiable" and cfg.stage2.critic_sync_interval > 1:
            models.append((critic_params, checkpointed_bytes_per_param(False, COMPUTE_BYTES[cfg.train.precision])))
    world = orch.num_workers if orch.enabled else 1
    sharded_world = world if orch.fsdp else 1
    return checkpoint_io_cost(models, world_size=sharded_world, replicas=orch.fsdp_replicas if orch.fsdp else 1,
                              storage_path=orch.storage_path, keep_checkpoints=orch.keep_checkpoints).as_dict()


def critic_is_trained(cfg: WMTPConfig) -> bool:
    return cfg.recipe == "critic" or (cfg.recipe == "verifiable" and cfg.stage2.value_loss.enabled)


def estimate_run(cfg: WMTPConfig, args, policy_trained: bool, critic_args) -> tuple[dict[str, float], float]:
    """Per-GPU memory (GiB, by term) and training FLOPs per token of every model the recipe holds.

    The per-model formulas live in wmtp.model.memory; this adds up the recipe's models: the
    trained policy, a trained or frozen critic (a frozen one has no optimizer state), the sharded
    compute-dtype critic snapshot at critic_sync_interval > 1, Rho-1's sharded live reference, and
    the async publish's one-tensor gather; the total is the resident state plus the larger of the
    step's transients and the publish (checked against the trace: tests/parallel/test_trace.py).
    """
    from wmtp.model.memory import COMPUTE_BYTES, GIB, count_parameters, estimate_memory, flops_per_token

    orch, train, data = cfg.orchestration, cfg.train, cfg.data
    # HSDP shards within a node's group of num_workers / fsdp_replicas ranks.
    common: dict[str, Any] = dict(world_size=orch.num_workers // orch.fsdp_replicas, precision=train.precision, fsdp=orch.fsdp,
                  batch_size=data.batch_size, seq_len=data.max_seq_len,
                  activation_checkpointing=train.activation_checkpointing)
    shard = common["world_size"] if orch.fsdp else 1
    terms = dict.fromkeys(("params", "grads", "optimizer", "activations", "transient"), 0)
    flops, publish = 0.0, 0
    if policy_trained:
        est = estimate_memory(args, loss_chunk_size=train.loss_chunk_size, **common)
        for k in terms:
            terms[k] += getattr(est, k)
        flops += flops_per_token(args, data.max_seq_len)
    if critic_args is not None:
        est = estimate_memory(critic_args, value_head=cfg.value_model.head, **common)
        # The critic has a scalar head instead of the V-wide output projection.
        no_output = 2 * critic_args.vocab_size * critic_args.dim
        if critic_is_trained(cfg):
            for k in terms:
                # Both forwards' activations coexist (one backward); the FSDP gathers and loss chunk
                # of the two models do not (one block at a time): the transient is the larger one.
                terms[k] = max(terms[k], est.transient) if k == "transient" else terms[k] + getattr(est, k)
            flops += flops_per_token(critic_args, data.max_seq_len) - 3 * no_output
        else:
            terms["params"] += est.params
        if cfg.recipe == "verifiable":
            flops += flops_per_token(critic_args, data.max_seq_len, training=False) - no_output
            if critic_is_trained(cfg) and cfg.stage2.critic_sync_interval > 1:
                # CriticSnapshot: a second critic sharded like the first, in the compute dtype
                # (at interval 1 the learner's own critic scores: no copy).
                terms["critic_snapshot"] = est.n_params * COMPUTE_BYTES[train.precision] // shard
            if orch.placement == "async":
                # Publishing gathers one tensor at a time (compute dtype): the largest, the embedding.
                publish = critic_args.vocab_size * critic_args.dim * COMPUTE_BYTES[train.precision]
    if cfg.recipe == "rho1_weighted" and not data.reference_losses and orch.placement == "colocated":
        # The live frozen reference (ref_tuning's export: the policy with one head), sharded like
        # the learner, in the compute dtype (frozen_scoring_model).
        terms["scoring_copy"] = (count_parameters(args.replace(n_future_tokens=1))
                                 * COMPUTE_BYTES[train.precision] // shard)
    memory = {k: v / GIB for k, v in terms.items()}
    step = memory["grads"] + memory["activations"] + memory["transient"]
    resident = sum(memory.values()) - step
    if publish:
        memory["publish_gather"] = publish / GIB
    # The peak is the step's (grads + activations + transient) or the publish after it.
    memory["total"] = resident + max(step, publish / GIB)
    return memory, flops


def ray_resources(cfg: WMTPConfig) -> dict[str, float | int | str]:
    """What the launcher reserves (wmtp.orchestration.resources: the same function, Ray-free)."""
    from wmtp.config.paths import run_dir
    from wmtp.orchestration.home import anchor_outputs
    from wmtp.orchestration.resources import ray_start_flags, run_resources

    orch = cfg.orchestration
    if not orch.enabled:
        return {"mode": "in-process (orchestration.enabled=false): no Ray"}
    need = run_resources(cfg)
    anchored = anchor_outputs(cfg)
    return {
        "address": orch.address or "local cluster",
        "workers": need.workers,
        "cpus_per_worker": need.cpus_per_worker,
        "gpus_per_worker": need.gpus_per_worker,
        "experience_actors": need.experience_actors,
        "total_cpus": need.cpus,
        "total_gpus": need.gpus,
        "needs": need.explain(),
        "ray_start": f"ray start --head {ray_start_flags(need.bundle())}",
        "backend": "nccl" if orch.use_gpu else "gloo",
        "sharding": "FSDP2" if orch.fsdp else "replicated (DDP)",
        # Where the run lands (relative paths: under $WMTP_HOME, ~/wmtp in a job, else the cwd).
        "run_dir": str(run_dir(anchored)),
        "storage": anchored.orchestration.storage_path or str(Path(anchored.run.output_dir) / "ray"),
        "mlflow": anchored.tracking.uri or f"sqlite:///{Path(anchored.run.output_dir) / 'mlflow.db'}",
    }


def format_plan(plan: Plan) -> str:
    lines = ["# --- dry-run plan (nothing trained, no Ray started, no data generated) ---",
             f"# model built on: {plan.device}",
             f"# policy parameters: {plan.policy_params:,}"
             + ("" if plan.policy_trained else " (read only to initialise the critic)"),
             f"#   trunk (embeddings + shared layers): {plan.trunk_params:,}"]
    lines += [f"#   head {k}: {n:,}" for k, n in enumerate(plan.head_params, 1)]
    lines.append(f"#   shared norm + output projection: {plan.output_params:,}")
    if plan.critic_params is not None:
        lines.append(f"# critic parameters: {plan.critic_params:,} ({plan.critic_role})")
    lines.append("# estimated memory per GPU (GiB):")
    lines += [f"#   {k}: {v:.2f}" for k, v in plan.memory_gib.items()]
    lines.append(f"# training FLOPs per token: {plan.flops_per_token:.3e}")
    lines.append(f"# tokens per optimizer step (at data.max_seq_len): {plan.tokens_per_step:,}")
    lines.append("# ray resources:")
    lines += [f"#   {k}: {v}" for k, v in plan.resources.items()]
    if plan.weight_sync:
        lines.append("# weight sync (critic / reference → experience scoring; wmtp.parallel.weight_sync):")
        lines += [f"#   {k}: {v:.3f}" if isinstance(v, float) else f"#   {k}: {v}" for k, v in plan.weight_sync.items()]
    for title, section in (("loading (wmtp.parallel.materialize)", plan.loading),
                           ("checkpoint I/O (wmtp.checkpoint.dcp.checkpoint_io_cost)", plan.checkpoint_io),
                           ("HSDP gradient sync across nodes (wmtp.parallel.fsdp.hsdp_sync_cost)", plan.gradient_sync)):
        if section:
            lines.append(f"# {title}:")
            lines += [f"#   {k}: {v:.3f}" if isinstance(v, float) else f"#   {k}: {v}" for k, v in section.items()]
    lines += [f"# note: {n}" for n in plan.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr, arg-type]
        if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
            argv = ["train", *argv]  # the original system's form: flags only means train
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
            return e.code if isinstance(e.code, int) else 2
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM before a run's own end could report it
        if not getattr(e, "wmtp_reported", False):
            print(f"wmtp: {e or 'interrupted (Ctrl-C)'} before the run started; rerun the same command",
                  file=sys.stderr)
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"wmtp: error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "build_plan", "format_plan", "is_user_error"]
