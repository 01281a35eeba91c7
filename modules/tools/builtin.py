"""The built-in tools: a calculator, the date and time, a dice roller and a search in the documents
extension's files. They run in this process (they are small and bounded), with no confirmation.

    calculate("2 * (3 + 4) ** 2")   # 98
    roll("2d6+1")                   # {"rolls": [3, 5], "modifier": 1, "total": 9}
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import math
import operator
import random
import re
from typing import Any, Callable, Iterator

from modules.tools.registry import Tool, ToolFailed

#: a power's exponent and a number's size are bounded, so no expression can eat the CPU or memory
MAX_EXPONENT = 10_000
MAX_DIGITS = 10_000
MAX_EXPRESSION_CHARS = 1_000

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: Any) -> Any:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise ToolFailed("the result is not a real number")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_DIGITS * 3.33:
        raise ToolFailed(f"the result has more than {MAX_DIGITS:,} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolFailed("the result is not a finite number")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolFailed(f"exponents are limited to ±{MAX_EXPONENT:,}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and base not in (0, 1, -1):
        # digits of base**exponent ≈ exponent * log10|base|: refuse before computing it
        if exponent * math.log10(abs(base)) > MAX_DIGITS:
            raise ToolFailed(f"the result would have more than {MAX_DIGITS:,} digits")
    try:
        return base ** exponent
    except OverflowError:
        raise ToolFailed("the result is too large") from None


def _evaluate(node: ast.AST) -> Any:
    """Numbers and + - * / // % ** with parentheses; every other node (names, calls, attributes) refused."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolFailed("division by zero") from None
        except OverflowError:
            raise ToolFailed("the result is too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    raise ToolFailed(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (no names, no calls: nothing but arithmetic can run)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolFailed("give an expression, e.g. 2 + 2")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolFailed(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("^", "**")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ToolFailed(f"not an arithmetic expression: {expression[:80]!r}") from None
    return _evaluate(tree)


def _format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


_DICE = re.compile(r"^\s*(\d*)\s*d\s*(\d+)\s*(?:([+-])\s*(\d+))?\s*$", re.IGNORECASE)
MAX_DICE = 100
MAX_SIDES = 1_000_000


def roll(spec: str, rng: random.Random | None = None) -> dict[str, Any]:
    """Roll dice written as NdS[+M] ("2d6+1", "d20", "3d8-2")."""
    match = _DICE.match(spec or "")
    if match is None:
        raise ToolFailed(f"write dice as NdS+M, e.g. 2d6+1 (got {str(spec)[:40]!r})")
    count, sides = int(match.group(1) or 1), int(match.group(2))
    modifier = int(match.group(4) or 0) * (-1 if match.group(3) == "-" else 1)
    if not 1 <= count <= MAX_DICE or not 2 <= sides <= MAX_SIDES:
        raise ToolFailed(f"between 1 and {MAX_DICE} dice of 2 to {MAX_SIDES:,} sides")
    rng = rng or random.SystemRandom()
    rolls = [rng.randint(1, sides) for _ in range(count)]
    return {"dice": f"{count}d{sides}" + (f"{modifier:+d}" if modifier else ""), "rolls": rolls,
            "modifier": modifier, "total": sum(rolls) + modifier}


def now(timezone: str = "") -> dict[str, str]:
    """The current date and time, in the server's zone or a named IANA zone."""
    if timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            zone: dt.tzinfo = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolFailed(f"unknown time zone {timezone[:60]!r} (use an IANA name such as Europe/Paris)") from None
        moment = dt.datetime.now(zone)
    else:
        moment = dt.datetime.now().astimezone()
    return {"datetime": moment.isoformat(timespec="seconds"), "weekday": moment.strftime("%A"),
            "timezone": timezone or str(moment.tzname())}


def _search_documents(extensions: Any, query: str, k: int) -> str:
    loaded = getattr(extensions, "loaded", {}).get("documents") if extensions is not None else None
    if loaded is None:
        raise ToolFailed("the documents extension is not enabled (Session tab → Extensions)")
    found = loaded.module.search(str(query), max(1, min(int(k), 20)))
    if not found:
        return "no documents have been added (Documents tab)"
    return json.dumps([{"source": c.source, "part": c.part, "score": round(score, 3), "text": c.text}
                       for score, c in found], ensure_ascii=False)


def tools(extensions: Any = None) -> Iterator[Tool]:
    """The built-in tools, for the registry."""
    yield Tool("calculator", "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.",
               # the pattern and length let a constrained (forced) call write only arithmetic, and end
               {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. (2 + 3) * 4",
                                                                "pattern": r"^[0-9 .+\-*/%()]{1,80}$"}},
                "required": ["expression"]},
               lambda a: _format_number(calculate(a.get("expression", ""))))
    yield Tool("current_datetime", "The current date, time and weekday.",
               {"type": "object", "properties": {"timezone": {
                   "type": "string", "description": "an IANA zone such as Europe/Paris (default: the server's)"}}},
               lambda a: json.dumps(now(str(a.get("timezone") or ""))))
    yield Tool("roll_dice", "Roll dice written as NdS+M, e.g. 2d6+1.",
               {"type": "object", "properties": {"dice": {"type": "string", "description": "e.g. 2d6+1"}},
                "required": ["dice"]},
               lambda a: json.dumps(roll(str(a.get("dice", "")))))
    yield Tool("search_documents", "Search the files added in the Documents tab; gives the closest passages.",
               {"type": "object", "properties": {"query": {"type": "string"},
                                                 "top_k": {"type": "integer", "minimum": 1, "maximum": 20}},
                "required": ["query"]},
               lambda a: _search_documents(extensions, a.get("query", ""), a.get("top_k") or 3))
