"""The Chat tab's tool calls on a reply's turn: what the model asked for, what is still to run, and
which calls must wait for the user's approval. Pure functions; the loop itself is in
modules/conversation.py (ChatService).

One reply is one assistant turn: its parts hold, in order, the model's words, its calls
(`ToolCallPart`) and their results (`ToolResultPart`, matched by `call_id`), then more words. A call
with no result yet is *pending*: it runs next, or waits for the user (approve / always / reject).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Literal

from modules.tools.registry import Tool, ToolResult
from modules.turns import ToolCallPart, ToolResultPart, Turn

Decision = Literal["approve", "always", "reject"]
DECISIONS: tuple[str, ...] = ("approve", "always", "reject")
TOOL_CHOICES: tuple[str, ...] = ("auto", "required", "none")


@dataclass(frozen=True)
class ToolPlan:
    """A chat's tools: the ones ticked, how the first call of a reply is chosen (OpenAI's tool_choice:
    auto, required, none, or a tool's name), and those the user said to run without asking."""

    names: tuple[str, ...] = ()
    choice: str = "auto"
    always: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "ToolPlan":
        """The plan saved in a chat's settings (unknown or damaged values fall back to none)."""
        def strings(value: Any) -> tuple[str, ...]:
            return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

        choice = settings.get("tool_choice")
        return cls(strings(settings.get("tools")), choice if isinstance(choice, str) and choice else "auto",
                   strings(settings.get("tools_always")))

    def to_settings(self) -> dict[str, Any]:
        return {"tools": list(self.names), "tool_choice": self.choice, "tools_always": list(self.always)}

    def request_choice(self, first_round: bool) -> Any:
        """tool_choice for a generation of the reply: a forced choice holds for its first generation only
        (then the model must be free to answer in words), a tool's name becomes OpenAI's dict form."""
        choice = self.choice if first_round else ("none" if self.choice == "none" else "auto")
        if choice in TOOL_CHOICES:
            return choice
        return {"type": "function", "function": {"name": choice}}


def calls_of(update: Any) -> tuple[ToolCallPart, ...]:
    """The calls a finished generation made (the pipeline's `Update.tool_calls`)."""
    return tuple(getattr(update, "tool_calls", None) or ())


def with_calls(turn: Turn, calls: Iterable[ToolCallPart]) -> Turn:
    """`turn` with `calls` added after its parts (those already there, by id, are not added again)."""
    have = {p.id for p in turn.parts if isinstance(p, ToolCallPart)}
    new = tuple(c for c in calls if c.id not in have)
    return replace(turn, parts=(*turn.parts, *new)) if new else turn


def pending_calls(turn: Turn | None) -> list[ToolCallPart]:
    """The calls of `turn` that have no result yet, in order."""
    if turn is None or turn.role != "assistant":
        return []
    answered = {p.call_id for p in turn.parts if isinstance(p, ToolResultPart)}
    return [p for p in turn.parts if isinstance(p, ToolCallPart) and p.id not in answered]


def results_count(turn: Turn) -> int:
    return sum(1 for p in turn.parts if isinstance(p, ToolResultPart))


def with_result(turn: Turn, call: ToolCallPart, result: ToolResult) -> Turn:
    """`turn` with the result of `call` added after its parts."""
    part = ToolResultPart(call.id, call.name, result.content, result.error, result.seconds)
    return replace(turn, parts=(*turn.parts, part))


def needs_approval(tool: Tool | None, plan: ToolPlan) -> bool:
    """Ask before running? For tools the operator added (user files, MCP servers), unless this chat
    said "always" for it; never for built-ins. An unknown tool runs (into its error result) unasked."""
    return tool is not None and tool.confirm and tool.name not in plan.always


def refused(why: str) -> ToolResult:
    return ToolResult(f"error: not run: {why}", True, 0.0)
