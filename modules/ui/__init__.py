"""The Gradio UI: one module per tab, each given the App explicitly."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Callable

import gradio as gr

from modules.app import App
from modules.render import COPY_JS
from modules.ui import character_panel, chat, evaluate, extensions, model, notebook, parameters, session, training
from modules.ui.icons import icon

CSS_DIR = Path(__file__).resolve().parents[2] / "css"
PAGE_JS = (Path(__file__).with_name("page.js")).read_text(encoding="utf-8")
# Dark by default, as users of local LLM UIs expect; the header's toggle switches and this browser
# remembers it (localStorage); `?__theme=light` still wins (modules/ui/page.js).
DARK_JS = "() => { window.parlour && window.parlour.applyTheme(); }"


def build(app: App) -> gr.Blocks:
    with gr.Blocks(title="Parlour", analytics_enabled=False) as blocks:
        params = parameters.create_controls(app)
        with gr.Row(elem_id="header", equal_height=True):
            gr.Markdown("## Parlour", elem_id="title")
            model_line = gr.Markdown(app.models.status(), elem_id="header-model")
            theme = gr.Button("Theme", elem_id="theme-toggle", size="sm", icon=icon("theme"), scale=0, min_width=90)
        theme.click(None, js="() => window.parlour && window.parlour.toggleTheme()", api_visibility="private")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat_ui = chat.render(app, params)
            with gr.Tab("Notebook", id="notebook"):
                notebook_text, notebook_load, notebook_autosave = notebook.render(app, params)
            with gr.Tab("Parameters", id="parameters"):
                parameters.render(app, params)
            with gr.Tab("Character", id="character"):
                characters_ui = character_panel.render(app, chat_ui["character"], tabs)
                characters_ui["follow"](chat_ui["card_imported"])
            with gr.Tab("Model", id="model"):
                with gr.Tabs():
                    with gr.Tab("Load", id="model-load-tab"):
                        status, info, describe = model.render(app)
                        parameters.follow_model(app, params, status)
                        chat_ui["follow_model"](status)
                    with gr.Tab("Evaluate", id="model-evaluate-tab"):
                        evaluate.render(app)
            with gr.Tab("Training", id="training"):
                training.render(app)
            with gr.Tab("Session", id="session"):
                session.render(app)
            extensions.bind_components(app, {**chat_ui["components"], **characters_ui["components"]}, params)
            extensions.render_tabs(app)
        extensions.render_block(app)
        # The model may still be loading when the page opens: refresh the status lines until it is ready.
        timer = gr.Timer(1.0, active=app.models.loading is not None)

        def poll():
            line, details = describe()
            return line, line, details, gr.Timer(active=app.models.loading is not None)

        timer.tick(poll, None, [model_line, status, info, timer], api_visibility="private", show_progress="hidden")
        blocks.load(poll, None, [model_line, status, info, timer], api_visibility="private", show_progress="hidden")
        # the header names what is loaded now: after a load, a failed load or an Unload in the Model tab
        status.change(app.models.status, None, model_line, api_visibility="private", show_progress="hidden")
        chat_ui["wire_load"](blocks)
        characters_ui["wire_load"](blocks)
        notebook_load(blocks)
        notebook_autosave(chat_ui["wire_notebook"](notebook_text, tabs))
    return blocks


def launch_kwargs(app: App | None = None) -> dict:
    """Theme, CSS and JS: Gradio 6 takes them at launch/mount time, not in Blocks() (with extensions' own)."""
    kwargs = {"theme": gr.themes.Soft(primary_hue="violet", neutral_hue="slate"),
              "css_paths": sorted(CSS_DIR.glob("*.css")), "js": DARK_JS,
              "head": f"<script>{COPY_JS}{chat.SHORTCUTS_JS}{PAGE_JS}</script>"}
    if app is not None and app.extensions.loaded:
        kwargs["css"] = app.extensions.css()
        kwargs["js"] = extensions.page_js(DARK_JS, app)
    return kwargs


def auth_check(settings) -> Callable[[str, str], bool] | None:
    """Gradio's login check for --auth / --auth-file (None: no logins). Passwords compared in constant time."""
    logins = settings.logins()
    if not logins:
        return None

    def check(user: str, password: str) -> bool:
        expected = logins.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    return check
