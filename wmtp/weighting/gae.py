"""GAE advantages and TD(λ) value targets on the response span (docs/MATH.md), vectorised.

Indexing: everything is `[B, S]` and indexed on response tokens j ∈ [s, e] (`response_mask`, one
contiguous span per row, EOS included, padding on either side); entries outside are 0. `values[:, j]`
is the critic's `V_j ≈ P(correct | x_{≤j})`, so the state *before* token j has value `V_{j−1}`:

    r_j = R·[j = e]·[not cut]                         (reward_mode="outcome")
    δ_j = r_j + γ·V_j·[j < e or cut] − V_{j−1}        (outcome)
    δ_j = γ·V_j − V_{j−1}                             (reward_mode="none", marginal value)
    A_j = δ_j + γλ·A_{j+1},  A_{e+1} = 0
    G_j = A_j + V_{j−1}                               (value target of the state before j)

A response cut at `data.max_seq_len` (`truncated`, "cut") has no terminal state at e: no reward
there, and its last step bootstraps from `V_e` like any other (docs/MATH.md "Truncated responses").

`A_j = Σ_{i=j}^{e} (γλ)^{i−j} δ_i` is a discounted reverse cumulative sum, computed with
triangular matmuls of powers `(γλ)^{i−j}, i ≥ j` (exponents ≥ 0, so nothing overflows and γλ = 0
or 1 need no special case) in blocks, the block carries combined by the same function at the
coarser scale. Accumulation is float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

REWARD_MODES = ("outcome", "none")
_BLOCK = 64


def _check_inputs(values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float, lam: float) -> None:
    if values.dim() != 2 or response_mask.shape != values.shape:
        raise ValueError(f"values and response_mask must both be [B, S]; got {list(values.shape)} and "
                         f"{list(response_mask.shape)}")
    if rewards.shape != values.shape[:1]:
        raise ValueError(f"rewards must be [B]={values.shape[0]}, got {list(rewards.shape)}")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= float(x) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {x}")
    m = response_mask.bool()
    if m[:, 0].any():
        raise ValueError("response_mask[:, 0] is True: a response token needs a state before it (BOS/prompt)")
    starts = (m[:, 1:] & ~m[:, :-1]).sum(1)
    if (starts > 1).any():
        raise ValueError("response_mask must hold one contiguous response span per row")


def discounted_reverse_cumsum(x: Tensor, discount: float, block: int = _BLOCK) -> Tensor:
    """`y_j = Σ_{i ≥ j} discount^{i−j} x_i` along the last dim. x: `[B, S]` → `[B, S]` (x's dtype).

    Blocks of `block` positions: a `[block, block]` upper-triangular power matrix gives in-block
    sums; the sums at block starts form the same recursion with discount^block, solved recursively;
    each position then adds `discount^{block−p}·y(next block start)`. O(B·S·block) work, no
    per-position loop, only non-negative exponents.
    """
    B, S = x.shape
    dev, dt = x.device, x.dtype
    if S == 0:
        return x.clone()
    c = min(block, S)
    n_blocks = -(-S // c)
    pad = n_blocks * c - S
    xb = torch.nn.functional.pad(x, (0, pad)).view(B, n_blocks, c)
    idx = torch.arange(c, device=dev, dtype=dt)
    expo = idx[None, :] - idx[:, None]  # [c, c]: i − j (row j, column i)
    base = torch.tensor(float(discount), device=dev, dtype=dt)
    powers = torch.where(expo >= 0, base.pow(expo.clamp_min(0)), torch.zeros((), device=dev, dtype=dt))
    local = xb @ powers.t()  # [B, nb, c]: local[j] = Σ_{i≥j in block} d^{i−j} x_i
    if n_blocks == 1:
        return local.view(B, -1)[:, :S]
    starts = discounted_reverse_cumsum(local[:, :, 0], float(discount) ** c, block)  # [B, nb]
    carry = torch.nn.functional.pad(starts[:, 1:], (0, 1))  # y at the next block's start
    tail = base.pow(c - idx)  # [c]: d^{c−p}
    out = local + carry[:, :, None] * tail[None, None, :]
    return out.view(B, -1)[:, :S]


def _terminal(is_last: Tensor, truncated: Tensor | None) -> Tensor:
    """`[B, S]` bool: j = e of a response that really ended (not cut at max_seq_len)."""
    if truncated is None:
        return is_last
    if truncated.shape != is_last.shape[:1]:
        raise ValueError(f"truncated must be [B]={is_last.shape[0]}, got {list(truncated.shape)}")
    return is_last & ~truncated.bool().to(is_last.device)[:, None]


def _deltas(values: Tensor, mask: Tensor, rewards: Tensor, gamma: float, reward_mode: str,
            truncated: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """δ_j on response tokens (0 elsewhere), float64, and V_{j−1} `[B, S]`. values `[B, S]`, mask `[B, S]` bool, rewards `[B]`,
    truncated `[B]` bool or None."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {list(REWARD_MODES)}, got {reward_mode!r}")
    v = values.detach().double()
    v_prev = torch.nn.functional.pad(v[:, :-1], (1, 0))  # V_{j−1}
    nxt = torch.nn.functional.pad(mask[:, 1:], (0, 1), value=False)
    is_last = _terminal(mask & ~nxt, truncated)  # j = e of a response that ended
    if reward_mode == "outcome":
        delta = rewards.double()[:, None] * is_last + gamma * v * (~is_last) - v_prev
    else:
        delta = gamma * v - v_prev
    return torch.where(mask, delta, torch.zeros_like(delta)), v_prev


