"""Notebook tab: one text area; Generate streams a raw continuation (no chat template) into it.

Below it, the distribution views: **Next token** (the top 50 candidates before and after the sampler
chain), the **sampler chain** (a bar chart after each stage, redrawn when a parameter moves) and the
text coloured by the probability the model gave each token. The computation is in
`modules/inspect_logits.py`; these handlers only format it.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules import limits
from modules.app import App
from modules.generation import GenerationError, GenerationRequest, NoModel, QueueFull, throttle
from modules.inspect_logits import CannotInspect, candidates_table, chain_bars, coloured_tokens, inspect_next_token, \
    score_text
from modules.models import ModelError
from modules.render import literal
from modules.ui.chat_view import speed_line
from modules.ui.parameters import ParameterControls


def render(app: App, params: ParameterControls) -> gr.Textbox:
    """Build the tab; returns its text box (the Chat tab's "Send to notebook" writes into it)."""
    text = gr.Textbox(elem_id="notebook-input", show_label=False, lines=22, max_lines=40,
                      placeholder="Write the start of a text; Generate continues it.")
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="notebook-generate")
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
        count = gr.Button("Count tokens", elem_id="notebook-count")
    status = gr.Markdown(elem_id="notebook-status")

    def on_generate(prompt: str, *values: Any):
        try:
            preset = params.preset_from(values)
        except ValidationError as exc:
            yield gr.skip(), f"⚠️ invalid parameters: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}"
            return
        cancel = threading.Event()
        request = GenerationRequest(preset=preset, prompt=prompt, cancel=cancel)
        try:
            limits.check_text("prompt", prompt)
            for update in throttle(app.pipeline.stream(request), app.settings.stream_fps):
                if update.queue_position:
                    yield gr.skip(), f"⏳ waiting for the model: position {update.queue_position} in the queue"
                    continue
                yield prompt + update.text, speed_line(update.tokens, update.seconds, update.first_token_seconds,
                                                       update.prompt_tokens, update.finish_reason)
        except (NoModel, QueueFull, GenerationError, ValueError, ModelError) as exc:
            gr.Warning(literal(exc))
            yield gr.skip(), f"⚠️ {literal(exc)}"
        finally:
            cancel.set()

    def on_count(prompt: str) -> str:
        backend = app.models.current()
        if backend is None:
            return "⚠️ no model is loaded"
        return f"{len(backend.tokenize(prompt))} tokens (context {backend.context_length})"

    event = generate.click(on_generate, [text, *params.inputs], [text, status], concurrency_limit=None,
                           api_name="notebook_generate")
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    count.click(on_count, text, status, api_name="notebook_count")
    _render_inspector(app, params, text, event)
    return text


def _render_inspector(app: App, params: ParameterControls, text: gr.Textbox, generated: Any) -> None:
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

    def show(prompt: str, *values: Any):
        backend = app.models.current()
        if backend is None:
            return gr.skip(), gr.skip(), "⚠️ no model is loaded"
        try:
            preset = params.preset_from(values)
            view = inspect_next_token(backend, prompt, preset)
        except ValidationError as exc:
            first = exc.errors()[0]
            return gr.skip(), gr.skip(), f"⚠️ invalid parameters: {first['loc'][0] if first['loc'] else ''}: {first['msg']}"
        except (CannotInspect, ValueError) as exc:
            return gr.skip(), gr.skip(), f"⚠️ {literal(exc)}"
        stages = " → ".join(stage.name for stage in view.stages[1:]) or "no active samplers"
        return candidates_table(view), chain_bars(view), f"Chain: {stages}"

    def show_live(on: bool, prompt: str, *values: Any):
        if not on:
            return gr.skip(), gr.skip(), gr.skip()
        return show(prompt, *values)

    def paint(on: bool, prompt: str) -> str:
        backend = app.models.current()
        if not on or backend is None or not prompt:
            return ""
        try:
            return coloured_tokens(score_text(backend, "", prompt[-20_000:]))
        except CannotInspect as exc:
            return f"<p>{literal(exc)}</p>"

    outputs = [table, chain, inspect_status]
    inspect.click(show, [text, *params.inputs], outputs, api_name="inspect_next_token")
    gr.on([control.change for control in params.inputs], show_live, [live, text, *params.inputs], outputs,
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    colour.change(paint, [colour, text], coloured, api_visibility="private")
    generated.then(paint, [colour, text], coloured, api_visibility="private")
