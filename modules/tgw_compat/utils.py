"""`modules.utils` for text-generation-webui extensions: `gradio(*names)` and the folder listings.

(One copy of this module per App; see the package docstring.)
"""

import re
from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)
shared = _compat.module("shared")


def gradio(*keys: Any) -> list[Any]:
    """The page's controls by text-generation-webui name (`gradio('textbox', 'character_menu')`)."""
    if len(keys) == 1 and isinstance(keys[0], (list, tuple)):
        keys = tuple(keys[0])
    return [shared.gradio[k] for k in keys]


def atoi(text: str) -> Any:
    return int(text) if text.isdigit() else text.lower()


def natural_keys(text: str) -> list[Any]:
    return [atoi(c) for c in re.split(r"(\d+)", text)]


def get_available_characters() -> list[str]:
    return _compat.app.characters.names() if _compat.app is not None else []


def get_available_presets() -> list[str]:
    return _compat.app.presets.names() if _compat.app is not None else []


def get_available_models() -> list[str]:
    return ["None", *_compat.app.models.list()] if _compat.app is not None else ["None"]


def get_available_instruction_templates() -> list[str]:
    return ["None", *_compat.app.templates.names()] if _compat.app is not None else ["None"]


def get_available_extensions() -> list[str]:
    return sorted(_compat.app.extensions.available()) if _compat.app is not None else []


def check_model_loaded() -> tuple[bool, str]:
    if _compat.app is None or _compat.app.models.current() is None:
        return False, "No model is loaded. Please select one in the Model tab."
    return True, ""


__getattr__ = missing_attributes("modules.utils")
