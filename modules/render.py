r"""Markdown -> safe HTML for chat bubbles.

Model output, character fields and names are untrusted. The order matters: markdown is converted
first (raw HTML in the source is escaped, not passed through), extensions may then change the HTML,
and `sanitize` runs LAST on whatever came out, with an allow-list: no scripts, no event handlers, no
styles, no iframes, only http/https/mailto links. Remote images are not fetched unless the user
allows it: by default an image becomes a link the user can follow.

LaTeX: markdown would mangle math (`\(` is an escaped parenthesis, `a_1 * b_2 *` turns into emphasis),
so a markdown-it inline rule takes math spans out first — `$...$`, `$$...$$`, `\(...\)`, `\[...\]` —
and writes each back as escaped TEXT between one canonical pair of delimiters: `\(...\)` inline,
`\[...\]` display. Nothing about math survives as markup, so the sanitizer's guarantees are
unchanged. In the browser, the chatbot's bundled KaTeX (Gradio ships it and its fonts; nothing is
fetched from a CDN) typesets those text spans after Gradio's own sanitizer, with `LATEX_DELIMITERS`
(only the canonical pair, so a price like "$5 and $10" is never read as math) and KaTeX's default
`trust: false` (no `\href`/`\url` links, no HTML from formulas). A literal `\(` in ordinary text is
split by an empty element so KaTeX cannot mistake it for a delimiter. Dollar rules follow pandoc: `$`
must hug its content (`$x$`, not `$ x $`) and the closing `$` may not be followed by a digit.
"""

from __future__ import annotations

import functools
import html
import re

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
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
ALLOWED_CLASSES = {"div": ("code-block", "reply-footer"), "button": ("copy-code",), "span": ("remote-image",)}
_TOKEN_CLASS = re.compile(r"^tok-[A-Za-z0-9]{1,4}$")  # Pygments' short token classes, prefixed
MAX_HIGHLIGHT_CHARS = 100_000  # bigger code blocks are shown plain: highlighting them would stall the UI
#: The delimiters KaTeX looks for in the browser (gr.Chatbot's latex_delimiters): only the canonical
#: pair `_math_rule` writes, never `$`, so dollars in ordinary text stay text.
LATEX_DELIMITERS: list[dict[str, str | bool]] = [{"left": "\\(", "right": "\\)", "display": False},
                                                 {"left": "\\[", "right": "\\]", "display": True}]
# (opening, closing, display) in the order they are tried: `$$` before `$`
_MATH_DELIMITERS = (("$$", "$$", True), ("\\[", "\\]", True), ("\\(", "\\)", False), ("$", "$", False))
MAX_MATH_CHARS = 20_000  # a longer "formula" is almost surely not one; left as text
# a backslash that KaTeX would read as the start or end of a formula
_LOOKS_LIKE_DELIMITER = re.compile(r"\\(?=[()\[\]])")


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


def _closing(src: str, start: int, right: str) -> int:
    """Index of the delimiter closing a math span opened just before `start`, or -1."""
    if right != "$":
        end = src.find(right, start)
        return end if end > start and end - start <= MAX_MATH_CHARS else -1
    # a single `$` (pandoc's rule): hug the content, no escaped `\\$`, no digit right after the closing one
    if start >= len(src) or src[start].isspace():
        return -1
    end = start
    while True:
        end = src.find("$", end + 1)
        if end < 0 or end - start > MAX_MATH_CHARS:
            return -1
        if src[end - 1] == "\\":
            continue
        if src[end - 1].isspace() or (end + 1 < len(src) and src[end + 1].isdigit()):
            return -1
        return end


def _math_rule(state: StateInline, silent: bool) -> bool:
    """markdown-it inline rule: a math span becomes one `math` token holding its source untouched."""
    src, pos = state.src, state.pos
    for left, right, display in _MATH_DELIMITERS:
        if not src.startswith(left, pos):
            continue
        start = pos + len(left)
        end = _closing(src, start, right)
        if end < 0 or not src[start:end].strip():
            return False  # not math here: the escape/text rules take the characters as usual
        if not silent:
            token = state.push("math", "", 0)
            token.content = src[start:end]
            token.meta = {"display": display}
        state.pos = end + len(right)
        return True
    return False


