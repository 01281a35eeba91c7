"""A card's Character's Note (SillyTavern's `data.extensions.depth_prompt`), and the text a card puts
after the chat (its post-history instructions), placed into the turns of a chat prompt.

The note is `{"prompt": str, "depth": int, "role": "system" | "user" | "assistant"}`. SillyTavern
(public/script.js, `doChatInject`) puts its text, names substituted, into the chat on every reply as a
message of its own with that role, `depth` messages from the end: depth 0 after the newest message,
depth 2 with two messages after it, a depth past the oldest message in front of the oldest. When the
reply continues a partial one, depth 0 counts as 1, so the note never lands inside the reply. A missing
depth is 4 and a missing or unknown role is `system` (SillyTavern's defaults); Parlour also reads a
depth written as a whole-number float or text, and holds it to 0..1000 (SillyTavern's limit).

Parlour places the note after truncation, counting from the end of the turns that are kept, so the note
is never cut away with the oldest turns and sits where it would without truncation. How a message of
its own is shown: in chat mode's transcript a `system` note is a line of its own (no speaker's name, as
SillyTavern writes a narrator's line), a `user` or `assistant` one is a line under the user's or the
character's name; instruct mode gives the instruction template a message with that role. Some templates
refuse a system message inside the chat or two user messages in a row, or silently leave a system
message out: for those modules/chat.py merges the note's text into the message at that depth instead
(`place(..., separate=False)`, the rule the lorebook's entries at a depth follow).

The post-history instructions come after the whole chat, and so after a depth-0 note, as SillyTavern
sends them: merged at the end of the newest message (of the note's message, then), before the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modules.lorebook import merge_at_depth

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
DEFAULT_DEPTH = 4  # SillyTavern's depth_prompt_depth_default
DEFAULT_ROLE: Role = "system"  # SillyTavern's depth_prompt_role_default
MAX_DEPTH = 1000  # SillyTavern's MAX_INJECTION_DEPTH
#: SillyTavern also stores a role as its number (extension_prompt_roles)
_ROLE_NUMBERS = {0: "system", 1: "user", 2: "assistant"}


@dataclass(frozen=True)
class CharacterNote:
    """A Character's Note as the card holds it (text with {{char}}/{{user}} not yet substituted)."""

    text: str = ""
    depth: int = DEFAULT_DEPTH
    role: Role = DEFAULT_ROLE

    def __bool__(self) -> bool:
        return bool(self.text.strip())


def _depth(value: Any) -> int:
    if isinstance(value, bool):
        return DEFAULT_DEPTH
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        return DEFAULT_DEPTH
    return max(0, min(value, MAX_DEPTH))


def _role(value: Any) -> Role:
    if isinstance(value, int) and not isinstance(value, bool):
        value = _ROLE_NUMBERS.get(value)
    return value if value in ROLES else DEFAULT_ROLE  # type: ignore[return-value]


def parse(raw: Any) -> CharacterNote:
    """The note in a card's `extensions.depth_prompt`, read as leniently as SillyTavern reads it: a
    malformed one is an empty note (nothing goes into the prompt), never a refused card."""
    if not isinstance(raw, dict):
        return CharacterNote()
    text = raw.get("prompt")
    return CharacterNote(text=text if isinstance(text, str) else "", depth=_depth(raw.get("depth")),
                         role=_role(raw.get("role")))


def checked(text: str, depth: Any, role: Any) -> CharacterNote:
    """A note typed in the Character tab; ValueError saying what is wrong with its depth or role (a form
    is told, where a card's malformed note is read leniently by `parse`)."""
    if isinstance(depth, float) and depth.is_integer():
        depth = int(depth)
    if depth is None or depth == "":
        depth = DEFAULT_DEPTH
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"the Character's Note depth must be a whole number from 0 to {MAX_DEPTH}")
    if role not in ROLES:
        raise ValueError(f"the Character's Note role must be one of {', '.join(ROLES)}")
    return CharacterNote(text=(text or "").strip(), depth=depth, role=role)


def with_note(extensions: dict[str, Any], note: CharacterNote) -> dict[str, Any]:
    """A card's `extensions` holding `note` as `depth_prompt`, in SillyTavern's shape, so it goes back
    to SillyTavern on export. A character that never had a note and is given none gets no key (a
    hand-written character's file stays as it was); any other keys of the old one are kept."""
    old = extensions.get("depth_prompt")
    if not note and not isinstance(old, dict):
        return dict(extensions)
    kept = old if isinstance(old, dict) else {}
    return {**extensions, "depth_prompt": {**kept, "prompt": note.text, "depth": note.depth, "role": note.role}}


def place(options: Any, turns: list[dict[str, Any]], separate: bool = True) -> list[dict[str, Any]]:
    """The turns (kept after truncation, oldest first) with the character's note and post-history
    instructions put in, names substituted. `options`: modules/chat.PromptOptions (`character_note`,
    `post_history`, `name1`, `name2`, `continue_last`). `separate`: the note as a message of its role;
    False: merged into the message at its depth. The caller's turns are not changed."""
    from modules.chat import substitute

    continuing = bool(options.continue_last and turns and turns[-1]["role"] == "assistant")
    out = [dict(t) for t in turns]
    note: CharacterNote | None = options.character_note
    if note:
        text = substitute(note.text, options.name1, options.name2).strip()
        depth = max(note.depth, 1) if continuing else note.depth
        if separate:
            out.insert(max(0, len(out) - depth), {"role": note.role, "content": text})
        else:
            out = merge_at_depth(out, [(depth, text)], continuing)
    post = substitute(options.post_history.replace("{{original}}", ""), options.name1, options.name2).strip()
    if post:
        # after the note: when continuing, the note (depth >= 1) sits right before the partial reply
        out = merge_at_depth(out, [(0, post)], continuing)
    return out

