"""Where extensions' own UI goes: a tab each (params['is_tab']) or the shared Extensions block."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from modules.app import App
from modules.tgw_compat import GRADIO_NAMES


def bind_components(app: App, chat_components: dict[str, Any], params: Any) -> None:
    """Fill text-generation-webui's `shared.gradio` with this page's controls, before extensions' ui() runs:
    the Chat tab's (tgw_compat.GRADIO_NAMES) and every sampler slider under its Preset key (the same names)."""
    mapping = {tgw: chat_components[ours] for tgw, ours in GRADIO_NAMES.items() if ours in chat_components}
    mapping.update(params.controls)
    mapping["preset_menu"] = params.dropdown
    app.extensions.compat.gradio.clear()
    app.extensions.compat.gradio.update(mapping)


def _with_ui(app: App, tabs: bool) -> list[str]:
    return [name for name, ext in app.extensions.loaded.items()
            if bool(ext.params.get("is_tab", False)) == tabs and app.extensions.provides(name, "ui")]


def render_tabs(app: App) -> None:
    """Inside gr.Tabs: one tab per enabled extension whose params ask for one."""
    for name in _with_ui(app, tabs=True):
        with gr.Tab(app.extensions.loaded[name].display_name, id=f"extension-{name}",
                    elem_id=f"extension-tab-{name}"):
            app.extensions.render_ui(name)


def render_block(app: App) -> None:
    """Below the tabs: the other enabled extensions' ui(), each in its own accordion."""
    names = _with_ui(app, tabs=False)
    if not names:
        return
    with gr.Column(elem_id="extensions-block"):
        # text-generation-webui's ids for this block and its tab bar, which its extensions' scripts look up
        # (a missing one stops the rest of such a script); the bar here is an empty stand-in
        with gr.Column(elem_id="extensions"):
            gr.HTML('<div class="header_bar" hidden></div>', padding=False, container=False)
            for name in names:
                with gr.Accordion(app.extensions.loaded[name].display_name, open=False, elem_id=f"extension-{name}"):
                    app.extensions.render_ui(name)


def page_js(base_js: str, app: App) -> str:
    """Gradio takes one JS function at mount: ours first, then each extension's code in its own try."""
    parts = [f"  ({base_js})();"]
    for name, code in app.extensions.js():
        parts.append(f"  try {{\n{code}\n  }} catch (e) {{ console.error({json.dumps('extension ' + name)}, e); }}")
    return "() => {\n" + "\n".join(parts) + "\n}"