@functools.lru_cache(maxsize=2)
def _markdown(allow_images: bool) -> MarkdownIt:
    """The parser (one per allow_images; built once: building one costs more than rendering a bubble)."""
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

    def math(renderer, tokens, idx, options, env):
        token = tokens[idx]
        body = html.escape(token.content, quote=False)
        return f"\\[{body}\\]" if token.meta["display"] else f"\\({body}\\)"

    def text(renderer, tokens, idx, options, env):
        return _LOOKS_LIKE_DELIMITER.sub("<span>\\\\</span>", html.escape(tokens[idx].content, quote=False))

    md.inline.ruler.before("escape", "math", _math_rule)
    md.add_render_rule("fence", fence)
    md.add_render_rule("image", image)
    md.add_render_rule("math", math)
    md.add_render_rule("text", text)
    return md


@functools.lru_cache(maxsize=4096)
def render_markdown(text: str, allow_images: bool = False) -> str:
    """Markdown text -> sanitized HTML.

    Remembered (least recently used out): the chat re-renders every bubble on every streamed update,
    and all but the last are unchanged, so a long chat would cost milliseconds per bubble per update.
    Bubbles in use are touched on every update, so they outlive the partial replies of earlier updates.
    (A pure function of its arguments: the same text always gives the same HTML.)"""
    return sanitize(_markdown(allow_images).render(text), allow_images=allow_images)


# What extension HTML may add to the allow-list: a text colour on a span (perplexity_colors colours each
# token) and pictures carried inline as data: URLs (sd_api_pictures' images; nothing is fetched).
_COLOR_STYLE = re.compile(r"^\s*color:\s*#[0-9a-fA-F]{3,8}\s*;?\s*$")
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")


def render_extension_html(text: str, allow_images: bool = False) -> str:
    """A reply as an extension's output_modifier left it (text-generation-webui's "visible" text): markdown
    whose raw HTML is kept, then the same allow-list as `render_markdown`, plus a colour style on spans
    and data: pictures. Remote pictures still need `allow_images`."""

    def keep(tag: str, attr: str, value: str) -> str | None:
        if tag == "span" and attr == "style":
            return value if _COLOR_STYLE.match(value) else None
        if value.strip().lower().startswith("data:"):
            return value if tag == "img" and attr == "src" and _DATA_IMAGE.match(value.strip()) else None
        if tag == "img" and attr == "src" and not allow_images:
            return None
        return _keep_attribute(tag, attr, value)

    md = MarkdownIt("commonmark", {"html": True, "linkify": False, "breaks": True}).enable(["table", "strikethrough"])
    attributes = {k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()}
    attributes["span"] = attributes.get("span", set()) | {"style"}
    return nh3.clean(md.render(text), tags=ALLOWED_TAGS, attributes=attributes,
                     url_schemes={"http", "https", "mailto", "data"}, attribute_filter=keep,
                     link_rel="noopener noreferrer nofollow", strip_comments=True)


def render_footer(footer: str) -> str:
    """Extensions' reply_footer HTML (one line each) as the block shown under a reply; "" for none.
    Sanitized on its own before it is wrapped, so its markup cannot close the wrapper or escape it."""
    inner = sanitize(footer.strip().replace("\n", "<br>")) if footer and footer.strip() else ""
    return f'<div class="reply-footer">{inner}</div>' if inner.strip() else ""


def render_reasoning(text: str, title: str, open_: bool, allow_images: bool = False) -> str:
    """A reasoning block: collapsible, its markdown rendered and sanitized on its own before it is
    wrapped (so it cannot close the wrapper), the title escaped. Open while the model thinks."""
    body = render_markdown(text, allow_images=allow_images)
    return (f'<details class="reasoning"{" open" if open_ else ""}><summary>{html.escape(title)}</summary>'
            f'<div class="reasoning-body">{body}</div></details>')


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
