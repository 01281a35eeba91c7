"""The Gradio UI: one module per tab, each given the App explicitly."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Callable

import gradio as gr

from modules import exports
from modules.app import App
from modules.render import COPY_JS
from modules.ui import character_panel, chat, evaluate, extensions, model, notebook, parameters, progress, session, training
from modules.ui.icons import icon

CSS_DIR = Path(__file__).resolve().parents[2] / "css"
PAGE_JS = (Path(__file__).with_name("page.js")).read_text(encoding="utf-8")
# Dark by default, as users of local LLM UIs expect; the header's toggle switches and this browser
# remembers it (localStorage); `?__theme=light` still wins (modules/ui/page.js).
DARK_JS = "() => { window.parlour && window.parlour.applyTheme(); }"


def build(app: App) -> gr.Blocks:
    exports.clear_all(exports.cache_dir())  # files a previous run handed out are not this run's to serve
    # Uploaded files and exports leave Gradio's cache after --cache-minutes (looked for at least once a minute).
    age = max(1, round(app.settings.cache_minutes * 60))
    with gr.Blocks(title="Parlour", analytics_enabled=False, delete_cache=(min(60, age), age)) as blocks:
        params = parameters.create_controls(app)
        with gr.Row(elem_id="header", equal_height=True):
            gr.Markdown("## Parlour", elem_id="title")
            model_line = gr.Markdown(model.header_line(app, None), elem_id="header-model")
            theme = gr.Button("Theme", elem_id="theme-toggle", size="sm", icon=icon("theme"), scale=0, min_width=90)
        theme.click(None, js="() => window.parlour && window.parlour.toggleTheme()", api_visibility="private")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat_ui = chat.render(app, params)
            with gr.Tab("Notebook", id="notebook"):
                notebook_text, notebook_model, notebook_load, notebook_autosave = notebook.render(app, params)
            with gr.Tab("Parameters", id="parameters"):
                parameters.render(app, params)
            with gr.Tab("Character", id="character"):
                characters_ui = character_panel.render(app, chat_ui["character"], tabs)
                characters_ui["follow"](chat_ui["card_imported"])
            with gr.Tab("Model", id="model"):
                with gr.Tabs():
                    with gr.Tab("Load", id="model-load-tab"):
                        status, info, describe, models_changed = model.render(app)
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
        # A model may still be loading when the page opens: refresh the status lines until it is ready.
        # The header names the open chat's model (each chat keeps its own, in its session state).
        timer = gr.Timer(1.0, active=app.models.loading is not None)
        chat_session, chat_model = chat_ui["session"], chat_ui["model"]

        def header(sess: dict) -> str:
            return model.header_line(app, sess.get("model"))

        def poll(sess: dict):
            line, details = describe()
            return header(sess), line, details, gr.Timer(active=app.models.loading is not None)

        hidden = dict(api_visibility="private", show_progress="hidden")
        timer.tick(poll, chat_session, [model_line, status, info, timer], **hidden)
        blocks.load(poll, chat_session, [model_line, status, info, timer], **hidden)
        # Another chat, another model for this chat, a load/unload in the Model tab or a finished download:
        # the header and the Chat tab's Model follow.
        def follow(sess: dict):
            return header(sess), gr.Dropdown(choices=app.models.choices(), value=sess.get("model") or app.models.default)

        for changed in (chat_session, status, models_changed):
            changed.change(follow, chat_session, [model_line, chat_model], **hidden)
        for changed in (status, models_changed):  # the Notebook keeps its pick; its choices follow
            changed.change(lambda: gr.Dropdown(choices=app.models.choices()), None, notebook_model, **hidden)
        chat_ui["wire_load"](blocks)
        characters_ui["wire_load"](blocks)
        notebook_load(blocks)
        notebook_autosave(chat_ui["wire_notebook"](notebook_text, tabs))
    progress.narrow(blocks)  # after every event (extensions' too) is wired
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


def max_upload_bytes(settings) -> int:
    """--max-upload-mb in bytes: Gradio's max_file_size, and the upload route's body limit."""
    return int(settings.max_upload_mb * 1024 * 1024)


def login_reader(api) -> Callable[[dict], str | None]:
    """The login a request's Gradio cookie belongs to (None: not logged in), for the session guard.

    Gradio keeps logins as `tokens` (cookie value -> user) on its app, under a cookie named after its
    `cookie_id`; both are read per request, so a login made after start is seen. A test checks they exist."""
    from starlette.requests import cookie_parser
    from starlette.routing import Mount

    gradio_app = next(route.app for route in api.routes if isinstance(route, Mount) and hasattr(route.app, "tokens"))

    def login_of(scope: dict) -> str | None:
        raw = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"cookie"), "")
        cookies = cookie_parser(raw)
        token = cookies.get(f"access-token-{gradio_app.cookie_id}") or \
            cookies.get(f"access-token-unsecure-{gradio_app.cookie_id}")
        return gradio_app.tokens.get(token) if token else None

    return login_of


def auth_check(settings) -> Callable[[str, str], bool] | None:
    """Gradio's login check for --auth / --auth-file (None: no logins). Passwords compared in constant time."""
    logins = settings.logins()
    if not logins:
        return None

    def check(user: str, password: str) -> bool:
        expected = logins.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    return check
