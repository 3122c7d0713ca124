"""Server tool: arithmetic the model cannot do reliably, evaluated safely from a parsed AST (never eval)."""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable

from edge.tools.registry import Tool, ToolContext, ToolError

NAME = "calculate"
MAX_EXPRESSION = 200
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e100

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor, "ceil": math.ceil,
}
_CONSTS = {"pi": math.pi, "e": math.e}
# spoken forms a model (or ASR) may leave in the expression
_WORDS = [(r"\btimes\b|\bmultiplied by\b|×|\bx\b", "*"), (r"\bdivided by\b|÷", "/"), (r"\bplus\b", "+"),
          (r"\bminus\b", "-"), (r"\bto the power of\b|\^", "**"), (r"(\d),(\d{3})", r"\1\2")]


class CalcError(ValueError):
    pass


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalcError("exponent too large")
        value = _BINARY[type(node.op)](left, right)
        if abs(value) > MAX_MAGNITUDE:
            raise CalcError("result too large")
        return value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        return _FUNCS[node.func.id](*[_eval(a) for a in node.args])
    raise CalcError(f"unsupported element {type(node).__name__}")


def calculate(expression: str) -> float | int:
    """The value of an arithmetic expression; CalcError for anything that is not plain arithmetic."""
    if len(expression) > MAX_EXPRESSION:
        raise CalcError("expression too long")
    text = expression.lower().strip().rstrip("=?. ")
    for pattern, repl in _WORDS:
        text = re.sub(pattern, repl, text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalcError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _eval(tree)
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise CalcError(str(exc)) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("result is not a finite number")
    return value


def format_number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


async def _handle(args: dict[str, Any], ctx: ToolContext) -> str:
    try:
        return f"{args['expression']} = {format_number(calculate(args['expression']))}"
    except CalcError as exc:
        raise ToolError("failed", f"cannot calculate: {exc}") from None


def calculator_tool() -> Tool:
    return Tool(
        name=NAME,
        description="Calculate an arithmetic expression, e.g. 23 * 7 or (4 + 5) / 2.",
        parameters={"type": "object",
                    "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION}},
                    "required": ["expression"]},
        handler=_handle,
        examples=(("how much is 15 plus 27", {"expression": "15 + 27"}),
                  ("what is 9 times 8", {"expression": "9 * 8"}),
                  ("square root of 81", {"expression": "sqrt(81)"}),
                  ("20 percent of 50", {"expression": "20 / 100 * 50"})),
    )
