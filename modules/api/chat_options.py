"""text-generation-webui's chat fields on /v1/chat/completions — the one place they are applied.

WIRE-UP POINT for modules/chat.py (chat modes, characters, instruction templates): when it lands,
`apply_chat_options` should hand `options` to it and return its messages. Until then the fields are
accepted; those Parlour can honour without it are applied here, and the rest are reported back to
the client as ignored (header `X-Parlour-Ignored-Fields`), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from modules.api.schemas import ChatCompletionRequest


@dataclass(frozen=True)
class ChatOptions:
    """The text-generation-webui chat fields of one request (None: not given)."""

    mode: str | None = None
    character: str | None = None
    instruction_template: str | None = None
    instruction_template_str: str | None = None
    chat_template_str: str | None = None
    name1: str | None = None
    name2: str | None = None
    context: str | None = None
    greeting: str | None = None
    user_bio: str | None = None
    chat_instruct_command: str | None = None

    @classmethod
    def from_request(cls, body: ChatCompletionRequest) -> "ChatOptions":
        return cls(**{f.name: getattr(body, f.name) for f in fields(cls)})


def apply_chat_options(messages: list[dict[str, Any]], options: ChatOptions) -> tuple[list[dict[str, Any]], list[str]]:
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
