"""One GPU check of the memory plan and the kernels before renting a cluster (docs/CLUSTER.md §7).

    bash benchmarks/gpu_check.sh             # one CUDA GPU, under 9 minutes
    bash benchmarks/gpu_check.sh --tiny      # every shape shrunk; CPU without a GPU (the CI test)

Needs only `python3`, a CUDA torch >= 2.8 (with the wheels `pip install torch` brings), numpy
(`wmtp.training` seeds numpy) and this checkout on `PYTHONPATH`: no Ray, no MLflow, no pydantic,
no PyYAML — everything runs in this one process on the code's in-process path (models, losses,
FSDP2), never through a recipe's config. `tests/benchmarks/test_gpu_check.py` runs `--tiny` under
`python3 -S` with only torch, its requirements and numpy importable.

One JSON line per section, `"ok"` true or false; the wrapper's last line is `gpu_check: ok|failed`.

1. `parity`: one micro step (tiny model: chunked weighted MTP loss, backward, AdamW step) on the
   CPU and on the device from the same weights and batch: losses per head and the updated
   weights agree (fp32, TF32 off).
2. `slice`: rank 0's slice of the a100x4 verifiable step (7b-mtp4 policy + its critic, bf16
   FSDP2 over the memory trace's own fake 4-rank process group, activation checkpointing,
   batch 4 × 2048, grad_accum 4, two optimizer steps): real CUDA tensors for rank 0's shards and
   every activation, so `max_memory_allocated` / `max_memory_reserved` stand beside the traced
   figure of the same configuration (docs/MEMORY.md); fragmentation = 1 − allocated/reserved at
   the peaks. The fake group's collectives move nothing: the all-gathered parameters are
   uninitialised memory of the right shape (values, and so losses, are meaningless; shapes,
   bytes and kernels are the real run's).
3. `slice_throughput`: tokens/s and MFU of that slice's second step in bf16 — compute only: the
   fake group leaves out the all-gather / reduce-scatter time (and its overlap) of 4 real ranks.
4. `speculative`: at the 1b-mtp4 shape (bf16, random weights, prefix 512), the time of one
   self-speculative step (all 4 heads over a block of 4 tokens: the sure token and 3 drafts) over
   one KV-cache step (head 1, one token), and the speed-up that implies at the acceptance the
   micro model reaches on CPU (docs/BENCHMARKS.md `decode`): (1 + a) × t_kv / t_spec.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GIB = 1024**3
# The trace of the same configuration (`wmtp train --recipe configs/recipe.verifiable.yaml --preset
# a100x4 --dry-run --trace`, docs/MEMORY.md "Traced table"): GiB per GPU at the peak.
TRACED_VERIFIABLE_A100X4_GIB = 56.45
# Accepted drafts per step of the micro 4-head model on CPU (docs/BENCHMARKS.md, `decode`).
MICRO_ACCEPTANCE = 1.06


def shapes(tiny: bool) -> dict:
    if tiny:
        return dict(preset="tiny", batch=2, seq=32, grad_accum=2, chunk=16, spec_preset="tiny", prefix=8)
    return dict(preset="7b-mtp4", batch=4, seq=2048, grad_accum=4, chunk=1024, spec_preset="1b-mtp4", prefix=512)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# 1. CPU vs device parity of one micro step


def micro_step(device: torch.device) -> dict[str, torch.Tensor]:
    from wmtp.losses.mtp import mtp_cross_entropy
    from wmtp.model.args import PRESETS
    from wmtp.model.transformer import build_model
    from wmtp.training.optim import build_optimizer

    args = PRESETS["tiny"]
    model = build_model(args, device=device, seed=0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, args.vocab_size, (4, 32), generator=g)
    weights = torch.rand(4, 32, generator=g) * 2
    labels = tokens.clone()
    labels[:, :8] = -100
    tokens, labels, weights = tokens.to(device), labels.to(device), weights.to(device)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    res = mtp_cross_entropy(model(tokens).hidden, model.output.weight, labels, weights=weights, chunk_size=16)
    res.loss.backward()
    opt.step()
    return {"loss": res.loss.detach().cpu(), "ce_per_head": res.ce_per_head.detach().cpu(),
            "weights": torch.cat([p.detach().flatten().cpu() for p in model.parameters()])}


def parity(device: torch.device, tiny: bool) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu, dev = micro_step(torch.device("cpu")), micro_step(device)
    diffs = {k: float((dev[k] - cpu[k]).abs().max()) for k in cpu}
    for k in cpu:
        torch.testing.assert_close(dev[k], cpu[k], rtol=2e-3, atol=2e-4, msg=k)
    return {"compared": f"cpu vs {device.type}", "loss": float(dev["loss"]), "max_abs_diff": diffs}


# ---------------------------------------------------------------------------------------------
# 2-3. Rank 0's slice of the a100x4 verifiable step on the trace's fake 4-rank group

WORLD = 4


def fake_group(device: torch.device):
    """The memory trace's process group: 4 ranks, this process rank 0, collectives that move nothing."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not dist.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE=str(WORLD), LOCAL_RANK="0")
        dist.init_process_group("fake", rank=0, world_size=WORLD, store=FakeStore())
    return init_device_mesh(device.type, (WORLD,), mesh_dim_names=("shard",))


