"""Session tab: the settings this process runs with (secrets masked) and where its files are."""

from __future__ import annotations

import json

import gradio as gr

from modules.app import App


def render(app: App) -> None:
    gr.Markdown("Settings come from defaults < `settings.yaml` < the command line. "
                "Flags such as `--listen` or `--api-key` can only be changed by restarting the server.")
    gr.Code(json.dumps(app.settings.public_dict(), indent=2, default=str), language="json",
            label="Current settings", interactive=False, elem_id="session-settings")
