"""`modules.models` for text-generation-webui extensions: load and unload through Parlour's model manager.

`load_model(name)` returns `(model, tokenizer)` as text-generation-webui's does; the model is Parlour's
(the next reply uses it), so assigning them to `shared.model` / `shared.tokenizer` is not needed.

(One copy of this module per App; see the package docstring.)
"""

from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)
shared = _compat.module("shared")


def _manager() -> Any:
    if _compat.app is None:
        raise RuntimeError("no App is bound to text-generation-webui's modules.models")
    return _compat.app.models


def load_model(model_name: str, loader: str | None = None) -> tuple[Any, Any]:
    _manager().load(model_name, loader)
    return shared.model, shared.tokenizer


def unload_model(keep_model_name: bool = False) -> None:
    _manager().unload()


def reload_model() -> tuple[Any, Any]:
    backend = _manager().current()
    if backend is None:
        return None, None
    return load_model(backend.name)


def load_model_if_idle_unloaded() -> None:
    _manager().ensure_loaded()


__getattr__ = missing_attributes("modules.models")
