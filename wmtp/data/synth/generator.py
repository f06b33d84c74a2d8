"""Generate the synthetic task: problems, execution-labelled solutions, split by problem per family.

Deterministic under ``seed``: every random choice comes from ``random.Random`` streams derived from
the seed, the family and the problem number, and execution results are pure functions of the code.
"""

from __future__ import annotations

import difflib
import random
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wmtp.data.records import Record
from wmtp.data.synth.execution import ExecJob, run_jobs
from wmtp.data.synth.families import FAMILIES, LETTERS, Family, Params
from wmtp.data.template import format_prompt

SPLITS = ("train", "valid", "test")
N_EXAMPLES = 2  # hidden-test cases shown in the instruction


@dataclass
class Problem:
    problem_id: str
    family: Family
    params: Params
    split: str
    inputs: tuple[str, ...]
    candidates: tuple[str, ...]  # program sources (correct variants first, then mutants)
    n_variants: int  # how many of `candidates` were written as correct variants
    instruction: str = ""
    input: str = ""
    test: str = ""
    passed: tuple[bool, ...] = ()

    @property
    def difficulty(self) -> int:
        return self.family.difficulty

    @property
    def canonical_solution(self) -> str:
        return self.candidates[0]

    def records(self) -> Iterator[Record]:
        variants = self.candidates[:self.n_variants]
        for i, (code, ok) in enumerate(zip(self.candidates, self.passed, strict=True)):
            span = decisive_span(code, variants) if i >= self.n_variants else None
            yield Record(self.problem_id, self.instruction, self.input, code, ok, self.difficulty, self.family.name,
                         span)

    def eval_record(self) -> dict[str, Any]:
        return {
            "task_id": self.problem_id, "prompt": format_prompt(self.instruction, self.input),
            "entry_point": self.family.entry, "test": self.test, "canonical_solution": self.canonical_solution,
            "completion_is_program": True, "family": self.family.name, "difficulty": self.difficulty,
        }


@dataclass
class SynthDataset:
    seed: int
    problems: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> list[Problem]:
        return [p for p in self.problems if p.split == name]

    def records(self, split: str) -> Iterator[Record]:
        for p in self.split(split):
            yield from p.records()

    def eval_records(self, split: str) -> list[dict[str, Any]]:
        return [p.eval_record() for p in self.split(split)]

    def stats(self) -> dict[str, Any]:
        recs = [r for p in self.problems for r in p.records()]
        mutants = sum(len(p.candidates) - p.n_variants for p in self.problems)
        mutants_passing = sum(sum(p.passed[p.n_variants:]) for p in self.problems)
        return {
            "problems": len(self.problems), "families": len({p.family.name for p in self.problems}),
            "records": len(recs), "correct": sum(r.is_correct for r in recs),
            "mutants": mutants, "mutants_passing": mutants_passing,
            **{f"{s}_problems": len(self.split(s)) for s in SPLITS},
        }


def decisive_span(mutant: str, variants: Sequence[str]) -> tuple[int, int]:
    """`[start, end)` characters of `mutant` that differ from its closest correct variant (by
    difflib ratio): the smallest span covering every edit, on the mutant's side. A pure deletion
    (the mutant lacks characters) marks the characters on both sides of the gap."""
    best = max(variants, key=lambda v: difflib.SequenceMatcher(None, mutant, v, autojunk=False).ratio())
    edits = [(i1, i2) for tag, i1, i2, _, _ in
             difflib.SequenceMatcher(None, mutant, best, autojunk=False).get_opcodes() if tag != "equal"]
    if not edits:  # textually equal to a variant: nothing is decisive
        return (0, 0)
    start, end = min(i1 for i1, _ in edits), max(i2 for _, i2 in edits)
    if start == end:
        start, end = max(0, start - 1), min(len(mutant), end + 1)
    return (start, end)


def _with_derived(p: Params) -> Params:
    out = dict(p)
    for k, v in p.items():
        if isinstance(v, int) and not isinstance(v, bool):
            out[f"{k}_p"], out[f"{k}_m"] = v + 1, v - 1
    return out


def _program(fam: Family, body: str, p: Params) -> str:
    return fam.signature() + "\n" + textwrap.indent(body.format(**p), "    ") + "\n"


def _int_consts(p: Params) -> list[int]:
    return [v for k, v in p.items() if isinstance(v, int) and not isinstance(v, bool) and not k.endswith(("_p", "_m"))]


