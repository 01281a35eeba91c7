"""Notebook tab: one text area; Generate streams a raw continuation (no chat template) into it."""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules.app import App
from modules.generation import GenerationError, GenerationRequest, NoModel, QueueFull, throttle
from modules.ui.chat import speed_line
from modules.ui.parameters import ParameterControls


def render(app: App, params: ParameterControls) -> None:
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
            for update in throttle(app.pipeline.stream(request), app.settings.stream_fps):
                if update.queue_position:
                    yield gr.skip(), f"⏳ waiting for the model: position {update.queue_position} in the queue"
                    continue
                yield prompt + update.text, speed_line(update.tokens, update.seconds, update.first_token_seconds,
                                                       update.prompt_tokens, update.finish_reason)
        except (NoModel, QueueFull, GenerationError, ValueError) as exc:
            gr.Warning(str(exc))
            yield gr.skip(), f"⚠️ {exc}"
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
