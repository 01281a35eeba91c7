"""Notebook tab: one text area; Generate streams a raw continuation (no chat template) into it, Undo
goes back to the text before it, Regenerate makes it again. The text is saved as you type, per user,
and comes back after a reload; prompts can be saved by name (modules/prompts.py does the files).
Its Model picks which model continues the text (loaded when needed, like a chat's), independent of
the Chat tab's.

Below it, the distribution views: **Next token** (the top 50 candidates before and after the sampler
chain), the **sampler chain** (a bar chart after each stage, redrawn when a parameter moves) and the
text coloured by the probability the model gave each token. The computation is in
`modules/inspect_logits.py`; these handlers only format it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import gradio as gr
from pydantic import ValidationError

from modules import limits
from modules.app import App
from modules.generation import GenerationError, GenerationRequest, NoModel, QueueFull, throttle
from modules.inspect_logits import CannotInspect, candidates_table, chain_bars, coloured_tokens, inspect_next_token, \
    score_text
from modules.models import ModelError
from modules.prompts import NotebookDrafts, PromptError, PromptLibrary
from modules.render import literal
from modules.ui.chat_view import WAITING, speed_line, user_of
from modules.ui.parameters import ParameterControls

CONFIRM_DELETE_JS = "(name) => (name && confirm(`Delete the prompt ${name}?`)) ? name : null"


def render(app: App, params: ParameterControls) -> tuple[gr.Textbox, gr.Dropdown, Callable[[gr.Blocks], None],
                                                       Callable[[Any], None]]:
    """Build the tab; returns its text box (the Chat tab's "Send to notebook" writes into it), its model
    picker (whose choices follow the Model tab), the page-load wiring, and `autosave_after(event)` for
    events elsewhere that write into the text box."""
    library = PromptLibrary(app.settings.user_data / "prompts")
    drafts = NotebookDrafts(app.settings.user_data / "notebook")
    before = gr.State(None)  # the text before the last generation (Undo, Regenerate)
    with gr.Row(elem_id="notebook-prompts-row"):
        prompt_pick = gr.Dropdown(library.names(), value=None, label="Saved prompts", elem_id="notebook-prompt",
                                  scale=3)
        prompt_name = gr.Textbox(label="Save as", placeholder="prompt name", elem_id="notebook-prompt-name", scale=2)
        prompt_save = gr.Button("Save", elem_id="notebook-prompt-save", scale=0, min_width=80)
        prompt_delete = gr.Button("Delete", variant="stop", elem_id="notebook-prompt-delete", scale=0, min_width=80)
        model_pick = gr.Dropdown(app.models.choices(), value=app.models.default, label="Model", scale=2,
                                 elem_id="notebook-model", info="the model that continues the text (loads when needed)")
    text = gr.Textbox(elem_id="notebook-input", show_label=False, lines=22, max_lines=40,
                      placeholder="Write the start of a text; Generate continues it. It is saved as you type.")
    with gr.Row(elem_id="notebook-buttons"):
        generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
        regenerate = gr.Button("Regenerate", elem_id="notebook-regenerate")
        undo = gr.Button("Undo", elem_id="notebook-undo")
        count = gr.Button("Count tokens", elem_id="notebook-count")
    status = gr.Markdown(elem_id="notebook-status")
    # The saved draft arrives with the page load, which a loaded machine can answer after the user has started
    # typing: it goes here first and the browser puts it in the box only if the box is still empty.
    kept_draft = gr.Textbox(visible=False)

    def loaded(model: str | None) -> tuple[Any, str]:
        """The picked model's backend if it is loaded (reading tokens never loads a model), or why not."""
        backend = app.models.get(model)
        if backend is not None:
            return backend, ""
        if model and model != app.models.default:
            return None, f"⚠️ {literal(model)} is not loaded yet: Generate loads it"
        return None, "⚠️ no model is loaded"

    def on_generate(prompt: str, model: str | None, *values: Any):
        if not (prompt or "").strip():
            yield gr.skip(), "⚠️ write the start of a text first: Generate continues it", gr.skip()
            return
        try:
            preset = params.preset_from(values)
        except ValidationError as exc:
            yield (gr.skip(), f"⚠️ invalid parameters: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}",
                   gr.skip())
            return
        cancel = threading.Event()
        request = GenerationRequest(preset=preset, prompt=prompt, cancel=cancel, model=model or None)
        yield gr.skip(), WAITING, prompt  # Undo and Regenerate go back to this text
        try:
            limits.check_text("prompt", prompt)
            for update in throttle(app.pipeline.stream(request), app.settings.stream_fps):
                if update.queue_position:
                    yield gr.skip(), f"{WAITING} Position {update.queue_position} in the queue.", gr.skip()
                    continue
                line = speed_line(update.tokens, update.seconds, update.first_token_seconds, update.prompt_tokens,
                                  update.finish_reason)
                yield prompt + update.text, f"{line} · {literal(update.model)}" if update.model else line, gr.skip()
        except (NoModel, QueueFull, GenerationError, ValueError, ModelError) as exc:
            gr.Warning(literal(exc))
            yield gr.skip(), f"⚠️ {literal(exc)}", gr.skip()
        finally:
            cancel.set()

    def on_notebook_regenerate(previous: str | None, model: str | None, *values: Any):
        """The last generation again, from the text it started from."""
        if previous is None:
            yield gr.skip(), "⚠️ nothing to regenerate yet: Generate first", gr.skip()
            return
        yield previous, gr.skip(), gr.skip()
        yield from on_generate(previous, model, *values)

    def on_undo(previous: str | None):
        if previous is None:
            return gr.skip(), "⚠️ nothing to undo", gr.skip()
        return previous, "Undid the last generation.", gr.skip()  # Regenerate still starts from it

    def on_count(prompt: str, model: str | None) -> str:
        backend, why = loaded(model)
        if backend is None:
            return why
        return f"{len(backend.tokenize(prompt))} tokens (context {backend.context_length})"

    def autosave(request: gr.Request, current: str) -> Any:
        try:
            drafts.save(user_of(request), current)
        except PromptError as exc:
            return f"⚠️ {literal(exc)}"
        return gr.skip()

    def on_pick_prompt(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        try:
            return library.load(name), f"Opened prompt **{name}**."
        except PromptError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"

    def on_save_prompt(name: str, current: str):
        try:
            saved = library.save(name, current)
        except PromptError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"
        return gr.Dropdown(choices=library.names(), value=saved), f"Saved prompt **{saved}**."

    def on_delete_prompt(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        try:
            library.delete(name)
        except PromptError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"
        return gr.Dropdown(choices=library.names(), value=None), f"Deleted prompt **{name}**."

    def on_notebook_load(request: gr.Request):
        """The user's own text as they left it, and the prompts saved since the server started."""
        try:
            kept = drafts.load(user_of(request))
        except PromptError as exc:
            return gr.skip(), gr.Dropdown(choices=library.names()), f"⚠️ {literal(exc)}"
        return kept, gr.Dropdown(choices=library.names()), gr.skip()

    kept_draft.change(None, [kept_draft, text], text, js="(kept, typed) => typed ? typed : kept",
                      api_visibility="private")

    private = dict(api_visibility="private")
    streaming = dict(concurrency_limit=None)
    event = generate.click(on_generate, [text, model_pick, *params.inputs], [text, status, before],
                           api_name="notebook_generate", **streaming)
    again = regenerate.click(on_notebook_regenerate, [before, model_pick, *params.inputs], [text, status, before],
                             **private, **streaming)
    stopped = stop.click(None, None, None, cancels=[event, again], **private)
    count.click(on_count, [text, model_pick], status, api_name="notebook_count")
    undone = undo.click(on_undo, before, [text, status, before], **private)
    text.input(autosave, text, status, trigger_mode="always_last", show_progress="hidden", **private)
    text.blur(autosave, text, status, show_progress="hidden", **private)  # text put in some other way
    picked = prompt_pick.input(on_pick_prompt, prompt_pick, [text, status], **private)
    prompt_save.click(on_save_prompt, [prompt_name, text], [prompt_pick, status], **private)
    prompt_delete.click(on_delete_prompt, prompt_pick, [prompt_pick, status], js=CONFIRM_DELETE_JS, **private)

    def autosave_after(trigger: Any) -> None:
        trigger.then(autosave, text, status, show_progress="hidden", **private)

    for trigger in (event, again, stopped, undone, picked):
        autosave_after(trigger)

    def wire_load(blocks: gr.Blocks) -> None:
        blocks.load(on_notebook_load, None, [kept_draft, prompt_pick, status], **private)

    _render_inspector(app, params, text, model_pick, loaded, event)
    return text, model_pick, wire_load, autosave_after


def _render_inspector(app: App, params: ParameterControls, text: gr.Textbox, model_pick: gr.Dropdown,
                      loaded: Callable[[str | None], tuple[Any, str]], generated: Any) -> None:
    with gr.Accordion("Next token and sampler chain", open=True, elem_id="inspector"):
        with gr.Row():
            inspect = gr.Button("Show next token", elem_id="inspect-next-token", scale=0, min_width=160)
            live = gr.Checkbox(value=True, label="Update when a parameter changes", elem_id="inspect-live")
            colour = gr.Checkbox(value=False, label="Colour the text by probability", elem_id="notebook-colour")
        inspect_status = gr.Markdown(elem_id="inspect-status")
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown("#### Next token: top 50")
                table = gr.HTML(elem_id="next-token-view")
            with gr.Column(scale=3):
                gr.Markdown("#### Sampler chain: the distribution after each stage")
                chain = gr.HTML(elem_id="sampler-chain-view")
        coloured = gr.HTML(elem_id="probability-view")

    def show(prompt: str, model: str | None, *values: Any):
        backend, why = loaded(model)
        if backend is None:
            return gr.skip(), gr.skip(), why
        if not (prompt or "").strip():  # nothing to continue yet: no distribution to show (and no error)
            return "", "", "Write some text above to see its next token."
        try:
            preset = params.preset_from(values)
            view = inspect_next_token(backend, prompt, preset)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = first["loc"][0] if first["loc"] else ""
            return gr.skip(), gr.skip(), f"⚠️ invalid parameters: {where}: {first['msg']}"
        except (CannotInspect, ValueError) as exc:
            return gr.skip(), gr.skip(), f"⚠️ {literal(exc)}"
        stages = " → ".join(stage.name for stage in view.stages[1:]) or "no active samplers"
        return candidates_table(view), chain_bars(view), f"Chain: {stages}"

    def show_live(on: bool, prompt: str, model: str | None, *values: Any):
        # a parameter moved while there is no text (the page's first values among them): nothing to redraw, and
        # an answer computed for the empty box must not clear a table drawn since for the user's text
        if not on:
            return gr.skip(), gr.skip(), gr.skip()
        if not (prompt or "").strip():
            return gr.skip(), gr.skip(), "Write some text above to see its next token."
        return show(prompt, model, *values)

    def paint(on: bool, prompt: str, model: str | None) -> str:
        backend, _ = loaded(model)
        if not on or backend is None or not prompt:
            return ""
        try:
            return coloured_tokens(score_text(backend, "", prompt[-20_000:]))
        except CannotInspect as exc:
            return f"<p>{literal(exc)}</p>"

    outputs = [table, chain, inspect_status]
    inspect.click(show, [text, model_pick, *params.inputs], outputs, api_name="inspect_next_token")
    gr.on([control.change for control in params.inputs], show_live, [live, text, model_pick, *params.inputs], outputs,
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    colour.change(paint, [colour, text, model_pick], coloured, api_visibility="private")
    generated.then(paint, [colour, text, model_pick], coloured, api_visibility="private")
