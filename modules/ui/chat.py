"""Chat tab: saved chats (sidebar), the conversation, and every chat action.

Handlers are thin: they read the user from the request (`local` without --auth), call the store and
`modules.chat`, and redraw. The per-browser `gr.State` holds only which chat is open, the ids of the
messages on screen, the selected message, and an incognito chat's turns (never saved). Bubbles show
`render.render_markdown` output: markdown converted, then sanitized, on the server.

Every handler returns the same outputs (input box, chatbot, state, chat list, status, selected
message info, edit box), so any action leaves the screen consistent.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from pydantic import ValidationError

from modules import chat as chatlib
from modules.app import App
from modules.characters import CharacterError
from modules.chat import MODEL_TEMPLATE, MODES, ContextOverflow, context_line
from modules.fileio import os_reason
from modules.generation import GenerationError, NoModel, QueueFull
from modules.models import ModelError
from modules.render import LATEX_DELIMITERS, render_footer, render_markdown
from modules.store import ChatNotFound, StoreError
from modules.templates import TemplateError
from modules.ui.parameters import ParameterControls

Message = dict[str, str]
log = logging.getLogger(__name__)
# Keyboard shortcuts (text-generation-webui's): they click the buttons, so they do exactly what a click does.
SHORTCUTS_JS = """
document.addEventListener('keydown', (event) => {
  const keys = [
    [event.key === 'Escape', 'stop'],
    [event.ctrlKey && !event.shiftKey && event.key === 'Enter', 'regenerate'],
    [event.altKey && event.key === 'Enter', 'continue'],
    [event.ctrlKey && event.shiftKey && event.key === 'Backspace', 'remove-last'],
    [event.ctrlKey && event.shiftKey && (event.key === 'M' || event.key === 'm'), 'impersonate'],
  ];
  const hit = keys.find(([pressed]) => pressed);
  const button = hit && document.getElementById(hit[1]);
  if (!button) return;
  event.preventDefault();
  button.click();
});
"""
EXPECTED_ERRORS = (NoModel, QueueFull, GenerationError, TemplateError, ContextOverflow, CharacterError, ChatNotFound,
                   StoreError, ValueError, ModelError)
MAX_IMPORT_BYTES = 50 * 1024 * 1024


def speed_line(tokens: int, seconds: float, first: float | None, prompt_tokens: int, reason: str | None) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s"]
    if first is not None:
        parts.append(f"first token {first * 1000:.0f} ms")
    parts.append(f"prompt {prompt_tokens} tokens")
    if reason:
        parts.append({"stop": "finished", "length": "hit max_new_tokens", "cancelled": "stopped"}.get(reason, reason))
    return " · ".join(parts)


def status_line(update: Any) -> str:
    if update.queue_position:
        if update.loading:
            return f"⏳ loading {update.loading}: position {update.queue_position} in its queue"
        return f"⏳ waiting for the model: position {update.queue_position} in the queue"
    line = speed_line(update.tokens, update.seconds, update.first_token_seconds, update.prompt_tokens,
                      update.finish_reason)
    ctx = context_line(update)
    return f"{line} · {ctx}" if ctx else line


def user_of(request: gr.Request | None) -> str:
    """The logged-in user, or "local" when the server runs without --auth."""
    return (getattr(request, "username", None) or "local") if request is not None else "local"


def new_session(incognito: bool = False, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-browser state for a freshly opened chat; display choices carry over from `previous`."""
    return {"chat_id": None, "incognito": incognito, "turns": [], "ids": [], "selected": None,
            "images": bool((previous or {}).get("images")), "model": (previous or {}).get("model")}


# -- reading what is on screen ---------------------------------------------------------------------
def current_turns(app: App, user: str, session: dict[str, Any]) -> tuple[list[Message], list[Any]]:
    """The conversation shown: (turns, message ids); ids are None in an incognito chat."""
    if session["incognito"] or session["chat_id"] is None:
        turns = list(session["turns"])
        return turns, [None] * len(turns)
    # only user and assistant turns are bubbles, so a bubble's index is its index here
    path = [m for m in app.store.path(user, session["chat_id"]) if m.role in ("user", "assistant")]
    # a reply's footer (extensions' reply_footer) is kept in its metadata; prompts read only role/content
    return [{**m.as_turn(), **({"footer": m.meta["footer"]} if m.meta.get("footer") else {})} for m in path], \
        [m.id for m in path]


def chat_choices(app: App, user: str, character: str | None, query: str = "") -> list[tuple[str, str]]:
    if query.strip():
        found = app.store.search(user, query)
        return [(f"{c.title or 'Untitled'} — {snip[:60]}", str(c.id)) for c, snip in found]
    return [(f"{c.title or 'Untitled'} · {c.mode}", str(c.id))
            for c in app.store.list_chats(user, character=character or "")]


