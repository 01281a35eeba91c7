"""The streaming side of tool calls: answer text in, content and growing calls out.

    calls = CallStream(HERMES, tools)
    shown = calls.feed('Let me check. <tool_c')     # "Let me check." ("<tool_c" may start a call: held)
    shown = calls.feed('all>\\n{"name": "add", "arguments": {"a": 1')
    calls.calls                                     # [ToolCallPart(id, "add", '{"a": 1')] so far
    tail, parsed = calls.finish()                   # the finished answer, read by formats.parse

Text that might be the start of a call marker is held back until it is clearly not one, and so is the
content's trailing whitespace (the finished answer's content is trimmed before the calls). Once a call's
name is whole it appears in `calls`, with its arguments growing as the model writes them; `deltas`
turns two such snapshots into OpenAI's streaming `tool_calls` deltas. The finished answer is read again
as a whole (`formats.parse`) and is what counts: a call that turns out malformed leaves the text as
content, with the ids the stream gave kept for the calls it did see.
"""

from __future__ import annotations

from typing import Any, Callable

from modules.tools import formats
from modules.tools.formats import CallFormat, Malformed, Parsed
from modules.tools.spec import Tool, new_call_id
from modules.turns import ToolCallPart


class CallStream:
    def __init__(self, fmt: CallFormat, tools: tuple[Tool, ...], new_id: Callable[[], str] = new_call_id) -> None:
        self.fmt = fmt
        self.names = frozenset(t.name for t in tools)
        self.tools = tools
        self._new_id = new_id
        self._ids: list[str] = []
        self.text = ""  # the answer so far
        self.content = ""  # the content shown so far
        self.calls: list[ToolCallPart] = []  # calls seen so far (arguments may still grow)
        self._start: tuple[int, CallFormat] | None = None

    def feed(self, delta: str) -> str:
        """Add answer text; returns the content that is safe to show now."""
        if not delta:
            return ""
        self.text += delta
        if self._start is None:
            self._start = formats.call_start(self.fmt, self.text)
        if self._start is not None:
            self._follow()
            safe = self.text[:self._start[0]].rstrip()
        else:
            keep = formats.may_start(self.fmt, self.text)
            safe = self.text[:len(self.text) - keep].rstrip() if keep < len(self.text) else ""
        return self._show(safe)

    def _show(self, safe: str) -> str:
        if len(safe) <= len(self.content) or not safe.startswith(self.content):
            return ""
        new, self.content = safe[len(self.content):], safe
        return new

    def _follow(self) -> None:
        """Update `calls` from the text after the calls' start (a malformed call shows nothing more)."""
        assert self._start is not None
        start, used = self._start
        try:
            scan = formats.scan(used, self.text, start)
        except Malformed:
            return
        calls = []
        for i, raw in enumerate(scan.calls):
            if raw.name is None or raw.name not in self.names:
                break
            calls.append(ToolCallPart(self._id(i), raw.name, raw.arguments))
        # a snapshot only ever grows: arguments are a prefix of what they become
        if all(i < len(calls) and calls[i].arguments.startswith(old.arguments) for i, old in enumerate(self.calls)):
            self.calls = calls

    def _id(self, index: int) -> str:
        while len(self._ids) <= index:
            self._ids.append(self._new_id())
        return self._ids[index]

    def finish(self) -> tuple[str, Parsed]:
        """The end of the answer: (content not shown yet, the answer's content and calls)."""
        parsed = formats.parse(self.fmt, self.text, self.tools)
        self.calls = [ToolCallPart(self._id(i), c.name, c.arguments) for i, c in enumerate(parsed.calls)]
        rest = parsed.content[len(self.content):] if parsed.content.startswith(self.content) else ""
        self.content = parsed.content
        return rest, parsed


class EngineCalls:
    """The calls an engine returns apart from the text (a remote OpenAI-compatible server), built from its
    streaming `tool_calls` entries; the text passes through as content. Same reading side as CallStream."""

    def __init__(self) -> None:
        self.content = ""
        self.calls: list[ToolCallPart] = []

    def feed(self, delta: str) -> str:
        self.content += delta
        return delta

    def add(self, entries: tuple[dict[str, Any], ...]) -> None:
        for entry in entries:
            index = entry.get("index", len(self.calls))
            function = entry.get("function") or {}
            if not isinstance(index, int) or not 0 <= index <= len(self.calls):
                continue  # an engine's entry out of order: nothing to attach it to
            if index == len(self.calls):
                self.calls.append(ToolCallPart(entry.get("id") or new_call_id(), function.get("name") or "", ""))
            call = self.calls[index]
            self.calls[index] = ToolCallPart(call.id, call.name or function.get("name") or "",
                                             call.arguments + (function.get("arguments") or ""))

    def finish(self) -> tuple[str, None]:
        return "", None


def deltas(sent: list[ToolCallPart], now: list[ToolCallPart]) -> list[dict[str, Any]]:
    """OpenAI's streaming `tool_calls` entries that take a client from the calls it has (`sent`) to `now`:
    a call's first entry carries index, id, type and name (arguments ""), later ones argument fragments."""
    out: list[dict[str, Any]] = []
    for i, call in enumerate(now):
        if i >= len(sent):
            out.append({"index": i, "id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": ""}})
            had = ""
        else:
            had = sent[i].arguments
        if len(call.arguments) > len(had) and call.arguments.startswith(had):
            out.append({"index": i, "function": {"arguments": call.arguments[len(had):]}})
    return out
