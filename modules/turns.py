"""A chat turn as typed parts: what was said, and everything else that belongs to the turn.

    Turn("assistant", (ReasoningPart("The user greets me."), TextPart("Hello!")))

A reply is more than a string: a reasoning model thinks before it answers, a tool-using one calls
tools and reads their results between its words. Each of those is a part; the turn's `text` is its
text parts joined (what the user reads, what search and old clients see). The store keeps the parts
as JSON (modules/store.py), so a new kind of part is a new class here and nothing else changes in
the schema. Unknown part types from a newer Parlour are kept as they are (`OtherPart`), never dropped.

Prompt building sends the model `text` only, plus — when the user keeps it — the reasoning
(`template_message`); extensions written for text-generation-webui still get plain strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Union

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ReasoningPart:
    """The model's thinking before (or between) its words."""

    text: str
    tokens: int | None = None
    seconds: float | None = None
    #: False when the reply ended inside the block (max tokens, Stop): shown as thinking, marked incomplete
    complete: bool = True
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True)
class ToolCallPart:
    """A call the model made: `arguments` is the JSON text the model wrote (OpenAI keeps it as text)."""

    id: str
    name: str
    arguments: str
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class ToolResultPart:
    """What a tool answered (or its error) for the call with `call_id`."""

    call_id: str
    name: str
    content: str
    error: bool = False
    seconds: float | None = None
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True)
class OtherPart:
    """A part of a type this version does not know (written by a newer Parlour): kept verbatim."""

    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", "unknown"))


Part = Union[TextPart, ReasoningPart, ToolCallPart, ToolResultPart, OtherPart]
PART_TYPES: dict[str, type] = {cls.type: cls for cls in (TextPart, ReasoningPart, ToolCallPart, ToolResultPart)}  # type: ignore[attr-defined]


class PartError(ValueError):
    """Parts data that is not a list of parts (a hand-edited import, a damaged row)."""


def part_to_json(part: Part) -> dict[str, Any]:
    if isinstance(part, OtherPart):
        return dict(part.data)
    return {k: v for k, v in part.__dict__.items() if v is not None}


def part_from_json(data: Any) -> Part:
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise PartError("a part must be an object with a 'type'")
    cls = PART_TYPES.get(data["type"])
    if cls is None:
        return OtherPart(dict(data))
    names = set(cls.__dataclass_fields__)
    try:
        part = cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise PartError(f"a {data['type']} part lacks a field: {exc}") from exc
    for name, value in part.__dict__.items():  # text fields checked: parts come from files and clients
        if cls.__dataclass_fields__[name].type == "str" and not isinstance(value, str):
            raise PartError(f"a {data['type']} part's {name!r} must be text")
    return part


def parts_from_json(data: Any) -> tuple[Part, ...]:
    if not isinstance(data, list):
        raise PartError("parts must be a list")
    return tuple(part_from_json(item) for item in data)


def parts_to_json(parts: Iterable[Part]) -> list[dict[str, Any]]:
    return [part_to_json(p) for p in parts]


@dataclass(frozen=True)
class Turn:
    role: str
    parts: tuple[Part, ...] = ()
    #: a short label for who speaks (OpenAI's `name`), optional
    name: str | None = None
    #: UI-only extras that never reach the model (an extension's reply footer)
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, role: str, text: str, reasoning: str = "", **extras: Any) -> "Turn":
        parts: list[Part] = [ReasoningPart(reasoning)] if reasoning else []
        parts.append(TextPart(text))
        return cls(role, tuple(parts), extras=extras)

    @property
    def text(self) -> str:
        """The words of the turn: its text parts joined (reasoning and tool traffic left out)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def reasoning(self) -> str:
        return "\n\n".join(p.text for p in self.parts if isinstance(p, ReasoningPart) and p.text)

    def of_type(self, cls: type) -> list[Any]:
        return [p for p in self.parts if isinstance(p, cls)]

    def with_text(self, text: str) -> "Turn":
        """The same turn with its words replaced (an edit): other parts keep their places; the new
        text takes the place of the first text part (or goes last)."""
        out: list[Part] = []
        placed = False
        for part in self.parts:
            if isinstance(part, TextPart):
                if not placed:
                    out.append(TextPart(text))
                    placed = True
                continue
            out.append(part)
        if not placed:
            out.append(TextPart(text))
        return replace(self, parts=tuple(out))

    def template_message(self, keep_reasoning: bool = False) -> dict[str, Any]:
        """The turn as a chat template reads it: {"role", "content"} and, when the user keeps thinking in
        the history, `reasoning_content` (the key Hugging Face templates that handle reasoning read)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text}
        if keep_reasoning and self.reasoning:
            message["reasoning_content"] = self.reasoning
        return message

    def template_messages(self, keep_reasoning: bool = False) -> list[dict[str, Any]]:
        """The turn as the messages a tool-aware chat template reads (Hugging Face's shapes): a reply with
        tool calls is an assistant message with `tool_calls` (arguments as a mapping, as templates expect),
        each result a `tool` message after it, and words after the results a further assistant message.
        A turn without tool parts is its one `template_message`."""
        if not any(isinstance(p, (ToolCallPart, ToolResultPart)) for p in self.parts):
            return [self.template_message(keep_reasoning)]
        from modules.tools.spec import arguments_value

        out: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for part in self.parts:
            if isinstance(part, ToolResultPart):
                current = None
                out.append({"role": "tool", "tool_call_id": part.call_id, "name": part.name, "content": part.content})
                continue
            if current is None and isinstance(part, (TextPart, ToolCallPart)):
                current = {"role": self.role, "content": ""}
                out.append(current)
            if isinstance(part, TextPart) and current is not None:
                current["content"] += part.text
            elif isinstance(part, ToolCallPart) and current is not None:
                current.setdefault("tool_calls", []).append({"id": part.id, "type": "function", "function": {
                    "name": part.name, "arguments": arguments_value(part.arguments)}})
        if keep_reasoning and self.reasoning:
            first = next((m for m in out if m["role"] == self.role), None)
            if first is not None:
                first["reasoning_content"] = self.reasoning
        return out

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "parts": parts_to_json(self.parts)}


def turns_from_messages(messages: Iterable[dict[str, Any]]) -> list[Turn]:
    """Turns from {"role", "content"[, "reasoning_content"]} dicts (extensions, tests, old callers)."""
    out = []
    for m in messages:
        out.append(Turn.of(m["role"], str(m.get("content") or ""), str(m.get("reasoning_content") or "")))
    return out


def dumps_parts(parts: Iterable[Part]) -> str:
    return json.dumps(parts_to_json(parts), ensure_ascii=False)