def bubbles_for(turns: list[Message], session: dict[str, Any]) -> list[dict[str, str]]:
    """Chatbot messages: each turn's markdown rendered and sanitized on the server, then the reply's
    footer from extensions (reply_footer), sanitized on its own."""
    images = bool(session.get("images"))
    return [{"role": t["role"],
             "content": render_markdown(t["content"], allow_images=images) + render_footer(t.get("footer", ""))}
            for t in turns if t["role"] in ("user", "assistant")]


def avatars(app: App, character: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The chatbot's (user, bot) avatars: the character's picture, as a data: URL (nothing is served from
    disk). A missing or unreadable picture means no avatar; the chat itself is never affected."""
    url = None
    if character:
        try:
            url = app.characters.avatar(character)
        except CharacterError as exc:
            log.warning("no avatar: %s", exc)
    # Not marked as gradio.FileData: Gradio would then try to copy a file at `path` into its cache.
    bot = {"path": url, "url": url} if url else None
    return None, bot


def selected_index(session: dict[str, Any], turns: list[Message]) -> int | None:
    """The selected message, else the last reply, else the last message."""
    sel = session.get("selected")
    if sel is not None and 0 <= sel < len(turns):
        return sel
    for i in range(len(turns) - 1, -1, -1):
        if turns[i]["role"] == "assistant":
            return i
    return len(turns) - 1 if turns else None


def redraw(app: App, user: str, session: dict[str, Any], character: str | None, status: str = "",
           text: Any = None, query: str = "") -> tuple:
    """The standard outputs: input, chatbot, state, chat list, status, selected info, edit box."""
    turns, ids = current_turns(app, user, session)
    session = {**session, "ids": ids}
    if session["chat_id"] is not None and not session["incognito"]:  # the chat remembers its model
        session["model"] = chatlib.chat_model(app.store, user, session["chat_id"]) or session.get("model")
    bubbles = bubbles_for(turns, session)
    index = selected_index(session, turns)
    info, edit = "No message selected.", ""
    if index is not None:
        edit = turns[index]["content"]
        info = f"Message {index + 1} ({turns[index]['role']})"
        if ids[index] is not None:
            versions = app.store.versions(user, session["chat_id"], ids[index])
            position = [m.id for m in versions].index(ids[index]) + 1
            info += f" · version {position}/{len(versions)}"
            meta = next(m.meta for m in versions if m.id == ids[index])
            if meta.get("model"):
                info += f" · {meta['model']}, seed {meta.get('seed')}, {meta.get('tokens')} tokens"
    choices = chat_choices(app, user, character, query)
    value = str(session["chat_id"]) if session["chat_id"] is not None else None
    chatbot = gr.Chatbot(value=bubbles, avatar_images=avatars(app, character))
    return (gr.skip() if text is None else text, chatbot, session, gr.Radio(choices=choices, value=value), status,
            info, edit)


# -- the tab ----------------------------------------------------------------------------------------
def render(app: App, params: ParameterControls) -> dict[str, Any]:
    session = gr.State(new_session())
    characters = app.characters.names()
    start_character = "Assistant" if "Assistant" in characters else (characters[0] if characters else None)
    with gr.Row(elem_id="chat-layout"):
        with gr.Column(scale=1, min_width=220, elem_id="chat-sidebar"):
            with gr.Row():
                new = gr.Button("New chat", elem_id="new-chat", size="sm", variant="primary")
                incognito = gr.Checkbox(label="Incognito (never saved)", value=False, elem_id="incognito")
            search = gr.Textbox(placeholder="Search chats", show_label=False, elem_id="chat-search")
            chat_list = gr.Radio(choices=[], label="Chats (newest first)", elem_id="chat-list")
            title = gr.Textbox(placeholder="New title", show_label=False, elem_id="rename-title")
            with gr.Row():
                rename = gr.Button("Rename", size="sm", elem_id="rename-chat")
                branch_chat = gr.Button("Branch", size="sm", elem_id="branch-chat")
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chat")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Really delete", size="sm", variant="stop", elem_id="confirm-delete")
                cancel_delete = gr.Button("Keep it", size="sm", elem_id="cancel-delete")
        with gr.Column(scale=4):
            with gr.Row():
                # instruct by default: most models are instruction-tuned and carry their own template
                mode = gr.Radio(list(MODES), value="instruct", label="Mode", elem_id="chat-mode")
                character = gr.Dropdown(characters, value=start_character, label="Character", elem_id="character")
                template = gr.Dropdown([MODEL_TEMPLATE, *app.templates.names()], value=MODEL_TEMPLATE,
                                       label="Instruction template", elem_id="instruction-template")
                chat_model = gr.Dropdown(app.models.choices(), value=app.models.default, label="Model",
                                         elem_id="chat-model", info="this chat's model (it loads when needed)")
            # Bubbles hold HTML already rendered and sanitized by modules/render.py; Gradio's own
            # sanitizer stays on as a second layer. Its bundled KaTeX then typesets the math spans
            # render.py wrote (only render.py's canonical delimiters; see its docstring).
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height="58vh", layout="bubble",
                                 placeholder="Say hello to start a chat.", render_markdown=False, sanitize_html=True,
                                 latex_delimiters=LATEX_DELIMITERS)
            status = gr.Markdown(elem_id="chat-status")
            with gr.Row(elem_id="chat-input-row"):
                text = gr.Textbox(elem_id="chat-input", show_label=False, placeholder="Send a message (Enter)",
                                  lines=1, max_lines=12, scale=10, autofocus=True)
                with gr.Column(scale=1, min_width=110):
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Row(elem_id="chat-actions"):
                regenerate = gr.Button("Regenerate", elem_id="regenerate", size="sm")
                cont = gr.Button("Continue", elem_id="continue", size="sm")
                remove = gr.Button("Remove last", elem_id="remove-last", size="sm")
                impersonate = gr.Button("Impersonate", elem_id="impersonate", size="sm")
                dummy_message = gr.Button("Send dummy message", elem_id="dummy-message", size="sm")
                dummy_reply = gr.Button("Send dummy reply", elem_id="dummy-reply", size="sm")
                reproduce = gr.Button("Reproduce", elem_id="reproduce", size="sm")
            with gr.Row():
                start_with = gr.Textbox(label="Start reply with", elem_id="start-reply-with", lines=1, scale=4)
                images = gr.Checkbox(label="Load remote images in replies", value=False, elem_id="remote-images")
            with gr.Accordion("Selected message (click a bubble)", open=True, elem_id="message-panel"):
                with gr.Row():
                    prev_version = gr.Button("<", size="sm", elem_id="prev-version", min_width=40, scale=0)
                    selected_info = gr.Markdown(elem_id="selected-info")
                    next_version = gr.Button(">", size="sm", elem_id="next-version", min_width=40, scale=0)
                edit_text = gr.Textbox(label="Text", lines=3, max_lines=20, elem_id="edit-text")
                with gr.Row():
                    save_edit = gr.Button("Save edit", size="sm", elem_id="save-edit")
                    branch_here = gr.Button("Branch here", size="sm", elem_id="branch-here")
                    copy = gr.Button("Copy", size="sm", elem_id="copy-message")
            with gr.Accordion("Prompt settings", open=False):
                template_src = gr.Code(label="Instruction template (Jinja; empty: the chosen one)", language="jinja2",
                                       elem_id="template-source", interactive=True)
                system_message = gr.Textbox(label="System message (instruct modes; empty: character context)",
                                            lines=2, elem_id="system-message")
                command = gr.Textbox(chatlib.DEFAULT_COMMAND, label="Chat-instruct command (<|character|>, <|prompt|>)",
                                     lines=3, elem_id="chat-instruct-command")
                stops = gr.Textbox(label="Custom stop strings (one per line)", lines=2, elem_id="custom-stops")
                with gr.Row():
                    preview = gr.Button("Show prompt", size="sm", elem_id="show-prompt")
                    to_notebook = gr.Button("Send to notebook", size="sm", elem_id="send-to-notebook")
                prompt_view = gr.Code(label="Prompt for the next reply", interactive=False, elem_id="prompt-preview")
            with gr.Accordion("You, characters and files", open=False):
                with gr.Row():
                    your_name = gr.Textbox(label="Your name", elem_id="your-name")
                    your_bio = gr.Textbox(label="About you", elem_id="your-bio")
                    save_profile = gr.Button("Save profile", size="sm", elem_id="save-profile")
                with gr.Row():
                    card_in = gr.File(label="Import character card (PNG or JSON)", file_types=[".png", ".json"],
                                      type="binary", elem_id="card-import")
                    chat_in = gr.File(label="Import chat (JSON)", file_types=[".json"], type="binary",
                                      elem_id="chat-import")
                    download = gr.File(label="Download", interactive=False, elem_id="download")
                with gr.Row():
                    export_chat = gr.Button("Export chat (JSON)", size="sm", elem_id="export-chat")
                    export_card = gr.Button("Export character card (PNG)", size="sm", elem_id="export-card")

    OUT = [text, chatbot, session, chat_list, status, selected_info, edit_text]
    CTRL = [mode, character, template, template_src, command, system_message, stops, start_with]

    def options(user: str, ctrl: tuple, **flags: Any) -> chatlib.PromptOptions:
        mode_v, char_v, tmpl_v, src_v, cmd_v, sys_v, stops_v, start_v = ctrl
        return chatlib.resolve_options(app, user, mode=mode_v, character=char_v, instruction_template=tmpl_v,
                                       template_source=src_v, chat_instruct_command=cmd_v, system_message=sys_v or "",
                                       custom_stops=tuple(s for s in (stops_v or "").splitlines() if s),
                                       start_reply_with=flags.pop("start", start_v or ""), **flags)

    def ensure_chat(user: str, sess: dict[str, Any], ctrl: tuple) -> dict[str, Any]:
        """The open chat, created (with the character's greeting) if there is none yet."""
        if sess["incognito"] or sess["chat_id"] is not None:
            return sess
        char_v, mode_v = ctrl[1], ctrl[0]
        chat_id = app.store.create_chat(user, character=char_v or "", mode=mode_v)
        chatlib.set_chat_model(app.store, user, chat_id, sess.get("model") or app.models.default)  # its own from now on
        greeting = app.characters.load(char_v).greeting if char_v else ""
        if greeting:
            opts = options(user, ctrl)
            app.store.add_message(user, chat_id, "assistant", chatlib.substitute(greeting, opts.name1, opts.name2))
        return {**sess, "chat_id": chat_id, "selected": None}

    def model_text(user: str, opts: chatlib.PromptOptions, message: str) -> str:
        """The user's new message as the model (and the history) get it: chat_input_modifier, then input_modifier."""
        if not app.extensions.loaded:
            return message
        state = {"mode": opts.mode, "name1": opts.name1, "name2": opts.name2, "user": user}
        text, _visible = app.extensions.chat_input(message, message, state)
        return app.extensions.input(text, state, is_chat=True)

    def generate(user: str, sess: dict[str, Any], ctrl: tuple, preset_values: tuple, history: list[Message],
                 reply_to: Any, opts: chatlib.PromptOptions, preset=None) -> Iterator[tuple]:
        """Stream a reply to `history`; saved under message `reply_to` (a parent id, or ("continue", id))."""
        if preset is None:
            preset = chatlib.resolve_seed(params.preset_from(preset_values))
        target = None
        if not sess["incognito"]:
            if isinstance(reply_to, tuple):
                message_id = reply_to[1]
            else:
                message_id = app.store.add_message(user, sess["chat_id"], "assistant", "", parent_id=reply_to,
                                                   complete=False)
            target = chatlib.ReplyTarget(app.store, user, sess["chat_id"], message_id)
        sess = {**sess, "selected": None}
        base = history[:-1] if opts.continue_last else history
        cancel = threading.Event()
        last_status = ""
        try:
            for reply, update in chatlib.stream_reply(app, history, opts, preset, target, cancel, user=user,
                                                      model=sess.get("model")):
                turn = {"role": "assistant", "content": reply, **({"footer": update.footer} if update.footer else {})}
                if sess["incognito"]:
                    sess = {**sess, "turns": base + [turn]}
                if update.queue_position:
                    yield (gr.skip(), gr.skip(), sess, gr.skip(), status_line(update), gr.skip(), gr.skip())
                    continue
                shown = base + [turn]
                last_status = status_line(update)
                yield (gr.skip(), bubbles_for(shown, sess), sess, gr.skip(), last_status, gr.skip(), gr.skip())
        finally:
            cancel.set()
        yield redraw(app, user, sess, ctrl[1], status=last_status)

    def guarded(fn):
        """Expected errors become a warning and a status line, never a crashed event."""
        @functools.wraps(fn)  # Gradio reads the wrapped signature (gr.Request, SelectData)
        def wrapper(*args, **kwargs):
            try:
                result = fn(*args, **kwargs)
                if result is None:  # nothing to change
                    return
                if hasattr(result, "__next__"):
                    yield from result
                else:
                    yield result
            except ValidationError as exc:
                first = exc.errors()[0]
                gr.Warning(f"invalid parameters: {first['loc'][0] if first['loc'] else ''}: {first['msg']}")
                yield (gr.skip(),) * 4 + (f"⚠️ invalid parameters: {first['msg']}",) + (gr.skip(),) * 2
            except EXPECTED_ERRORS as exc:
                gr.Warning(str(exc))
                yield (gr.skip(),) * 4 + (f"⚠️ {exc}",) + (gr.skip(),) * 2
        return wrapper

    # -- conversation actions --
    @guarded
    def on_send(request: gr.Request, message: str, sess: dict, *values: Any):
        ctrl, preset_values = values[:len(CTRL)], values[len(CTRL):]
        if not message.strip():
            return
        user = user_of(request)
        sess = ensure_chat(user, sess, ctrl)
        opts = options(user, ctrl)
        message = model_text(user, opts, message)
        turns, _ = current_turns(app, user, sess)
        if sess["incognito"]:
            sess = {**sess, "turns": turns + [{"role": "user", "content": message}]}
            parent = None
        else:
            parent = app.store.add_message(user, sess["chat_id"], "user", message)
        history = turns + [{"role": "user", "content": message}]
        first = redraw(app, user, sess, ctrl[1], status="…", text="")
        yield first
        yield from generate(user, first[2], ctrl, preset_values, history, parent, opts)

    def last_reply(user: str, sess: dict) -> tuple[list[Message], list[Any], int]:
        turns, ids = current_turns(app, user, sess)
        if not turns or turns[-1]["role"] != "assistant":
            raise ValueError("the last message is not a reply")
        return turns, ids, len(turns) - 1

    def regenerate_with(request: gr.Request, sess: dict, *values: Any, preset=None):
        ctrl, preset_values = values[:len(CTRL)], values[len(CTRL):]
        user = user_of(request)
        turns, ids, i = last_reply(user, sess)
        history = turns[:i]
        if not history:
            raise ValueError("nothing to regenerate: the reply has no message before it")
        if sess["incognito"]:
            sess = {**sess, "turns": history}
            parent = None
        else:
            parent = app.store.message(user, sess["chat_id"], ids[i]).parent_id
        yield from generate(user, sess, ctrl, preset_values, history, parent, options(user, ctrl), preset=preset)

    @guarded
    def on_regenerate(request: gr.Request, sess: dict, *values: Any):
        yield from regenerate_with(request, sess, *values)

    @guarded
    def on_reproduce(request: gr.Request, sess: dict, *values: Any):
        user = user_of(request)
        if sess["incognito"] or sess["chat_id"] is None:
            raise ValueError("only saved replies can be reproduced")
        turns, ids, i = last_reply(user, sess)
        meta = app.store.message(user, sess["chat_id"], ids[i]).meta
        yield from regenerate_with(request, sess, *values, preset=chatlib.preset_from_meta(meta))

    @guarded
    def on_continue(request: gr.Request, sess: dict, *values: Any):
        ctrl, preset_values = values[:len(CTRL)], values[len(CTRL):]
        user = user_of(request)
        turns, ids, i = last_reply(user, sess)
        opts = options(user, ctrl, continue_last=True, start="")
        yield from generate(user, sess, ctrl, preset_values, turns, ("continue", ids[i]), opts)

    @guarded
    def on_impersonate(request: gr.Request, sess: dict, *values: Any):
        ctrl, preset_values = values[:len(CTRL)], values[len(CTRL):]
        user = user_of(request)
        turns, _ = current_turns(app, user, sess)
        opts = options(user, ctrl, impersonate=True, start="")
        preset = chatlib.resolve_seed(params.preset_from(preset_values))
        cancel = threading.Event()
        try:
            for reply, update in chatlib.stream_reply(app, turns, opts, preset, None, cancel, user=user,
                                                      model=sess.get("model")):
                yield (reply.strip(), gr.skip(), gr.skip(), gr.skip(), status_line(update), gr.skip(), gr.skip())
        finally:
            cancel.set()

    @guarded
    def on_remove(request: gr.Request, sess: dict, character_v: str):
        user = user_of(request)
        turns, ids = current_turns(app, user, sess)
        users = [i for i, t in enumerate(turns) if t["role"] == "user"]
        if not users:
            raise ValueError("nothing to remove")
        i = users[-1]
        if sess["incognito"]:
            sess = {**sess, "turns": turns[:i]}
        else:
            app.store.delete_message(user, sess["chat_id"], ids[i])
        return redraw(app, user, {**sess, "selected": None}, character_v, text=turns[i]["content"])

    def dummy(request: gr.Request, message: str, sess: dict, ctrl: tuple, role: str):
        user = user_of(request)
        if not message.strip():
            raise ValueError("write the dummy message in the input box first")
        sess = ensure_chat(user, sess, ctrl)
        if sess["incognito"]:
            sess = {**sess, "turns": sess["turns"] + [{"role": role, "content": message}]}
        else:
            app.store.add_message(user, sess["chat_id"], role, message)
        return redraw(app, user, {**sess, "selected": None}, ctrl[1], text="")

    @guarded
    def on_dummy_message(request: gr.Request, message: str, sess: dict, *ctrl: Any):
        return dummy(request, message, sess, ctrl, "user")

    @guarded
    def on_dummy_reply(request: gr.Request, message: str, sess: dict, *ctrl: Any):
        return dummy(request, message, sess, ctrl, "assistant")

    # -- selected message --
    @guarded
    def on_select(request: gr.Request, sess: dict, character_v: str, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        return redraw(app, user_of(request), {**sess, "selected": index}, character_v)

    def selected_id(user: str, sess: dict) -> tuple[list[Message], list[Any], int]:
        turns, ids = current_turns(app, user, sess)
        index = selected_index(sess, turns)
        if index is None:
            raise ValueError("no message selected")
        return turns, ids, index

    def version(request: gr.Request, sess: dict, character_v: str, step: int):
        user = user_of(request)
        turns, ids, index = selected_id(user, sess)
        if ids[index] is None:
            raise ValueError("incognito chats keep no versions")
        app.store.select_version(user, sess["chat_id"], ids[index], step)
        return redraw(app, user, {**sess, "selected": index}, character_v)

    @guarded
    def on_prev_version(request: gr.Request, sess: dict, character_v: str):
        return version(request, sess, character_v, -1)

    @guarded
    def on_next_version(request: gr.Request, sess: dict, character_v: str):
        return version(request, sess, character_v, 1)

    @guarded
    def on_save_edit(request: gr.Request, sess: dict, character_v: str, new_text: str):
        user = user_of(request)
        turns, ids, index = selected_id(user, sess)
        if sess["incognito"]:
            turns[index] = {**turns[index], "content": new_text}
            sess = {**sess, "turns": turns}
        else:
            app.store.update_message(user, sess["chat_id"], ids[index], content=new_text)
        return redraw(app, user, {**sess, "selected": index}, character_v, status="Saved the edit.")

    def branch(request: gr.Request, sess: dict, character_v: str, here: bool):
        user = user_of(request)
        turns, ids, index = selected_id(user, sess)
        if not here:
            index = len(turns) - 1
        if ids[index] is None:
            raise ValueError("incognito chats cannot be branched")
        new_id = app.store.branch(user, sess["chat_id"], ids[index])
        return redraw(app, user, {**new_session(previous=sess), "chat_id": new_id}, character_v,
                      status=f"Branched into a new chat at message {index + 1}.")

    @guarded
    def on_branch_here(request: gr.Request, sess: dict, character_v: str):
        return branch(request, sess, character_v, True)

    @guarded
    def on_branch_chat(request: gr.Request, sess: dict, character_v: str):
        return branch(request, sess, character_v, False)

    # -- chats --
    @guarded
    def on_new(request: gr.Request, sess: dict, incognito_v: bool, *ctrl: Any):
        """A fresh chat. It is saved on the first message, or at once when the character greets."""
        user = user_of(request)
        char_v = ctrl[1]
        greeting = app.characters.load(char_v).greeting if char_v else ""
        sess = new_session(incognito_v, previous=sess)
        if greeting and incognito_v:
            opts = options(user, ctrl)
            sess["turns"] = [{"role": "assistant", "content": chatlib.substitute(greeting, opts.name1, opts.name2)}]
        elif greeting:
            sess = ensure_chat(user, sess, ctrl)
        return redraw(app, user, sess, char_v, status="Incognito chat: nothing is saved." if incognito_v else "")

    @guarded
    def on_open(request: gr.Request, chat_id: str | None, sess: dict, character_v: str):
        user = user_of(request)
        if not chat_id:
            return
        info = app.store.chat(user, int(chat_id))
        return redraw(app, user, {**new_session(previous=sess), "chat_id": info.id}, character_v)

    @guarded
    def on_search(request: gr.Request, query: str, sess: dict, character_v: str):
        return redraw(app, user_of(request), sess, character_v, query=query)

    @guarded
    def on_rename(request: gr.Request, sess: dict, character_v: str, new_title: str):
        user = user_of(request)
        if sess["chat_id"] is None:
            raise ValueError("open a saved chat first")
        app.store.rename_chat(user, sess["chat_id"], new_title)
        return redraw(app, user, sess, character_v, status="Renamed.")

    @guarded
    def on_delete(request: gr.Request, sess: dict, character_v: str):
        user = user_of(request)
        if sess["chat_id"] is not None:
            app.store.delete_chat(user, sess["chat_id"])
        return redraw(app, user, new_session(sess["incognito"], previous=sess), character_v, status="Deleted the chat.")

    @guarded
    def on_character(request: gr.Request, character_v: str, incognito_v: bool, sess: dict):
        """Switching character opens that character's newest chat (or an empty one)."""
        user = user_of(request)
        chats = app.store.list_chats(user, character=character_v or "")
        sess = {**new_session(incognito_v, previous=sess),
                "chat_id": chats[0].id if chats and not incognito_v else None}
        return redraw(app, user, sess, character_v)

    @guarded
    def on_images(request: gr.Request, allow: bool, sess: dict, character_v: str):
        return redraw(app, user_of(request), {**sess, "images": allow}, character_v)

    @guarded
    def on_mode(request: gr.Request, mode_v: str, sess: dict, character_v: str):
        """The open chat remembers the mode it was last used in."""
        user = user_of(request)
        if sess["chat_id"] is not None and not sess["incognito"]:
            app.store.update_chat(user, sess["chat_id"], mode=mode_v)
        return redraw(app, user, sess, character_v)

    @guarded
    def on_load(request: gr.Request, character_v: str):
        user = user_of(request)
        chats = app.store.list_chats(user, character=character_v or "")
        sess = {**new_session(), "chat_id": chats[0].id if chats else None}
        return redraw(app, user, sess, character_v)

    # -- files and profile --
    def on_profile_load(request: gr.Request):
        profile = app.store.profile(user_of(request))
        return profile["name"], profile["description"]

    def on_profile_save(request: gr.Request, name: str, bio: str):
        try:
            app.store.set_profile(user_of(request), name, bio)
        except StoreError as exc:
            gr.Warning(str(exc))
            return f"⚠️ {exc}"
        return "Saved your profile."

    @guarded
    def on_import_chat(request: gr.Request, data: bytes | None, sess: dict, character_v: str):
        user = user_of(request)
        if not data:
            return
        if len(data) > MAX_IMPORT_BYTES:
            raise ValueError(f"the chat file is larger than {MAX_IMPORT_BYTES:,} bytes")
        try:
            parsed = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the chat file is not JSON: {exc}") from exc
        chat_id = app.store.import_chat(user, parsed)
        app.store.update_chat(user, chat_id, character=character_v or "")
        return redraw(app, user, {**new_session(previous=sess), "chat_id": chat_id}, character_v,
                      status="Imported the chat.")

    def on_import_card(data: bytes | None):
        if not data:
            return gr.skip(), gr.skip()
        try:
            card = app.characters.import_card(data)
        except CharacterError as exc:
            gr.Warning(str(exc))
            return gr.skip(), f"⚠️ {exc}"
        return gr.Dropdown(choices=app.characters.names(), value=card.name), f"Imported character **{card.name}**."

    def write_download(name: str, data: bytes) -> str | None:
        try:
            folder = Path(tempfile.mkdtemp(prefix="parlour-export-"))
            path = folder / name
            path.write_bytes(data)
        except OSError as exc:  # the temp folder's disk is full: say so instead of a failed event
            gr.Warning(f"could not write the export: {os_reason(exc)}")
            return None
        return str(path)

    def on_export_chat(request: gr.Request, sess: dict):
        user = user_of(request)
        if sess["chat_id"] is None:
            gr.Warning("open a saved chat first")
            return gr.skip()
        try:
            data = app.store.export_chat(user, sess["chat_id"])
        except ChatNotFound as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return write_download(f"chat-{sess['chat_id']}.json", json.dumps(data, indent=2).encode())

    def on_export_card(character_v: str):
        try:
            return write_download(f"{character_v}.png", app.characters.export_card(character_v))
        except CharacterError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    def on_template(name: str):
        return "" if name == MODEL_TEMPLATE else _template_source(app, name)

    def next_prompt(request: gr.Request, message: str, sess: dict, values: tuple) -> tuple[str, str]:
        """(prompt, note): what the pipeline would send for the next reply, with the message typed in the
        input box (if any) as the newest turn, exactly as Send would add it."""
        ctrl, preset_values = values[:len(CTRL)], values[len(CTRL):]
        user = user_of(request)
        opts = options(user, ctrl)
        turns, _ = current_turns(app, user, sess)
        if message and message.strip():
            turns = turns + [{"role": "user", "content": model_text(user, opts, message)}]
        built = chatlib.next_prompt(app, turns, opts, params.preset_from(preset_values), user=user,
                                    model=sess.get("model"))
        note = f"{built.prompt_tokens}/{built.context_length} tokens"
        if built.turns_dropped:
            note += f", {built.turns_dropped} oldest messages dropped"
        return built.text, f"Prompt: {note}. Stop strings: {list(built.stops)}"

    def on_preview(request: gr.Request, message: str, sess: dict, *values: Any):
        """The exact prompt the next reply would get, with its token count and stop strings."""
        try:
            return next_prompt(request, message, sess, values)
        except (ValidationError, *EXPECTED_ERRORS) as exc:
            return gr.skip(), f"⚠️ {exc}"

    def on_send_to_notebook(request: gr.Request, message: str, sess: dict, *values: Any):
        """That prompt in the Notebook's text box, and the Notebook tab opened, to read or edit it there."""
        try:
            prompt, note = next_prompt(request, message, sess, values)
        except (ValidationError, *EXPECTED_ERRORS) as exc:
            gr.Warning(str(exc))
            return gr.skip(), f"⚠️ {exc}", gr.skip()
        return prompt, f"Sent to the Notebook. {note}", gr.Tabs(selected="notebook")

    def api_chat_send(request: gr.Request, message: str, *preset_values: Any):
        """The event API's chat_send (gradio_client): one stateless instruct turn, plain text, nothing saved.
        Programs that want saved chats, characters or modes use the OpenAI-compatible API."""
        user = user_of(request)
        history = [{"role": "user", "content": message}]
        yield "", history, "…"
        preset = chatlib.resolve_seed(params.preset_from(preset_values))
        opts = chatlib.resolve_options(app, user, mode="instruct", name1="You", name2="Assistant", context="",
                                       user_bio="")
        try:
            for reply, update in chatlib.stream_reply(app, history, opts, preset, None, user=user):
                yield gr.skip(), history + [{"role": "assistant", "content": reply}], status_line(update)
        except EXPECTED_ERRORS as exc:
            raise gr.Error(str(exc)) from exc

    api_send = gr.Button(visible=False, elem_id="api-chat-send")

    # -- wiring --
    inputs = [text, session, *CTRL, *params.inputs]
    streaming = dict(concurrency_limit=None, show_progress="hidden")
    events = [
        text.submit(on_send, inputs, OUT, api_visibility="private", **streaming),
        api_send.click(api_chat_send, [text, *params.inputs], [text, chatbot, status], api_name="chat_send",
                       **streaming),
        send.click(on_send, inputs, OUT, api_visibility="private", **streaming),
        regenerate.click(on_regenerate, [session, *CTRL, *params.inputs], OUT, api_name="chat_regenerate", **streaming),
        cont.click(on_continue, [session, *CTRL, *params.inputs], OUT, api_name="chat_continue", **streaming),
        impersonate.click(on_impersonate, [session, *CTRL, *params.inputs], OUT, api_name="chat_impersonate",
                          **streaming),
        reproduce.click(on_reproduce, [session, *CTRL, *params.inputs], OUT, api_name="chat_reproduce", **streaming),
    ]
    stop.click(None, None, None, cancels=events, api_visibility="private")
    remove.click(on_remove, [session, character], OUT, api_name="chat_remove_last")
    dummy_message.click(on_dummy_message, [text, session, *CTRL], OUT, api_visibility="private")
    dummy_reply.click(on_dummy_reply, [text, session, *CTRL], OUT, api_visibility="private")
    chatbot.select(on_select, [session, character], OUT, api_visibility="private")
    prev_version.click(on_prev_version, [session, character], OUT, api_visibility="private")
    next_version.click(on_next_version, [session, character], OUT, api_visibility="private")
    save_edit.click(on_save_edit, [session, character, edit_text], OUT, api_visibility="private")
    branch_here.click(on_branch_here, [session, character], OUT, api_visibility="private")
    branch_chat.click(on_branch_chat, [session, character], OUT, api_visibility="private")
    copy.click(None, [edit_text], None, js="(t) => { navigator.clipboard && navigator.clipboard.writeText(t); }",
               api_visibility="private")
    new.click(on_new, [session, incognito, *CTRL], OUT, api_name="chat_new")
    chatbot.clear(on_new, [session, incognito, *CTRL], OUT, api_visibility="private")  # the bubble bin = new chat
    chat_list.input(on_open, [chat_list, session, character], OUT, api_visibility="private")
    search.submit(on_search, [search, session, character], OUT, api_visibility="private")
    rename.click(on_rename, [session, character, title], OUT, api_visibility="private")
    delete.click(lambda: gr.Row(visible=True), None, confirm_row, api_visibility="private")
    cancel_delete.click(lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private")
    confirm.click(on_delete, [session, character], OUT, api_visibility="private").then(
        lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private")
    character.input(on_character, [character, incognito, session], OUT, api_visibility="private")
    images.input(on_images, [images, session, character], OUT, api_visibility="private")
    mode.input(on_mode, [mode, session, character], OUT, api_visibility="private")
    template.input(on_template, template, template_src, api_visibility="private")
    preview.click(on_preview, [text, session, *CTRL, *params.inputs], [prompt_view, status], api_visibility="private")
    save_profile.click(on_profile_save, [your_name, your_bio], status, api_visibility="private")
    card_in.upload(on_import_card, card_in, [character, status], api_visibility="private")
    chat_in.upload(on_import_chat, [chat_in, session, character], OUT, api_visibility="private")
    export_chat.click(on_export_chat, session, download, api_visibility="private")
    export_card.click(on_export_card, character, download, api_visibility="private")

    def on_chat_model(request: gr.Request, name: str | None, sess: dict) -> dict:
        """This chat answers with `name` from now on (a saved chat remembers it)."""
        sess = {**sess, "model": name or None}
        if sess["chat_id"] is not None and not sess["incognito"]:
            chatlib.set_chat_model(app.store, user_of(request), sess["chat_id"], sess["model"])
        return sess

    chat_model.input(on_chat_model, [chat_model, session], session, api_visibility="private")

    def wire_load(blocks: gr.Blocks) -> None:
        """Open the user's newest chat and profile when the page loads (needs the Blocks, given by ui.build)."""
        blocks.load(on_load, [character], OUT, api_visibility="private")
        blocks.load(on_profile_load, None, [your_name, your_bio], api_visibility="private")

    def wire_notebook(notebook_text: gr.Textbox, tabs: gr.Tabs) -> None:
        """The "Send to notebook" button writes into the Notebook tab and opens it (both built after this tab)."""
        to_notebook.click(on_send_to_notebook, [text, session, *CTRL, *params.inputs], [notebook_text, status, tabs],
                          api_visibility="private")

    return {"chatbot": chatbot, "session": session, "input": text, "wire_load": wire_load,
            "wire_notebook": wire_notebook, "model": chat_model}


def _template_source(app: App, name: str) -> str:
    try:
        return app.templates.load(name)
    except TemplateError as exc:
        gr.Warning(str(exc))
        return ""
