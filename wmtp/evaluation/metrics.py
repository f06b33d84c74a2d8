"""Validation during training: the policy's unweighted CE per head, the critic's ranking metrics
(AUC, pairwise accuracy) on the value of the last trained state, and a small greedy pass@1 check
(`train.eval_generate_every`). Every statistic is global over ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wmtp.config.schema import WMTPConfig
from wmtp.data.collator import Batch
from wmtp.data.streams import policy_labels
from wmtp.losses.mtp import mtp_cross_entropy
from wmtp.model.transformer import Transformer
from wmtp.parallel.build import is_fsdp_sharded
from wmtp.parallel.reduce import DistEnv, global_sum
from wmtp.training.step import n_heads_of, step_denominators
from wmtp.weighting.diagnostics import rank_auc


@torch.no_grad()
def validate_policy(model: Transformer, batches: list[Batch], cfg: WMTPConfig, layout: DistEnv,
                    samples: str = "correct") -> dict[str, float]:
    """Unweighted CE per head over the fixed validation batches (global token means)."""
    model.eval()
    H = n_heads_of(model)
    labels = [policy_labels(b, samples) for b in batches]
    denom = step_denominators(labels, H, layout)
    total = torch.zeros(H, dtype=torch.float64, device=layout.device)
    for b, lb in zip(batches, labels):
        out = model(b.tokens)
        res = mtp_cross_entropy(out.hidden, model.output.weight, lb, denominators=denom,  # type: ignore[union-attr]  # a policy has its output projection
                                chunk_size=cfg.train.loss_chunk_size)
        total += res.ce_per_head.double()
    total = global_sum(total, layout)
    model.train()
    metrics = {f"val/ce_head{k + 1}": v for k, v in enumerate(total.tolist())}
    metrics["val/ce"] = metrics["val/ce_head1"]
    return metrics


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """AUC of `scores` separating `labels` (bool), ties counted half; NaN with one class only
    (the project's one implementation: `weighting.diagnostics.rank_auc`)."""
    return rank_auc(scores, labels)


def final_values(values: Tensor, batch: Batch) -> Tensor:
    """`[B]` the critic's value of the last *trained* state: `V_{e−1}`, the prefix before the last
    response token e (EOS, or the cut token of a truncated response). The critic losses train the
    states `s−1 … e−1` (`state_values`) and GAE never reads `V_e`, so the value at e itself is
    untrained and must not be scored (issue 11 item 3)."""
    last_state = (batch.response_end - 1).clamp_min(0)
    return values.gather(1, last_state[:, None]).squeeze(1)


def pairwise_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Share of (correct, incorrect) pairs ordered correctly by `scores` — the AUC without ties
    credit; validation proxy of the pairwise objective over all cross pairs."""
    pos, neg = scores[labels.bool()], scores[~labels.bool()]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    return float((pos[:, None] > neg[None, :]).double().mean())


# Generation check during training (issue 6: "recipes can run a small evaluation every N steps")

GENERATE_EVAL_TASKS = 8  # a cheap progress signal, not a benchmark (use `wmtp eval` for that)


def generation_eval_tasks(cfg: WMTPConfig, n_tasks: int = GENERATE_EVAL_TASKS) -> list:
    """The first `n_tasks` records of the bundled task's validation split (HumanEval format)."""
    from wmtp.data.bundled import ensure_bundled
    from wmtp.evaluation.benchmarks import load_jsonl_tasks

    bundled = ensure_bundled(n_problems=cfg.data.synth_problems, seed=cfg.data.synth_seed)
    return load_jsonl_tasks(bundled.valid_eval, limit=n_tasks)


def evaluate_generation(model: Transformer, tokenizer, tasks: list, cfg: WMTPConfig, layout: DistEnv,
                        step: int) -> dict[str, float]:
    """Greedy pass@1 of the policy on `tasks` as `eval/pass_at_1` (…, `eval/n_tasks`) when
    `train.eval_generate_every` divides `step`; {} otherwise.

    Replicated models generate on rank 0 only; FSDP-sharded ones on every rank in lockstep (their
    forwards gather shards). Only rank 0 returns the metrics; the recipe's `evaluate` returns them
    with its validation metrics, so every rank logs (and reports to Ray) the same number of times."""
    every = cfg.train.eval_generate_every
    if not every or step % every != 0 or not tasks:
        return {}
    if not layout.is_main and not is_fsdp_sharded(model):
        return {}
    from wmtp.evaluation.runner import evaluate_pass_at_k

    result = evaluate_pass_at_k(model, tokenizer, tasks, n=1, k=[1], temperature=0.0,
                                max_new_tokens=cfg.data.max_seq_len, batch_size=len(tasks), seed=cfg.run.seed,
                                workers=1, n_bootstrap=100)
    if not layout.is_main:
        return {}
    return {f"eval/{k}": v for k, v in result.metrics.items()}
