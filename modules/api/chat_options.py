"""text-generation-webui's chat fields on /v1/chat/completions — the one place they are applied.

WIRE-UP POINT for modules/chat.py (chat modes, characters, instruction templates): the next step is
to hand these fields to `modules.chat.resolve_options` / `request_for`, as the Chat tab does. Until
then the fields are accepted; those Parlour can honour here are applied, and the rest are reported
back to the client as ignored (header `X-Parlour-Ignored-Fields`), never silently dropped. The
fields themselves are declared once, on ChatCompletionRequest.
"""

from __future__ import annotations

from typing import Any

from modules.api.schemas import ChatCompletionRequest


def apply_chat_options(messages: list[dict[str, Any]],
                       options: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages to template for this request, and the names of options not applied."""
    ignored = []
    if options.context is not None:
        # text-generation-webui's `context` is the system prompt; an explicit system message wins.
        if not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": options.context}, *messages]
    if options.mode not in (None, "instruct"):
        ignored.append("mode")
    for name in ("character", "instruction_template", "instruction_template_str", "chat_template_str", "name1",
                 "name2", "greeting", "user_bio", "chat_instruct_command"):
        if getattr(options, name) is not None:
            ignored.append(name)
    return messages, ignored
