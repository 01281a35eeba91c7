"""How tools and tool traffic reach a model's chat template.

A tool-aware template (one that reads the `tools` variable, as Hugging Face templates for Qwen, Llama 3.x,
Mistral, Hermes do) gets the tools as `tools=` (OpenAI's function-tool shapes), assistant messages with
`tool_calls` and `tool` messages, and writes them its own way.

Every other template (and chat / chat-instruct modes, whose prompt is a transcript) gets the generic tool
prompt below in the system message, assistant calls written into the reply's text in the generic
format, and each tool result as a user message in a `<tool_response>` block; the generic parser reads the
calls back (modules/tools/formats.py's GENERIC).
"""

from __future__ import annotations

import json
import re
from typing import Any

from modules.tools.formats import GENERIC, CallFormat, detect, render_calls

GENERIC_PROMPT = """# Tools

You can call the functions described below (one JSON signature per line):
<tools>
{signatures}
</tools>

To call a function, answer with one block per call and nothing after them:
<tool_call>
{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}
</tool_call>
Each result comes back in a <tool_response> block. Without a function to call, answer normally."""


def generic_prompt(tools: list[dict[str, Any]]) -> str:
    """The generic tool prompt for `tools` (OpenAI function-tool dicts)."""
    signatures = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return GENERIC_PROMPT.format(signatures=signatures)


def tool_aware(template: Any) -> bool:
    """Whether a chat template (modules/templates.ChatTemplate) renders tools itself."""
    return template is not None and template.uses("tools")


def plain_messages(messages: list[dict[str, Any]], fmt: CallFormat = GENERIC) -> list[dict[str, Any]]:
    """Tool-shaped messages (Turn.template_messages) as plain {"role", "content"} ones: calls written into
    the assistant's text in `fmt`, results as user messages holding `<tool_response>` blocks (results in a
    row share one message, so templates that insist on alternating roles still render)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            block = f"<tool_response>\n{message.get('content', '')}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
            continue
        calls = message.get("tool_calls")
        if not calls:
            out.append(message)
            continue
        written = render_calls(fmt, [(c["function"]["name"], _arguments_text(c["function"].get("arguments")))
                                     for c in calls])
        text = message.get("content") or ""
        plain = {k: v for k, v in message.items() if k != "tool_calls"}
        plain["content"] = (text.rstrip() + "\n\n" if text.strip() else "") + written
        out.append(plain)
    for message in out:
        message.pop("tool_results", None)
    return out


def for_template(messages: list[dict[str, Any]], template: Any) -> list[dict[str, Any]]:
    """Tool-shaped messages as `template` takes them: as they are for a tool-aware template (with call ids
    of 9 letters and digits for Mistral's, which refuse others), as text for any other (None)."""
    if template is None:
        return plain_messages(messages)
    if detect(template.source).name.startswith("mistral"):
        return _short_ids(messages)
    return messages


def _short_id(call_id: str) -> str:
    """A call id as Mistral's templates require it: 9 letters and digits (the id's last ones)."""
    kept = re.sub(r"[^A-Za-z0-9]", "", call_id)
    return kept[-9:].rjust(9, "0")


def _short_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [{**c, "id": _short_id(c.get("id") or "")}
                                                 for c in message["tool_calls"]]}
        if message.get("tool_call_id"):
            message = {**message, "tool_call_id": _short_id(message["tool_call_id"])}
        out.append(message)
    return out


def calls_text(turn: Any) -> str:
    """A turn's tool calls written in the generic format ("" without calls)."""
    calls = [(p.name, p.arguments) for p in turn.parts if getattr(p, "type", "") == "tool_call"]
    return render_calls(GENERIC, calls) if calls else ""


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-shaped template messages as OpenAI's API takes them (a remote engine): call arguments as JSON text."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [
                {**c, "function": {**c["function"], "arguments": _arguments_text(c["function"].get("arguments"))}}
                for c in calls]}
        out.append(message)
    return out


def _arguments_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)
