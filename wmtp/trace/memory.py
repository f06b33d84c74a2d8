"""A run's memory, the tools layer; the same concept as wmtp.model.memory, measured by a trace.

The traced memory plan (`wmtp train ... --dry-run --trace`): the recipe's real setup and two
real optimizer steps of the configured shapes, on fake tensors, measured per rank.

How (torchtitan's memory estimator, applied to a whole recipe):
- a fake process group of `orchestration.num_workers` ranks (`FakeStore`), this process is rank 0;
- `FakeTensorMode`: every tensor has shape, dtype and device but no storage, so a 7B policy +
  7B critic cost nothing on this CPU. A CPU build of torch cannot fake CUDA tensors, so the trace
  runs on fake CPU tensors with the GPU run's dtypes and policies: FSDP2's bf16 all-gathers and
  fp32 reduction and the fused AdamW (`DistEnv.gpu_policies`), bf16 autocast, fp32 masters;
- the recipe is built by `wmtp.recipes.build_recipe` and its own `setup()` and `step()` run: the
  same model building, sharding (`wmtp.parallel.build.shard_model`), optimizers, scorer and losses as a
  training run — one path, not a copy. What differs is passed in, as training passes its own:
  the recipe's `RecipeEnv` (`trace_env`);
- `torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker`, extended to several roots and
  optimizers (`RecipeMemTracker`), attributes every live storage to a category; the peak over the
  two steps is the traced figure.

What the trace replaces, because values do not matter for memory: data batches are full length
(`data.batch_size × data.max_seq_len`, every token real) and no data file is read or generated
(`ShapeOnlyData`), checkpoints are not read (a model of the checkpoint's shapes is initialised
instead, `ShapeOnlyCheckpoints`), `gather_cat` takes every rank's size to be this one's, host reads
of tensor values (`.item()`, `float(t)`) return 1 / 0.0 / False (`ScalarOracle`), and the
vocabulary is the model preset's when no tokenizer is configured. Nothing is patched: the recipe
gets these through its `RecipeEnv`.
Kernel differences that the trace leaves out are listed in docs/MEMORY.md.

The fake process group cannot be undone inside a process: `trace_in_subprocess` runs the trace in
a fresh interpreter (`python -m wmtp.trace.memory`), as the CLI does.
"""
# One module (over 300 lines): the memory trace is one procedure (fake tensors, a fake process group, stand-ins, the tracker, the report) whose parts have no other user.

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from wmtp.checkpoint import CheckpointReader

GIB = 1024**3
RESULT_PREFIX = "WMTP_TRACE_RESULT "
TRACED_STEPS = 2


class HeldRef(Enum):
    """Categories FSDPMemTracker does not have: models that are not FSDP-sharded, and the rest."""

    REPLICATED_PARAM = "Replicated Param"
    REPLICATED_GRAD = "Replicated Grad"
    HELD_MODEL = "Held Model (no grad)"
    ACTOR_MODEL = "Experience Actor Model"
    OTHER = "Other (live before the steps)"


