"""Score formulas: an arithmetic expression over a model's outputs, vectorized over items.

    probs_ctr * probs_cvr ^ 0.5
    0.7 * probs_ctr + 0.3 * log(1 + probs_watch_time)

The text is parsed once, by Python's `ast` parser in expression mode, into a tree that
admits only numbers, output names, `+ - * / ^` (`^` is power, as people write it; `**` too),
unary minus, parentheses and a few named functions. Anything else — attribute access,
subscripts, calls of other names, comparisons, lambdas — is refused when the scene is saved,
and the tree is evaluated by walking it with numpy, never by `eval`.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

MAX_LENGTH = 1_000
BINARY: Mapping[type[ast.operator], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: np.power,
}
FUNCTIONS: Mapping[str, tuple[int, Callable[..., np.ndarray]]] = {
    "log": (1, np.log),
    "exp": (1, np.exp),
    "sqrt": (1, np.sqrt),
    "min": (2, np.minimum),
    "max": (2, np.maximum),
}


class FormulaError(ValueError):
    """The text is not a formula this module evaluates; the message says what is wrong."""


@dataclass(frozen=True)
class Formula:
    text: str
    tree: ast.expr
    names: frozenset[str]

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The score per item; NaN where the arithmetic is undefined (log of 0, say)."""
        with np.errstate(all="ignore"):
            value = _evaluate(self.tree, outputs)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), _length(outputs)).copy()


def parse(text: str) -> Formula:
    if not text.strip():
        raise FormulaError("is empty")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"is not an expression: {exc.msg} at column {exc.offset}") from None
    names: set[str] = set()
    _check(tree, names)
    return Formula(text, tree, frozenset(names))


def _check(node: ast.expr, names: set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"{node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in BINARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not one of + - * / ^")
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, names)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        arity = FUNCTIONS.get(node.func.id)
        if arity is None:
            raise FormulaError(f"{node.func.id}() is not one of {sorted(FUNCTIONS)}")
        if node.keywords or len(node.args) != arity[0]:
            raise FormulaError(f"{node.func.id}() takes {arity[0]} argument(s)")
        for argument in node.args:
            _check(argument, names)
    else:
        raise FormulaError(f"{ast.unparse(node)!r} is not allowed in a score formula")


def _evaluate(node: ast.expr, outputs: Mapping[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return outputs[node.id]
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](_evaluate(node.left, outputs), _evaluate(node.right, outputs))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, outputs)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    function = FUNCTIONS[node.func.id][1]
    return function(*(_evaluate(argument, outputs) for argument in node.args))


def _length(outputs: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(outputs.values()))) if outputs else 0
