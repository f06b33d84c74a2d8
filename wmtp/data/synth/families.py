"""Template families of the synthetic task.

A family is a small Python function shape with integer/string constants. Each problem instantiates
the constants; its candidate solutions are the family's *correct variants* (different but, by
construction, equivalent code) and *mutants* (plausible bugs: off-by-one, wrong operator or
constant, wrong edge case). Neither list decides a label: every candidate is run against the hidden
tests (:mod:`wmtp.data.synth.execution`), and some mutants are truly equivalent (e.g. ``x < c`` vs
``x <= c`` in ``min``) and end up labelled correct.

Bodies are ``str.format`` templates over the problem's parameters; for every int parameter ``k`` the
generator adds ``k_p = k + 1`` and ``k_m = k - 1``. ``difficulty`` counts composed steps (1-3).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "ocean", "maple", "pixel",
    "comet", "amber", "cedar", "delta", "ember", "fable", "grape", "harbor", "ivory", "jelly",
    "koala", "lotus", "mango", "nectar", "olive", "pepper", "quartz", "robin", "sugar", "tulip",
    "umber", "velvet", "walnut", "xenon", "yarrow", "zebra", "bison", "coral", "dune", "falcon",
    "garnet", "heron", "iris", "jasper", "kettle", "lilac", "meadow", "nutmeg", "orchid", "plum",
)
LETTERS = "abcdexyz"
SEPARATORS = ("-", "+", ",", ":", "|", "/", ".", "_", "#", "*")
MARKS = ("...", "~", "!", "+", "*", "?")

Params = dict[str, Any]


@dataclass(frozen=True)
class Family:
    """A problem template: the instruction, constants sampler, correct variants and mutants."""

    name: str
    entry: str  # function name (entry point)
    arg: str  # single parameter's name
    kind: str  # "int" | "list" | "str": how hidden test inputs are drawn
    difficulty: int
    describe: str  # instruction sentence template
    params: Callable[[random.Random], Params]
    solutions: tuple[str, ...]
    mutants: tuple[str, ...]

    def signature(self) -> str:
        return f"def {self.entry}({self.arg}):"


def _int(lo: int, hi: int, **extra: Callable[[random.Random], Any]) -> Callable[[random.Random], Params]:
    def sample(rng: random.Random) -> Params:
        p: Params = {"c": rng.randint(lo, hi)}
        for k, f in extra.items():
            p[k] = f(rng)
        return p
    return sample


def _two_letters(rng: random.Random) -> Params:
    a, b = rng.sample(LETTERS, 2)
    return {"a": a, "b": b, "ab": a + b}


def _word(rng: random.Random) -> Params:
    w = rng.choice(WORDS)
    return {"w": w, "w_cut": w[:-1]}


def _loop(cond: str, expr: str) -> str:
    return f"out = []\nfor v in xs:\n    if {cond}:\n        out.append({expr})\nreturn out"


FAMILIES: tuple[Family, ...] = (
    # ---- difficulty 1: integers ----
    Family("add_const", "add_const", "x", "int", 1, "returns x plus {c}", _int(1, 150),
           ("return x + {c}", "return {c} + x", "y = x\ny += {c}\nreturn y"),
           ("return x - {c}", "return x + {c_p}", "return x + {c_m}")),
    Family("mul_const", "scale", "x", "int", 1, "returns x multiplied by {c}", _int(2, 99),
           ("return x * {c}", "return {c} * x", "total = 0\nfor _ in range({c}):\n    total += x\nreturn total"),
           ("return x * {c_p}", "return x + {c}", "return x * {c_m}")),
    Family("clamp_max", "cap", "x", "int", 1, "returns x, but never more than {c}", _int(-50, 99),
           ("return min(x, {c})", "if x > {c}:\n    return {c}\nreturn x", "return x if x <= {c} else {c}"),
           ("return x if x < {c} else {c}", "return max(x, {c})", "return min(x, {c_m})",
            "if x > {c_p}:\n    return {c}\nreturn x")),
    Family("is_above", "is_above", "x", "int", 1, "returns True if x is greater than {c}, otherwise False",
           _int(-20, 80),
           ("return x > {c}", "return not x <= {c}", "return x >= {c_p}"),
           ("return x >= {c}", "return x < {c}", "return x > {c_p}")),
    Family("mod_const", "remainder", "x", "int", 1, "returns the remainder of x divided by {c}", _int(2, 99),
           ("return x % {c}", "return x - (x // {c}) * {c}"),
           ("return x // {c}", "return x % {c_p}", "return abs(x) % {c}")),
    Family("floor_div", "divide", "x", "int", 1, "returns x divided by {c}, rounded down", _int(2, 99),
           ("return x // {c}", "return (x - x % {c}) // {c}"),
           ("return (x + 1) // {c}", "return x // {c} + 1", "return int(x / {c})")),
    Family("double_below", "double_small", "x", "int", 1,
           "returns x doubled when x is less than {c}, otherwise x unchanged", _int(-50, 99),
           ("return x * 2 if x < {c} else x", "if x < {c}:\n    return 2 * x\nreturn x"),
           ("return x * 2 if x <= {c} else x", "return x + 2 if x < {c} else x", "return x * 2 if x > {c} else x")),
    # ---- difficulty 1: lists ----
    Family("add_each", "add_each", "xs", "list", 1, "returns a new list with {c} added to each element of xs",
           _int(1, 120),
           ("return [v + {c} for v in xs]", "return list(map(lambda v: v + {c}, xs))", _loop("True", "v + {c}")),
           ("return [v - {c} for v in xs]", "return [v + {c_p} for v in xs]", "return [v + {c} for v in xs[1:]]")),
    Family("keep_greater", "keep_greater", "xs", "list", 1,
           "returns the elements of xs that are greater than {c}, in order", _int(-10, 40),
           ("return [v for v in xs if v > {c}]", "return list(filter(lambda v: v > {c}, xs))", _loop("v > {c}", "v")),
           ("return [v for v in xs if v >= {c}]", "return [v for v in xs if v < {c}]", "return [v for v in xs if v > {c_p}]")),
    Family("count_greater", "count_greater", "xs", "list", 1,
           "returns how many elements of xs are greater than {c}", _int(-10, 40),
           ("return sum(1 for v in xs if v > {c})", "return len([v for v in xs if v > {c}])",
            "n = 0\nfor v in xs:\n    if v > {c}:\n        n += 1\nreturn n"),
           ("return sum(1 for v in xs if v >= {c})", "return sum(v for v in xs if v > {c})",
            "return len(xs) - sum(1 for v in xs if v > {c})")),
    Family("sum_below", "sum_below", "xs", "list", 1,
           "returns the sum of the elements of xs that are less than {c}", _int(-10, 40),
           ("return sum(v for v in xs if v < {c})", "total = 0\nfor v in xs:\n    if v < {c}:\n        total += v\nreturn total"),
           ("return sum(v for v in xs if v <= {c})", "return sum(xs)", "return sum(v for v in xs if v < {c_m})")),
    Family("max_or_default", "largest", "xs", "list", 1,
           "returns the largest element of xs, or {c} if xs is empty", _int(-20, 30),
           ("return max(xs) if xs else {c}", "return max(xs, default={c})",
            "if not xs:\n    return {c}\nbest = xs[0]\nfor v in xs[1:]:\n    if v > best:\n        best = v\nreturn best"),
           ("return max(xs + [{c}])", "return min(xs) if xs else {c}",
            "best = {c}\nfor v in xs:\n    if v > best:\n        best = v\nreturn best",
            "if not xs:\n    return {c_p}\nreturn max(xs)")),
    Family("take_first", "take_first", "xs", "list", 1, "returns the first {c} elements of xs (all of xs if shorter)",
           _int(1, 9),
           ("return xs[:{c}]", "return [xs[i] for i in range(min({c}, len(xs)))]",
            "out = []\nfor v in xs:\n    if len(out) == {c}:\n        break\n    out.append(v)\nreturn out"),
           ("return xs[:{c_p}]", "return xs[:{c_m}]", "return xs[{c}:]")),
    Family("scale_positive", "scale_positive", "xs", "list", 1,
           "returns xs with every positive element multiplied by {c}", _int(2, 30),
           ("return [v * {c} if v > 0 else v for v in xs]", _loop("True", "v * {c} if v > 0 else v")),
           ("return [v * {c} if v >= 0 else v for v in xs]", "return [v * {c} for v in xs]",
            "return [v + {c} if v > 0 else v for v in xs]", "return [v * {c} if v > 1 else v for v in xs]")),
    Family("index_of", "find_index", "xs", "list", 1,
           "returns the index of the first occurrence of {c} in xs, or -1 if it does not occur", _int(-5, 30),
           ("return xs.index({c}) if {c} in xs else -1",
            "for i, v in enumerate(xs):\n    if v == {c}:\n        return i\nreturn -1"),
           ("return xs.index({c})", "for i in range(len(xs) - 1, -1, -1):\n    if xs[i] == {c}:\n        return i\nreturn -1",
            "for i, v in enumerate(xs):\n    if v == {c}:\n        return i + 1\nreturn -1",
            "return xs.index({c}) if {c} in xs else 0")),
    # ---- difficulty 1: strings ----
    Family("repeat_join", "repeat_join", "s", "str", 1,
           "returns s repeated {c} times, joined by {sep!r}", _int(2, 6, sep=lambda r: r.choice(SEPARATORS)),
           ("return {sep!r}.join([s] * {c})", "return {sep!r}.join(s for _ in range({c}))",
            "parts = []\nfor _ in range({c}):\n    parts.append(s)\nreturn {sep!r}.join(parts)"),
           ("return {sep!r}.join([s] * {c_p})", "return (s + {sep!r}) * {c}", "return {sep!r}.join([s] * {c_m})")),
    Family("add_suffix", "add_suffix", "s", "str", 1, "returns s followed by the word {w!r}", _word,
           ("return s + {w!r}", "return f'{{s}}{w}'", "return ''.join([s, {w!r}])"),
           ("return {w!r} + s", "return s + {w_cut!r}", "return s + ' ' + {w!r}")),
    Family("count_two", "count_two", "s", "str", 1,
           "returns how many characters of s are {a!r} or {b!r}", _two_letters,
           ("return s.count({a!r}) + s.count({b!r})", "return sum(1 for t in s if t in {ab!r})",
            "return len([t for t in s if t == {a!r} or t == {b!r}])"),
           ("return s.count({a!r})", "return len(s) - s.count({a!r})", "return s.count({ab!r})")),
    Family("replace_char", "swap_char", "s", "str", 1, "returns s with every {a!r} replaced by {b!r}", _two_letters,
           ("return s.replace({a!r}, {b!r})", "return ''.join({b!r} if t == {a!r} else t for t in s)",
            "out = ''\nfor t in s:\n    out += {b!r} if t == {a!r} else t\nreturn out"),
           ("return s.replace({a!r}, {b!r}, 1)", "return s.replace({b!r}, {a!r})", "return s.replace({a!r}, '')")),
    Family("upper_if_long", "shout_long", "s", "str", 1,
           "returns s in upper case if it has more than {c} characters, otherwise s unchanged", _int(1, 10),
           ("return s.upper() if len(s) > {c} else s", "if len(s) <= {c}:\n    return s\nreturn s.upper()"),
           ("return s.upper() if len(s) >= {c} else s", "return s.upper() if len(s) < {c} else s",
            "return s.upper() if len(s) > {c_p} else s")),
    # ---- difficulty 2: two composed steps ----
    Family("clamp_add", "cap_then_add", "x", "int", 2, "caps x at {c} and then adds {d}",
           _int(-10, 40, d=lambda r: r.randint(1, 20)),
           ("return min(x, {c}) + {d}", "if x > {c}:\n    x = {c}\nreturn x + {d}"),
           ("return min(x + {d}, {c})", "return max(x, {c}) + {d}", "return min(x, {c}) - {d}", "return min(x, {c_m}) + {d}")),
    Family("filter_scale", "filter_scale", "xs", "list", 2,
           "returns the elements of xs greater than {c}, each multiplied by {d}",
           _int(-10, 30, d=lambda r: r.randint(2, 9)),
           ("return [v * {d} for v in xs if v > {c}]", _loop("v > {c}", "v * {d}")),
           ("return [v * {d} for v in xs if v >= {c}]", "return [v * {d} if v > {c} else v for v in xs]",
            "return [v + {d} for v in xs if v > {c}]")),
    Family("clip_each", "clip_each", "xs", "list", 2,
           "returns xs with each element limited to the range {c} to {hi} (inclusive)",
           lambda r: {"c": (c := r.randint(-10, 20)), "hi": c + r.randint(1, 15)},
           ("return [min(max(v, {c}), {hi}) for v in xs]", "return [max({c}, min(v, {hi})) for v in xs]",
            "out = []\nfor v in xs:\n    if v < {c}:\n        v = {c}\n    elif v > {hi}:\n        v = {hi}\n    out.append(v)\nreturn out"),
           ("return [max(min(v, {c}), {hi}) for v in xs]", "return [min(v, {hi}) for v in xs]",
            "return [min(max(v, {c_p}), {hi}) for v in xs]")),
    Family("shorten", "shorten", "s", "str", 2,
           "returns s cut to its first {c} characters followed by {m!r} if it is longer than {c}, otherwise s",
           _int(1, 9, m=lambda r: r.choice(MARKS)),
           ("return s[:{c}] + {m!r} if len(s) > {c} else s", "if len(s) <= {c}:\n    return s\nreturn s[:{c}] + {m!r}"),
           ("return s[:{c}] + {m!r} if len(s) >= {c} else s", "return s[:{c_p}] + {m!r} if len(s) > {c} else s",
            "return s[:{c}] + {m!r}")),
    # ---- difficulty 3: three composed steps ----
    Family("filter_scale_sum", "weighted_total", "xs", "list", 3,
           "returns the sum of the elements of xs greater than {c}, each multiplied by {d}",
           _int(-10, 30, d=lambda r: r.randint(2, 9)),
           ("return sum(v * {d} for v in xs if v > {c})",
            "total = 0\nfor v in xs:\n    if v > {c}:\n        total += v * {d}\nreturn total",
            "return {d} * sum(v for v in xs if v > {c})"),
           ("return sum(v * {d} for v in xs if v >= {c})", "return sum(v * {d} for v in xs)",
            "return sum(v + {d} for v in xs if v > {c})", "return sum(v * {d} for v in xs if v > {c_p})")),
    Family("int_pipeline", "shift_scale_cap", "x", "int", 3,
           "adds {c} to x, multiplies the result by {d}, and returns it capped at {e}",
           _int(1, 20, d=lambda r: r.randint(2, 6), e=lambda r: r.randint(10, 90)),
           ("return min((x + {c}) * {d}, {e})", "y = (x + {c}) * {d}\nif y > {e}:\n    y = {e}\nreturn y"),
           ("return min(x + {c} * {d}, {e})", "return max((x + {c}) * {d}, {e})", "return min((x + {c_p}) * {d}, {e})",
            "return min((x + {c}) * {d}, {e_m})")),
    Family("str_pipeline", "clean_tag", "s", "str", 3,
           "removes every {a!r} from s, converts the rest to upper case, and appends {w!r}",
           lambda r: {**_two_letters(r), **_word(r)},
           ("return s.replace({a!r}, '').upper() + {w!r}",
            "out = ''\nfor t in s:\n    if t != {a!r}:\n        out += t.upper()\nreturn out + {w!r}"),
           ("return s.upper().replace({a!r}, '') + {w!r}", "return s.replace({a!r}, '') + {w!r}",
            "return {w!r} + s.replace({a!r}, '').upper()", "return s.replace({b!r}, '').upper() + {w!r}")),
)

FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
