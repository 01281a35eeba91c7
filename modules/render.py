"""Markdown -> safe HTML for chat bubbles.

Model output, character fields and names are untrusted. The order matters: markdown is converted
first (raw HTML in the source is escaped, not passed through), extensions may then change the HTML,
and `sanitize` runs LAST on whatever came out, with an allow-list: no scripts, no event handlers, no
styles, no iframes, only http/https/mailto links. Remote images are not fetched unless the user
allows it: by default an image becomes a link the user can follow.
"""

from __future__ import annotations

import html

import re

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
                "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a", "img", "div",
                "span", "button", "sup", "sub"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "code": {"class"},
                      "div": {"class"}, "span": {"class"}, "button": {"class", "type", "title"}, "ol": {"start"}}
# The only class names we emit; anything else (e.g. a class that mimics Gradio's own UI) is dropped.
ALLOWED_CLASSES = {"div": ("code-block",), "button": ("copy-code",), "span": ("remote-image",)}
_TOKEN_CLASS = re.compile(r"^tok-[A-Za-z0-9]{1,4}$")  # Pygments' short token classes, prefixed
MAX_HIGHLIGHT_CHARS = 100_000  # bigger code blocks are shown plain: highlighting them would stall the UI


def _keep_attribute(tag: str, attr: str, value: str) -> str | None:
    if attr == "class":
        if tag == "code":
            return value if value.startswith("language-") and value.replace("-", "").replace("_", "").replace(
                "+", "").replace("#", "").isalnum() else None
        if tag == "span" and _TOKEN_CLASS.match(value):
            return value
        return value if value in ALLOWED_CLASSES.get(tag, ()) else None
    if tag == "button" and attr == "type":
        return "button"
    return value


def sanitize(fragment: str, allow_images: bool = False) -> str:
    """Allow-list HTML cleaning (nh3). Run on the final HTML, after markdown and extensions."""
    tags = ALLOWED_TAGS if allow_images else ALLOWED_TAGS - {"img"}
    attributes = {k: v for k, v in ALLOWED_ATTRIBUTES.items() if k in tags}
    return nh3.clean(fragment, tags=tags, attributes=attributes, url_schemes={"http", "https", "mailto"},
                     attribute_filter=_keep_attribute, link_rel="noopener noreferrer nofollow",
                     strip_comments=True)


def _highlight(code: str, lang: str) -> str:
    """Code as HTML spans with `tok-*` classes (css/chat.css colours them); plain escaped text if unknown."""
    if not lang or len(code) > MAX_HIGHLIGHT_CHARS:
        return html.escape(code)
    try:
        lexer = get_lexer_by_name(lang)
    except ClassNotFound:
        return html.escape(code)
    return highlight(code, lexer, HtmlFormatter(nowrap=True, classprefix="tok-"))


def _markdown(allow_images: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(["table", "strikethrough"])

    def fence(renderer, tokens, idx, options, env):  # code blocks get a copy button (page script handles the click)
        token = tokens[idx]
        lang = token.info.strip().split(" ")[0] if token.info else ""
        cls = f' class="language-{html.escape(lang)}"' if lang else ""
        return ('<div class="code-block"><button class="copy-code" type="button" title="Copy code">Copy</button>'
                f"<pre><code{cls}>{_highlight(token.content, lang)}</code></pre></div>\n")

    def image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        src = token.attrGet("src") or ""
        alt = html.escape(token.content or "image")
        if allow_images:
            return f'<img src="{html.escape(str(src))}" alt="{alt}">'
        # not fetched: a link the user can choose to open
        return f'<span class="remote-image">🖼 <a href="{html.escape(str(src))}">{alt}</a></span>'

    md.add_render_rule("fence", fence)
    md.add_render_rule("image", image)
    return md


def render_markdown(text: str, allow_images: bool = False) -> str:
    """Markdown text -> sanitized HTML."""
    return sanitize(_markdown(allow_images).render(text), allow_images=allow_images)


def render_plain(text: str) -> str:
    """Text shown as-is (names, titles): escaped, never interpreted."""
    return html.escape(text)


# Page script: one delegated listener copies a code block's text (no inline handlers needed).
COPY_JS = """
document.addEventListener('click', (event) => {
  const button = event.target.closest && event.target.closest('button.copy-code');
  if (!button) return;
  const code = button.parentElement.querySelector('code');
  if (code && navigator.clipboard) navigator.clipboard.writeText(code.innerText);
  button.textContent = 'Copied';
  setTimeout(() => { button.textContent = 'Copy'; }, 1200);
});
"""
