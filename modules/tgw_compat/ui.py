"""`modules.ui` for text-generation-webui extensions: the refresh button its extensions reuse.

Functions that read or write text-generation-webui's whole interface state (`gather_interface_values`,
`apply_interface_values`, `list_interface_input_elements`) have no counterpart: Parlour's page keeps
its state per control, not in one dict, so an extension that needs them is disabled, naming them.

(One copy of this module per App; see the package docstring.)
"""

from typing import Any, Callable

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)

refresh_symbol = "🔄"
delete_symbol = "🗑️"
save_symbol = "💾"


def create_refresh_button(refresh_component: Any, refresh_method: Callable[[], Any], refreshed_args: Any,
                          elem_class: Any, interactive: bool = True) -> Any:
    """A small button that calls `refresh_method`, then updates `refresh_component` with `refreshed_args`."""
    import gradio as gr

    def refresh() -> Any:
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        return gr.update(**(args or {}))

    classes = list(elem_class) if isinstance(elem_class, (list, tuple)) else [elem_class]
    button = gr.Button(refresh_symbol, elem_classes=[c for c in classes if c] + ["refresh-icon-btn"],
                       interactive=interactive, min_width=40, scale=0)
    button.click(refresh, None, refresh_component, api_visibility="private")
    return button


__getattr__ = missing_attributes("modules.ui")
