"""Session tab: the settings this process runs with (secrets masked), where its files are, and extensions."""

from __future__ import annotations

import json

import gradio as gr

from modules.app import App
from modules.render import literal
from modules.ui import session_tools
from modules.ui.chat_view import user_of

RESTART_NOTE = ("Hooks of extensions turned on or off here apply from the next message. An extension turned "
                "off and on again is the same extension: its controls on the page keep working. The controls, "
                "CSS and JS of one that was not on when the page was built appear after a restart with "
                "`--extensions` or `default_extensions` in settings.yaml (Gradio builds the page once).")


ADMINS_ONLY = ("⚠️ Only admins (--admin-users) turn extensions on or off: they run code and apply to every "
               "user of this server.")


def apply_extensions(app: App, checked: list[str], user: str) -> tuple[list[str], str]:
    """Enable exactly `checked`: extensions already on keep their place in the load order, new ones go last.
    Only an admin may (`Settings.is_admin`, as for MCP servers); anyone else changes nothing."""
    if not app.settings.is_admin(user):
        return list(app.extensions.loaded), ADMINS_ONLY
    order = [n for n in app.extensions.loaded if n in checked] + [n for n in checked if n not in app.extensions.loaded]
    errors = app.extensions.enable(order)
    lines = [f"❌ {literal(name)}: {literal(message)}" for name, message in errors.items()]
    summary = "\n\n".join(lines) if lines else f"Enabled: {', '.join(app.extensions.loaded) or 'none'}."
    return list(app.extensions.loaded), summary


def unreadable_markdown(app: App) -> str:
    """The user's files that cannot be used (broken YAML, wrong types), one line each; empty if none."""
    found = app.unreadable_files()
    if not found:
        return ""
    lines = [f"- **{literal(item)}**: {literal(why)}" for item, why in sorted(found.items())]
    return "### ⚠️ Files that could not be read\nEverything else loaded; fix or remove these:\n" + "\n".join(lines)


def render(app: App) -> None:
    gr.Markdown("Settings come from defaults < `settings.yaml` < the command line. "
                "Flags such as `--listen` or `--api-key` can only be changed by restarting the server.")
    gr.Code(json.dumps(app.settings.public_dict(), indent=2, default=str), language="json",
            label="Current settings", interactive=False, elem_id="session-settings")
    problems = gr.Markdown(unreadable_markdown(app), elem_id="session-unreadable")
    gr.Markdown("### Extensions\n" + RESTART_NOTE)
    enabled = gr.CheckboxGroup(sorted(app.extensions.available()), value=list(app.extensions.loaded),
                               label="Enabled extensions", elem_id="session-extensions")
    with gr.Row():
        apply = gr.Button("Apply", variant="primary", elem_id="session-extensions-apply", scale=0)
        refresh = gr.Button("Refresh status", elem_id="session-extensions-refresh", scale=0)
    result = gr.Markdown(elem_id="session-extensions-result")
    status = gr.Markdown(app.extensions.status_markdown(), elem_id="session-extensions-status")

    def on_apply(checked: list[str], request: gr.Request):
        names, summary = apply_extensions(app, checked or [], user_of(request))
        return names, summary, app.extensions.status_markdown()

    session_tools.render(app)
    apply.click(on_apply, enabled, [enabled, result, status], api_name="extensions_apply")
    refresh.click(app.extensions.status_markdown, None, status, api_name="extensions_status")
    refresh.click(lambda: unreadable_markdown(app), None, problems, api_visibility="private")
    # Failures happen while chatting in another tab: keep the table current without a click.
    gr.Timer(3.0).tick(app.extensions.status_markdown, None, status, api_visibility="private",
                       show_progress="hidden")
