"""Actions on one message of a chat (the bar under each bubble in the Chat tab), without Gradio.

The page sends an action as JSON, `{"act": "next", "index": 3, "text": ""}`; `MessageAction.parse`
checks it, and `apply` does it through the chat service: `<` / `>` browse a message's versions (`>` on
the newest version of the last reply makes a new one, as in text-generation-webui), Edit selects the
message (the page then opens its words in place), Save writes the edited words, Branch here opens a new
chat up to that message, Regenerate makes a new version of the last reply. Copy never leaves the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterator

from modules.conversation import ChatService, ChatView, Setup, Step

ACTIONS = ("prev", "next", "regenerate", "edit", "save", "branch")
#: an edited message longer than this is refused (a pasted book, or a page gone wrong)
MAX_EDIT_CHARS = 200_000


@dataclass(frozen=True)
class MessageAction:
    act: str
    index: int
    text: str = ""

    @classmethod
    def parse(cls, raw: str) -> MessageAction:
        """The action in the page's JSON; ValueError (one line for the status) for anything else."""
        try:
            data = json.loads(raw or "")
        except ValueError as exc:
            raise ValueError("the message action was not understood") from exc
        if not isinstance(data, dict):
            raise ValueError("the message action was not understood")
        act, index, text = data.get("act"), data.get("index"), data.get("text", "")
        if act not in ACTIONS or not isinstance(index, int) or isinstance(index, bool) or index < 0 \
                or not isinstance(text, str):
            raise ValueError("the message action was not understood")
        if len(text) > MAX_EDIT_CHARS:
            raise ValueError(f"the edited message is longer than {MAX_EDIT_CHARS:,} characters")
        return cls(act, index, text)


@dataclass(frozen=True)
class Acted:
    """What an action did: the view to show and a status line; `steps` when it streams a new reply;
    `new_chat` when the view is another chat (a branch)."""

    view: ChatView
    status: str = ""
    steps: Iterator[Step] | None = None
    new_chat: bool = False


def apply(chats: ChatService, user: str, view: ChatView, action: MessageAction,
          setup: Callable[[], Setup]) -> Acted:
    """Do `action` on the open chat. `setup()` is asked for only when a reply is made."""
    index = action.index
    if action.act == "regenerate" or (action.act == "next" and chats.wants_regenerate(user, view, index, 1)):
        return Acted(view, steps=chats.regenerate(user, view, setup()))
    if action.act in ("prev", "next"):
        return Acted(chats.select_version(user, view, index, -1 if action.act == "prev" else 1))
    if action.act == "edit":
        return Acted(chats.select(view, index))
    if action.act == "save":
        return Acted(chats.edit(user, view, index, action.text), "Saved the edit.")
    return Acted(chats.branch(user, view, index), f"Branched into a new chat at message {index + 1}.",
                 new_chat=True)
