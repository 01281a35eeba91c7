"""Constrained output on the API: every request field that asks for it becomes the one Preset key, and the
constraint is checked on the loaded backend before anything is generated (modules/constraints.py).

Fields (a request uses one; the same constraint under two names is fine, two different ones are a 400):

| field | from | Preset key |
|---|---|---|
| `response_format: {"type": "json_object"}` | OpenAI (llama.cpp server: an optional `schema` beside it) | `json_schema` `{"type": "object"}` |
| `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` | OpenAI | `json_schema` |
| `json_schema` (object or JSON text) | llama.cpp server | `json_schema` |
| `grammar` | llama.cpp server | `grammar_string` |
| `grammar_string` | text-generation-webui | `grammar_string` |
| `regex` | Parlour | `regex` |
| `guided_json`, `guided_regex`, `guided_grammar`, `guided_choice` | vLLM (before 0.10) | as above |
| `structured_outputs: {json, regex, grammar, choice, json_object}` | vLLM | as above |

`response_format: {"type": "text"}` asks for no constraint (a named preset's is dropped). `strict` is accepted
and always true in effect: the reply follows the schema exactly.
"""

from __future__ import annotations

import json
from typing import Any

from modules.api.errors import APIError
from modules.constraints import ConstraintError, UnsupportedConstraint, check
from modules.presets import CONSTRAINT_KEYS, MAX_CONSTRAINT_CHARS, Preset, schema_text

ANY_OBJECT = '{"type": "object"}'


def _schema_text(value: Any, param: str) -> str:
    """A schema given as an object or as JSON text -> its JSON text (Preset's own reading), or a 400 naming `param`."""
    try:
        text = schema_text(value)
    except ValueError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_value") from exc
    if not isinstance(text, str) or not text.strip():
        raise APIError(400, f"{param}: a JSON schema is an object", param=param, code="invalid_value")
    return text


def _choice_grammar(choices: Any, param: str) -> str:
    """vLLM's `choice` (the reply is one of these strings) as GBNF, which every local loader reads."""
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise APIError(400, f"{param}: a list of non-empty strings", param=param, code="invalid_value")
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def _response_format(value: dict[str, Any]) -> tuple[str, str, str] | None:
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema")
        return ("response_format", "json_schema",
                ANY_OBJECT if schema is None else _schema_text(schema, "response_format.schema"))
    if kind == "json_schema":
        spec = value.get("json_schema")
        if isinstance(spec, dict) and "schema" in spec:
            return "response_format.json_schema.schema", "json_schema", _schema_text(
                spec["schema"], "response_format.json_schema.schema")
        if "schema" in value:  # llama.cpp server also takes the schema beside the type
            return "response_format.schema", "json_schema", _schema_text(value["schema"], "response_format.schema")
        raise APIError(400, "response_format.json_schema.schema is required for type json_schema",
                       param="response_format.json_schema", code="invalid_value")
    raise APIError(400, f"response_format.type must be text, json_object or json_schema, not {kind!r}",
                   param="response_format.type", code="invalid_value")


def _asked(body: Any) -> list[tuple[str, str, str]]:
    """(request field, Preset key, value) for every constraint field the request sets."""
    asked: list[tuple[str, str, str]] = []
    if isinstance(body.response_format, dict):
        found = _response_format(body.response_format)
        if found:
            asked.append(found)
    for param, key in (("json_schema", "json_schema"), ("grammar_string", "grammar_string"), ("grammar", "grammar_string"),
                       ("regex", "regex"), ("guided_regex", "regex"), ("guided_grammar", "grammar_string")):
        value = getattr(body, param, None)
        if value:
            asked.append((param, key, value))
    if getattr(body, "guided_json", None) is not None:
        asked.append(("guided_json", "json_schema", _schema_text(body.guided_json, "guided_json")))
    if getattr(body, "guided_choice", None) is not None:
        asked.append(("guided_choice", "grammar_string", _choice_grammar(body.guided_choice, "guided_choice")))
    outputs = getattr(body, "structured_outputs", None) or {}
    for name, value in outputs.items():
        param = f"structured_outputs.{name}"
        if value in (None, False, ""):
            continue
        if name == "json":
            asked.append((param, "json_schema", _schema_text(value, param)))
        elif name == "json_object":
            asked.append((param, "json_schema", ANY_OBJECT))
        elif name in ("regex", "grammar") and isinstance(value, str):
            asked.append((param, "regex" if name == "regex" else "grammar_string", value))
        elif name == "choice":
            asked.append((param, "grammar_string", _choice_grammar(value, param)))
        else:
            raise APIError(400, f"{param} is not a structured output Parlour applies (json, json_object, regex, "
                           "grammar, choice)", param=param, code="unsupported")
    return asked


def requested_constraint(body: Any) -> dict[str, str]:
    """The Preset keys for the request's constraint: all three (the one asked for, the others cleared, so a
    named preset's own constraint gives way), or {} when the request does not mention one."""
    asked = _asked(body)
    text_only = isinstance(body.response_format, dict) and body.response_format.get("type", "text") == "text"
    if not asked:
        return dict.fromkeys(CONSTRAINT_KEYS, "") if text_only else {}
    first = asked[0]
    for other in asked[1:]:
        if other[1:] != first[1:]:
            raise APIError(400, f"{first[0]} and {other[0]} ask for different constraints; a reply follows one",
                           param=other[0], code="invalid_value")
    if len(first[2]) > MAX_CONSTRAINT_CHARS:
        raise APIError(400, f"{first[0]} is {len(first[2]):,} characters; the limit is {MAX_CONSTRAINT_CHARS:,}",
                       param=first[0], code="invalid_value")
    return {**dict.fromkeys(CONSTRAINT_KEYS, ""), first[1]: first[2]}


def constraint_param(body: Any) -> str | None:
    """The request field the constraint came from (errors name it), or None."""
    asked = _asked(body)
    return asked[0][0] if asked else None


def check_constraint(backend: Any, preset: Preset, body: Any) -> None:
    """A 400 naming the request field for a constraint the backend cannot apply or that does not compile."""
    try:
        check(backend, preset)
    except ConstraintError as exc:
        param = constraint_param(body) or exc.key
        code = "unsupported" if isinstance(exc, UnsupportedConstraint) else "invalid_constraint"
        raise APIError(400, f"{param}: {exc.reason}", param=param, code=code) from exc
