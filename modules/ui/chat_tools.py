"""The Chat tab's tools: the checklist in the sidebar (saved with the chat), the tool choice, and the
approve / always / reject row for a call that waits for the user. Layout and wiring only: the tool
loop is the chat service's (modules/conversation.py), the tools are the App's registry.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

from modules.app import App
from modules.tools.loop import TOOL_CHOICES, ToolPlan
from modules.ui.chat_view import guarded, user_of, view_of

CHOICE_INFO = "auto: the model decides · required: the reply starts with a call · none: no calls"


def tool_choices(app: App) -> list[tuple[str, str]]:
    """(label, name) for every tool the operator made available: where it comes from, and whether it asks."""
    out = []
    for name, tool in app.tools.tools().items():
        where = {"builtin": "built-in", "file": f"file {tool.origin}", "mcp": f"MCP {tool.origin}"}.get(tool.source,
                                                                                                    tool.source)
        out.append((f"{tool.label} ({where})", name))
    return out


def sidebar(app: App) -> SimpleNamespace:
    """The Tools group of the chat sidebar."""
    with gr.Accordion("Tools", open=False, elem_id="chat-tools"):
        enabled = gr.CheckboxGroup(tool_choices(app), value=[], label="Tools this chat may call",
                                   elem_id="chat-tools-list")
        with gr.Row():
            choice = gr.Dropdown(list(TOOL_CHOICES), value="auto", label="Tool choice", info=CHOICE_INFO,
                                 elem_id="chat-tool-choice", scale=4)
            refresh = gr.Button("↻", size="sm", elem_id="chat-tools-refresh", scale=0, min_width=40)
    return SimpleNamespace(enabled=enabled, choice=choice, refresh=refresh)


def confirm_row() -> SimpleNamespace:
    """Under the chat: shown while a call waits for the user's answer."""
    with gr.Row(visible=False, elem_id="tool-confirm") as row:
        question = gr.Markdown(elem_id="tool-confirm-question")
        approve = gr.Button("Run it", size="sm", variant="primary", elem_id="tool-approve", scale=0)
        always = gr.Button("Always in this chat", size="sm", elem_id="tool-always", scale=0)
        reject = gr.Button("Don't run it", size="sm", variant="stop", elem_id="tool-reject", scale=0)
    return SimpleNamespace(row=row, question=question, approve=approve, always=always, reject=reject)


def plan_from(enabled: list[str] | None, choice: str | None) -> ToolPlan:
    names = tuple(enabled or ())
    return ToolPlan(names, choice if choice in TOOL_CHOICES else "auto")


def wire(app: App, ui: SimpleNamespace, setup: Callable[..., Any], split: Callable[..., Any],
         stream: Callable[..., Any], inputs: list[Any], outputs: list[Any], after: list[Any],
         streaming: dict[str, Any]) -> tuple[list[Any], Callable[[Any], None]]:
    """Wire the tools controls. `setup(user, ctrl, preset_values, sess)`, `split(values)` and `stream(user, sess,
    character, steps)` are the Chat tab's; `inputs` are [session, *CTRL, *preset inputs]; `after` are the
    events after which a call may wait or another chat is open. Returns the answer events
    and `follow(event)`, which wires the same after another event (the page load)."""
    tools, ask = ui.tools, ui.tool_confirm
    private = dict(api_visibility="private")

    def waiting(request: gr.Request, sess: dict):
        """Show the answer row when the last reply has a call waiting, with the call's name and arguments."""
        calls = app.chats.awaiting(user_of(request), view_of(sess))
        if not calls:
            return gr.Row(visible=False), ""
        call = calls[0]
        args = call.arguments if len(call.arguments) <= 300 else call.arguments[:300] + "…"
        return gr.Row(visible=True), f"Run **{call.name}** with `{args}`?"

    def shown_plan(request: gr.Request, sess: dict):
        """The checklist of the chat now open (an unsaved or incognito chat keeps what is ticked)."""
        view = view_of(sess)
        if view.chat_id is None or view.incognito:
            return gr.skip(), gr.skip()
        plan = app.chats.tool_plan(user_of(request), view)
        names = [n for n in plan.names if n in app.tools.names()]
        return gr.CheckboxGroup(choices=tool_choices(app), value=names), plan.choice

    def on_change(request: gr.Request, sess: dict, enabled: list[str], choice: str):
        view = view_of(sess)
        if view.chat_id is not None and not view.incognito:
            plan = plan_from(enabled, choice)
            try:
                app.chats.set_tools(user_of(request), view, list(plan.names),
                                    plan.choice if plan.choice in TOOL_CHOICES else "auto")
            except ValueError as exc:
                gr.Warning(str(exc))

    def answering(decision: str):
        @guarded
        def handler(request: gr.Request, sess: dict, *values: Any):
            user = user_of(request)
            ctrl, preset_values = split(values)
            steps = app.chats.answer_calls(user, view_of(sess), setup(user, ctrl, preset_values, sess), decision)
            yield from stream(user, sess, ctrl[1], steps)
        handler.__name__ = f"on_tool_{decision}"
        return handler

    def follow(event: Any) -> None:
        """After `event` (a reply, a chat opened): the answer row and the open chat's checklist."""
        event.then(waiting, [ui.session], [ask.row, ask.question], **private)
        event.then(shown_plan, [ui.session], [tools.enabled, tools.choice], **private)

    answers = [button.click(answering(decision), inputs, outputs, **private, **streaming)
               for button, decision in ((ask.approve, "approve"), (ask.always, "always"), (ask.reject, "reject"))]
    for event in [*after, *answers]:
        follow(event)
    tools.enabled.input(on_change, [ui.session, tools.enabled, tools.choice], None, **private)
    tools.choice.input(on_change, [ui.session, tools.enabled, tools.choice], None, **private)
    tools.refresh.click(lambda current: gr.CheckboxGroup(choices=tool_choices(app), value=[
        n for n in (current or []) if n in app.tools.names()]), tools.enabled, tools.enabled, **private)
    return answers, follow
