"""The Chat tab's actions on one message (the bar under each bubble), the chatbot's bin, and Stop:
wiring only (modules/message_actions.py does the actions through the chat service).

A click in a message's action bar (modules/ui/page.js) writes `{"act": ..., "index": ...}` into the
hidden `#msg-action` box and presses the hidden `#msg-action-go` button; `on_message_action` hands it
to the service. After an Edit the page opens the message's words in place (the bubble shows rendered
HTML, the editor needs the words: the server sends them in the hidden edit box).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from modules.app import App
from modules.conversation import Setup, Step
from modules.message_actions import MessageAction, apply
from modules.ui.chat_view import guarded, new_session, redraw, session_of, stop_page, user_of, view_of

# After the server answers an Edit, the page opens the editor on that message with the words it sent.
AFTER_ACTION_JS = "(text) => { window.parlour && window.parlour.afterAction(text); }"
# The bin in the chatbot's corner deletes the chat, after the browser asks; Gradio has emptied the
# screen already, so "keep" draws the chat again.
CONFIRM_BIN_JS = "() => confirm('Delete this chat? It cannot be undone.') ? 'delete' : 'keep'"
PENDING_JS = "() => (window.parlour && window.parlour.pending) || ''"


def wire(app: App, ui: Any, outputs: list, inputs: list, plan: Callable[..., Setup],
         stream: Callable[[str, dict, str, Iterator[Step]], Iterator[tuple]]) -> list:
    """Wire the message actions and the bin; returns the action event.
    `inputs`: the prompt controls and sampler controls after the session; `plan(user, values)` makes the
    next reply's Setup from them (values[1] is the character)."""
    private = dict(api_visibility="private")

    @guarded
    def on_message_action(request: gr.Request, raw: str, sess: dict, *values: Any):
        user = user_of(request)
        acted = apply(app.chats, user, view_of(sess), MessageAction.parse(raw), lambda: plan(user, values, sess))
        if acted.steps is not None:
            yield from stream(user, sess, values[1], acted.steps)
            return
        sess = new_session(previous=sess) if acted.new_chat else sess
        yield redraw(app, user, session_of(acted.view, sess), values[1], status=acted.status)

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


def wire_stop(ui: Any) -> None:
    """Stop: the page's running reply action ends within a token and shows the reply as saved, with how
    far it got (the action's own end: see modules/conversation.py StopSignal for why it is not a Gradio
    cancel). Its own event, never queued behind the reply it stops."""

    def on_stop(sess: dict) -> None:
        stop_page(sess)

    ui.stop.click(on_stop, [ui.session], None, concurrency_limit=None, show_progress="hidden",
                  api_visibility="private")
