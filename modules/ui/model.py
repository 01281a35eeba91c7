"""Model tab: pick a model from models/, load or unload it, see what is loaded."""

from __future__ import annotations

import json
from typing import Callable

import gradio as gr

from modules.app import App
from modules.models import ModelError


def render(app: App) -> tuple[gr.Markdown, gr.Code, Callable[[], tuple[str, str]]]:
    current = app.models.current()
    with gr.Row():
        dropdown = gr.Dropdown(choices=app.models.list(), value=current.name if current else app.models.loading,
                               label="Model", elem_id="model-dropdown", interactive=True, scale=8)
        refresh = gr.Button("🔄 Refresh", elem_id="model-refresh", scale=1, min_width=100)
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        unload = gr.Button("Unload", elem_id="model-unload")
    status = gr.Markdown(app.models.status(), elem_id="model-status")
    info = gr.Code(language="json", label="Model info", elem_id="model-info", interactive=False)

    def describe() -> tuple[str, str]:
        data = app.models.info()
        return app.models.status(), json.dumps(data, indent=2) if data else ""

    def on_load(name: str | None, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        if not name:
            return "⚠️ choose a model first", gr.skip()
        progress(0.0, desc=f"Loading {name}")
        try:
            app.models.load(name, progress=lambda f, msg: progress(f, desc=msg))
        except ModelError as exc:
            kept = app.models.current()
            still = f" — still loaded: {kept.name}" if kept else ""
            return f"⚠️ could not load {name}: {exc}{still}", gr.skip()
        return describe()

    def on_unload() -> tuple[str, str]:
        app.models.unload()
        return describe()

    refresh.click(lambda: gr.Dropdown(choices=app.models.list()), None, dropdown, api_name="model_refresh")
    load.click(on_load, dropdown, [status, info], api_name="model_load")
    unload.click(on_unload, None, [status, info], api_name="model_unload")
    return status, info, describe
