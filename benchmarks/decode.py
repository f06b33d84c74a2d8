"""Greedy decoding speed: no cache vs KV cache vs self-speculative (MTP heads draft, head 1 verifies).

    python benchmarks/decode.py                 # CPU, trains a micro 4-head model first (~2-4 min)
    python benchmarks/decode.py --device cuda

The model is the `micro` preset with 6 blocks and 4 heads (2 shared trunk blocks, head 1, 3 extra
heads), trained briefly with the plain (unweighted) MTP loss on the bundled synthetic task
(`wmtp.data.bundled`: Alpaca prompt + solution + EOS) so that heads 2..4 are predictive; without
the bundled data it trains on a repetitive synthetic token stream instead (printed as `data:`).
Every method decodes the same prompts one at a time (batch 1, as speculative decoding does);
all three must produce the same tokens. Last line: `speculative_speedup: X` (speculative tokens/s
÷ KV-cache tokens/s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from wmtp.evaluation.generation import generate_tokens, greedy_decode_no_cache
from wmtp.evaluation.speculative import SpeculativeStats, speculative_greedy
from wmtp.model.args import get_preset
from wmtp.model.transformer import build_model


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
    H = model.n_heads
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


def timed(fn, device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--save", default=None,
                   help="also save the trained model (and the bundled tokenizer) here, for `wmtp eval`")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
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
        from wmtp.model.checkpoint import save_model

        save_model(model, args.save)
        if tokenizer_path is not None:
            shutil.copy(tokenizer_path, Path(args.save) / "tokenizer.model")
        print(f"saved model to {args.save}")

    n_new = args.max_new_tokens
    with torch.no_grad():
        # Warm-up (allocator, kernels) so the first method measured is not penalised.
        generate_tokens(model, prompts[:1], max_new_tokens=4)
        nocache, t_nocache = timed(lambda: [greedy_decode_no_cache(model, q, max_new_tokens=n_new, eos_id=eos_id)
                                            for q in prompts], device)
        kv, t_kv = timed(lambda: [generate_tokens(model, [q], max_new_tokens=n_new, eos_id=eos_id)[0]
                                  for q in prompts], device)
        stats = SpeculativeStats()

        def run_spec():
            outs = []
            for q in prompts:
                out, s = speculative_greedy(model, q, max_new_tokens=n_new, eos_id=eos_id)
                stats.merge(s)
                outs.append(out)
            return outs

        spec, t_spec = timed(run_spec, device)
    n_tokens = sum(len(o) for o in kv)
    same = sum(a == b == c for a, b, c in zip(nocache, kv, spec))
    print(f"prompts: {len(prompts)}, new tokens: {n_tokens}, identical outputs (no-cache = kv = speculative): "
          f"{same}/{len(prompts)}")
    rate_nocache = sum(len(o) for o in nocache) / t_nocache
    rate_kv, rate_spec = n_tokens / t_kv, sum(len(o) for o in spec) / t_spec
    print(f"no_cache_tokens_per_s: {rate_nocache:.1f}")
    print(f"kv_cache_tokens_per_s: {rate_kv:.1f}  (x{rate_kv / rate_nocache:.2f} vs no cache)")
    print(f"speculative_tokens_per_s: {rate_spec:.1f}")
    print(f"acceptance_rate: {stats.acceptance_rate:.3f} accepted drafts/step "
          f"(of {margs.n_future_tokens - 1}; {stats.accepted}/{stats.drafted} drafts, {stats.steps} steps)")
    print(f"tokens_per_forward: {stats.new_tokens / max(1, stats.steps + len(prompts)):.3f}")
    print(f"speculative_speedup: {rate_spec / rate_kv:.3f}")


if __name__ == "__main__":
    main()
