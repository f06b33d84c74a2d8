"""Is the critic worth its name? Two figures over the validation solutions (docs/RECIPES.md):

- `final_value_auc`: the AUC of the value of the last trained state, V_{e−1}, for correct vs
  incorrect solutions (0.5 = chance, 1 = it ranks every correct solution above every incorrect one);
- `decisive_td_auc`: on incorrect solutions that carry a `decisive_span`, the within-solution AUC
  of the TD error δ_j = γV_j − V_{j−1} (+ R at the end) at the decisive tokens vs the solution's
  other tokens (`weighting.diagnostics.within_solution_auc`; exact null 0.5). A critic that sees
  the bug drops its value there: low δ, AUC well below 0.5;
- `decisive_weight_auc` (with `weights`, as a run configures them): the same AUC of the token
  weights the run would train with on those solutions (below 0.5: the bug gets less weight).

`measure_critic` runs the critic over (up to `max_solutions` of) the validation rows, each rank a
strided share, and pools the figures over ranks. Every rank runs the same number of forwards (a
sharded critic needs all of them), repeating a row of its own when its share is shorter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wmtp.evaluation.decisive import decisive_token_mask, strided_batches
from wmtp.evaluation.metrics import final_values
from wmtp.parallel import reduce
from wmtp.parallel.reduce import DistEnv
from wmtp.weighting.diagnostics import rank_auc, within_solution_auc
from wmtp.weighting.gae import compute_gae


@torch.no_grad()
def measure_critic(critic, data, tokenizer, *, gamma: float, reward_mode: str, batch_size: int,
                   layout: DistEnv, max_solutions: int | None = None, weights=None) -> dict[str, float]:
    """`critic_quality/{final_value_auc, decisive_td_auc, solutions, decisive_solutions}` of a
    value model over the validation `data` (a `TrainingData`), and `decisive_weight_auc` when
    `weights(values [B, S], batch, response [B, S]) -> [B, S]` gives the run's token weights."""
    n = len(data) if max_solutions is None else min(len(data), max_solutions)
    was_training = critic.training
    critic.eval()
    finals, outcomes, td_aucs, w_aucs = [], [], [], []
    for records, batch, real in strided_batches(data, np.arange(n), batch_size, layout):
        values = critic(batch.tokens).float()
        if not real:
            continue
        finals.append(final_values(values, batch).double())
        outcomes.append(batch.is_correct.long())
        response = batch.labels != -100
        delta, _ = compute_gae(values, response, batch.is_correct.to(values.dtype), gamma, 0.0, reward_mode,
                               truncated=batch.truncated)  # λ = 0: the advantage is δ
        spans = [r.decisive_span if not r.is_correct else None for r in records]
        if any(s is not None for s in spans):
            decisive = decisive_token_mask(tokenizer, batch.tokens.cpu(), batch.response_start.cpu(),
                                           batch.response_end.cpu(), spans)
            w = weights(values, batch, response).cpu() if weights is not None else None
            for b in range(len(records)):
                if spans[b] is not None:
                    auc, used = within_solution_auc(delta[b:b + 1].cpu(), decisive[b:b + 1], response[b:b + 1].cpu())
                    if used:
                        td_aucs.append(auc)
                    if w is not None:
                        auc, used = within_solution_auc(w[b:b + 1].double(), decisive[b:b + 1], response[b:b + 1].cpu())
                        if used:
                            w_aucs.append(auc)
    critic.train(was_training)
    device = layout.device
    empty = torch.zeros(0, dtype=torch.float64, device=device)
    finals_all = reduce.gather_cat(torch.cat(finals) if finals else empty, layout)
    outcomes_all = reduce.gather_cat(torch.cat(outcomes).double() if outcomes else empty, layout).bool()
    td_all = reduce.gather_cat(torch.tensor(td_aucs, dtype=torch.float64, device=device), layout)
    extra = {}
    if weights is not None:
        w_all = reduce.gather_cat(torch.tensor(w_aucs, dtype=torch.float64, device=device), layout)
        extra["critic_quality/decisive_weight_auc"] = float(w_all.mean()) if w_all.numel() else float("nan")
    return extra | {"critic_quality/final_value_auc": rank_auc(finals_all.cpu(), outcomes_all.cpu()),
            "critic_quality/decisive_td_auc": float(td_all.mean()) if td_all.numel() else float("nan"),
            "critic_quality/solutions": float(finals_all.numel()),
            "critic_quality/decisive_solutions": float(td_all.numel())}


