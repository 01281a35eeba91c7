"""One set of limits on what a user or a client may ask for, shared by the UI and the API.

Each limit is defined once, here. The places that take the values check them with these numbers:
the chat store (messages, titles, profiles), `modules.chat.resolve_options` (the Chat tab's and the
API's prompt fields), the `Preset` model (whose fields are also the API's request fields, so
`max_new_tokens` / `max_tokens` and `custom_stopping_strings` share one range), the API's schemas
(`stop`), the request guards (bodies) and Gradio's upload route. Every refusal says which field, how
big it was and what the limit is, in one line (`LimitError` is a ValueError, so the UI shows it as a
warning and the API answers 400).
"""

from __future__ import annotations

from typing import Iterable

MAX_MESSAGE_CHARS = 500_000  # one chat message (about 125k tokens of English: more than most contexts)
MAX_PROMPT_CHARS = 4_000_000  # a whole prompt: the Notebook's text, a rendered chat template
MAX_STOP_STRINGS = 16  # custom stop strings per request (the API's `stop` + `stopping_strings`, the Chat tab's)
MAX_STOP_CHARS = 1000  # one stop string
MAX_STRING_LIST = 256  # banned strings, DRY sequence breakers
MAX_TITLE_CHARS = 200  # a chat's title
MAX_NAME_CHARS = 200  # a display name (your name, the character's name in a request)
MAX_NEW_TOKENS = 32768  # most tokens one reply may ask for
MAX_TEMPLATE_CHARS = 256 * 1024  # a chat / instruction template's source
MAX_BODY_BYTES = 2 * 1024 * 1024  # default --max-body-bytes: one HTTP request body (API and UI events)
MAX_UPLOAD_MB = 50  # default --max-upload-mb: one uploaded file (character cards, chat imports)

#: longest text each named field may hold
TEXT_LIMITS: dict[str, int] = {
    "message": MAX_MESSAGE_CHARS,
    "system message": MAX_MESSAGE_CHARS,
    "context": MAX_MESSAGE_CHARS,
    "about you": MAX_MESSAGE_CHARS,
    "chat-instruct command": MAX_MESSAGE_CHARS,
    "start reply with": MAX_MESSAGE_CHARS,
    "name": MAX_NAME_CHARS,
    "title": MAX_TITLE_CHARS,
    "template": MAX_TEMPLATE_CHARS,
    "prompt": MAX_PROMPT_CHARS,
}


class LimitError(ValueError):
    """A value larger than its limit; the message names the field and both sizes."""


def check_text(field: str, value: str | None) -> str | None:
    """`value` unchanged if it fits `TEXT_LIMITS[field]`, else LimitError."""
    limit = TEXT_LIMITS[field]
    if value is not None and len(value) > limit:
        raise LimitError(f"the {field} is {len(value):,} characters; at most {limit:,} are allowed")
    return value


def check_strings(values: Iterable[str], field: str, count: int = MAX_STOP_STRINGS,
                  length: int = MAX_STOP_CHARS) -> tuple[str, ...]:
    """A list of short strings (stop strings, banned strings): at most `count`, each at most `length`."""
    items = tuple(values)
    if len(items) > count:
        raise LimitError(f"{field}: {len(items):,} given; at most {count} are allowed")
    longest = max((len(s) for s in items), default=0)
    if longest > length:
        raise LimitError(f"{field}: one is {longest:,} characters; at most {length:,} are allowed")
    return items


def check_stops(values: Iterable[str], field: str = "stop strings") -> tuple[str, ...]:
    return check_strings(values, field)
