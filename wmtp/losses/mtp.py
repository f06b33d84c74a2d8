"""Weighted multi-token-prediction cross-entropy that never materialises `[B, S, H, V]` logits.

`L = Σ_k c_k · Σ_t W_k(t) ℓ_k(t) M_k(t) / N_k` with `ℓ_k(t) = −log p_k(x_{t+k} | x_{≤t})`
(docs/MATH.md). Only valid targets are gathered (prompt and padding cost nothing); the valid rows
of all heads are projected to the vocabulary `chunk_size` rows at a time, and the backward pass
recomputes each chunk's logits instead of keeping them. Peak loss memory is one `[chunk, V]`
block (plus its softmax) whatever H, B and S are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wmtp.losses.alignment import IGNORE_INDEX, align_target_weights, shift_labels


@dataclass
class MTPLoss:
    """loss: scalar (differentiable). Per head, all detached and `[H]`:
    ce_per_head: `Σ_t ℓ_k M_k / N_k` (unweighted), weighted_ce_per_head: `Σ_t W_k ℓ_k M_k / N_k`
    (so `loss = Σ_k c_k weighted_ce_per_head[k]`), valid_counts: this batch's `M_k` counts (long).
    With global denominators, per-head values are this batch's share: all-reduce SUM gives the
    global mean."""

    loss: Tensor
    ce_per_head: Tensor
    weighted_ce_per_head: Tensor
    valid_counts: Tensor


def _acc_dtype(h: Tensor) -> torch.dtype:
    """Softmax/accumulation dtype: fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 (gradcheck)."""
    return torch.promote_types(h.dtype, torch.float32)


def _chunk_logits(h: Tensor, w: Tensor) -> Tensor:
    """h: `[n, D]`, w: `[V, D]` → `[n, V]` (matmul in the input dtype, softmax dtype out)."""
    return (h @ w.t()).to(_acc_dtype(h))


def _logsumexp_(logits: Tensor) -> Tensor:
    """Row-wise log-sum-exp of `[n, V]` that overwrites `logits` (no second `[n, V]` buffer)."""
    m = logits.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(logits.dtype).min)
    return logits.sub_(m).exp_().sum(dim=-1).log_() + m.squeeze(-1)


class _ChunkedWeightedCE(torch.autograd.Function):
    """`Σ_i coef_i · CE(h_i W^T, y_i)` over rows i, chunked, logits recomputed in backward.

    Forward inputs: h `[N, D]`, w `[V, D]`, targets `[N]` long, coef `[N]` float (no grad),
    chunk_size. Outputs: scalar loss and per-row CE `[N]` (non-differentiable, for metrics).
    """

    # Autocast is switched off inside: the forward's log-sum-exp and the backward's recomputed
    # logits must come from the same matmul, in the dtype of `h` (bf16 under FSDP mixed precision).
    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, targets: Tensor, coef: Tensor,
                chunk_size: int) -> tuple[Tensor, Tensor]:
        n = h.shape[0]
        acc = _acc_dtype(h)
        ce = torch.empty(n, device=h.device, dtype=acc)
        lse = torch.empty(n, device=h.device, dtype=acc)
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(h.dtype)
            for i in range(0, n, chunk_size):
                logits = _chunk_logits(h[i:i + chunk_size], wc)
                target_logit = logits.gather(1, targets[i:i + chunk_size, None]).squeeze(1)
                lse_c = _logsumexp_(logits)
                ce[i:i + chunk_size] = lse_c - target_logit
                lse[i:i + chunk_size] = lse_c
                del logits
            loss = (ce * coef.to(acc)).sum()
        ctx.save_for_backward(h, w, targets, coef, lse)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(ce)
        return loss, ce

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor,
                 _grad_ce: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        h, w, targets, coef, lse = ctx.saved_tensors
        chunk = ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = _acc_dtype(h)
        grad_h = torch.zeros_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, device=w.device, dtype=acc) if need_w else None
        scale = coef.to(acc) * grad_loss.to(acc)
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(h.dtype)
            for i in range(0, h.shape[0], chunk):
                hc = h[i:i + chunk]
                # d CE / d logits = softmax − onehot, scaled by the row's coefficient.
                g = _chunk_logits(hc, wc).sub_(lse[i:i + chunk, None]).exp_()  # in place: one [chunk, V]
                rows = torch.arange(g.shape[0], device=g.device)
                g[rows, targets[i:i + chunk]] -= 1.0
                g.mul_(scale[i:i + chunk, None])
                if grad_w is not None:  # need_w
                    grad_w.addmm_(g.t(), hc.to(acc))
                if grad_h is not None:  # need_h
                    grad_h[i:i + chunk] = g.to(h.dtype) @ wc
                del g
        if grad_w is not None:
            grad_w = grad_w.to(w.dtype)
        return grad_h, grad_w, None, None, None


def _per_head_weights(weights: Tensor | None, labels: Tensor, n_heads: int) -> Tensor | None:
    if weights is None:
        return None
    if weights.shape == labels.shape:
        return align_target_weights(weights.detach(), n_heads)
    if weights.shape == (*labels.shape, n_heads):
        return weights.detach()
    raise ValueError(
        f"weights must be [B, S]={list(labels.shape)} (target-indexed) or [B, S, H]="
        f"{[*labels.shape, n_heads]} (per position and head), got {list(weights.shape)}"
    )


def _check_hidden(hidden: list[Tensor], output_weight: Tensor, labels: Tensor) -> int:
    if len(hidden) == 0:
        raise ValueError("hidden must hold one [B, S, D] tensor per head, got an empty list")
    for k, h in enumerate(hidden):
        if h.shape[:2] != labels.shape or h.shape[-1] != output_weight.shape[1]:
            raise ValueError(
                f"hidden[{k}] has shape {list(h.shape)}; expected [B, S, D] with [B, S]={list(labels.shape)}"
                f" and D={output_weight.shape[1]}"
            )
    return len(hidden)


def _gather_valid_rows(hidden: list[Tensor], labels: Tensor, attention_mask: Tensor | None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows of every head's valid targets. Returns h `[N, D]`, targets `[N]`, head id `[N]`, and the
    flat index into `[B*S*H]` of each row."""
    n_heads = len(hidden)
    targets = shift_labels(labels, n_heads, attention_mask)  # [B, S, H]
    flat_valid = (targets != IGNORE_INDEX).permute(2, 0, 1).reshape(n_heads, -1)  # [H, B*S]
    rows, head_ids, flat_idx, tgt = [], [], [], []
    for k in range(n_heads):
        pos = flat_valid[k].nonzero().squeeze(1)  # indices into B*S
        rows.append(hidden[k].reshape(-1, hidden[k].shape[-1]).index_select(0, pos))
        tgt.append(targets[..., k].reshape(-1).index_select(0, pos))
        head_ids.append(torch.full_like(pos, k))
        flat_idx.append(pos * n_heads + k)
    return torch.cat(rows), torch.cat(tgt), torch.cat(head_ids), torch.cat(flat_idx)