@dataclass
class TracedPlan:
    """Bytes per rank at the traced peak, by category, and what each model the recipe holds keeps."""

    recipe: str
    world_size: int
    mesh: list[int]
    peak_bytes: int
    by_category: dict[str, int]
    models: dict[str, dict[str, int]] = field(default_factory=dict)
    actor_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def summary(self, formula_gib: dict[str, float] | None = None) -> str:
        lines = [f"# --- traced memory plan: {self.recipe}, rank 0 of {self.world_size} fake ranks "
                 f"(mesh {'x'.join(map(str, self.mesh))}), {TRACED_STEPS} optimizer steps ---",
                 "# at the traced peak (GiB per GPU):"]
        lines += [f"#   {k}: {v / GIB:.2f}" for k, v in self.by_category.items() if v]
        lines.append(f"#   total: {self.peak_gib:.2f}")
        lines.append("# models held (GiB per GPU: params / optimizer state, local shards):")
        for name, m in self.models.items():
            lines.append(f"#   {name}: {m['params'] / GIB:.2f} / {m['optimizer'] / GIB:.2f}  ({m['kind']})")
        if self.actor_bytes:
            lines.append(f"# experience actor (its own GPU, not in the total): {self.actor_bytes / GIB:.2f} GiB of weights")
        if formula_gib is not None:
            total = formula_gib.get("total", 0.0)
            diff = (total - self.peak_gib) / self.peak_gib * 100 if self.peak_bytes else 0.0
            lines.append(f"# formula plan total: {total:.2f} GiB ({diff:+.1f}% vs the trace)")
        lines += [f"# note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The tracker: FSDPMemTracker over every model and optimizer of a recipe


def recipe_parts(recipe: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainables by attribute path, models held without an optimizer by attribute path), found
    by walking the recipe's attributes (a scorer's model, a reference, a snapshot...)."""
    from torch import nn

    from wmtp.training.step import Trainable

    trainables: dict[str, Trainable] = {}
    held: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        if isinstance(obj, Trainable):
            trainables[path] = obj
        elif isinstance(obj, nn.Module):
            held[path] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(v, f"{path}[{k!r}]", depth + 1)
        elif type(obj).__module__.startswith("wmtp.") and hasattr(obj, "__dict__"):
            for k, v in vars(obj).items():
                visit(v, f"{path}.{k}" if path else k, depth + 1)

    visit(recipe, "", 0)
    trained = {id(t.model) for t in trainables.values()}
    held = {k: m for k, m in held.items() if id(m) not in trained}
    return trainables, held


def in_sharding_propagation() -> bool:
    """True inside DTensor's shape propagation. DTensor derives output shapes by running each op on
    fake global-shape tensors, under the active FakeTensorMode when there is one. In a trace that
    is the trace's own mode, so the tracker would count those global-shape placeholders as
    allocations (for a foreach AdamW step, several unsharded copies of the model); it skips the
    ops dispatched from inside the propagation, found on the Python stack (torch offers no hook)."""
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    code = ShardingPropagator._propagate_tensor_meta_non_cached.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def make_tracker(recipe: Any, actors: dict[str, Any] | None = None):
    """A `RecipeMemTracker` for every trainable, held model and live tensor of `recipe`."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.tensor import DTensor
    from torch.nn import ModuleList

    class RecipeMemTracker(FSDPMemTracker):
        """FSDPMemTracker with several roots and optimizers; models that are not FSDP-sharded and
        tensors alive before the steps get their own categories (`HeldRef`)."""

        def __init__(self, trainables: dict, held: dict) -> None:
            MemTracker.__init__(self)  # FSDPMemTracker's own __init__ accepts one FSDP root only
            from torch.utils.weak import WeakIdKeyDictionary

            from wmtp.parallel.build import is_fsdp_sharded

            self.trainables, self.held = trainables, held
            sharded = [t.model for t in trainables.values() if is_fsdp_sharded(t.model)]
            self.replicated = [t.model for t in trainables.values() if not is_fsdp_sharded(t.model)]
            self._root_mod = ModuleList(sharded)
            self._optm = None
            self._optimizers = [t.optimizer for t in trainables.values()]
            self._fsdp_mod_to_saved_methods = WeakIdKeyDictionary()

            class FreshStats(WeakIdKeyDictionary):
                def __contains__(self, key) -> bool:
                    return False

            # Module-wise stats are not used (only the peak and its categories): every forward of a
            # module starts fresh ones, so a step may call a root several times (grad accumulation,
            # pairwise chosen/rejected), which FSDPMemTracker itself refuses.
            self.memory_tracking = FreshStats()
            from torch.distributed._tools.fsdp2_mem_tracker import _FSDPState

            self._fsdp_state = _FSDPState.PRE_FW
            self._ref_class = [*_FSDPRefType, *HeldRef]  # the snapshot's keys
            self._extra_hooks: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if in_sharding_propagation():  # metadata only, never allocated
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

        def _register_module_and_optimizer_hooks(self) -> None:
            self._instrument_fsdp_module()
            def track_grad(q) -> None:  # a post-accumulate-grad hook must return None
                self._update_and_maybe_create_winfos(q.grad, HeldRef.REPLICATED_GRAD)

            for model in self.replicated:
                for p in model.parameters():
                    self._update_and_maybe_create_winfos(p, HeldRef.REPLICATED_PARAM)
                    self._extra_hooks.append(p.register_post_accumulate_grad_hook(track_grad))
            for path, model in self.held.items():
                kind = HeldRef.ACTOR_MODEL if path in actor_names else HeldRef.HELD_MODEL
                for t in [*model.parameters(), *model.buffers()]:
                    self._update_and_maybe_create_winfos(t, kind)
            for opt in self._optimizers:
                self._track_optimizer_states(_FSDPRefType.OPT, opt)

                def pre(optimizer, args, kwargs):
                    self._in_opt = True

                def post(optimizer, args, kwargs):
                    self._track_optimizer_states(_FSDPRefType.OPT, optimizer)
                    self._in_opt = False

                self._extra_hooks += [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
            # Everything else alive now (validation batches, RoPE tables, leftovers of setup).
            gc.collect()
            for obj in gc.get_objects():
                if isinstance(obj, DTensor):
                    obj = obj._local_tensor
                if isinstance(obj, FakeTensor) and obj.device.type != "meta":
                    winfo = self._WINFO.get(obj.untyped_storage(), (None, None))[0]
                    if winfo is None:
                        self._update_and_maybe_create_winfos(obj, HeldRef.OTHER)

        def _deregister_module_and_optimizer_hooks(self) -> None:
            super()._deregister_module_and_optimizer_hooks()
            for h in self._extra_hooks:
                h.remove()
            self._extra_hooks = []

        def peak(self) -> dict[str, int]:
            snap = self.get_tracker_snapshot("peak")
            dev = snap.get(torch.device("cpu"), {})
            return {(k.value if isinstance(k, Enum) else k): v for k, v in dev.items()}

    trainables, held = recipe_parts(recipe)
    held = with_actors(held, actors)
    actor_names = set(actors or {})
    return RecipeMemTracker(trainables, held)


def with_actors(held: dict, actors: dict[str, Any] | None) -> dict:
    """`held` with the experience actors' replicas under their own names (once each)."""
    actors = actors or {}
    ids = {id(m) for m in actors.values()}
    return {**{k: m for k, m in held.items() if id(m) not in ids}, **actors}


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (DTensors count their local shard)."""
    from torch.distributed.tensor import DTensor

    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, DTensor):
            t = t._local_tensor
        st = t.untyped_storage()
        key = id(st) if not hasattr(st, "_cdata") else st._cdata
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


def model_table(recipe: Any, actors: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    import torch

    trainables, held = recipe_parts(recipe)
    held = with_actors(held, actors)
    out: dict[str, dict[str, Any]] = {}
    for path, t in trainables.items():
        states = [v for s in t.optimizer.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]
        out[path] = {"params": storage_bytes(t.model.parameters()), "optimizer": storage_bytes(states),
                     "kind": "trained" + (", frozen: no steps" if not t.optimizer.state else "")}
    for path, m in held.items():
        kind = "experience actor, own GPU" if path in (actors or {}) else "held without grad"
        out[path] = {"params": storage_bytes([*m.parameters(), *m.buffers()]), "optimizer": 0, "kind": kind}
    return out


# ---------------------------------------------------------------------------------------------
# Stand-ins for what has no meaning on fake tensors


class ScalarOracle:
    """A dispatch mode above FakeTensorMode that answers what depends on fake values: host reads
    (`.item()`, `float(t)`, `tolist()`) give 1 for numbers (AdamW's step count, a finite loss), False for bools (the
    recipes read values only for logging, the non-finite guard and gather sizes); `nonzero` and
    `masked_select` answer as if every element were selected (the full-length batches make every
    position after the first a target, so the loss's gathered rows are exact)."""

    def __new__(cls):
        import torch
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Oracle(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not (args and isinstance(args[0], FakeTensor)):  # real tensors (a mesh's ranks) keep their values
                    return func(*args, **(kwargs or {}))
                if func is torch.ops.aten._local_scalar_dense.default:
                    dtype = args[0].dtype
                    if dtype == torch.bool:
                        return False
                    return 1.0 if dtype.is_floating_point or dtype.is_complex else 1
                if func is torch.ops.aten.nonzero.default:  # as if every element were True
                    x = args[0]
                    return x.new_empty((x.numel(), x.dim()), dtype=torch.long)
                if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default,
                            torch.ops.aten.index_put_.default) and any(
                        i is not None and i.dtype == torch.bool for i in args[1]):
                    # x[mask] as if every element of the mask were True: k long indices of mask.numel()
                    indices = []
                    for i in args[1]:
                        if i is not None and i.dtype == torch.bool:
                            indices += [i.new_zeros((i.numel(),), dtype=torch.long)] * i.dim()
                        else:
                            indices.append(i)
                    return func(args[0], indices, *args[2:], **(kwargs or {}))
                if func is torch.ops.aten.bincount.default:  # values assumed below minlength
                    minlength = (kwargs or {}).get("minlength", args[2] if len(args) > 2 else 0)
                    return args[0].new_zeros((max(int(minlength), 1),), dtype=torch.long)
                if func is torch.ops.aten.masked_select.default:
                    x, mask = args[0], args[1]
                    return x.new_empty((torch.broadcast_shapes(x.shape, mask.shape).numel(),))
                return func(*args, **(kwargs or {}))

        return _Oracle()


def full_length_batch(batch_size: int, seq_len: int, vocab_size: int, device, correct: bool = True):
    """A `Batch` of `batch_size` sequences with every one of `seq_len` positions a real token and
    every position after BOS a response target (the most a batch of this shape can hold)."""
    import torch

    from wmtp.data.collator import IGNORE_INDEX, Batch

    start = 1
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    labels = tokens.clone()
    labels[:, :start] = IGNORE_INDEX
    return Batch(tokens=tokens, labels=labels,
                 attention_mask=torch.ones(batch_size, seq_len, dtype=torch.bool, device=device),
                 is_correct=torch.full((batch_size,), correct, dtype=torch.bool, device=device),
                 response_start=torch.full((batch_size,), start, dtype=torch.long, device=device),
                 response_end=torch.full((batch_size,), seq_len - 1, dtype=torch.long, device=device),
                 problem_id=[f"trace-{i}" for i in range(batch_size)],
                 row=torch.arange(batch_size, device=device))


def trace_env(cfg, vocab_size: int, layout):
    """The recipe's `RecipeEnv` in the trace: this rank's `layout` (the GPU run's policies),
    full-length batches from data that reads no file, checkpoints read as shapes only, and
    `gather_cat` without its size exchange."""
    from wmtp.data.streams import RecipeData
    from wmtp.recipes.interfaces import RecipeEnv

    def load_data(cfg):
        data = ShapeOnlyData(cfg.data.max_seq_len, vocab_size)
        return RecipeData(data.tokenizer, data, data)

    def gather_cat(x, layout):
        # The real one exchanges sizes first (values a fake group does not carry): every rank is
        # taken to hold as many values as this one, the same buffers as the real gather.
        import torch
        import torch.distributed as dist

        if not layout.distributed:
            return x
        parts = [torch.empty_like(x) for _ in range(layout.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    return RecipeEnv(layout, load_data, ShapeOnlyCheckpoints(cfg.value_model.head), gather_cat)


def _params_of(path) -> Any:
    from wmtp.model.args import ModelArgs

    return ModelArgs.from_params_json(json.loads((Path(path) / "params.json").read_text()))


def _shapes_only(model) -> dict:
    """Fake tensors of the model's state-dict shapes: nothing read or allocated."""
    import torch

    return {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}


class ShapeOnlyCheckpoints(CheckpointReader):
    """A `CheckpointReader` that reads a folder's `params.json` (and `value.json`) only: models of the
    checkpoint's shapes, initialised (`load_*`) or as fake state dicts (`read_*_state`, rank 0's read
    in a sharded build, `wmtp.parallel.materialize`). `value_head`: a critic folder without
    `value.json`'s head (`value_model.head`)."""

    def __init__(self, value_head: str):
        self.value_head = value_head

    def _head(self, path) -> str:
        from wmtp.checkpoint import VALUE_FILE

        file = Path(path) / VALUE_FILE
        return json.loads(file.read_text()).get("head", self.value_head) if file.is_file() else self.value_head

    def read_checkpoint_args(self, path):
        # A stand-in folder of a producing stage's export (traced_config) holds params.json only.
        folder = Path(path)
        weights = [*folder.glob("*.safetensors"), *folder.glob("consolidated*.pth")]
        if (folder / "params.json").is_file() and not weights:
            return _params_of(folder)
        return super().read_checkpoint_args(path)

    def load_model(self, path, device="cpu", dtype=None, args=None):
        from wmtp.model.transformer import build_model

        return build_model(args or _params_of(path), device=device, seed=None)

    def load_value_model(self, path, device="cpu", dtype=None):
        from wmtp.model.value import build_value_model

        return build_value_model(_params_of(path), self._head(path), device=device, seed=None)

    def read_model_state(self, path, args=None):
        from wmtp.model.transformer import build_model

        args = args or _params_of(path)
        return args, _shapes_only(build_model(args, device="meta"))

    def read_value_state(self, path):
        from wmtp.model.value import build_value_model

        args, head = _params_of(path), self._head(path)
        return args, head, _shapes_only(build_value_model(args, head, device="meta"))


class ShapeOnlyData:
    """Stands in for the tokenizer and `TrainingData` (no file is read, no task generated): samplers
    that only keep a position, and full-length batches for the validation set."""

    def __init__(self, seq_len: int, vocab_size: int):
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.tokenizer = type("ShapeOnlyTokenizer", (), {"vocab_size": vocab_size, "eos_id": 2, "bos_id": 1,
                                                          "path": None})()

    class _Sampler:
        def __init__(self):
            self.position = 0

        def next(self, n: int) -> list[int]:
            self.position += n
            return list(range(n))

        def state_dict(self) -> dict:
            return {"position": self.position}

        def load_state_dict(self, state: dict) -> None:
            self.position = state["position"]

    def sampler(self, *args, **kwargs):
        return self._Sampler()

    def batches(self, sampler, batch_size):
        """Endless full-length batches (each made when the stream asks for it)."""
        import torch

        while True:
            yield full_length_batch(batch_size, self.seq_len, self.vocab_size, torch.device("cpu"))

    def pair_batches(self, sampler, batch_size):
        """Endless (correct, incorrect) pairs of full-length batches."""
        import torch

        from wmtp.data.collator import PairBatch

        while True:
            yield PairBatch(full_length_batch(batch_size, self.seq_len, self.vocab_size, torch.device("cpu"), True),
                            full_length_batch(batch_size, self.seq_len, self.vocab_size, torch.device("cpu"), False))

    def collate(self, rows):
        import torch

        return full_length_batch(len(rows), self.seq_len, self.vocab_size, torch.device("cpu"))


def traced_config(cfg, workdir: Path):
    """The configuration the trace runs: the user's, with shapes pinned (the preset's vocabulary
    unless a tokenizer is configured), a stand-in reference/critic of the producing stage's shapes
    where none is configured, and run files in `workdir`."""
    from wmtp.checkpoint import VALUE_FILE
    from wmtp.config.update import update_config
    from wmtp.parallel.build import critic_args, policy_args

    updates: dict[str, Any] = {"run.output_dir": str(workdir), "tracking.backends": []}
    if cfg.model.tokenizer is None and "vocab_size" not in cfg.model.params:
        updates["model.params"] = {**cfg.model.params, "vocab_size": policy_args(cfg).vocab_size}
    cfg = update_config(cfg, updates, "the memory trace")
    args = policy_args(cfg)
    if cfg.recipe == "rho1_weighted" and not cfg.data.reference_losses and not cfg.rho1.reference:
        ref = workdir / "reference-shapes"  # ref_tuning's export: the policy with one head
        ref.mkdir(parents=True, exist_ok=True)
        (ref / "params.json").write_text(json.dumps(args.replace(n_future_tokens=1).to_params_json()))
        cfg = update_config(cfg, {"rho1.reference": str(ref)}, "the memory trace")
    if cfg.value_model.checkpoint and "://" not in cfg.value_model.checkpoint:
        pass  # a local critic checkpoint: its params.json gives the shapes
    elif cfg.value_model.checkpoint:
        crit = workdir / "critic-shapes"
        crit.mkdir(parents=True, exist_ok=True)
        (crit / "params.json").write_text(json.dumps(critic_args(cfg, args).to_params_json()))
        (crit / VALUE_FILE).write_text(json.dumps({"head": cfg.value_model.head}))
        cfg = update_config(cfg, {"value_model.checkpoint": str(crit)}, "the memory trace")
    return cfg


class _NullSink:
    def latest(self):
        return None

    def save(self, step, write, metrics):
        pass


class _ActorStandIn:
    """Async placement: the learner's view of its experience actors. The scoring model lives on the
    actor's own GPU; here it is held only to produce scored batches, and its weights are counted
    apart (`HeldRef.ACTOR_MODEL`), not in the learner's total."""

    def __init__(self, spec, state_dict, device):
        from wmtp.recipes.experience import LearnerScorer, build_scoring_model

        # The actor's replica (compute dtype), scored in this process: what an actor holds.
        self.inner = LearnerScorer(spec, build_scoring_model(spec, state_dict, device))

    def submit(self, batch):
        self.inner.submit(batch)

    def get(self):
        return self.inner.get()

    def publish_critic(self, state_dict, version):
        self.inner.publish_critic(self.inner.model, version)  # values do not matter to memory

    def close(self):
        self.inner.close()


# ---------------------------------------------------------------------------------------------
# The trace


def trace_recipe(cfg) -> TracedPlan:
    """Trace `cfg`'s recipe in THIS process (it initialises a fake process group: use a fresh
    process, e.g. `trace_in_subprocess`)."""
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from wmtp.parallel import fsdp
    from wmtp.parallel.build import policy_args
    from wmtp.parallel.reduce import process_layout
    from wmtp.recipes import build_recipe
    from wmtp.tracking.base import NullLogger

    world = cfg.orchestration.num_workers
    workdir = Path(tempfile.mkdtemp(prefix="wmtp-trace-"))
    cfg = traced_config(cfg, workdir)
    os.environ.update(RANK="0", WORLD_SIZE=str(world), LOCAL_RANK="0")
    if world > 1:
        dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    replicas = cfg.orchestration.fsdp_replicas
    mesh = [world]
    if world > 1 and cfg.orchestration.fsdp:
        fsdp.fsdp_mesh("cpu", world, replicas)  # before FakeTensorMode: a mesh reads real rank tables
        mesh = [replicas, world // replicas] if replicas > 1 else [world]
    torch.__future__.set_swap_module_params_on_conversion(False)

    async_scorer = cfg.orchestration.placement == "async" and cfg.recipe in ("verifiable", "rho1_weighted")
    stand_ins_made: list[_ActorStandIn] = []

    def factory(spec, state):
        stand_ins_made.append(_ActorStandIn(spec, state, torch.device("cpu")))
        return stand_ins_made[-1]
    vocab = policy_args(cfg).vocab_size
    with FakeTensorMode(allow_non_fake_inputs=True), ScalarOracle():
        env = trace_env(cfg, vocab, replace(process_layout(cfg.orchestration.use_gpu), gpu_policies=True))
        recipe = build_recipe(cfg, logger=NullLogger(), checkpoint_sink=_NullSink(),
                              scorer_factory=factory if async_scorer else None, env=env)
        recipe.setup()
        step_owner = getattr(recipe, "loop", recipe)  # ref_tuning runs the baseline loop
        # The actors' replicas by name, not found by walking the recipe (the scorer may be wrapped).
        actors = {f"experience actor {i} (scorer.inner.model)": a.inner.model for i, a in enumerate(stand_ins_made)}
        tracker = make_tracker(step_owner, actors)
        with tracker:
            for step in range(1, TRACED_STEPS + 1):
                step_owner.step(step)
        by_category = tracker.peak()
        models = model_table(step_owner, actors)
    total = by_category.pop("Total", 0)
    actor = by_category.pop(HeldRef.ACTOR_MODEL.value, 0)
    notes = []
    if actor:
        notes.append("async: the experience actors' weights are on their own GPUs (listed, not in the total)")
    if not cfg.orchestration.fsdp or world == 1:
        notes.append("not FSDP-sharded: every rank holds full replicas")
    return TracedPlan(recipe=cfg.recipe, world_size=world, mesh=mesh, peak_bytes=total - actor,
                      by_category=by_category, models=models, actor_bytes=actor, notes=notes)


def trace_in_subprocess(cfg, timeout_s: float = 1800.0) -> TracedPlan:
    """`trace_recipe(cfg)` in a fresh interpreter (the fake process group stays out of this one)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "wmtp.trace.memory"], input=cfg.model_dump_json(),
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        # The wmtp frames and the error say where; torch's dispatch frames in between do not.
        lines = [ln for ln in proc.stderr.splitlines()
                 if "site-packages" not in ln and not re.fullmatch(r"(\[rank\d+\]:)?[\s^~]*", ln)]
        raise RuntimeError(f"the memory trace failed (exit {proc.returncode}):\n" + "\n".join(lines[-40:]))
    return TracedPlan(**json.loads(lines[-1][len(RESULT_PREFIX):]))


def main() -> int:
    import warnings

    from wmtp.config.schema import WMTPConfig

    warnings.filterwarnings("ignore")
    cfg = WMTPConfig.model_validate_json(sys.stdin.read())
    plan = trace_recipe(cfg)
    print(RESULT_PREFIX + json.dumps(asdict(plan)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
