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
from typing import Any

from modules.tools.formats import GENERIC, CallFormat, render_calls

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


def _arguments_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False)