def mtp_cross_entropy(
    hidden: list[Tensor],
    output_weight: Tensor,
    labels: Tensor,
    *,
    weights: Tensor | None = None,
    head_coefficients: Tensor | list[float] | None = None,
    denominators: Tensor | None = None,
    chunk_size: int = 1024,
    attention_mask: Tensor | None = None,
) -> MTPLoss:
    """Weighted MTP CE.

    hidden: H tensors `[B, S, D]` (entry k-1 = head k, after the final norm); output_weight:
    `[V, D]` (the shared `output.weight`); labels: `[B, S]` long (-100 = ignored).
    weights: None (≡1), `[B, S]` target-indexed (`W_k(t) = w_{t+k}`, shared by heads) or
    `[B, S, H]` per (position, head); always detached. head_coefficients: `[H]`, default 1/H.
    denominators: `[H]` `N_k` counted over the whole optimizer step (all ranks, all micro-batches;
    see `count_valid_targets`); default: this batch's counts. chunk_size: rows projected at once.
    attention_mask: `[B, S]` bool, needed only with left padding (padding is never a source).
    """
    n_heads = _check_hidden(hidden, output_weight, labels)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = hidden[0].device
    w_heads = _per_head_weights(weights, labels, n_heads)
    h_rows, targets, head_ids, flat_idx = _gather_valid_rows(hidden, labels, attention_mask)
    counts = torch.bincount(head_ids, minlength=n_heads)
    denom = counts if denominators is None else torch.as_tensor(denominators, device=device)
    if denom.shape != (n_heads,):
        raise ValueError(f"denominators must have shape [H]=[{n_heads}], got {list(denom.shape)}")
    acc = _acc_dtype(hidden[0])
    denom = denom.to(device=device, dtype=acc).clamp_min(1.0)  # N_k=0 ⇒ no rows anyway
    if head_coefficients is None:
        coefs = torch.full((n_heads,), 1.0 / n_heads, device=device, dtype=acc)
    else:
        coefs = torch.as_tensor(head_coefficients, device=device, dtype=acc)
        if coefs.shape != (n_heads,):
            raise ValueError(f"head_coefficients must have H={n_heads} entries, got {list(coefs.shape)}")
    row_w = (torch.ones_like(targets, dtype=acc) if w_heads is None
             else w_heads.reshape(-1).index_select(0, flat_idx).to(acc))
    row_coef = coefs[head_ids] * row_w / denom[head_ids]
    loss, ce = _ChunkedWeightedCE.apply(  # type: ignore[no-untyped-call]  # torch's apply is unannotated
        h_rows, output_weight, targets, row_coef, chunk_size)
    ce_sum = torch.zeros(n_heads, device=device, dtype=acc).index_add_(0, head_ids, ce)
    wce_sum = torch.zeros(n_heads, device=device, dtype=acc).index_add_(0, head_ids, ce * row_w)
    return MTPLoss(loss=loss, ce_per_head=ce_sum / denom, weighted_ce_per_head=wce_sum / denom,
                   valid_counts=counts)


@torch.no_grad()
def mtp_token_losses(hidden: list[Tensor], output_weight: Tensor, labels: Tensor,
                     chunk_size: int = 1024, attention_mask: Tensor | None = None) -> Tensor:
    """Per-(position, head) CE `ℓ_k(t)` without grad: `[B, S, H]` (fp32, or fp64 for fp64 inputs),
    0 where invalid. Rho-1's policy losses; with one head and a reference model, `[..., 0]` shifted
    by one (`ℓ^ref(j)` at j) gives the target-indexed reference losses."""
    n_heads = _check_hidden(hidden, output_weight, labels)
    h_rows, targets, _, flat_idx = _gather_valid_rows([h.detach() for h in hidden], labels, attention_mask)
    out = torch.zeros(labels.numel() * n_heads, device=labels.device, dtype=_acc_dtype(hidden[0]))
    for i in range(0, h_rows.shape[0], chunk_size):
        logits = _chunk_logits(h_rows[i:i + chunk_size], output_weight.detach())
        ce = torch.logsumexp(logits, -1) - logits.gather(1, targets[i:i + chunk_size, None]).squeeze(1)
        out[flat_idx[i:i + chunk_size]] = ce
    return out.view(*labels.shape, n_heads)
