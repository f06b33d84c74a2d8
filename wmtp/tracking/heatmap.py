"""A self-contained HTML page that colours each token by its loss weight.

Weights around 1 are neutral (white); above 1 red, below 1 blue, scaled by the page's extreme
weights so that Rho-1's 0/1 masks and the critic's exp(Â/T) weights both read well. Hovering a
token shows its text and exact weight. Every token string is HTML-escaped (code is full of `<`,
`&` and quotes); whitespace is preserved.
"""

from __future__ import annotations

import html
import math

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.sample {{ font-family: monospace; white-space: pre-wrap; border: 1px solid #ccc; padding: .5em;
          margin-bottom: 1em; line-height: 1.6; }}
.tok {{ border-radius: 2px; }}
.caption {{ font-size: .9em; color: #444; margin-bottom: .2em; }}
.legend span {{ padding: 0 .6em; margin-right: .3em; font-family: monospace; }}
</style></head><body>
<h2>{title}</h2>
<div class="legend">{legend}</div>
{rows}
</body></html>
"""


def _colour(w: float, lo: float, hi: float) -> str:
    """rgb() for weight `w`: white at 1, red toward `hi`, blue toward `lo`, grey if non-finite."""
    if not math.isfinite(w):
        return "rgb(160,160,160)"
    if w >= 1.0:
        t = 0.0 if hi <= 1.0 else min(1.0, (w - 1.0) / (hi - 1.0))
        g = round(255 * (1 - 0.75 * t))
        return f"rgb(255,{g},{g})"
    t = 0.0 if lo >= 1.0 else min(1.0, (1.0 - w) / (1.0 - lo))
    r = round(255 * (1 - 0.75 * t))
    return f"rgb({r},{r},255)"


def token_weight_heatmap_html(
    tokens: list[list[str]],
    weights: list[list[float]],
    title: str,
    row_labels: list[str] | None = None,
) -> str:
    """HTML page: one block per sample, `tokens[i][j]` coloured by `weights[i][j]`.

    tokens / weights: ragged lists, one row per sample, equal lengths row by row.
    row_labels: optional caption per sample (problem id, correct/incorrect, ...).
    """
    if len(tokens) != len(weights):
        raise ValueError(f"tokens has {len(tokens)} rows but weights has {len(weights)}")
    if row_labels is not None and len(row_labels) != len(tokens):
        raise ValueError(f"row_labels has {len(row_labels)} entries for {len(tokens)} rows")
    finite = [float(w) for row in weights for w in row if math.isfinite(float(w))]
    lo, hi = (min(finite), max(finite)) if finite else (1.0, 1.0)
    rows = []
    for i, (toks, ws) in enumerate(zip(tokens, weights)):
        if len(toks) != len(ws):
            raise ValueError(f"row {i}: {len(toks)} tokens but {len(ws)} weights")
        spans = []
        for tok, w in zip(toks, ws):
            w = float(w)
            tip = html.escape(f"{tok!r}  w={w:.4f}", quote=True)
            spans.append(
                f'<span class="tok" style="background:{_colour(w, lo, hi)}" title="{tip}">'
                f"{html.escape(tok, quote=True)}</span>"
            )
        caption = html.escape(row_labels[i] if row_labels is not None else f"sample {i}", quote=True)
        rows.append(f'<div class="caption">{caption}</div><div class="sample">{"".join(spans)}</div>')
    legend = " ".join(
        f'<span style="background:{_colour(v, lo, hi)}">{label} {v:.3g}</span>'
        for label, v in (("min", lo), ("neutral", 1.0), ("max", hi))
    )
    return _PAGE.format(title=html.escape(title, quote=True), legend=legend, rows="\n".join(rows))


def outcome_labels(is_correct: list[bool | None]) -> list[str]:
    """Row captions saying whether each sample's response was correct (by execution)."""
    marks = {True: "✓ correct", False: "✗ incorrect", None: "outcome unknown"}
    return [f"sample {i}: {marks[None if c is None else bool(c)]}" for i, c in enumerate(is_correct)]


def token_weight_heatmap_png(weights: list[list[float]], path, title: str,
                             row_labels: list[str] | None = None) -> None:
    """The same weights as an image (matplotlib, imported here only): one row per sample, one
    column per response token, colour centred on weight 1 (red above, blue below, grey = padding
    or non-finite), `row_labels` (e.g. `outcome_labels`) on the left, a colour bar on the right."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    width = max((len(r) for r in weights), default=1)
    grid = np.full((len(weights), max(1, width)), np.nan)
    for i, row in enumerate(weights):
        grid[i, :len(row)] = [float(w) for w in row]
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 2.0)
    lo, hi = min(lo, 1.0 - 1e-6), max(hi, 1.0 + 1e-6)
    cmap = plt.get_cmap("bwr").with_extremes(bad="#a0a0a0")
    fig, ax = plt.subplots(figsize=(min(16.0, 5 + 0.12 * width), 1.2 + 0.45 * len(weights)), dpi=100,
                           layout="constrained")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap,
                      norm=TwoSlopeNorm(vcenter=1.0, vmin=lo, vmax=hi), interpolation="nearest")
    ax.set_yticks(range(len(weights)), row_labels or [f"sample {i}" for i in range(len(weights))])
    for tick, label in zip(ax.get_yticklabels(), row_labels or []):
        tick.set_color("#1a7f37" if "✓" in label else "#cf222e" if "✗" in label else "black")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # token positions, not 2.5
    ax.set_xlabel("response token")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="loss weight")
    fig.savefig(path)
    plt.close(fig)


def log_weight_heatmap(logger, tokenizer, batch, weights, step: int, n_samples: int,
                       title: str) -> None:
    """Heatmap of the response tokens of the first `n_samples` rows (HTML with the tokens, and a
    PNG), each row marked correct / incorrect, logged as artifacts under `heatmaps/`.

    weights: `[B, S]` target-indexed (the weight of token j) or `[B, S, H]` (head 1's, shifted to
    the token it predicts)."""
    import tempfile
    from pathlib import Path

    from wmtp.losses.alignment import to_next_token

    if weights.dim() == 3:
        weights = to_next_token(weights[..., 0])
    rows, vals = [], []
    for i in range(min(n_samples, batch.tokens.shape[0])):
        s, e = int(batch.response_start[i]), int(batch.response_end[i])
        ids = batch.tokens[i, s:e + 1].tolist()
        rows.append([tokenizer.decode([t]) or tokenizer_piece(tokenizer, t) for t in ids])
        vals.append(weights[i, s:e + 1].double().tolist())
    correct = getattr(batch, "is_correct", None)
    labels = outcome_labels([None if correct is None else bool(correct[i]) for i in range(len(rows))])
    html = token_weight_heatmap_html(rows, vals, title, row_labels=labels)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"token_weights_step{step:06d}.html"
        path.write_text(html, encoding="utf-8")
        logger.log_artifact(path, "heatmaps")
        png = path.with_suffix(".png")
        token_weight_heatmap_png(vals, png, title, row_labels=labels)
        logger.log_artifact(png, "heatmaps")


def tokenizer_piece(tokenizer, token_id: int) -> str:
    """Readable stand-in for tokens that decode to nothing (EOS, control pieces)."""
    return "⟨eos⟩" if token_id == tokenizer.eos_id else f"⟨{token_id}⟩"
