"""CLI commands, the recipes layer; the same concept as each package's commands.py.

``wmtp data score-reference``: Rho-1's reference losses of the training data, precomputed for
``data.reference_losses``.

``register(data_actions)`` is called by ``wmtp.cli`` with the ``wmtp data`` actions; handlers raise
:class:`DataError` for user mistakes (the CLI exits 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wmtp.data.errors import DataError


def register(data_actions: argparse._SubParsersAction) -> None:
    sr = data_actions.add_parser("score-reference",
                                 help="precompute Rho-1 reference losses of the training data "
                                      "(for data.reference_losses)")
    sr.add_argument("--reference", required=True,
                    help="reference checkpoint folder (the ref_tuning export, or a Meta checkpoint)")
    sr.add_argument("--out", default=None,
                    help="output .npz (default: <train jsonl>.reference-losses.npz, beside the data)")
    sr.add_argument("--batch-size", type=int, default=None, help="sequences per forward (default data.batch_size)")
    from wmtp.config.arguments import add_config_arguments

    add_config_arguments(sr)
    sr.set_defaults(func=run_score_reference)


def run_score_reference(args: argparse.Namespace) -> int:
    """Score every training row once with the frozen reference; the rows, tokenizer and
    max_seq_len are the ones the configured rho1_weighted run will train on."""
    from wmtp.checkpoint import load_model
    from wmtp.config.arguments import config_from_args
    from wmtp.data.streams import load_data
    from wmtp.recipes.experience import write_reference_losses

    cfg = config_from_args(args)
    batch_size = args.batch_size or cfg.data.batch_size
    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {batch_size}")
    if not Path(args.reference).is_dir():
        raise DataError(f"--reference {args.reference}: no such checkpoint folder")
    reference = load_model(args.reference, device="cpu").eval()
    data = load_data(cfg)
    if reference.args.vocab_size != data.tokenizer.vocab_size:
        raise DataError(f"--reference {args.reference} has vocab_size={reference.args.vocab_size} but the "
                        f"configured tokenizer has {data.tokenizer.vocab_size}: score with the tokenizer it "
                        "was trained with (model.tokenizer)")
    out = Path(args.out) if args.out else Path(str(data.train.path) + ".reference-losses.npz")
    path = write_reference_losses(reference, data.train, out, batch_size=batch_size,
                                  max_seq_len=cfg.data.max_seq_len, chunk_size=cfg.train.loss_chunk_size)
    print(f"reference losses of {len(data.train)} rows: {path}")
    print(f"use: data.reference_losses={path}")
    return 0