def compute_gae(values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float, lam: float,
                reward_mode: str = "outcome", truncated: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GAE. values `[B, S]` (critic, detached here), response_mask `[B, S]` bool, rewards `[B]`
    (R per sample; ignored by reward_mode="none"), truncated `[B]` bool (responses cut before
    their EOS: no terminal reward, bootstrap from V_e; None = none cut). Returns (advantages
    `[B, S]`, returns `[B, S]`) in values' dtype, 0 outside the response."""
    _check_inputs(values, response_mask, rewards, gamma, lam)
    mask = response_mask.bool()
    delta, v_prev = _deltas(values, mask, rewards, gamma, reward_mode, truncated)
    # Outside the span δ = 0, and the span is contiguous, so the sum stops at e by itself.
    adv = discounted_reverse_cumsum(delta, gamma * lam) * mask
    ret = (adv + v_prev) * mask
    return adv.to(values.dtype), ret.to(values.dtype)


def lambda_returns(values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float,
                   lam: float, truncated: Tensor | None = None) -> Tensor:
    """TD(λ) targets with terminal reward R (critic pre-training): `G_j = A_j + V_{j−1}` of the
    outcome GAE with detached values. `[B, S]`; `G_j` is the target of the state before token j
    (`wmtp.losses.alignment.state_values(values)[:, j]`). λ=1 gives γ^{e−j}·R (Monte-Carlo),
    λ=0 gives the one-step target `r_j + γ V_j [j<e]`. Cut responses (`truncated`) bootstrap at e."""
    return compute_gae(values, response_mask, rewards, gamma, lam, "outcome", truncated)[1]


def compute_gae_reference(values: Tensor, response_mask: Tensor, rewards: Tensor, gamma: float,
                          lam: float, reward_mode: str = "outcome",
                          truncated: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Slow, obviously-correct reverse loop over positions (batch-vectorised), for tests and
    benchmarks. Same contract as `compute_gae`."""
    _check_inputs(values, response_mask, rewards, gamma, lam)
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode must be one of {list(REWARD_MODES)}, got {reward_mode!r}")
    B, S = values.shape
    v = values.detach().double()
    m = response_mask.bool()
    R = rewards.double()
    adv = torch.zeros(B, S, dtype=torch.float64, device=values.device)
    ret = torch.zeros_like(adv)
    next_adv = torch.zeros(B, dtype=torch.float64, device=values.device)
    cut = torch.zeros(B, dtype=torch.bool) if truncated is None else truncated.bool()
    for j in reversed(range(1, S)):
        in_resp = m[:, j]
        last = in_resp & ~(m[:, j + 1] if j + 1 < S else torch.zeros_like(in_resp))
        if reward_mode == "outcome":
            # a cut response's last token is an ordinary step: no reward, bootstrap from V_j
            delta = torch.where(last & ~cut, R, gamma * v[:, j]) - v[:, j - 1]
        else:
            delta = gamma * v[:, j] - v[:, j - 1]
        a = delta + gamma * lam * torch.where(last, torch.zeros_like(next_adv), next_adv)
        a = torch.where(in_resp, a, torch.zeros_like(a))
        adv[:, j] = a
        ret[:, j] = torch.where(in_resp, a + v[:, j - 1], torch.zeros_like(a))
        next_adv = a
    return adv.to(values.dtype), ret.to(values.dtype)
