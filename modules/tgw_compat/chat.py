"""`modules.chat` for text-generation-webui extensions: the default chat prompt, characters, small helpers.

`generate_chat_prompt(user_input, state, **kwargs)` is what a `custom_generate_chat_prompt` hook calls
to get the prompt Parlour would have built: the pipeline passes its own builder in `kwargs` (with
`history`, `_continue` and `impersonate`), so the text is the real one (mode, character, template,
truncation and the other extensions' hooks included), built from the `user_input` and `history` the
extension hands back, which it may have changed. Called outside a request (from a `ui()` handler), it
renders the model's own chat template over `history`.

(One copy of this module per App; see the package docstring.)
"""

import datetime
from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)
shared = _compat.module("shared")


def generate_chat_prompt(user_input: str, state: dict[str, Any], **kwargs: Any) -> str:
    history = kwargs.get("history") or state.get("history") or {"internal": [], "visible": []}
    build = kwargs.get("_parlour_default")
    if build is not None:
        return build(user_input, history, _continue=bool(kwargs.get("_continue")),
                     impersonate=bool(kwargs.get("impersonate")))
    from modules.extensions import history_to_messages
    from modules.generation import NoModel

    backend = _compat.app.models.current() if _compat.app is not None else None
    if backend is None or backend.chat_template is None:
        raise NoModel("no model with a chat template is loaded")
    messages = history_to_messages(history, [])
    if user_input and not kwargs.get("_continue"):
        messages.append({"role": "user", "content": user_input})
    return backend.chat_template.render(messages, add_generation_prompt=True, **backend.template_vars())


def replace_character_names(text: str, name1: str, name2: str) -> str:
    from modules.chat import substitute

    return substitute(text, name1, name2)


def get_stopping_strings(state: dict[str, Any]) -> list[str]:
    stops = []
    if state.get("mode", "chat") in ("chat", "chat-instruct"):
        stops += [f"\n{state.get('name1', 'You')}:", f"\n{state.get('name2', 'Assistant')}:"]
    custom = state.get("custom_stopping_strings") or []
    stops += [custom] if isinstance(custom, str) else [str(s) for s in custom]
    return stops


def get_current_timestamp() -> str:
    return datetime.datetime.now().strftime("%b %d, %Y %H:%M")


def strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def load_character(character: str, name1: str, name2: str) -> tuple[str, str, Any, str, str]:
    """(name1, name2, picture path or None, greeting, context) of a character, as text-generation-webui gives them."""
    if _compat.app is None or not character or character == "None":
        return name1, name2, None, "", ""
    store = _compat.app.characters
    char = store.load(character)
    name2 = char.name or name2
    picture = store.picture(character)
    return (name1, name2, picture, replace_character_names(char.greeting, name1, name2),
            replace_character_names(char.context, name1, name2))


def load_character_memoized(character: str, name1: str, name2: str) -> tuple[str, str, Any, str, str]:
    return load_character(character, name1, name2)


__getattr__ = missing_attributes("modules.chat")