def sharded_on(model: torch.nn.Module, device: torch.device, mesh, mixed: bool) -> torch.nn.Module:
    """Activation checkpointing + FSDP2 on the meta-built model, then rank 0's shards on `device`
    (random values: the slice measures bytes and kernels, not learning)."""
    from torch.distributed.tensor import DTensor

    from wmtp.parallel.fsdp import apply_activation_checkpointing, apply_fsdp

    apply_activation_checkpointing(model)
    apply_fsdp(model, mesh=mesh, mixed_precision=mixed)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            local.normal_(0.0, 0.02) if p.dim() > 1 else local.fill_(1.0)
        for b in model.buffers():
            b.zero_()
    for m in model.modules():  # the RoPE tables are computed, not drawn (a value model's backbone too)
        if hasattr(m, "init_rope"):
            m.init_rope()
    return model


def verifiable_slice(device: torch.device, tiny: bool) -> tuple[dict, dict]:
    """Two optimizer steps of rank 0's part of the colocated verifiable step (policy CE with token
    weights from the critic, the critic scoring and learning with the clipped value loss)."""
    from wmtp.losses.alignment import state_values
    from wmtp.losses.mtp import mtp_cross_entropy
    from wmtp.losses.value import clipped_value_loss
    from wmtp.model.args import get_preset
    from wmtp.model.memory import flops_per_token
    from wmtp.model.transformer import build_model
    from wmtp.model.value import build_value_model, value_args_from_policy
    from wmtp.parallel.fsdp import accumulate
    from wmtp.training.optim import build_optimizer
    from wmtp.training.precision import autocast_context
    from wmtp.training.throughput import current_device_peak_flops

    s = shapes(tiny)
    cuda = device.type == "cuda"
    precision = "bf16" if cuda else "fp32"
    mesh = fake_group(device)
    args = get_preset(s["preset"])
    cargs = value_args_from_policy(args)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    policy = sharded_on(build_model(args, device="meta"), device, mesh, cuda)
    critic = sharded_on(build_value_model(cargs, "linear", device="meta"), device, mesh, cuda)
    opts = [build_optimizer(policy, lr=2e-5, weight_decay=0.1), build_optimizer(critic, lr=1e-5, weight_decay=0.1)]
    B, S, H = s["batch"], s["seq"], args.n_future_tokens
    times = []
    for _step in range(2):
        sync(device)
        t0 = time.perf_counter()
        micro = []
        for _ in range(s["grad_accum"]):
            tokens = torch.randint(1, args.vocab_size, (B, S), device=device)
            labels = tokens.clone()
            labels[:, :1] = -100
            micro.append((tokens, labels))
        denom = torch.full((H,), float(B * S * s["grad_accum"] * WORLD), device=device)
        for tokens, labels in accumulate([policy, critic], micro):
            mask = labels != -100
            with torch.no_grad(), autocast_context(device.type, precision):  # colocated scoring
                values_old = state_values(critic(tokens))
            weights = torch.rand(B, S, device=device)  # stands in for the GAE weights (detached)
            with autocast_context(device.type, precision):
                out = policy(tokens)
                loss = mtp_cross_entropy(out.hidden, policy.output.weight, labels, weights=weights,
                                         denominators=denom, chunk_size=s["chunk"]).loss
                v_new = state_values(critic(tokens))
                loss = loss + clipped_value_loss(v_new, values_old, values_old + 1.0, mask,
                                                 denominator=float(B * S * s["grad_accum"] * WORLD)).loss
            loss.backward()
        for model, opt in zip((policy, critic), opts):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    memory = {"traced_gib": TRACED_VERIFIABLE_A100X4_GIB if not tiny else None}
    if cuda:
        alloc, reserved = torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB
        memory.update(max_memory_allocated_gib=round(alloc, 2), max_memory_reserved_gib=round(reserved, 2),
                      fragmentation=round(1 - alloc / reserved, 4) if reserved else None,
                      allocated_vs_traced=round(alloc / TRACED_VERIFIABLE_A100X4_GIB, 4) if not tiny else None,
                      allocator=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default"))
    # FLOPs per token: policy training + critic training + critic scoring (the dry run's sum).
    no_output = 2 * cargs.vocab_size * cargs.dim
    flops = (flops_per_token(args, S) + flops_per_token(cargs, S) - 3 * no_output
             + flops_per_token(cargs, S, training=False) - no_output)
    tokens_per_step = B * S * s["grad_accum"]
    tps = tokens_per_step / times[-1]
    peak = current_device_peak_flops() if cuda else None
    speed = {"precision": precision, "step_s": [round(t, 3) for t in times], "tokens_per_step_rank0": tokens_per_step,
             "tokens_per_s_rank0": round(tps, 1), "flops_per_token": flops,
             "mfu": round(tps * flops / peak, 4) if peak else None,
             "left_out": "the fake group's collectives move nothing: no all-gather/reduce-scatter time or overlap"}
    return {"config": f"verifiable {s['preset']}, rank 0 of {WORLD} fake ranks, batch {B}x{S}, "
                      f"grad_accum {s['grad_accum']}, AC, 2 optimizer steps", **memory}, speed


# ---------------------------------------------------------------------------------------------
# 4. One self-speculative step vs one KV-cache step


@torch.no_grad()
def speculative(device: torch.device, tiny: bool) -> dict:
    from wmtp.model.args import get_preset
    from wmtp.model.transformer import build_model

    s = shapes(tiny)
    args = get_preset(s["spec_preset"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args, device=device, seed=0).to(dtype).eval()
    H, L = args.n_future_tokens, s["prefix"]
    prompt = torch.randint(1, args.vocab_size, (1, L), device=device)
    cache = model.allocate_cache(1, L + H + 1)
    model(prompt, cache=cache, return_logits=True)  # fill the cache with the prefix (all heads' blocks)
    kv_tok = prompt[:, -1:]
    block = prompt[:, -H:]

    def kv_step():
        return model(kv_tok, start_pos=L, cache=cache, n_future_heads=1, return_logits=True).logits.argmax(-1)

    def spec_step():
        return model(block, start_pos=L, cache=cache, return_logits=True).logits.argmax(-1)

    def timed(fn, n):
        for _ in range(3):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / n

    n = 5 if tiny else 50
    t_kv, t_spec = timed(kv_step, n), timed(spec_step, n)
    return {"shape": s["spec_preset"], "prefix": L, "heads": H, "kv_step_ms": round(t_kv * 1e3, 3),
            "speculative_step_ms": round(t_spec * 1e3, 3), "spec_over_kv": round(t_spec / t_kv, 3),
            "acceptance": MICRO_ACCEPTANCE,
            "implied_speedup": round((1 + MICRO_ACCEPTANCE) * t_kv / t_spec, 3)}


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="shrink every shape (CPU when no GPU): the CI test")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")  # FSDP2's view-output notes: one JSON line per section, nothing else
    if not torch.cuda.is_available() and not args.tiny:
        print(json.dumps({"section": "device", "ok": False, "error": "no CUDA device (use --tiny on CPU)"}))
        return 1
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        from wmtp.training.device_memory import configure_allocator

        configure_allocator()  # as a training run does (docs/MEMORY.md "The allocator")
    print(json.dumps({"section": "device", "ok": True, "device": str(device), "torch": torch.__version__,
                      "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "tiny": args.tiny}), flush=True)
    ok = True
    slice_speed: dict = {}

    def slice_section():
        memory, speed = verifiable_slice(device, args.tiny)
        slice_speed.update(speed)
        return memory

    for name, fn in (("parity", lambda: parity(device, args.tiny)), ("slice", slice_section),
                     ("slice_throughput", lambda: slice_speed or (_ for _ in ()).throw(RuntimeError("no slice"))),
                     ("speculative", lambda: speculative(device, args.tiny))):
        t0 = time.perf_counter()
        try:
            line = {"section": name, "ok": True, **fn()}
        except Exception as e:  # noqa: BLE001 - one section's failure is reported, the rest still run
            ok = False
            line = {"section": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        line["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(line), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
