"""Forced calls (`tool_choice` "required" or a named function): the reply is generated under a constraint
built from the tools' schemas (the constrained-output engine, modules/constraints.py), so even a tiny
model answers with a call the parser reads and whose arguments validate against the tool's schema.

- Backends that take Lark grammars (Transformers): the family's own markup around the call object, with
  the markers as the model's own tokens where it has one for them, and room before it to finish a
  reasoning block the prompt opened (bounded, so the call always comes).
- Backends that take only JSON schemas (llama.cpp): the bare call object `{"name", "arguments"}`, which
  every format's parser reads (the JSON fallback).
"""

from __future__ import annotations

import json
from typing import Any

from modules.constraints import UnsupportedConstraint, supported_kinds
from modules.presets import CONSTRAINT_KEYS
from modules.reasoning import ReasoningFormat
from modules.tools.formats import GENERIC, CallFormat, call_grammar, closed
from modules.tools.spec import ToolUse

#: the most tokens a forced reply may think before its call (its prompt opened a reasoning block)
MAX_THINK_TOKENS = 256


def _literal(backend: Any):
    """A marker as a grammar item: the model's own token when the marker is one token, else the text."""

    def literal(text: str) -> str:
        try:
            ids = backend.tokenize(text)
        except Exception:  # a backend that cannot tokenize here: the text itself is always right
            ids = []
        return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)

    return literal


def _think_rule(literal, fmt: ReasoningFormat, max_new_tokens: int) -> tuple[str, str]:
    """(item for `start`, its rule) letting the model end a reasoning block before the call."""
    budget = max(1, min(MAX_THINK_TOKENS, max_new_tokens // 4))
    end = literal(fmt.end)
    if end.startswith("<["):  # the end marker is a token of its own: the thought is text up to it
        return f"think {end} /\\n{{0,2}}/", f"think[max_tokens={budget}]: /(?s:.*)/"
    return "think /\\n{0,2}/", f"think[stop={json.dumps(fmt.end)}, max_tokens={budget}]: /(?s:.*)/"


def constraint(backend: Any, use: ToolUse, fmt: CallFormat, reasoning_state: str, reasoning: ReasoningFormat,
               max_new_tokens: int) -> dict[str, str]:
    """The Preset constraint keys for a forced call on `backend` (all three: the call's set, the others cleared)."""
    kinds = supported_kinds(backend)
    cleared = dict.fromkeys(CONSTRAINT_KEYS, "")
    if "lark" in kinds:
        literal = _literal(backend)
        think, rule = _think_rule(literal, reasoning, max_new_tokens) if reasoning_state == "inside" else ("", "")
        grammar = call_grammar(fmt, use.tools, use.choice, literal, think)
        return {**cleared, "grammar_string": grammar + (rule + "\n" if rule else "")}
    if "json_schema" in kinds:
        chosen = [t for t in use.tools if use.choice.mode != "function" or t.name == use.choice.name]
        options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": closed(t.schema)},
                    "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {**cleared, "json_schema": json.dumps(schema, ensure_ascii=False)}
    raise UnsupportedConstraint(f"the {backend.loader} loader cannot force a tool call (it applies no grammar "
                                "or JSON schema); use tool_choice auto", "tool_choice")


def call_format(template: Any) -> CallFormat:
    """The format to read calls in: the tool-aware template's own, else the generic prompt's."""
    from modules.tools.formats import detect

    return detect(template.source) if template is not None else GENERIC
