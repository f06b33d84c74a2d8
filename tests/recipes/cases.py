"""The golden cases: (recipe, overrides, metrics read back) on the tiny configuration."""

from __future__ import annotations

CASES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "baseline": ("baseline", (), ("train/loss", "val/ce")),
    "baseline_mtp4": ("baseline", ("model.n_future_tokens=4",), ("train/loss", "train/ce_head4", "val/ce_head4")),
    "ref_tuning": ("ref_tuning", (), ("train/loss",)),
    "critic": ("critic", (), ("train/value_loss", "val/critic_auc")),
    "critic_pairwise": ("critic", ("critic.loss=pairwise", "data.sampler=pairwise", "train.steps=2"),
                        ("train/value_loss", "train/pairwise_accuracy")),
    "verifiable": ("verifiable", (), ("train/loss", "train/value_loss", "train/weights/mean", "train/weights/ess",
                                     "train/weights/position_spearman")),
    "verifiable_mtp4": ("verifiable", ("model.n_future_tokens=4",), ("train/loss", "train/weighted_ce_head4")),
    "rho1_live": ("rho1_weighted", (), ("train/loss", "train/weighted_ce_head1", "train/weights/ess")),
}
