"""A stand-in for the pipeline whose generations answer scripted replies (texts or tool calls), for tests
of what the chat service does around generation (the tool loop). The real Pipeline's `begin` (turn hooks)
still runs; only `stream` is replaced."""

from __future__ import annotations

from modules.app import App
from modules.generation import Pipeline, Update
from modules.turns import TextPart, ToolCallPart


class Scripted(Pipeline):
    """The real Pipeline's turn hooks (begin), but each generation answers the next scripted reply:
    a text, or a list of (name, arguments) calls."""

    def __init__(self, app: App, replies: list) -> None:
        super().__init__(app.models, app.extensions)
        self.replies = list(replies)
        self.requests: list = []

    def stream(self, request):
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else "done"
        if isinstance(reply, str):
            yield Update(text=reply, parts=(TextPart(reply),), tokens=3, finish_reason="stop", model="scripted")
            return
        calls = tuple(ToolCallPart(f"call_{len(self.requests)}_{i}", name, args) for i, (name, args) in enumerate(reply))
        yield Update(text="", parts=(), tokens=5, finish_reason="tool_calls", model="scripted").copy(tool_calls=calls)


def script(app: App, *replies) -> Scripted:
    """Give `app` a scripted pipeline answering `replies` in order (then "done")."""
    app.pipeline = Scripted(app, list(replies))
    return app.pipeline


def run(steps):
    """The last step of a streaming chat action (the whole action run)."""
    step = None
    for step in steps:  # noqa: B007
        pass
    return step
