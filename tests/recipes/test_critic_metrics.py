"""Critic metrics are measured at the positions the critic losses train (issue 11 item 3).

The critic losses train the states `s−1 … e−1` (the value of the prefix before each response
token) and GAE never reads `V_e` (the EOS position). A hand-built critic writes a known score at
the last trained state `e−1` and the opposite score at `e`: the recipe's `val/critic_auc` must be
the AUC of the trained-position scores (0.75 here, by hand), not of the untrained ones (0.25).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from wmtp.data.collator import Batch
from wmtp.evaluation.metrics import final_values, roc_auc
from wmtp.parallel.reduce import DistEnv
from wmtp.recipes.critic import CriticRecipe

# rows: correct, correct, incorrect, incorrect; scores at e−1: 0.9, 0.4, 0.6, 0.1
# pairs (pos > neg): 0.9>0.6, 0.9>0.1, 0.4>0.1 → 3 of 4 → AUC 0.75; at e (1 − score) → 0.25
SCORES = torch.tensor([0.9, 0.4, 0.6, 0.1], dtype=torch.float64)
CORRECT = torch.tensor([True, True, False, False])
START = torch.tensor([3, 2, 4, 3])
END = torch.tensor([6, 5, 7, 4])  # EOS positions (inclusive response ends)


def hand_batch() -> Batch:
    B, S = 4, 9
    tokens = torch.arange(B * S).reshape(B, S) % 50 + 4
    labels = torch.full((B, S), -100)
    mask = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        labels[b, START[b]:END[b] + 1] = tokens[b, START[b]:END[b] + 1]
        mask[b, :END[b] + 1] = True
    return Batch(tokens, labels, mask, CORRECT, START, END, [f"p{b // 2}" for b in range(B)], torch.arange(B))


class HandCritic(torch.nn.Module):
    """V = 0.5 everywhere except SCORES at e−1 (trained) and 1 − SCORES at e (untrained)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        v = torch.full(tokens.shape, 0.5, dtype=torch.float64)
        rows = torch.arange(tokens.shape[0])
        v[rows, END - 1] = SCORES
        v[rows, END] = 1 - SCORES
        return v


def test_final_values_reads_the_last_trained_state():
    batch = hand_batch()
    finals = final_values(HandCritic()(batch.tokens), batch)
    assert torch.equal(finals, SCORES)
    assert roc_auc(finals, CORRECT) == 0.75
    untrained = HandCritic()(batch.tokens).gather(1, END[:, None]).squeeze(1)
    assert roc_auc(untrained, CORRECT) == 0.25  # what the EOS position would have reported


def test_critic_recipe_validation_scores_trained_positions():
    recipe = CriticRecipe.__new__(CriticRecipe)
    recipe.critic = SimpleNamespace(model=HandCritic())
    recipe.valid = [hand_batch()]
    recipe.layout = DistEnv()
    recipe.cfg = SimpleNamespace(train=SimpleNamespace(steps=4))  # step 1 is not the last: no quality report
    metrics = recipe.evaluate(step=1)
    assert metrics["val/critic_auc"] == 0.75
    # mean state value over s−1 … e−1: 0.5 everywhere but the e−1 score, so the order is SCORES'
    assert metrics["val/critic_mean_value_auc"] == 0.75
    assert metrics["val/pairwise_accuracy"] == 0.75
