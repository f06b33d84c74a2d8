#!/usr/bin/env bash
# One-shot GPU check (docs/BENCHMARKS.md): under 12 minutes on one H100/H200, no network.
#   bash benchmarks/gpu_check.sh            # from the repository root, venv active
# 1. model + loss on CUDA: the CPU test suites of model and math, then CUDA-vs-CPU parity of the
#    MTP forward, the chunked MTP loss and its gradients (fp32), and a bf16 autocast step;
# 2. the math team's CUDA benchmarks (4-head ÷ 1-head peak memory of the chunked loss; GAE speed);
# 3. bf16 FSDP2 training steps of the ~1B 4-head preset (1b-mtp4) in a 1-worker Ray Train
#    TorchTrainer (NCCL): tokens/s, MFU and peak memory, 4 heads vs 1 head (same block count);
# 4. the traced memory plan (fake tensors) vs torch.cuda.max_memory_allocated of the same two
#    real steps (benchmarks/trace_check.py; docs/MEMORY.md).
# Each section has its own time limit; the script goes on after a failure and exits non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 TOKENIZERS_PARALLELISM=false
status=0
section() { echo; echo "=== $* ($(date +%T))"; }
run() { local limit=$1; shift; timeout "$limit" "$@" || { echo "FAILED (exit $?): $*"; status=1; }; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || status=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

section "1a. model + math test suites"
run 150 python -m pytest -q -x -p no:cacheprovider tests/model tests/math

section "1b. CUDA vs CPU parity: MTP forward, chunked loss, gradients; bf16 autocast step"
run 90 python - <<'PY'
import torch
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.model.args import PRESETS
from wmtp.model.transformer import build_model
from wmtp.training.precision import autocast_context

torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
args = PRESETS["tiny"]
results = {}
for device in ("cpu", "cuda"):
    torch.manual_seed(0)
    model = build_model(args, device=device, seed=0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, args.vocab_size, (4, 32), generator=g).to(device)
    labels = tokens.clone(); labels[:, :8] = -100
    out = model(tokens)
    loss = mtp_cross_entropy(out.hidden, model.output.weight, labels, chunk_size=16).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten().cpu() for p in model.parameters()])
    results[device] = (loss.detach().cpu(), grads, out.hidden[-1].detach().cpu())
for i, name in enumerate(("loss", "grads", "last-head hidden")):
    torch.testing.assert_close(results["cuda"][i], results["cpu"][i], rtol=2e-3, atol=2e-4)
    print(f"cuda == cpu: {name} ok")
model = build_model(args, device="cuda", seed=0)
with autocast_context("cuda", "bf16"):
    out = model(tokens)
    loss = mtp_cross_entropy(out.hidden, model.output.weight, labels, chunk_size=16).loss
loss.backward()
assert torch.isfinite(loss) and all(p.grad.dtype == torch.float32 for p in model.parameters())
print(f"bf16 autocast step ok: loss {loss.item():.4f} (fp32 {results['cuda'][0].item():.4f}), fp32 grads")
PY

section "2. math benchmarks on CUDA"
[ -f benchmarks/mtp_memory.py ] && run 120 python benchmarks/mtp_memory.py --device cuda
[ -f benchmarks/gae.py ] && run 60 python benchmarks/gae.py --device cuda

section "3. 1b-mtp4 bf16 FSDP2 steps in a 1-worker TorchTrainer: 4 heads vs 1 head"
run 240 python - <<'PY'
import os
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

BATCH, SEQ, WARMUP, MEASURED = 4, 2048, 3, 8


def loop(config):
    import time
    import torch
    from wmtp.losses.mtp import mtp_cross_entropy
    from wmtp.model.args import get_preset
    from wmtp.model.memory import flops_per_token
    from wmtp.model.transformer import build_model
    from wmtp.parallel.fsdp import apply_fsdp
    from wmtp.training.throughput import current_device_peak_flops

    args = get_preset("1b-mtp4").replace(n_future_tokens=config["heads"])  # same block count
    device = torch.device("cuda", torch.cuda.current_device())
    model = apply_fsdp(build_model(args, device=device, seed=0), mixed_precision=True)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(1, args.vocab_size, (BATCH, SEQ), device=device, generator=g)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(WARMUP + MEASURED):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        out = model(tokens)
        loss = mtp_cross_entropy(out.hidden, model.output.weight, tokens, chunk_size=1024).loss
        loss.backward()
        optim.step(); optim.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    step_s = sorted(times[WARMUP:])[len(times[WARMUP:]) // 2]
    tps = BATCH * SEQ / step_s
    peak = current_device_peak_flops()
    ray.train.report({"heads": config["heads"], "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
                      "step_s": step_s, "tokens_per_s": tps, "loss": float(loss),
                      "mfu": tps * flops_per_token(args, SEQ) / peak if peak else float("nan"),
                      "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30})


ray.init(address="local", include_dashboard=False, log_to_driver=False)
rows = []
for heads in (4, 1):
    trainer = TorchTrainer(loop, train_loop_config={"heads": heads}, torch_config=TorchConfig(backend="nccl"),
                           scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=True),
                           run_config=ray.train.RunConfig(name=f"gpu-check-{heads}h", storage_path="/tmp/wmtp-gpu-check"))
    m = trainer.fit().metrics
    rows.append(m)
    print(f"{heads}-head 1b-mtp4 bf16 FSDP2, batch {BATCH}x{SEQ}: {m['tokens_per_s']:,.0f} tokens/s, "
          f"MFU {m['mfu']:.1%}, peak memory {m['peak_mem_gib']:.1f} GiB, step {m['step_s']*1e3:.0f} ms, "
          f"{m['params_b']:.2f}B params, loss {m['loss']:.3f}", flush=True)
print(f"peak memory 4-head / 1-head: {rows[0]['peak_mem_gib'] / rows[1]['peak_mem_gib']:.3f}")
print(f"tokens/s 4-head / 1-head: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.3f}")
PY

section "4. the traced memory plan vs torch.cuda.max_memory_allocated of the same two real steps"
# docs/MEMORY.md: a ~100M policy + critic on one GPU, bf16; last line trace_over_measured (traced ÷ measured).
run 240 python benchmarks/trace_check.py --device cuda --recipe verifiable
run 180 python benchmarks/trace_check.py --device cuda --recipe baseline

section "done (status $status)"
exit $status
