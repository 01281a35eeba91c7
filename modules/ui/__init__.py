"""The Gradio UI: one module per tab, each given the App explicitly."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from modules.app import App
from modules.ui import chat, model, notebook, parameters, session

CSS_DIR = Path(__file__).resolve().parents[2] / "css"
# Dark by default, as users of local LLM UIs expect; `?__theme=light` still switches.
DARK_JS = """() => {
  const url = new URL(window.location);
  if (url.searchParams.get('__theme') !== 'light') document.body.classList.add('dark');
}"""


def build(app: App) -> gr.Blocks:
    with gr.Blocks(title="Parlour", analytics_enabled=False) as blocks:
        params = parameters.create_controls(app)
        with gr.Row(elem_id="header"):
            gr.Markdown("## Parlour", elem_id="title")
            model_line = gr.Markdown(app.models.status(), elem_id="header-model")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat.render(app, params)
            with gr.Tab("Notebook", id="notebook"):
                notebook.render(app, params)
            with gr.Tab("Parameters", id="parameters"):
                parameters.render(app, params)
            with gr.Tab("Model", id="model"):
                status, info, describe = model.render(app)
                parameters.follow_model(app, params, status)
            with gr.Tab("Session", id="session"):
                session.render(app)
        # The model may still be loading when the page opens: refresh the status lines until it is ready.
        timer = gr.Timer(1.0, active=app.models.loading is not None)

        def poll():
            line, details = describe()
            return line, line, details, gr.Timer(active=app.models.loading is not None)

        timer.tick(poll, None, [model_line, status, info, timer], api_visibility="private", show_progress="hidden")
        blocks.load(poll, None, [model_line, status, info, timer], api_visibility="private", show_progress="hidden")
    return blocks


def launch_kwargs() -> dict:
    """Theme, CSS and JS: Gradio 6 takes them at launch/mount time, not in Blocks()."""
    return {"theme": gr.themes.Soft(primary_hue="violet", neutral_hue="slate"),
            "css_paths": sorted(CSS_DIR.glob("*.css")), "js": DARK_JS}
