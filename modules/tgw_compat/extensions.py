"""`modules.extensions` for text-generation-webui extensions: `apply_extensions` and the loaded list.

`apply_extensions(kind, ...)` calls the App's enabled extensions' hooks (isolated as Parlour always
calls them). `state` maps each enabled extension's name to `[True, position, module]`.

(One copy of this module per App; see the package docstring.)
"""

from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)


def _extensions() -> Any:
    if _compat.app is None:
        raise RuntimeError("no App is bound to text-generation-webui's modules.extensions")
    return _compat.app.extensions


def apply_extensions(typ: str, *args: Any, **kwargs: Any) -> Any:
    ext = _extensions()
    calls = {
        "input": lambda text, state, is_chat=False: ext.input(text, state, is_chat=is_chat),
        "output": lambda text, state, is_chat=False: ext.output(text, state, is_chat=is_chat),
        "chat_input": lambda text, visible, state: ext.chat_input(text, visible, state),
        "state": lambda state: ext.state(state),
        "history": lambda history: ext.history(history),
        "bot_prefix": lambda text, state: ext.bot_prefix(text, state),
        "tokenized_length": lambda prompt: ext.tokenized_length(prompt),
        "custom_generate_chat_prompt": lambda text, state, **kw: ext.chat_prompt(text, state, **kw),
        "css": lambda: ext.css(),
        "js": lambda: "\n".join(code for _name, code in ext.js()),
    }
    if typ not in calls:
        raise ValueError(f"Invalid extension type {typ}")
    return calls[typ](*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "state":
        return {n: [True, i, e.module] for i, (n, e) in enumerate(_extensions().loaded.items())}
    if name == "available_extensions":
        return sorted(_extensions().available())
    return _missing(name)


_missing = missing_attributes("modules.extensions")
