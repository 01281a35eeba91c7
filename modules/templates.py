"""Chat templates rendered in Jinja's immutable sandbox.

A model's `chat_template` is code from the internet: it renders in `ImmutableSandboxedEnvironment`,
so attribute tricks (`''.__class__.__mro__`) and mutation of passed-in objects raise instead of
running. Jinja has no while-loop, so the only unbounded work is nested loops over range() and huge
values built with `*`: range() draws from one iteration budget per render and `*`/`**` are capped,
and the rendered prompt is size-limited.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_PROMPT_CHARS = 4_000_000


class TemplateError(ValueError):
    """A template that does not compile, escapes the sandbox or fails to render."""


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


MAX_LOOP_STEPS = 1_000_000  # range() iterations per render, summed over all loops
MAX_PRODUCT = 1_000_000  # largest result of `*` / `**` in a template


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with bounded `*` and `**`, so `'x' * 10**9` is an error, not a memory spike."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):  # type: ignore[override]
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponent too large in template")
        result = super().call_binop(context, operator, left, right)
        size = len(result) if isinstance(result, (str, list, tuple)) else abs(result) if isinstance(result, int) else 0
        if size > MAX_PRODUCT and operator == "*" and not isinstance(result, int):
            raise SecurityError(f"template built a value of {size:,} items")
        return result


def _budgeted_range(budget: list[int]):
    """range() whose iterations, over every loop of one render, are capped: nested loops end too."""

    def bounded(*args: int):
        steps = range(*args)
        if len(steps) > MAX_LOOP_STEPS:
            raise SecurityError(f"range() of {len(steps):,} steps is too large")
        for value in steps:
            budget[0] -= 1
            if budget[0] < 0:
                raise SecurityError(f"the template looped more than {MAX_LOOP_STEPS:,} times")
            yield value

    return bounded


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """`tojson` as Hugging Face templates expect it (tools, tool-call arguments): plain JSON in the given
    key order, not Jinja's HTML-escaped, key-sorted variant."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators else None, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template. `render(messages)` returns the prompt text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._variables: frozenset[str] | None = None  # read on first use (see `uses`)
        env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except JinjaTemplateError as exc:
            raise TemplateError(f"the chat template does not compile: {exc}") from exc

    def uses(self, name: str) -> bool:
        """Whether the template reads variable `name` (e.g. enable_thinking): the Chat tab shows a control
        for it only then."""
        if self._variables is None:
            from jinja2 import meta

            self._variables = frozenset(meta.find_undeclared_variables(self._template.environment.parse(self.source)))
        return name in self._variables

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        try:
            chunks = []
            total = 0
            variables = {"range": _budgeted_range([MAX_LOOP_STEPS]), **extra}
            for chunk in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **variables):
                total += len(chunk)
                if total > MAX_PROMPT_CHARS:
                    raise TemplateError(f"the chat template produced more than {MAX_PROMPT_CHARS:,} characters")
                chunks.append(chunk)
            return "".join(chunks)
        except SecurityError as exc:
            raise TemplateError(f"the chat template tried something the sandbox forbids: {exc}") from exc
        except TemplateError:
            raise
        except (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                RecursionError, OverflowError) as exc:
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from exc


# A plain ChatML template for models without one of their own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
