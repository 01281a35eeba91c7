"""Tool calls under a constraint built from the tools' schemas (the constrained-output engine,
modules/constraints.py).

Forced (`tool_choice` "required" or a named function): the reply is exactly one call, so even a tiny model
answers with a call the parser reads and whose arguments validate against the tool's schema.

- Backends that take Lark grammars (Transformers): the family's own markup around the call object, with
  the markers as the model's own tokens where it has one for them, and room before it for a reasoning
  block (the rest of one the prompt opened, or one of the model's own), bounded so the call always comes.
- Backends that take only JSON schemas (llama.cpp): the bare call object `{"name", "arguments"}`, which
  every format's parser reads (the JSON fallback).

Auto (`lazy_constraint`): the reply is free until it writes the format's start marker; from there on the
call is constrained, as llama.cpp's lazy grammars do, so a call the model starts is a valid one.
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
        ids = backend.tokenize(text)
        return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)

    return literal


def _think_rule(literal, fmt: ReasoningFormat, state: str, budget: int | None) -> tuple[str, str]:
    """(item for `start`, its rule) for the reasoning before the call: the rest of a block the prompt opened
    (`state` "inside"), or an optional block of the model's own (no state); nothing after a closed block.
    `budget`: the most tokens the thought may take (None: no bound)."""
    if not fmt.enabled or fmt.hidden or state == "after":
        return "", ""
    limit = f"max_tokens={budget}" if budget else ""
    end = literal(fmt.end)
    if end.startswith("<["):  # the end marker is a token of its own: the thought is text up to it
        item, rule = f"think {end}", f"think{f'[{limit}]' if limit else ''}: /(?s:.*)/"
    else:
        item = "think"
        rule = f"think[{', '.join(p for p in (f'stop={json.dumps(fmt.end)}', limit) if p)}]: /(?s:.*)/"
    item += " /\\n{0,2}/"
    if state == "inside":
        return item, rule
    return f"({literal(fmt.start)} {item})?", rule


def constraint(backend: Any, use: ToolUse, fmt: CallFormat, reasoning_state: str, reasoning: ReasoningFormat,
               max_new_tokens: int) -> dict[str, str]:
    """The Preset constraint keys for a forced call on `backend` (all three: the call's set, the others cleared)."""
    kinds = supported_kinds(backend)
    cleared = dict.fromkeys(CONSTRAINT_KEYS, "")
    if "lark" in kinds:
        literal = _literal(backend)
        budget = max(1, min(MAX_THINK_TOKENS, max_new_tokens // 4))
        think, rule = _think_rule(literal, reasoning, reasoning_state, budget)
        grammar = call_grammar(fmt, use.tools, use.choice, literal, think)
        return {**cleared, "grammar_string": grammar + (rule + "\n" if rule else "")}
    if "json_schema" in kinds:
        chosen = [t for t in use.tools if use.choice.mode != "function" or t.name == use.choice.name]
        options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": closed(t.schema, bound_integers=False)},
                    "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {**cleared, "json_schema": json.dumps(schema, ensure_ascii=False)}
    raise UnsupportedConstraint(f"the {backend.loader} loader cannot force a tool call (it applies no grammar "
                                "or JSON schema); use tool_choice auto", "tool_choice")


def lazy_constraint(backend: Any, use: ToolUse, fmt: CallFormat, reasoning_state: str,
                    reasoning: ReasoningFormat) -> dict[str, str] | None:
    """`auto`: the Preset constraint keys that leave the reply free until it starts a call, then make the call
    valid (formats.call_grammar's lazy form), or None where that cannot be done faithfully: a backend without
    Lark grammars, a format with no start marker (Llama's bare JSON), a model whose reasoning is written in
    structure tokens free text cannot hold (GPT-OSS's channels)."""
    if "lark" not in supported_kinds(backend) or not fmt.start or reasoning.hidden:
        return None
    literal = _literal(backend)
    think, rule = _think_rule(literal, reasoning, reasoning_state, None)
    grammar = call_grammar(fmt, use.tools, use.choice, literal, think, lazy=True, parallel=use.parallel)
    return {**dict.fromkeys(CONSTRAINT_KEYS, ""), "grammar_string": grammar + (rule + "\n" if rule else "")}


def call_format(template: Any) -> CallFormat:
    """The format to read calls in: the tool-aware template's own, else the generic prompt's."""
    from modules.tools.formats import detect

    return detect(template.source) if template is not None else GENERIC
