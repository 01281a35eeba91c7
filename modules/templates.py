"""Chat templates rendered in Jinja's immutable sandbox, inside a budget.

A model's `chat_template` is code from the internet, and so is an API client's
`instruction_template_str` and whatever is pasted into the Chat tab's template box. It renders in
`ImmutableSandboxedEnvironment`, so attribute tricks (`''.__class__.__mro__`) and mutation of passed-in
objects raise instead of running. The sandbox does not bound work or memory, so every render also gets
a `RenderBudget`, and no operation a template can reach gets past it:

- **time**: `RENDER_SECONDS` of wall-clock time per render;
- **steps**: every loop iteration (whatever the loop iterates: range(), strings, lists, filters'
  results), every call (macros, methods, `loop()`), every filter and every operator is a step;
  `MAX_STEPS` per render. Time is checked at every step, and no single step can do more than about a
  value's worth of work, so a render stops within its budget and leaves the CPU idle;
- **size**: no value an operation creates may hold more than `MAX_VALUE_CHARS` characters
  (`MAX_ITEMS` items for lists, `MAX_INT_BITS` bits for integers), repetition and padding (`*`,
  `.center`, `.ljust`, `.zfill`, `%10000000d`, ...) at most `MAX_PRODUCT`, and the characters all
  operations of one render create add up to at most `MAX_RENDER_CHARS`. Sizes are checked BEFORE the
  operation allocates wherever they can be known in advance (repetition, padding, `.replace`, joins,
  `%` and `str.format`, `~`, `|indent`, `|tojson`, ...), and after it for operations whose result is at
  most a small multiple of their input. Converting a nested list to text is measured first, so a list
  of a million references to one big string cannot become a terabyte of text.

How it is wired: a `CodeGenerator` subclass wraps every `for` loop's iterable in a counting iterator and
sends `~` through a bounded join; the sandbox's own hooks (`call`, `call_binop`, `wrap_str_format`),
`finalize` (every `{{ }}`), `concat` (how Jinja joins `{% set %}` blocks, macro bodies and filter blocks)
and wrapped filters do the rest. The optimizer is off, so nothing is evaluated at compile time, outside
a budget. A spent budget, a MemoryError or a RecursionError all end as a `TemplateError` naming the
template; none escapes `ChatTemplate.render`.
"""

from __future__ import annotations

import json
import re
import string
import threading
import time
from datetime import datetime
from functools import wraps
from typing import Any, Callable, Iterable, Iterator

from jinja2 import nodes
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import make_attrgetter
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from modules.limits import MAX_PROMPT_CHARS, MAX_TEMPLATE_CHARS

RENDER_SECONDS = 2.0  # wall-clock time one render may take
MAX_STEPS = 1_000_000  # loop iterations + calls + filters + operators, per render
MAX_LOOP_STEPS = MAX_STEPS  # the name earlier versions used
MAX_PRODUCT = 1_000_000  # largest result of repetition or padding (`*`, center, ljust, zfill, widths)
MAX_VALUE_CHARS = MAX_PROMPT_CHARS  # largest string any operation may create
MAX_ITEMS = 100_000  # largest list / tuple / dict any operation may create
MAX_INT_BITS = 8192  # largest integer (about 2,500 digits)
MAX_RENDER_CHARS = 8 * MAX_PROMPT_CHARS  # characters all operations of one render may create together
MAX_DEPTH = 100  # deepest nesting of lists / dicts converted to text
MAX_JSON_INDENT = 16
MAX_EXPONENT = 64


class TemplateError(ValueError):
    """A template that does not compile, escapes the sandbox, fails to render or spends its budget."""


class BudgetSpent(SecurityError):
    """The render used up its time, steps or size budget."""


class RenderBudget:
    """What one render may still spend. Created by `ChatTemplate.render`, consulted by every hook."""

    def __init__(self, seconds: float = RENDER_SECONDS, steps: int = MAX_STEPS,
                 chars: int = MAX_RENDER_CHARS) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.steps = steps
        self.chars = chars

    def step(self, count: int = 1) -> None:
        self.steps -= count
        if self.steps < 0:
            raise BudgetSpent(f"it looped, called or computed more than {MAX_STEPS:,} times")
        if time.monotonic() > self.deadline:
            raise BudgetSpent(f"it ran longer than its {self.seconds:g} s budget")

    def charge(self, chars: int) -> None:
        self.chars -= chars
        if self.chars < 0:
            raise BudgetSpent(f"it created more than {MAX_RENDER_CHARS:,} characters of values")