def critic_quality(cfg, critic, data, layout: DistEnv, with_weights: bool = False) -> dict[str, float]:
    """`measure_critic` as a run configures it: δ with the verifiable weights' γ and reward mode,
    the run's batch size, `value_model.quality_max_solutions` of `data.valid`; `with_weights`: also
    the AUC of the run's `stage2.value_weighting` weights (`weighting.weights.value_weights`, batch
    statistics, one batch at a time) at the decisive tokens."""
    vw = cfg.stage2.value_weighting
    return measure_critic(critic, data.valid, data.tokenizer, gamma=vw.gae_gamma, reward_mode=vw.reward,
                          batch_size=cfg.data.batch_size, layout=layout,
                          max_solutions=cfg.value_model.quality_max_solutions,
                          weights=(lambda v, b, r: run_weights(vw, v, b, r)) if with_weights else None)


def run_weights(vw, values, batch, response, advantages=None, generator=None):
    """The token weights `[B, S]` `stage2.value_weighting` gives one batch scored with `values`:
    the critic's GAE (`advantages` when already computed), or the position control's, normalised
    with this batch's statistics (`generator`: the shuffled control's permutation)."""
    from wmtp.weighting.normalize import build_normalizer
    from wmtp.weighting.weights import position_advantages, value_weights

    if vw.source == "position":
        mean = (values.double() * response).sum() / response.sum().clamp_min(1)
        advantages = position_advantages(values, response, batch.is_correct, mean, vw.gae_gamma, vw.gae_lambda,
                                         vw.reward, truncated=batch.truncated)
    elif advantages is None:
        advantages = compute_gae(values, response, batch.is_correct.to(values.dtype), vw.gae_gamma, vw.gae_lambda,
                                 vw.reward, truncated=batch.truncated)[0]
    normalizer = build_normalizer(vw.td_error_normalization, momentum=vw.ema_momentum, warmup_steps=vw.ema_warmup_steps)
    return value_weights(vw, advantages, response, normalizer=normalizer, generator=generator)[0]


def near_chance(quality: dict[str, float], min_final_value_auc: float, max_decisive_td_auc: float) -> list[str]:
    """The figures that fail their threshold, as readable phrases ([] = the critic passes)."""
    failed = []
    auc, td = quality["critic_quality/final_value_auc"], quality["critic_quality/decisive_td_auc"]
    if not auc >= min_final_value_auc:
        failed.append(f"final-value AUC {auc:.3f} < {min_final_value_auc} (0.5 = chance)")
    if not math.isnan(td) and td > max_decisive_td_auc:
        failed.append(f"decisive TD-error AUC {td:.3f} > {max_decisive_td_auc} (0.5 = blind to the bug)")
    return failed


def near_chance_message(quality: dict[str, float], cfg, what: str) -> str | None:
    """One line naming the figures that fail `value_model.quality_*` (None = the critic passes)."""
    vm = cfg.value_model
    failed = near_chance(quality, vm.quality_min_final_value_auc, vm.quality_max_decisive_td_auc)
    if not failed:
        return None
    return (f"warning: {what} is near chance on {int(quality['critic_quality/solutions'])} validation solutions: "
            f"{'; '.join(failed)}; its token weights are then mostly a position prior "
            "(see train/weights/position_spearman). Thresholds: value_model.quality_min_final_value_auc, "
            "value_model.quality_max_decisive_td_auc")
