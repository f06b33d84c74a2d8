"""A task's tests as call records, judged by the trusted parent: HumanEval-style `check(candidate)` code as data.

A *call record* is one test call: the source of its arguments (sent to the sandboxed program) and
the check on the value it returns (kept by the parent, never sent). The sandbox runs the program,
calls the entry point once per record and sends back only what each call returned (or raised), as
plain data; the parent decodes it and applies the checks here, so the program never holds an
expected value nor a verdict it could forge. `calls_from_test` accepts the assert shapes listed in
docs/EVALUATION.md ("Sandbox: verdicts") and returns None for anything else (the task then keeps
the in-process check); `check_source` writes records back as test code.
"""

from __future__ import annotations

import ast
import builtins
import json
import operator
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Check = Literal["==", "is", "truthy", "falsy", "close"]

_WRAPS: dict[str, Callable[[Any], Any]] = {"tuple": tuple, "list": list, "set": set, "sorted": sorted, "len": len}
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


@dataclass(frozen=True)
class Call:
    """One test call: `candidate(args)` must satisfy `check` against `expected` (`tol` for close)."""

    args: str  # source of the argument list, e.g. "[1, 2], k=3"
    check: Check
    expected: Any = None
    tol: float = 0.0
    strict: bool = True  # close: `<` (True) or `<=`
    wrap: str | None = None  # a builtin applied to the value first (tuple, list, set, sorted, len)

    def judge(self, value: Any) -> str | None:
        """None when `value` (decoded plain data) passes, else what was wrong."""
        try:
            v = _WRAPS[self.wrap](value) if self.wrap else value
            if self.check == "==":
                ok = v == self.expected
            elif self.check == "is":
                ok = v is self.expected
            elif self.check == "truthy":
                ok = bool(v)
            elif self.check == "falsy":
                ok = not v
            else:
                d = abs(v - self.expected)
                ok = d < self.tol if self.strict else d <= self.tol
        except (TypeError, ValueError, OverflowError, ArithmeticError) as e:
            return f"candidate({_short(self.args)}) returned {_show(value)}: {type(e).__name__}: {e}"
        if ok:
            return None
        want = {"==": f"== {_show(self.expected)}", "is": f"is {self.expected!r}", "truthy": "a true value",
                "falsy": "a false value", "close": f"within {self.tol} of {_show(self.expected)}"}[self.check]
        got = f"{self.wrap}(...) = " if self.wrap else ""
        return f"candidate({_short(self.args)}) returned {got}{_show(v)}, expected {want}"


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 12


def _show(value: Any) -> str:
    """A short repr: a hostile program's value may be huge."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to print>"


# ---------------------------------------------------------------- rewriting check(candidate)
class _NotConvertible(Exception):
    pass


def _constant(node: ast.expr) -> Any:
    """The value of a constant expression: literals and arithmetic on them, nothing that runs code."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_constant(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_constant(k): _constant(v)  # type: ignore[arg-type]  # no None key (checked above)
                for k, v in zip(node.keys, node.values, strict=True)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _WRAPS
            and len(node.args) == 1 and not node.keywords):  # tuple([1, 2]) on the expected side
        return _WRAPS[node.func.id](_constant(node.args[0]))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_constant(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _constant(node.left), _constant(node.right)
        # keep a hostile benchmark file from making the parent build huge values
        if (isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int)
                and abs(left).bit_length() * abs(right) > 100_000):
            raise _NotConvertible("large power")
        if isinstance(node.op, ast.Mult) and any(isinstance(x, str | bytes | list | tuple) for x in (left, right)):
            if not all(isinstance(x, int) and x <= 10_000 for x in (left, right) if isinstance(x, int)):
                raise _NotConvertible("large repetition")
        try:
            return _BINOPS[type(node.op)](left, right)
        except Exception as e:  # noqa: BLE001 - any failure: not a constant we can hold
            raise _NotConvertible(str(e)) from None
    raise _NotConvertible(ast.unparse(node))


def _is_candidate_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"


def _args_source(call: ast.Call) -> str:
    """The argument list's source; it runs in the program's namespace, so it must not use `candidate`."""
    if any(_contains_candidate(a) for a in [*call.args, *call.keywords]):
        raise _NotConvertible("candidate inside the arguments")
    parts = [ast.unparse(a) for a in call.args]
    parts += [f"{k.arg}={ast.unparse(k.value)}" if k.arg else f"**{ast.unparse(k.value)}" for k in call.keywords]
    return ", ".join(parts)


def _unwrap(node: ast.expr) -> tuple[ast.Call, str | None]:
    """`candidate(...)` or `W(candidate(...))` with W one of the allowed builtins."""
    if _is_candidate_call(node):
        return node, None  # type: ignore[return-value]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _WRAPS
            and len(node.args) == 1 and not node.keywords and _is_candidate_call(node.args[0])):
        return node.args[0], node.func.id  # type: ignore[return-value]
    raise _NotConvertible(ast.unparse(node))


