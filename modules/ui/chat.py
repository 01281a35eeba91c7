"""Chat tab: layout and wiring. Every action is a call to the chat service (modules/conversation.py);
the handlers here read the controls, call it, and redraw (modules/ui/chat_view.py).

The per-browser `gr.State` holds which chat is open, the selected message, an incognito chat's turns
(never saved) and display choices. Every handler returns the same outputs (input box, chatbot, state,
chat list, status, selected message info, edit box), so any action leaves the screen consistent.
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr
from pydantic import ValidationError

from modules import chat as chatlib
from modules import exports
from modules.app import App
from modules.chat import MODEL_TEMPLATE
from modules.conversation import Setup, Step
from modules.presets import Preset
from modules.render import literal
from modules.templates import TemplateError
from modules.turns import Turn
from modules.ui import chat_actions, chat_layout, chat_tools
from modules.ui.chat_view import (CHARACTER_LISTS, EXPECTED_ERRORS, WAITING, bubbles, guarded, new_session, redraw,
                                  session_of, status_line, stoppable, stopped, template_vars, thinking_controls,
                                  user_of, view_of, waiting)
from modules.ui.parameters import ParameterControls

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
__all__ = ["render", "new_session", "SHORTCUTS_JS"]


def render(app: App, params: ParameterControls) -> dict[str, Any]:
    ui = chat_layout.build(app)
    OUT = [ui.text, ui.chatbot, ui.session, ui.chat_list, ui.status, ui.selected_info, ui.edit_text]
    CTRL = [ui.mode, ui.character, ui.template, ui.template_src, ui.command, ui.system_message, ui.stops,
            ui.start_with, ui.thinking, ui.effort, ui.keep_thinking, ui.tools.enabled, ui.tools.choice]

    def setup(user: str, ctrl: tuple, preset_values: tuple = (), sess: dict | None = None, **flags: Any) -> Setup:
        """The next reply's Setup; with `sess` (an action that writes a reply) the page's Stop stops it."""
        mode_v, char_v, tmpl_v, src_v, cmd_v, sys_v, stops_v, start_v, think_v, effort_v, keep_v, *tools_v = ctrl
        options = chatlib.resolve_options(
            app, user, mode=mode_v, character=char_v, instruction_template=tmpl_v, template_source=src_v,
            chat_instruct_command=cmd_v, system_message=sys_v or "",
            custom_stops=tuple(s for s in (stops_v or "").splitlines() if s),
            start_reply_with=flags.pop("start", start_v or ""), keep_reasoning=bool(keep_v), **flags)
        preset = params.preset_from(preset_values) if preset_values else Preset()
        return Setup(options, preset, template_vars(think_v, effort_v), character=char_v or "",
                     tools=chat_tools.plan_from(*tools_v), stop=stoppable(sess) if sess is not None else None)

    def split(values: tuple) -> tuple[tuple, tuple]:
        return values[:len(CTRL)], values[len(CTRL):]

    def stream(user: str, sess: dict, character_v: str, steps: Iterator[Step]) -> Iterator[tuple]:
        """Show a streaming action: a waiting indicator until the first token, the chat as it grows (the
        earlier messages keep their action bars), then the full redraw once it is done."""
        last_status, shown = "", None
        try:
            for step in steps:
                sess = session_of(step.view, sess)
                last_status = status_line(step.update)
                if shown is None:
                    shown = app.chats.shown(user, step.view)
                view = bubbles(step.turns, sess, thinking=step.update.thinking, shown=shown, live=True,
                               wait=waiting(step.update))
                yield (gr.skip(), view, sess, gr.skip(), last_status, gr.skip(), gr.skip())
        finally:
            steps.close()  # a closed page closes this generator: the service cancels the model within a token
        if stopped(sess):  # Stop ended the reply: say how far it got
            last_status = app.chats.after_stop(user, view_of(sess))[1]
        yield redraw(app, user, sess, character_v, status=last_status)

    # -- conversation actions --
    @guarded
    def on_send(request: gr.Request, message: str, sess: dict, *values: Any):
        ctrl, preset_values = split(values)
        if not message.strip():
            return
        user = user_of(request)
        plan = setup(user, ctrl, preset_values, sess)
        steps = app.chats.send(user, view_of(sess), message, plan)
        first = next(steps)  # the message is saved and the reply has begun: clear the input at once
        sess = session_of(first.view, sess)
        yield redraw(app, user, sess, ctrl[1], status=WAITING, text="", wait=True)
        yield from stream(user, sess, ctrl[1], _chain(first, steps))

    def generating(action: str):
        @guarded
        def handler(request: gr.Request, sess: dict, *values: Any):
            ctrl, preset_values = split(values)
            user = user_of(request)
            steps = getattr(app.chats, action)(user, view_of(sess), setup(user, ctrl, preset_values, sess))
            yield from stream(user, sess, ctrl[1], steps)
        handler.__name__ = f"on_{action}"
        return handler

    on_regenerate, on_continue, on_reproduce = (generating(a) for a in ("regenerate", "continue_reply", "reproduce"))

    @guarded
    def on_impersonate(request: gr.Request, sess: dict, *values: Any):
        ctrl, preset_values = split(values)
        user = user_of(request)
        for written, update in app.chats.impersonate(user, view_of(sess), setup(user, ctrl, preset_values, sess)):
            yield (written, gr.skip(), gr.skip(), gr.skip(), status_line(update), gr.skip(), gr.skip())

    @guarded
    def on_remove(request: gr.Request, sess: dict, character_v: str):
        user = user_of(request)
        view, removed = app.chats.remove_last(user, view_of(sess))
        return redraw(app, user, session_of(view, sess), character_v, text=removed)

    def dummy(role: str):
        @guarded
        def handler(request: gr.Request, message: str, sess: dict, *ctrl: Any):
            user = user_of(request)
            view = app.chats.add_dummy(user, view_of(sess), role, message, setup(user, ctrl))
            return redraw(app, user, session_of(view, sess), ctrl[1], text="")
        return handler

    @guarded
    def on_branch_chat(request: gr.Request, sess: dict, character_v: str):
        """The sidebar's Branch: a copy of the whole chat, opened."""
        user = user_of(request)
        view = app.chats.branch(user, view_of(sess))
        return redraw(app, user, session_of(view, new_session(previous=sess)), character_v,
                      status="Branched into a new chat.")

    # -- chats --
    @guarded
    def on_new(request: gr.Request, sess: dict, incognito_v: bool, *ctrl: Any):
        """A fresh chat. It is saved on the first message, or at once when the character greets."""
        user = user_of(request)
        view = app.chats.new_chat(user, setup(user, ctrl), incognito=incognito_v, model=sess.get("model"))
        return redraw(app, user, session_of(view, new_session(incognito_v, previous=sess)), ctrl[1],
                      status="Incognito chat: nothing is saved." if incognito_v else "")

    @guarded
    def on_open(request: gr.Request, chat_id: str | None, sess: dict, character_v: str):
        if not chat_id:
            return
        user = user_of(request)
        return redraw(app, user, session_of(app.chats.open(user, int(chat_id)), new_session(previous=sess)),
                      character_v)

    @guarded
    def on_search(request: gr.Request, query: str, sess: dict, character_v: str):
        return redraw(app, user_of(request), sess, character_v, query=query)

    @guarded
    def on_rename(request: gr.Request, sess: dict, character_v: str, new_title: str):
        user = user_of(request)
        app.chats.rename(user, view_of(sess), new_title)
        return redraw(app, user, sess, character_v, status="Renamed.")

    @guarded
    def on_delete(request: gr.Request, sess: dict, character_v: str):
        user = user_of(request)
        chat_id = sess["chat_id"]
        view = app.chats.delete(user, view_of(sess))
        if chat_id is not None:  # its exports go with it (modules/exports.py)
            exports.forget(exports.cache_dir(), user, str(chat_id))
        return redraw(app, user, session_of(view, new_session(view.incognito, previous=sess)), character_v,
                      status="Deleted the chat.")

    @guarded
    def on_character(request: gr.Request, sess: dict, incognito_v: bool, *ctrl: Any):
        """Switching character opens that character's newest chat, or a new one that starts with its greeting."""
        user, character_v = user_of(request), ctrl[1]
        view = app.chats.newest(user, character_v) if not incognito_v else None
        if view is None or view.chat_id is None:
            view = app.chats.new_chat(user, setup(user, ctrl), incognito=incognito_v, model=sess.get("model"))
        # the status line is left alone: it may say why the character changed ("Imported ...")
        return redraw(app, user, session_of(view, new_session(incognito_v, previous=sess)), character_v,
                      status=gr.skip())

    @guarded
    def on_images(request: gr.Request, allow: bool, sess: dict, character_v: str):
        return redraw(app, user_of(request), {**sess, "images": allow}, character_v)

    @guarded
    def on_mode(request: gr.Request, mode_v: str, sess: dict, character_v: str):
        user = user_of(request)
        app.chats.set_mode(user, view_of(sess), mode_v)
        return redraw(app, user, sess, character_v)

    @guarded
    def on_load(request: gr.Request, character_v: str, sess: dict):
        """The page opens on the user's newest chat, unless the user opened or began one first: on a busy
        machine the page-load event can run after a click on New (or on a chat in the list), or still be
        running when that click's event ends, and must not take that chat away. Both are seen on the
        page's Page (shared by every event of the page, see chat_view.Page): no chat chosen when this
        starts, and none when its answer is ready."""
        page = sess["page"]
        if page.chosen:
            return tuple(gr.skip() for _ in OUT)
        user = user_of(request)
        shown = redraw(app, user, session_of(app.chats.newest(user, character_v), new_session(previous=sess),
                                             chosen=False), character_v)
        if page.chosen:  # an event of the user's put a chat here while this one ran: that chat stays
            return tuple(gr.skip() for _ in OUT)
        return shown

    def on_chat_model(request: gr.Request, name: str | None, sess: dict) -> dict:
        """This chat answers with `name` from now on (a saved chat remembers it)."""
        return session_of(app.chats.set_model(user_of(request), view_of(sess), name), sess)

    def on_template(name: str):
        if name == MODEL_TEMPLATE:
            return ""
        try:
            return app.templates.load(name)
        except TemplateError as exc:
            gr.Warning(literal(exc))
            return ""

    def next_prompt(request: gr.Request, message: str, sess: dict, values: tuple) -> tuple[str, str]:
        """(prompt, note): what the pipeline would send for the next reply, with the message typed in the
        input box (if any) as the newest turn, exactly as Send would add it (input hooks included)."""
        ctrl, preset_values = split(values)
        user = user_of(request)
        plan = setup(user, ctrl, preset_values)
        turns = app.chats.turns(user, view_of(sess))
        if message and message.strip():
            turns = turns + [Turn.of("user", message)]
        built = chatlib.next_prompt(app, turns, plan.options, plan.preset, user=user, template_vars=plan.template_vars,
                                    model=sess.get("model"))
        note = f"{built.prompt_tokens}/{built.context_length} tokens"
        if built.turns_dropped:
            note += f", {built.turns_dropped} oldest messages dropped"
        return built.text, f"Prompt: {note}. Stop strings: {literal(list(built.stops))}"

    def on_preview(request: gr.Request, message: str, sess: dict, *values: Any):
        """The exact prompt the next reply would get, with its token count and stop strings."""
        try:
            return next_prompt(request, message, sess, values)
        except (ValidationError, *EXPECTED_ERRORS) as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"

    def on_send_to_notebook(request: gr.Request, message: str, sess: dict, *values: Any):
        """That prompt in the Notebook's text box, and the Notebook tab opened, to read or edit it there."""
        try:
            prompt, note = next_prompt(request, message, sess, values)
        except (ValidationError, *EXPECTED_ERRORS) as exc:
            gr.Warning(literal(exc))
            return gr.skip(), f"⚠️ {literal(exc)}", gr.skip()
        return prompt, f"Sent to the Notebook. {note}", gr.Tabs(selected="notebook")

    def api_chat_send(request: gr.Request, message: str, *preset_values: Any):
        """The event API's chat_send (gradio_client): one stateless instruct turn, plain text, nothing saved.
        Programs that want saved chats, characters or modes use the OpenAI-compatible API."""
        user = user_of(request)
        yield "", [{"role": "user", "content": message}], "…"
        options = chatlib.PromptOptions(mode="instruct")
        plan = Setup(options, params.preset_from(preset_values))
        try:
            for step in app.chats.send(user, view_of(new_session(incognito=True)), message, plan):
                shown = [{"role": t.role, "content": t.text} for t in step.turns]
                yield gr.skip(), shown, status_line(step.update)
        except EXPECTED_ERRORS as exc:
            raise gr.Error(str(exc)) from exc  # read by API clients, never shown in a page: left as text

    api_send = gr.Button(visible=False, elem_id="api-chat-send")

    # -- wiring --
    inputs = [ui.text, ui.session, *CTRL, *params.inputs]
    streaming = dict(concurrency_limit=None, show_progress="hidden")
    events = [
        # Enter and Send are one event: a message sent while a reply is being written (or in the moment its
        # last update is on the way) goes out when that reply ends, with the chat as it is then
        # ("always_last"; Gradio's default drops the press, and two events would let Enter start a second reply)
        gr.on([ui.text.submit, ui.send.click], on_send, inputs, OUT, api_visibility="private",
              trigger_mode="always_last", **streaming),
        api_send.click(api_chat_send, [ui.text, *params.inputs], [ui.text, ui.chatbot, ui.status], api_name="chat_send",
                       **streaming),
        ui.regenerate.click(on_regenerate, [ui.session, *CTRL, *params.inputs], OUT, api_name="chat_regenerate",
                            **streaming),
        ui.cont.click(on_continue, [ui.session, *CTRL, *params.inputs], OUT, api_name="chat_continue", **streaming),
        ui.impersonate.click(on_impersonate, [ui.session, *CTRL, *params.inputs], OUT, api_name="chat_impersonate",
                          **streaming),
        ui.reproduce.click(on_reproduce, [ui.session, *CTRL, *params.inputs], OUT, api_name="chat_reproduce",
                           **streaming),
    ]
    private = dict(api_visibility="private")
    events.append(chat_actions.wire(app, ui, OUT, [*CTRL, *params.inputs],
                                    lambda user, values, sess: setup(user, *split(values), sess), stream))
    _answers, follow_tools = chat_tools.wire(app, ui, setup, split, stream, [ui.session, *CTRL, *params.inputs], OUT,
                                            events, streaming)
    chat_actions.wire_stop(ui)
    ui.remove.click(on_remove, [ui.session, ui.character], OUT, api_name="chat_remove_last")
    ui.dummy_message.click(dummy("user"), [ui.text, ui.session, *CTRL], OUT, **private)
    ui.dummy_reply.click(dummy("assistant"), [ui.text, ui.session, *CTRL], OUT, **private)
    ui.branch_chat.click(on_branch_chat, [ui.session, ui.character], OUT, **private)
    ui.open_drawer.click(None, js="() => window.parlour && window.parlour.drawer(true)", **private)
    ui.close_drawer.click(None, js="() => window.parlour && window.parlour.drawer(false)", **private)
    follow_tools(ui.new.click(on_new, [ui.session, ui.incognito, *CTRL], OUT, api_name="chat_new"))
    follow_tools(ui.chat_list.input(on_open, [ui.chat_list, ui.session, ui.character], OUT, **private))
    ui.search.submit(on_search, [ui.search, ui.session, ui.character], OUT, **private)
    ui.rename.click(on_rename, [ui.session, ui.character, ui.title], OUT, **private)
    ui.delete.click(lambda: gr.Row(visible=True), None, ui.confirm_row, **private)
    ui.cancel_delete.click(lambda: gr.Row(visible=False), None, ui.confirm_row, **private)
    ui.confirm.click(on_delete, [ui.session, ui.character], OUT, **private).then(
        lambda: gr.Row(visible=False), None, ui.confirm_row, **private)
    # .change, not .input: a character chosen elsewhere (the Character tab, an imported card) opens its chats
    follow_tools(ui.character.change(on_character, [ui.session, ui.incognito, *CTRL], OUT, **private))
    ui.refresh_characters.click(lambda current: gr.Dropdown(choices=app.characters.names(), value=current
                                                            if current in app.characters.names() else None),
                                ui.character, ui.character, **private, **CHARACTER_LISTS)
    ui.images.input(on_images, [ui.images, ui.session, ui.character], OUT, **private)
    ui.mode.input(on_mode, [ui.mode, ui.session, ui.character], OUT, **private)
    ui.template.input(on_template, ui.template, ui.template_src, **private)
    ui.chat_model.input(on_chat_model, [ui.chat_model, ui.session], ui.session, **private)

    def thinking_controls_for(model: str | None) -> tuple[Any, Any]:
        return thinking_controls(app, model)

    # the Model box shows the open chat's model (picked here, or set when another chat opens): the Thinking
    # controls follow that model's template, not the default model's
    ui.chat_model.change(thinking_controls_for, ui.chat_model, [ui.thinking, ui.effort], show_progress="hidden",
                         **private)
    ui.preview.click(on_preview, [ui.text, ui.session, *CTRL, *params.inputs], [ui.prompt_view, ui.status], **private)
    card_imported = ui.files.wire(OUT)

    def wire_load(blocks: gr.Blocks) -> None:
        """Open the user's newest chat and profile when the page loads (needs the Blocks, given by ui.build)."""
        follow_tools(blocks.load(on_load, [ui.character, ui.session], OUT, **private))
        blocks.load(thinking_controls_for, ui.chat_model, [ui.thinking, ui.effort], **private)

    def wire_notebook(notebook_text: gr.Textbox, tabs: gr.Tabs) -> Any:
        """The "Send to notebook" button writes into the Notebook tab and opens it (both built after this tab)."""
        return ui.to_notebook.click(on_send_to_notebook, [ui.text, ui.session, *CTRL, *params.inputs],
                                    [notebook_text, ui.status, tabs], **private)

    def follow_model(model_status: gr.components.Component) -> None:
        """Show the thinking controls of the chat's model after a load or unload in the Model tab."""
        model_status.change(thinking_controls_for, ui.chat_model, [ui.thinking, ui.effort], show_progress="hidden",
                            **private)

    # the controls text-generation-webui extensions may name (modules/ui/extensions.py maps its names; the
    # Character tab adds "your_name" and "your_bio")
    components = {"input": ui.text, "character": ui.character, "mode": ui.mode, "template": ui.template,
                  "template_source": ui.template_src, "system_message": ui.system_message, "command": ui.command,
                  "stops": ui.stops, "start_with": ui.start_with, "send": ui.send, "stop": ui.stop,
                  "regenerate": ui.regenerate, "continue": ui.cont, "remove": ui.remove, "impersonate": ui.impersonate,
                  "dummy_message": ui.dummy_message, "dummy_reply": ui.dummy_reply}
    return {"chatbot": ui.chatbot, "session": ui.session, "input": ui.text, "character": ui.character,
            "card_imported": card_imported, "wire_load": wire_load, "wire_notebook": wire_notebook,
            "follow_model": follow_model, "components": components, "model": ui.chat_model}


def _chain(first: Step, rest: Iterator[Step]) -> Iterator[Step]:
    """`first`, then the rest; closing it closes `rest` (Stop must reach the service's generator)."""
    try:
        yield first
        yield from rest
    finally:
        rest.close()