def _test_inputs(fam: Family, p: Params, rng: random.Random) -> list[str]:
    """Argument literals hitting every constant's boundary (c-1, c, c+1) plus random cases."""
    consts = _int_consts(p)
    bounds = [k + d for k in consts for d in (-1, 0, 1)]
    vals: list[Any] = []
    if fam.kind == "int":
        vals = bounds + [0, 1, -1] + [rng.randint(-30, 90) for _ in range(4)]
    elif fam.kind == "list":
        pool = bounds + [rng.randint(-12, 40) for _ in range(6)]
        vals = [[], [consts[0]], rng.sample(bounds, min(3, len(bounds)))]
        for k in consts:  # lengths around small constants (take_first)
            if 1 <= k <= 10:
                vals += [[rng.choice(pool) for _ in range(n)] for n in (k - 1, k, k + 1)]
        vals += [[rng.choice(pool) for _ in range(rng.randint(1, 6))] for _ in range(4)]
        c0 = consts[0]
        vals += [[-3, 0, 1, 5], [c0, c0 + 1, c0], [c0 - 5, c0 - 3]]  # duplicates; all below the constant
    else:
        letters = LETTERS + "".join(str(v) for k, v in p.items() if k in ("a", "b"))
        vals = ["", "".join(rng.choice(letters) for _ in range(3))]
        for k in consts:
            if 1 <= k <= 10:
                vals += ["".join(rng.choice(letters) for _ in range(n)) for n in (k - 1, k, k + 1)]
        vals += ["".join(rng.choice(letters) for _ in range(rng.randint(1, 8))) for _ in range(4)]
        if "a" in p:
            vals.append(p["a"] * 2 + p.get("b", "x"))
    seen, out = set(), []
    for v in vals:
        lit = repr(v)
        if lit not in seen:
            seen.add(lit)
            out.append(lit)
    return out


def _sample_problems(n_problems: int, seed: int) -> list[tuple[Family, Params]]:
    """Round-robin over families, skipping repeats of a family's constants; exhausted families drop out."""
    rngs = {f.name: random.Random(f"{seed}/params/{f.name}") for f in FAMILIES}
    seen: dict[str, set] = {f.name: set() for f in FAMILIES}
    active = list(FAMILIES)
    chosen: list[tuple[Family, Params]] = []
    while len(chosen) < n_problems and active:
        for fam in list(active):
            if len(chosen) >= n_problems:
                break
            for _ in range(50):
                p = fam.params(rngs[fam.name])
                key = tuple(sorted(p.items()))
                if key not in seen[fam.name]:
                    seen[fam.name].add(key)
                    chosen.append((fam, p))
                    break
            else:
                active.remove(fam)
    return chosen


def _assign_splits(problems: list[tuple[Family, Params]], seed: int, valid_frac: float,
                   test_frac: float) -> list[str]:
    """Split by problem within each family, so every template has held-out problems."""
    splits = ["train"] * len(problems)
    by_family: dict[str, list[int]] = {}
    for i, (fam, _) in enumerate(problems):
        by_family.setdefault(fam.name, []).append(i)
    for name, idx in by_family.items():
        idx = idx[:]
        random.Random(f"{seed}/split/{name}").shuffle(idx)
        n = len(idx)
        n_test = max(1, round(n * test_frac)) if n >= 3 else 0
        n_valid = max(1, round(n * valid_frac)) if n >= 3 else 0
        for j in idx[:n_test]:
            splits[j] = "test"
        for j in idx[n_test:n_test + n_valid]:
            splits[j] = "valid"
    return splits


def generate(n_problems: int = 2000, seed: int = 0, *, workers: int | None = None,
             valid_frac: float = 0.1, test_frac: float = 0.1, max_variants: int = 3,
             max_mutants: int = 3, timeout_s: float = 1.0) -> SynthDataset:
    """Generate ``n_problems`` problems with execution-labelled solutions and a per-family split."""
    if n_problems < 1:
        raise ValueError(f"n_problems must be >= 1, got {n_problems}")
    sampled = _sample_problems(n_problems, seed)
    splits = _assign_splits(sampled, seed, valid_frac, test_frac)
    counters: dict[str, int] = {}
    problems: list[Problem] = []
    for (fam, raw), split in zip(sampled, splits, strict=True):
        k = counters[fam.name] = counters.get(fam.name, -1) + 1
        rng = random.Random(f"{seed}/problem/{fam.name}/{k}")
        p = _with_derived(raw)
        variants = [fam.solutions[0]] + rng.sample(fam.solutions[1:], min(max_variants - 1, len(fam.solutions) - 1))
        mutants = rng.sample(fam.mutants, min(max_mutants, len(fam.mutants)))
        cands = tuple(_program(fam, b, p) for b in variants + mutants)
        problems.append(Problem(f"{fam.name}-{seed}-{k:05d}", fam, p, split, tuple(_test_inputs(fam, p, rng)),
                                cands, len(variants)))
    jobs = [ExecJob(pr.family.entry, pr.candidates[0], pr.inputs, pr.candidates) for pr in problems]
    for pr, res in zip(problems, run_jobs(jobs, workers=workers, timeout_s=timeout_s), strict=True):
        pr.test, pr.passed = res.test, res.passed
        ex_rng = random.Random(f"{seed}/examples/{pr.problem_id}")
        # the shortest cases keep prompts short (random tie-break); the hidden test has them all
        cost = [(len(pr.inputs[i]) + len(res.expected[i]), ex_rng.random(), i) for i in range(len(pr.inputs))]
        shown = sorted(i for _, _, i in sorted(cost)[:N_EXAMPLES])
        examples = "\n".join(f"{pr.family.entry}({pr.inputs[i]}) == {res.expected[i]}" for i in shown)
        desc = pr.family.describe.format(**pr.params)
        pr.instruction = f"Write a Python function `{pr.family.entry}({pr.family.arg})` that {desc}.\nExamples:\n{examples}"
        pr.input = pr.family.signature()
    return SynthDataset(seed, problems)
