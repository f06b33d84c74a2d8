"""Greedy decoding speed: no cache vs KV cache vs self-speculative (MTP heads draft, head 1 verifies).

    python benchmarks/decode.py                 # CPU, trains a micro 4-head model first (~2-4 min)
    python benchmarks/decode.py --device cuda

The model is the `micro` preset with 6 blocks and 4 heads (2 shared trunk blocks, head 1, 3 extra
heads), trained briefly with the plain (unweighted) MTP loss on the bundled synthetic task
(`wmtp.data.bundled`: Alpaca prompt + solution + EOS) so that heads 2..4 are predictive; without
the bundled data it trains on a repetitive synthetic token stream instead (printed as `data:`).
Every method decodes the same prompts one at a time (batch 1, as speculative decoding does);
all three must produce the same tokens. The three methods run round-robin `--repeats` times (the
order rotates each round). Last line: `speculative_speedup: X` (median over rounds of speculative
tokens/s ÷ KV-cache tokens/s measured in the same round).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as bench  # noqa: E402

from wmtp.evaluation.generation import generate_tokens, greedy_decode_no_cache  # noqa: E402
from wmtp.evaluation.speculative import SpeculativeStats, speculative_greedy  # noqa: E402
from wmtp.model.args import get_preset  # noqa: E402
from wmtp.model.transformer import build_model  # noqa: E402


def bundled_sequences(n_eval_prompts: int):
    """(train token sequences, eval prompts, eos id, vocab size) from the bundled synthetic task."""
    from wmtp.data.bundled import ensure_bundled
    from wmtp.data.template import format_prompt
    from wmtp.model.tokenizer import Tokenizer

    b = ensure_bundled()
    tok = Tokenizer(b.tokenizer)
    train = []
    with open(b.train, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["is_correct"]:
                ids = tok.encode(format_prompt(r["instruction"], r["input"]), bos=True) + tok.encode(r["output"])
                train.append(ids + [tok.eos_id])
    with open(b.test_eval, encoding="utf-8") as f:
        prompts = [tok.encode(json.loads(line)["prompt"], bos=True) for line in f][:n_eval_prompts]
    return train, prompts, tok.eos_id, tok.vocab_size, "bundled synthetic task", b.tokenizer


def synthetic_sequences(n_eval_prompts: int, vocab: int = 1000, seed: int = 0):
    """Repetitive stream: each sequence repeats a random phrase of 5-12 tokens."""
    g = torch.Generator().manual_seed(seed)
    train = []
    for _ in range(4000):
        phrase = torch.randint(3, vocab, (int(torch.randint(5, 13, (1,), generator=g)),), generator=g).tolist()
        train.append([1] + (phrase * 20)[:120])
    prompts = [s[:30] for s in train[:n_eval_prompts]]
    return train, prompts, None, vocab, "repetitive synthetic token stream", None


def train(model, sequences, steps: int, batch_size: int, seq_len: int, device, seed: int = 0) -> float:
    """Plain MTP cross-entropy on every position (head k at t predicts token t+k)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    H = model.n_future_heads
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(0, len(sequences), (batch_size,), generator=g).tolist()
        batch = [sequences[i][:seq_len] for i in idx]
        S = max(len(s) for s in batch)
        tokens = torch.zeros(batch_size, S, dtype=torch.long)
        labels = torch.full((batch_size, S), -100, dtype=torch.long)
        for i, s in enumerate(batch):
            tokens[i, : len(s)] = torch.tensor(s)
            labels[i, : len(s)] = torch.tensor(s)
        tokens, labels = tokens.to(device), labels.to(device)
        for group in opt.param_groups:  # linear warm-up then cosine decay
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = 3e-3 * warm * 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())
        logits = model(tokens, return_logits=True).logits  # [B, S, H, V]
        loss = sum(
            torch.nn.functional.cross_entropy(logits[:, : S - k, k - 1].flatten(0, 1), labels[:, k:].flatten(),
                                              ignore_index=-100)
            for k in range(1, H + 1)
        ) / H
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"train step {step:4d}  mtp loss {loss.item():.3f}", flush=True)
    model.eval()
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--repeats", type=int, default=30, help="decoding rounds, the three methods round-robin")
    p.add_argument("--save", default=None,
                   help="also save the trained model (and the bundled tokenizer) here, for `wmtp eval`")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench.print_header("decode", {})
    torch.manual_seed(0)
    try:
        data = bundled_sequences(args.prompts)
    except ImportError:
        data = synthetic_sequences(args.prompts)
    sequences, prompts, eos_id, vocab, source, tokenizer_path = data
    margs = get_preset("micro").replace(n_layers=6, n_future_tokens=4, vocab_size=vocab)
    model = build_model(margs, device=device, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data: {source}; model: micro, {margs.n_layers} blocks, {margs.n_future_tokens} heads, "
          f"{n_params / 1e6:.2f}M params, device {device}")
    t0 = time.perf_counter()
    final_loss = train(model, sequences, args.train_steps, args.batch_size, args.seq_len, device)
    print(f"trained {args.train_steps} steps in {time.perf_counter() - t0:.0f}s, final MTP loss {final_loss:.3f}")
    if args.save:
        from wmtp.checkpoint import save_model

        save_model(model, args.save)
        if tokenizer_path is not None:
            shutil.copy(tokenizer_path, Path(args.save) / "tokenizer.model")
        print(f"saved model to {args.save}")

    n_new = args.max_new_tokens
    outputs: dict[str, list] = {}
    stats = SpeculativeStats()

    def run_spec():
        outs, st = [], SpeculativeStats()
        for q in prompts:
            out, s = speculative_greedy(model, q, max_new_tokens=n_new, eos_id=eos_id)
            st.merge(s)
            outs.append(out)
        outputs["speculative"] = outs
        if not stats.steps:
            stats.merge(st)

    methods = {
        "no_cache": lambda: outputs.__setitem__("no_cache", [
            greedy_decode_no_cache(model, q, max_new_tokens=n_new, eos_id=eos_id) for q in prompts]),
        "kv_cache": lambda: outputs.__setitem__("kv_cache", [
            generate_tokens(model, [q], max_new_tokens=n_new, eos_id=eos_id)[0] for q in prompts]),
        "speculative": run_spec,
    }
    print(f"loadavg before decoding: {bench.loadavg()}")
    with torch.no_grad():
        # Warm-up (allocator, kernels) so the first method measured is not penalised.
        generate_tokens(model, prompts[:1], max_new_tokens=4)
        times = bench.round_robin(methods, args.repeats, warmup=0,
                                  sync=torch.cuda.synchronize if device.type == "cuda" else None)
    nocache, kv, spec = outputs["no_cache"], outputs["kv_cache"], outputs["speculative"]
    n_tokens = {n: sum(len(o) for o in outs) for n, outs in outputs.items()}
    same = sum(a == b == c for a, b, c in zip(nocache, kv, spec))
    print(f"prompts: {len(prompts)}, new tokens: {n_tokens['kv_cache']}, identical outputs "
          f"(no-cache = kv = speculative): {same}/{len(prompts)}")
    rates = {n: [n_tokens[n] / t for t in ts] for n, ts in times.items()}
    for n, r in rates.items():
        s = bench.summarize(r)
        print(f"{n}_tokens_per_s: median {s['median']:.1f} (IQR {s['q1']:.1f}–{s['q3']:.1f}, "
              f"min–max {s['min']:.1f}–{s['max']:.1f}, n={s['n']})")
    print(f"acceptance_rate: {stats.acceptance_rate:.3f} accepted drafts/step "
          f"(of {margs.n_future_tokens - 1}; {stats.accepted}/{stats.drafted} drafts, {stats.steps} steps)")
    print(f"tokens_per_forward: {stats.new_tokens / max(1, stats.steps + len(prompts)):.3f}")
    kv_gain = bench.summarize(bench.paired_ratios(rates["kv_cache"], rates["no_cache"]))
    print(f"kv_cache ÷ no_cache per round: median {kv_gain['median']:.2f} (min–max {kv_gain['min']:.2f}–{kv_gain['max']:.2f})")
    spec_r = bench.summarize(bench.paired_ratios(rates["speculative"], rates["kv_cache"]))
    print(f"speculative ÷ kv_cache per round: median {spec_r['median']:.3f} "
          f"(IQR {spec_r['q1']:.3f}–{spec_r['q3']:.3f}, min–max {spec_r['min']:.3f}–{spec_r['max']:.3f})")
    print(f"loadavg after: {bench.loadavg()}")
    print(f"speculative_speedup: {spec_r['median']:.3f}")


if __name__ == "__main__":
    main()