def _check_product(size: Any, what: str) -> None:
    if isinstance(size, int) and size > MAX_PRODUCT:
        raise BudgetSpent(f"{what} of {size:,} is larger than {MAX_PRODUCT:,}")


def _check_size(size: int, what: str = "a value") -> None:
    if size > MAX_VALUE_CHARS:
        raise BudgetSpent(f"it would build {what} of {size:,} characters (at most {MAX_VALUE_CHARS:,})")


def _int_arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    value = args[index] if len(args) > index else kwargs.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


_CONTAINERS = (list, tuple, set, frozenset, dict)
_DICT_VIEWS = (type({}.items()), type({}.keys()), type({}.values()))
#: printf-style conversions: %(key)flags width .precision length type
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsab%])")


class _BudgetCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every loop's iterable counted and `~` joined within bounds."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # `for x in ITER` becomes `for x in environment.budget_iter(ITER)` (Jinja allows no custom node types).
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("budget_iter"), [loop.iter], [], None, None,
                                   lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a `RenderBudget` on every operation that can loop or allocate."""

    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        # Per thread: two threads may render the same compiled template at once, each on its own budget.
        self._local = threading.local()
        self.finalize = self._finalize
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: no chat template needs it
        self.globals["range"] = self._range

    # -- the budget of the render running in this thread ------------------------------------------
    def budget(self) -> RenderBudget:
        budget = getattr(self._local, "budget", None)
        if budget is None:  # outside ChatTemplate.render (e.g. a test rendering directly): a fresh one
            budget = self._local.budget = RenderBudget()
        return budget

    def start(self, budget: RenderBudget | None) -> None:
        self._local.budget = budget

    def created(self, value: Any) -> Any:
        """Check and charge a value an operation just created."""
        if isinstance(value, (str, bytes)):
            _check_size(len(value))
            self.budget().charge(len(value))
        elif isinstance(value, _CONTAINERS):
            if len(value) > MAX_ITEMS:
                raise BudgetSpent(f"it built a collection of {len(value):,} items (at most {MAX_ITEMS:,})")
            self.budget().charge(len(value))
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise BudgetSpent(f"it built a number of {value.bit_length():,} bits (at most {MAX_INT_BITS:,})")
        elif isinstance(value, Iterator) and not isinstance(value, _Counted):
            return self.budget_iter(value)
        return value

    def budget_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Every item a loop (or a filter) takes from `iterable` is a step."""
        return iterable if isinstance(iterable, _Counted) else _Counted(iter(iterable), self.budget())

    # -- measuring text before it is made ------------------------------------------------------------
    def text_size(self, value: Any, limit: int = MAX_VALUE_CHARS, indent: int = 0) -> int:
        """About how many characters str(value) (or JSON with `indent`) would have; BudgetSpent past `limit`.
        Iterative, so a deeply nested list is measured (and refused) without recursion."""
        total, seen = 0, 0
        stack: list[tuple[Any, int]] = [(value, 0)]
        budget = self.budget()
        while stack:
            item, depth = stack.pop()
            seen += 1
            if seen % 4096 == 0:
                budget.step()
            if isinstance(item, (str, bytes)):
                total += len(item) + 3
            elif isinstance(item, bool) or item is None:
                total += 5
            elif isinstance(item, int):
                total += item.bit_length() // 3 + 2
            elif isinstance(item, float):
                total += 24
            elif isinstance(item, (*_CONTAINERS, *_DICT_VIEWS, Namespace)):
                if depth >= MAX_DEPTH:
                    raise BudgetSpent(f"a value is nested more than {MAX_DEPTH} levels deep")
                if isinstance(item, Namespace):
                    item = object.__getattribute__(item, "_Namespace__attrs")
                entries = list(item.items()) if isinstance(item, dict) else list(item)
                total += 2 + len(entries) * (2 + indent * (depth + 1))
                stack.extend((entry, depth + 1) for entry in entries)
            else:  # macros, loop objects, undefined values, ranges: short reprs
                total += 100
            if total > limit:
                raise BudgetSpent(f"it would build a text of more than {limit:,} characters")
        return total

    def to_text(self, value: Any) -> str:
        """str(value), measured first when it is not already text."""
        if isinstance(value, str):
            return value
        if not isinstance(value, (int, float, Undefined)) or isinstance(value, bool):
            self.text_size(value)
        return self.created(str(value))

    # -- hooks the compiled template calls ---------------------------------------------------------
    def _finalize(self, value: Any) -> Any:
        """Every `{{ expression }}`: its text counts against the budget."""
        text = self.to_text(value)
        if text is value:
            self.budget().charge(len(text))
        return text

    def joined(self, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`."""
        self.budget().step()
        texts = [self.to_text(p) for p in parts]
        _check_size(sum(len(t) for t in texts), "a joined text")
        return self.created("".join(texts))

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        """How Jinja joins the output of a `{% set %}` block, a macro, a `{% filter %}` or `{% call %}` block."""
        parts = list(parts)
        _check_size(sum(len(p) for p in parts), "a block's output")
        return self.created("".join(parts))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.budget().step()
        if operator == "*":
            self._check_repeat(left, right)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(right) > MAX_EXPONENT or left.bit_length() * max(right, 0) > MAX_INT_BITS:
                raise BudgetSpent(f"the power {left} ** {right} is too large")
        elif operator == "+":
            if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
                _check_size(len(left) + len(right))
            elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)) and \
                    len(left) + len(right) > MAX_ITEMS:
                raise BudgetSpent(f"it would build a list of {len(left) + len(right):,} items")
        elif operator == "%" and isinstance(left, (str, bytes)):
            self._check_percent(left if isinstance(left, str) else left.decode("latin-1"), right)
        return self.created(super().call_binop(context, operator, left, right))

    def _check_repeat(self, left: Any, right: Any) -> None:
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                _check_product(len(seq) * count, "a repetition")
                if isinstance(seq, (list, tuple)) and count > 0:
                    try:  # its text, repeated, must fit too
                        self.text_size(seq, MAX_VALUE_CHARS // count + 1)
                    except BudgetSpent:
                        raise BudgetSpent(f"repeating a list {count:,} times would make a text of more than "
                                          f"{MAX_VALUE_CHARS:,} characters") from None
                return
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise BudgetSpent("the product of two huge numbers")

    def _check_percent(self, fmt: str, args: Any) -> None:
        """`fmt % args`: widths and precisions bounded, and the whole result fits before it is built."""
        conversions, padding = 0, 0
        for width, precision, kind in _PERCENT.findall(fmt):
            if kind == "%":
                continue
            conversions += 1
            for number in (width, precision):
                if number == "*":
                    raise BudgetSpent("a '*' width or precision in % formatting")
                if number:
                    _check_product(int(number), "a % formatting width")
                    padding += int(number)
        values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
        largest = max((self.text_size(v) for v in values), default=0)
        _check_size(len(fmt) + conversions * largest + padding, "a % formatted text")

    def _check_format(self, fmt: str, args: tuple, kwargs: dict) -> None:
        """`fmt.format(...)` / `.format_map(...)`: no nested fields in specs, bounded widths, bounded result."""
        fields, padding = 0, 0
        for _literal, field, spec, _conversion in string.Formatter().parse(fmt):
            if field is None:
                continue
            fields += 1
            if spec and "{" in spec:
                raise BudgetSpent("a nested replacement field in a format spec")
            for number in re.findall(r"\d+", spec or ""):
                _check_product(int(number), "a format width")
                padding += int(number)
        values = [*args, *kwargs.values()]
        largest = max((self.text_size(v) for v in values), default=0)
        _check_size(len(fmt) + fields * largest + padding, "a formatted text")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @wraps(wrapper)
        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and len(args) == 1 and isinstance(args[0], dict) else {}
            self._check_format(fmt, () if is_map else args, mapping if is_map else kwargs)
            return self.created(wrapper(*args, **kwargs))

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.budget().step()
        plain = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's `loop(children)`
            args = (__self.budget_iter(args[0]), *args[1:])
        else:
            args = __self._check_method(__obj, args, plain)
        return __self.created(super().call(__context, __obj, *args, **kwargs))

    def _check_method(self, method: Any, args: tuple, kwargs: dict) -> tuple:
        """Methods of str / bytes / int that build large values: bounded before they run."""
        owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(owner, int) and not isinstance(owner, bool) and name == "to_bytes":
            _check_product(_int_arg(args, kwargs, 0, "length", 1), "to_bytes length")
        if not isinstance(owner, (str, bytes)):
            return args
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_product(_int_arg(args, kwargs, 0, "width", 0), f"{name}() width")
        elif name == "expandtabs":
            tab = _int_arg(args, kwargs, 0, "tabsize", 8)
            _check_product(tab, "expandtabs() tab size")
            _check_size(len(owner) + max(tab, 0) * (owner.count("\t" if isinstance(owner, str) else b"\t") + 1))
        elif name == "replace" and len(args) >= 2 and type(args[0]) is type(args[1]) is type(owner):
            old, new = args[0], args[1]
            count = _int_arg(args, kwargs, 2, "count", -1)
            hits = owner.count(old) if old else len(owner) + 1
            hits = min(hits, count) if count >= 0 else hits
            _check_size(len(owner) + hits * (len(new) - len(old)), "a replaced text")
        elif name == "join" and args:
            items = list(self.budget_iter(args[0]))
            sizes = sum(len(i) for i in items if isinstance(i, (str, bytes)))
            _check_size(sizes + len(owner) * max(len(items) - 1, 0), "a joined text")
            return (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
            _check_size(len(owner) * max(longest, 1), "a translated text")
        return args

    def _range(self, *args: int) -> range:
        steps = range(*args)
        if len(steps) > MAX_STEPS:
            raise BudgetSpent(f"range() of {len(steps):,} steps is larger than the {MAX_STEPS:,} a render may take")
        return steps

    # -- filters ---------------------------------------------------------------------------------------
    def _bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        check = _FILTER_CHECKS.get(name)
        offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # env / context comes first

        @wraps(func)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.budget().step()
            if len(args) > offset:
                value = args[offset]
                if isinstance(value, Iterator):
                    value = self.budget_iter(value)
                if check is not None:
                    value = check(self, value, args[offset + 1:], kwargs)
                args = (*args[:offset], value, *args[offset + 1:])
            return self.created(func(*args, **kwargs))

        return bounded


class _Counted(Iterator[Any]):
    """An iterator whose every item is a step of the render's budget."""

    __slots__ = ("_items", "_budget")

    def __init__(self, items: Iterator[Any], budget: RenderBudget) -> None:
        self._items = items
        self._budget = budget

    def __next__(self) -> Any:
        item = next(self._items)
        self._budget.step()
        return item


def _as_text(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    """Filters that turn their value into text: measure it first."""
    return env.to_text(value) if not isinstance(value, (str, Undefined)) else value


def _materialized(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    """Filters that collect their input: take it item by item, within the budget."""
    if isinstance(value, (str, Undefined, dict)) or not isinstance(value, Iterable):
        return value
    items = list(env.budget_iter(value))
    env.created(items)
    return items


def _check_center(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    _check_product(_int_arg(args, kwargs, 0, "width", 80), "center width")
    return _as_text(env, value, args, kwargs)


def _check_indent(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    text = _as_text(env, value, args, kwargs)
    width = args[0] if args else kwargs.get("width", 4)
    width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    _check_product(width, "indent width")
    _check_size(len(str(text)) + width * (str(text).count("\n") + 1), "an indented text")
    return text


def _check_join(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    items = _materialized(env, value, args, kwargs)
    if not isinstance(items, list):
        return items
    attribute = kwargs.get("attribute", args[1] if len(args) > 1 else None)
    shown = [make_attrgetter(env, attribute)(i) for i in items] if attribute is not None else items
    separator = args[0] if args else kwargs.get("d", "")
    total = sum(env.text_size(i) for i in shown) + len(str(separator)) * max(len(shown) - 1, 0)
    _check_size(total, "a joined text")
    return items


def _check_replace(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    text = str(_as_text(env, value, args, kwargs))
    old = str(args[0] if args else kwargs.get("old", ""))
    new = str(args[1] if len(args) > 1 else kwargs.get("new", ""))
    count = _int_arg(args, kwargs, 2, "count", -1)
    hits = text.count(old) if old else len(text) + 1
    hits = min(hits, count) if count is not None and count >= 0 else hits
    _check_size(len(text) + hits * (len(new) - len(old)), "a replaced text")
    return value


def _check_format_filter(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    env._check_percent(str(_as_text(env, value, args, kwargs)), kwargs or tuple(args))
    return value


def _check_wordwrap(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    text = str(_as_text(env, value, args, kwargs))
    wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
    _check_size(len(text) * (1 + len(str(wrap))), "a wrapped text")
    return value


def _check_tojson(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    indent = args[0] if args else kwargs.get("indent")
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > MAX_JSON_INDENT:
        raise BudgetSpent(f"tojson indent of {width} is larger than {MAX_JSON_INDENT}")
    env.text_size(value, indent=width)
    return value


def _check_pprint(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    env.text_size(value, indent=2)
    return value


def _check_batch(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    size = _int_arg(args, kwargs, 0, "linecount") or _int_arg(args, kwargs, 0, "slices", 0)
    _check_product(size, "a batch or slice count")
    return _materialized(env, value, args, kwargs)


def _check_sum(env: _BoundedEnvironment, value: Any, args: tuple, kwargs: dict) -> Any:
    items = _materialized(env, value, args, kwargs)
    start = args[1] if len(args) > 1 else kwargs.get("start", 0)
    if isinstance(items, list) and isinstance(start, (list, tuple)):
        size = len(start) + sum(len(i) for i in items if isinstance(i, (list, tuple)))
        if size > MAX_ITEMS:
            raise BudgetSpent(f"sum would build a list of {size:,} items")
    return items


_TEXT_FILTERS = ("string", "upper", "lower", "title", "capitalize", "trim", "truncate", "striptags", "escape",
                 "e", "forceescape", "urlencode", "urlize", "safe", "wordcount", "xmlattr")
_COLLECTING_FILTERS = ("list", "sort", "unique", "reverse", "dictsort", "groupby", "first", "last", "min", "max",
                       "random", "length", "count", "items", "map", "select", "reject", "selectattr", "rejectattr")
_FILTER_CHECKS: dict[str, Callable[[_BoundedEnvironment, Any, tuple, dict], Any]] = {
    **{name: _as_text for name in _TEXT_FILTERS},
    **{name: _materialized for name in _COLLECTING_FILTERS},
    "center": _check_center, "indent": _check_indent, "join": _check_join, "replace": _check_replace,
    "format": _check_format_filter, "wordwrap": _check_wordwrap, "tojson": _check_tojson, "pprint": _check_pprint,
    "batch": _check_batch, "slice": _check_batch, "sum": _check_sum,
}


def _short(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, (int, float)) else "(a value)"
    return text if len(text) <= limit else text[:limit] + "…"


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """`tojson` as Hugging Face templates expect it (tools, tool-call arguments): plain JSON in the given
    key order, not Jinja's HTML-escaped, key-sorted variant."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators else None, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template. `render(messages)` returns the prompt text.

    `name` says whose template it is in every error ("instruction template 'ChatML'", "the custom
    instruction template", "the model's chat template")."""

    def __init__(self, source: str, name: str = "the model's chat template") -> None:
        self.source = source
        self._variables: frozenset[str] | None = None  # read on first use (see `uses`)
        self.name = name
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"{name} is {len(source):,} characters; a template may have at most "
                                f"{MAX_TEMPLATE_CHARS:,}")
        env = self._env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)

        def refuse(message: Any) -> None:
            raise TemplateError(f"{name} refused the conversation: {_short(message)}")

        env.globals["raise_exception"] = refuse
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(env.to_text(fmt)[:200])
        # tojson as Hugging Face templates expect it (tools, tool-call arguments), inside the render's budget
        env.filters["tojson"] = env._bounded_filter("tojson", _tojson)
        try:
            self._template = env.from_string(source)
        except JinjaTemplateError as exc:
            raise TemplateError(f"{name} does not compile: {exc}") from exc
        except (RecursionError, MemoryError, SyntaxError, ValueError, OverflowError) as exc:
            raise TemplateError(f"{name} does not compile: it is nested too deeply or too large "
                                f"({type(exc).__name__})") from exc

    def uses(self, name: str) -> bool:
        """Whether the template reads variable `name` (e.g. enable_thinking): the Chat tab shows a control
        for it only then."""
        if self._variables is None:
            from jinja2 import meta

            self._variables = frozenset(meta.find_undeclared_variables(self._template.environment.parse(self.source)))
        return name in self._variables

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        budget = RenderBudget()
        self._env.start(budget)
        try:
            chunks = []
            total = 0
            for chunk in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **extra):
                total += len(chunk)
                if total > MAX_PROMPT_CHARS:
                    raise TemplateError(f"{self.name} produced more than {MAX_PROMPT_CHARS:,} characters")
                chunks.append(chunk)
            return "".join(chunks)
        except BudgetSpent as exc:
            raise TemplateError(f"{self.name} was stopped: {exc} (each render may take {RENDER_SECONDS:g} s, "
                                f"{MAX_STEPS:,} steps and {MAX_VALUE_CHARS:,} characters per value)") from None
        except SecurityError as exc:
            raise TemplateError(f"{self.name} tried something the sandbox forbids: {exc}") from None
        except TemplateError:
            raise
        except MemoryError:
            raise TemplateError(f"{self.name} ran out of memory") from None
        except RecursionError:
            raise TemplateError(f"{self.name} recursed too deeply") from None
        except (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                OverflowError, ZeroDivisionError, StopIteration, RuntimeError) as exc:
            raise TemplateError(f"{self.name} failed: {type(exc).__name__}: {_short(str(exc))}") from None
        finally:
            self._env.start(None)


# A plain ChatML template for models without one of their own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