def _call_from_assert(test: ast.expr) -> Call | None:
    """The call record of one assert's test; None for a constant true test (`assert True`)."""
    if isinstance(test, ast.Constant):
        if test.value:
            return None
        raise _NotConvertible("assert of a false constant")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call, wrap = _unwrap(test.operand)
        return Call(_args_source(call), "falsy", wrap=wrap)
    if not isinstance(test, ast.Compare):
        call, wrap = _unwrap(test)
        return Call(_args_source(call), "truthy", wrap=wrap)
    if len(test.ops) != 1:
        raise _NotConvertible("chained comparison")
    op, left, right = test.ops[0], test.left, test.comparators[0]
    if isinstance(op, ast.Eq):
        if not _contains_candidate(left):
            left, right = right, left
        call, wrap = _unwrap(left)
        return Call(_args_source(call), "==", _constant(right), wrap=wrap)
    if isinstance(op, ast.Is):
        call, wrap = _unwrap(left)
        value = _constant(right)
        if value not in (True, False, None) or not isinstance(right, ast.Constant):
            raise _NotConvertible("`is` with a value other than True/False/None")
        return Call(_args_source(call), "is", value, wrap=wrap)
    if (isinstance(op, ast.Lt | ast.LtE) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
            and left.func.id == "abs" and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp)
            and isinstance(left.args[0].op, ast.Sub)):
        diff = left.args[0]
        inner, other = (diff.left, diff.right) if _contains_candidate(diff.left) else (diff.right, diff.left)
        call, wrap = _unwrap(inner)
        tol = _constant(right)
        if not isinstance(tol, int | float):
            raise _NotConvertible("tolerance is not a number")
        return Call(_args_source(call), "close", _constant(other), float(tol), isinstance(op, ast.Lt), wrap)
    raise _NotConvertible(ast.unparse(test))


def _contains_candidate(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(node))


def calls_from_test(test: str) -> tuple[Call, ...] | None:
    """The call records of `check(candidate)` test code, or None where some statement has another shape."""
    try:
        module = ast.parse(test)
    except SyntaxError:
        return None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    others = [n for n in module.body if n not in checks]
    if len(checks) != 1 or not all(_harmless_top_level(n) for n in others):
        return None
    fn = checks[0]
    if len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwonlyargs or fn.args.kwarg or fn.decorator_list:
        return None
    name = fn.args.args[0].arg  # `check(c)` reads as `check(candidate)`
    if name != "candidate":
        if any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(fn)):
            return None
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and n.id == name:
                n.id = "candidate"
    calls: list[Call] = []
    try:
        for st in fn.body:
            if isinstance(st, ast.Pass) or (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant)):
                continue
            if isinstance(st, ast.Expr) and isinstance(st.value, ast.Name) and hasattr(builtins, st.value.id):
                continue  # a bare builtin name (HumanEval/129's stray `print`) does nothing
            if not isinstance(st, ast.Assert):
                return None
            call = _call_from_assert(st.test)
            if call is not None:
                calls.append(call)
    except (_NotConvertible, SyntaxError, RecursionError):
        return None
    return tuple(calls) if calls else None


def _harmless_top_level(node: ast.stmt) -> bool:
    """Docstrings and constant assignments (HumanEval's METADATA): the check does not need them."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        try:
            _constant(node.value)
            return True
        except _NotConvertible:
            return False
    return False


def check_source(calls: tuple[Call, ...] | list[Call]) -> str:
    """`check(candidate)` test code with one assert per call record (`calls_from_test` reads it back)."""
    lines = ["def check(candidate):"]
    for c in calls:
        value = f"candidate({c.args})"
        if c.wrap:
            value = f"{c.wrap}({value})"
        lines.append("    assert " + {
            "==": f"{value} == {c.expected!r}", "is": f"{value} is {c.expected!r}", "truthy": value,
            "falsy": f"not {value}", "close": f"abs({value} - {c.expected!r}) {'<' if c.strict else '<='} {c.tol!r}",
        }[c.check])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- values over the channel
# Tagged JSON written by the sandbox's runner (`sandbox.RUNNER`, `encode`): null/true/false as
# themselves, ["i", hex], ["f", repr], ["c", re, im], ["s", str], ["b", hex], ["l"|"t"|"S"|"F", items]
# (list, tuple, set, frozenset), ["d", [[k, v], ...]].
_SEQUENCES = {"l": list, "t": tuple, "S": set, "F": frozenset}


class ValueFormatError(ValueError):
    """The channel carried something that is not an encoded value."""


def decode_value(data: Any) -> Any:
    """The plain value of one encoded value (raises ValueFormatError on anything else)."""
    if data is None or data is True or data is False:
        return data
    try:
        tag = data[0]
        if tag == "i":
            return int(data[1], 16)
        if tag == "f":
            return float(data[1])
        if tag == "c":
            return complex(float(data[1]), float(data[2]))
        if tag == "s":
            if not isinstance(data[1], str):
                raise ValueFormatError("string")
            return data[1]
        if tag == "b":
            return bytes.fromhex(data[1])
        if tag in _SEQUENCES:
            return _SEQUENCES[tag](decode_value(x) for x in data[1])
        if tag == "d":
            return {decode_value(k): decode_value(v) for k, v in data[1]}
    except ValueFormatError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, RecursionError) as e:
        raise ValueFormatError(f"{type(e).__name__}: {e}") from None
    raise ValueFormatError(f"unknown value {str(data)[:80]}")


def parse_line(line: bytes) -> dict:
    """One line of the channel as a dict (ValueFormatError when it is not one)."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ValueFormatError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueFormatError("not an object")
    return data


__all__ = ["Call", "ValueFormatError", "calls_from_test", "check_source", "decode_value", "parse_line"]
