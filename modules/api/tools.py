"""Function calling on /v1/chat/completions, in OpenAI's shapes: `tools`, `tool_choice`,
`parallel_tool_calls` in; `message.tool_calls` and `finish_reason: "tool_calls"` out; assistant
`tool_calls` and `tool` messages in the history. The API never runs a tool: the client does, and sends
the result back as a `tool` message. The model side is modules/tools/ (see docs/tools.md).
"""

from __future__ import annotations

import json
from typing import Any

from modules.api.errors import APIError
from modules.constraints import ConstraintError, check
from modules.loaders import registry
from modules.presets import Preset
from modules.tools import forced
from modules.tools.formats import GENERIC
from modules.tools.spec import ToolError, ToolUse, tool_use
from modules.turns import TextPart, ToolCallPart, ToolResultPart, Turn


def _bad(exc: ToolError) -> APIError:
    return APIError(400, str(exc), param=exc.param, code="invalid_value")


def request_tools(body: Any, backend: Any, preset: Preset) -> dict[str, Any]:
    """The GenerationRequest fields for the body's tools, checked against the loaded backend (400s)."""
    if not body.tools:
        if body.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return {}
    try:
        use: ToolUse = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls)
    except ToolError as exc:
        raise _bad(exc) from exc
    mode = registry.capabilities(backend).tools
    if mode == "none" and use.active:
        raise APIError(400, f"tools are not supported by the {backend.loader} loader", param="tools",
                       code="unsupported")
    if use.choice.forced and mode == "parse" and any(getattr(preset, k) for k in ("grammar_string", "json_schema",
                                                                                  "regex")):
        raise APIError(400, "a forced tool call is generated under its own grammar: it cannot also follow "
                       "response_format or a grammar", param="tool_choice", code="invalid_value")
    if use.choice.forced and mode == "parse":
        _check_forced(backend, use, preset)
    return {"tools": tuple(body.tools), "tool_choice": body.tool_choice,
            "parallel_tool_calls": body.parallel_tool_calls}


def _check_forced(backend: Any, use: ToolUse, preset: Preset) -> None:
    """The forced call's constraint compiles for this backend (a schema keyword it cannot enforce is a 400
    naming the tools, before anything is generated)."""
    try:
        keys = forced.constraint(backend, use, GENERIC, "", backend.reasoning_format, preset.max_new_tokens)
        check(backend, preset.model_copy(update=keys))
    except ConstraintError as exc:
        raise APIError(400, f"the tools' schemas cannot be enforced for a forced call: {exc.reason}",
                       param="tools", code="invalid_value") from exc


def history_turn(message: Any, index: int, calls: dict[str, str]) -> Turn | None:
    """An assistant message with `tool_calls` or a `tool` message as a turn (None for any other message).
    `calls` maps the ids of calls made so far to their names; a tool message must answer one of them."""
    if message.role == "tool":
        call_id = message.tool_call_id
        if not call_id:
            raise APIError(400, f"messages[{index}]: a tool message needs tool_call_id",
                           param=f"messages[{index}].tool_call_id", code="invalid_value")
        if call_id not in calls:
            raise APIError(400, f"messages[{index}].tool_call_id {call_id!r} matches no tool call of an earlier "
                           "assistant message", param=f"messages[{index}].tool_call_id", code="invalid_value")
        return Turn("tool", (ToolResultPart(call_id, message.name or calls[call_id], message.text()),))
    if message.role != "assistant" or not message.tool_calls:
        return None
    parts: list[Any] = [TextPart(message.text())] if message.text() else []
    for n, call in enumerate(message.tool_calls):
        where = f"messages[{index}].tool_calls[{n}]"
        try:
            value = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise APIError(400, f"{where}.function.arguments must be a JSON object as text",
                           param=f"{where}.function.arguments", code="invalid_value")
        calls[call.id] = call.function.name
        parts.append(ToolCallPart(call.id, call.function.name, call.function.arguments or "{}"))
    return Turn("assistant", tuple(parts))


def message_calls(calls: tuple[ToolCallPart, ...]) -> list[dict[str, Any]]:
    """A reply's calls as OpenAI's `message.tool_calls`."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
