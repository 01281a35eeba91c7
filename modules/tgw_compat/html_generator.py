"""`modules.html_generator` for text-generation-webui extensions: chat HTML, thumbnails.

Markdown goes through Parlour's renderer (modules/render.py), so what these return is sanitized the
same way chat bubbles are. The chat helpers take text-generation-webui's history
(`{'internal': [[user, bot], ...], 'visible': [...]}`) and render its `visible` side. An extension
may replace `convert_to_markdown` here (perplexity_colors does); the other helpers use the current one.

(One copy of this module per App; see the package docstring.)
"""

import datetime
import html
import re
from pathlib import Path
from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)
shared = _compat.module("shared")
image_cache: dict[Path, tuple[float, str]] = {}


def convert_to_markdown(string: str, message_id: Any = None) -> str:
    from modules.render import render_markdown

    return render_markdown(string or "")


def convert_to_markdown_wrapped(string: str, message_id: Any = None, use_cache: bool = True) -> str:
    return convert_to_markdown(string, message_id)


def generate_basic_html(string: str) -> str:
    return f'<div class="readable-container">{convert_to_markdown(string)}</div>'


def fix_newlines(string: str) -> str:
    string = string.replace("\n", "\n\n")
    return re.sub(r"\n{3,}", "\n\n", string).strip()


def _rows(history: dict[str, Any], last_message_only: bool) -> list[tuple[int, list[str]]]:
    rows = list(enumerate(history.get("visible", [])))
    return rows[-1:] if last_message_only else rows


def _message(role: str, name: str, text: str, index: int) -> str:
    return (f'<div class="message" data-role="{role}" data-index="{index}">'
            f'<div class="username">{html.escape(name)}</div>'
            f'<div class="message-body">{convert_to_markdown(text)}</div></div>')


def generate_instruct_html(history: dict[str, Any], last_message_only: bool = False) -> str:
    return generate_cai_chat_html(history, "You", "Assistant", "", "", last_message_only=last_message_only)


def generate_cai_chat_html(history: dict[str, Any], name1: str, name2: str, style: str, character: str,
                           reset_cache: bool = False, last_message_only: bool = False) -> str:
    parts = []
    for i, row in _rows(history, last_message_only):
        user, bot = (list(row) + ["", ""])[:2]
        if user and user != "<|BEGIN-VISIBLE-CHAT|>":
            parts.append(_message("user", name1, str(user), i))
        if bot:
            parts.append(_message("assistant", name2, str(bot), i))
    return f'<div class="chat" id="chat">{"".join(parts)}</div>'


def chat_html_wrapper(history: dict[str, Any], name1: str, name2: str, mode: str, style: str, character: str,
                      reset_cache: bool = False, last_message_only: bool = False) -> dict[str, Any]:
    if mode == "instruct":
        result = generate_instruct_html(history, last_message_only)
    else:
        result = generate_cai_chat_html(history, name1, name2, style, character, reset_cache, last_message_only)
    return {"html": result, "last_message_only": last_message_only}


def time_greeting() -> str:
    hour = datetime.datetime.now().hour
    return "Good morning!" if 5 <= hour < 12 else "Good afternoon!" if hour < 18 else "Good evening!"


def make_thumbnail(image: Any) -> Any:
    from PIL import Image, ImageOps

    image = image.resize((350, round(image.size[1] / image.size[0] * 350)), Image.Resampling.LANCZOS)
    if image.size[1] > 470:
        image = ImageOps.fit(image, (350, 470), Image.Resampling.LANCZOS)
    return image


def get_image_cache(path: Any) -> str:
    """A thumbnail of the picture at `path`, made once per file version, as text-generation-webui's
    extensions use it: after `file/` in an `<img src>`. text-generation-webui serves any allowed file at
    `/file/<path>`; Gradio 6 serves only files in its own upload folder, at `/gradio_api/file=<path>`. So
    the thumbnail is written there and the path returned is `../gradio_api/file=<thumbnail>`, which the
    browser resolves from `file/` to that route."""
    from gradio.utils import get_upload_folder
    from PIL import Image

    path = Path(path)
    folder = Path(get_upload_folder()) / "parlour-thumbnails"
    mtime = path.stat().st_mtime
    cached = image_cache.get(path)
    if cached is None or cached[0] != mtime or not Path(cached[1]).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / f"cache_{path.name}.png"
        with Image.open(path) as picture:
            make_thumbnail(picture).convert("RGBA").save(output, format="PNG")
        image_cache[path] = (mtime, str(output.resolve()))
    return "../gradio_api/file=" + image_cache[path][1]


__getattr__ = missing_attributes("modules.html_generator")
