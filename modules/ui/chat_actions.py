"""The Chat tab's actions on one message (the bar under each bubble), the chatbot's bin, and Stop.

A click in a message's action bar (modules/ui/page.js) writes `{"act": ..., "index": ...}` into the
hidden `#msg-action` box and presses the hidden `#msg-action-go` button; `on_message_action` reads it
and calls the chat service: `<` / `>` browse versions (`>` on the newest version of the last reply
makes a new one, as in text-generation-webui), Edit opens the message's text in place (the page asks
for it: the bubble shows rendered HTML, the editor needs the words), Save writes it, Branch here opens
a new chat up to that message, Regenerate streams a new version. Copy never reaches the server.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import gradio as gr

from modules.app import App
from modules.conversation import ChatView, Setup, Step
from modules.ui.chat_view import STOPPED, guarded, new_session, redraw, session_of, user_of, view_of

ACTIONS = ("prev", "next", "regenerate", "edit", "save", "branch")
MAX_EDIT_CHARS = 200_000
# After the server answers an Edit, the page opens the editor on that message with the words it sent.
AFTER_ACTION_JS = "(text) => { window.parlour && window.parlour.afterAction(text); }"
# The bin in the chatbot's corner deletes the chat, after the browser asks; Gradio has emptied the
# screen already, so "keep" draws the chat again.
CONFIRM_BIN_JS = "() => confirm('Delete this chat? It cannot be undone.') ? 'delete' : 'keep'"
PENDING_JS = "() => (window.parlour && window.parlour.pending) || ''"


def parse_action(raw: str) -> tuple[str, int, str]:
    """(act, message index, text) from the page's JSON; ValueError (shown as a status line) otherwise."""
    try:
        data = json.loads(raw or "")
    except ValueError as exc:
        raise ValueError("the message action was not understood") from exc
    act, index, text = (data.get("act"), data.get("index"), data.get("text", "")) if isinstance(data, dict) \
        else (None, None, None)
    if act not in ACTIONS or not isinstance(index, int) or isinstance(index, bool) or index < 0 \
            or not isinstance(text, str):
        raise ValueError("the message action was not understood")
    if len(text) > MAX_EDIT_CHARS:
        raise ValueError(f"the edited message is longer than {MAX_EDIT_CHARS:,} characters")
    return act, index, text


def wire(app: App, ui: Any, outputs: list, inputs: list, plan: Callable[..., Setup],
         stream: Callable[[str, dict, str, Iterator[Step]], Iterator[tuple]]) -> list:
    """Wire the message actions and the bin; returns the action event (Stop cancels it too).
    `inputs`: the prompt controls and sampler controls after the session; `plan(user, values)` makes the
    next reply's Setup from them (values[1] is the character)."""
    private = dict(api_visibility="private")

    @guarded
    def on_message_action(request: gr.Request, raw: str, sess: dict, *values: Any):
        user = user_of(request)
        act, index, text = parse_action(raw)
        view: ChatView = view_of(sess)
        character_v = values[1]
        if act == "regenerate" or (act == "next" and app.chats.wants_regenerate(user, view, index, 1)):
            yield from stream(user, sess, character_v, app.chats.regenerate(user, view, plan(user, values)))
            return
        status = ""
        if act in ("prev", "next"):
            view = app.chats.select_version(user, view, index, -1 if act == "prev" else 1)
        elif act == "edit":
            view = app.chats.select(view, index)
        elif act == "save":
            view, status = app.chats.edit(user, view, index, text), "Saved the edit."
        else:  # branch
            view = app.chats.branch(user, view, index)
            sess, status = new_session(previous=sess), f"Branched into a new chat at message {index + 1}."
        yield redraw(app, user, session_of(view, sess), character_v, status=status)

    @guarded
    def on_bin(request: gr.Request, answer: str, sess: dict, character_v: str):
        user = user_of(request)
        if answer != "delete":
            return redraw(app, user, sess, character_v)
        view = app.chats.delete(user, view_of(sess))
        return redraw(app, user, session_of(view, new_session(view.incognito, previous=sess)), character_v,
                      status="Deleted the chat.")

    acted = ui.msg_go.click(None, None, ui.msg_action, js=PENDING_JS, **private).then(
        on_message_action, [ui.msg_action, ui.session, *inputs], outputs, concurrency_limit=None,
        show_progress="hidden", **private)
    acted.then(None, ui.edit_text, None, js=AFTER_ACTION_JS, **private)
    ui.chatbot.clear(None, None, ui.msg_action, js=CONFIRM_BIN_JS, **private).then(
        on_bin, [ui.msg_action, ui.session, ui.character], outputs, **private)
    return acted


def wire_stop(app: App, ui: Any, outputs: list, events: list) -> None:
    """Stop cancels `events` (the model ends within a token), then shows the chat as saved."""

    @guarded
    def on_stopped(request: gr.Request, sess: dict, character_v: str):
        """After Stop: the chat as saved (the reply ends where it was stopped) and a "Stopped" line."""
        user = user_of(request)
        view = app.chats.settled(user, view_of(sess))
        shown = app.chats.shown(user, view)
        last = shown[-1] if shown else None
        status = STOPPED
        if last is not None and last.meta.get("finish_reason") == "cancelled":
            status = f"Stopped after {last.meta.get('tokens') or 0} tokens."
        return redraw(app, user, session_of(view, sess), character_v, status=status)

    # the cancel first (the page sends it at once), then the redraw: it waits for the reply's end to be saved
    ui.stop.click(None, None, None, cancels=events, api_visibility="private").then(
        on_stopped, [ui.session, ui.character], outputs, api_visibility="private")
