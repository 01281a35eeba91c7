"""Chat templates rendered in Jinja's immutable sandbox.

A model's `chat_template` is code from the internet: it renders in `ImmutableSandboxedEnvironment`,
so attribute tricks (`''.__class__.__mro__`) and mutation of passed-in objects raise instead of
running, and the rendered prompt is size-limited so a runaway loop ends with an error, not a hang.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_PROMPT_CHARS = 4_000_000


class TemplateError(ValueError):
    """A template that does not compile, escapes the sandbox or fails to render."""


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with a cap on range() so a loop cannot run for minutes."""

    def call(self, context, obj, *args, **kwargs):  # type: ignore[override]
        if obj is range and args and any(isinstance(a, int) and abs(a) > 100_000 for a in args):
            raise SecurityError("range() larger than 100000 is not allowed in templates")
        return super().call(context, obj, *args, **kwargs)


class ChatTemplate:
    """A compiled chat template. `render(messages)` returns the prompt text."""

    def __init__(self, source: str) -> None:
        self.source = source
        env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except JinjaTemplateError as exc:
            raise TemplateError(f"the chat template does not compile: {exc}") from exc

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        try:
            chunks = []
            total = 0
            for chunk in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **extra):
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
                RecursionError) as exc:
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from exc


# A plain ChatML template for models without one of their own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
