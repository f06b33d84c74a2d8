"""Does the micro model learn the bundled synthetic task? A plain loop, naive CE, on CPU.

    OMP_NUM_THREADS=1 python benchmarks/data_learnability.py [--steps 500] [--minutes 0]

Trains the ``micro`` preset (n_future_tokens=1, ~2M parameters) on the bundled task
(``ensure_bundled()``: 2000 problems, seed 0; correct solutions only, random sampler, batch 16,
max 128 tokens) with AdamW (lr 3e-3, 20 warm-up steps, cosine to 10%) and the plain next-token
cross-entropy over response tokens (logits materialised: fine at this size). Prints the training
loss (mean of the last ``--log-every`` steps) and the validation loss on a fixed set of batches,
then greedy pass@1 on held-out test problems, run against their hidden tests.
The budget is a number of steps, so the figure depends on the seed, not on the machine's load: one
torch thread and a fixed seed give the same losses and pass@1 on every run (the time taken
varies). ``--minutes`` (0: no cap, the default) stops a run early; a capped run says so, and its
figure is then a function of the steps the cap allowed.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from wmtp.data.bundled import ensure_bundled
from wmtp.data.dataset import TrainingData
from wmtp.data.records import read_eval_records
from wmtp.data.synth.execution import passes
from wmtp.model.args import get_preset
from wmtp.model.tokenizer import Tokenizer
from wmtp.model.transformer import build_model


def ce_loss(model, batch) -> torch.Tensor:
    out = model(batch.tokens, key_padding_mask=batch.attention_mask, return_logits=True)
    logits = out.logits[:, :-1, 0]  # head 1 at t predicts t+1: [B, S-1, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def greedy(model, tok: Tokenizer, prompt: str, max_new: int, max_len: int) -> str:
    ids = tok.encode(prompt, bos=True)
    out: list[int] = []
    for _ in range(max_new):
        x = torch.tensor([(ids + out)[-max_len:]])
        nxt = int(model(x, return_logits=True).logits[0, -1, 0].argmax())
        if nxt == tok.eos_id:
            break
        out.append(nxt)
    return tok.decode(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop early after this long (0: no cap)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-problems", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    b = ensure_bundled()
    tok = Tokenizer(b.tokenizer)
    args = get_preset("micro").replace(n_future_tokens=1, max_seq_len=128)
    assert tok.vocab_size <= args.vocab_size, (tok.vocab_size, args.vocab_size)
    model = build_model(args, seed=a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    train = TrainingData(b.train, b.train_index, tok, max_seq_len=128)
    valid = TrainingData(b.valid, b.valid_index, tok, max_seq_len=128)
    it = train.batches(train.sampler("random", samples="correct", seed=a.seed), 16)
    vs = valid.sampler("random", samples="correct", seed=a.seed + 1)
    val_batches = [valid.collate(vs.next(16)) for _ in range(8)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < 20:
            return (step + 1) / 20
        p = (step - 20) / max(1, a.steps - 20)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    print(f"micro model: {n_params / 1e6:.2f}M params; train {len(train)} records "
          f"({int(train.index.is_correct.sum())} correct); tokenizer vocab {tok.vocab_size}")
    print("| step | train loss | valid loss | tokens seen | minutes |")
    print("|---:|---:|---:|---:|---:|")
    def capped(minutes: float) -> bool:
        return a.minutes > 0 and minutes > a.minutes

    t0, tokens, window = time.perf_counter(), 0, []
    for step in range(1, a.steps + 1):
        batch = next(it)
        model.train()
        loss = ce_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        tokens += int(batch.attention_mask.sum())
        minutes = (time.perf_counter() - t0) / 60
        if step % a.log_every == 0 or step == 1 or step == a.steps or capped(minutes):
            model.eval()
            with torch.no_grad():
                vl = sum(ce_loss(model, vb).item() for vb in val_batches) / len(val_batches)
            print(f"| {step} | {sum(window) / len(window):.3f} | {vl:.3f} | {tokens} | {minutes:.2f} |", flush=True)
            window = []
        if capped(minutes):
            print(f"stopped by the --minutes cap at step {step}")
            break
    print(f"throughput: {tokens / (time.perf_counter() - t0):.0f} tokens/s")
    model.eval()
    tests = read_eval_records(b.test_eval)[: a.eval_problems]
    by_family: dict[str, list[int]] = {}
    for e in tests:
        code = greedy(model, tok, e["prompt"], max_new=64, max_len=128)
        by_family.setdefault(e["family"], []).append(int(passes(code, e["entry_point"], e["test"])))
    total = sum(sum(v) for v in by_family.values())
    print(f"greedy pass@1 on {len(tests)} held-out test problems: {total / len(tests):.2%}")
    print("per family: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(by_family.items())))
    print(f"final_valid_loss: {vl:.3f}")
    print(f"pass_at_1: {total / len(tests):.3f}")


if __name__ == "__main__":
    main()
