"""Markdown rendering and the sanitizer against XSS payloads."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from modules.render import LATEX_DELIMITERS, render_footer, render_markdown, render_plain, sanitize

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<iframe src='javascript:alert(1)'></iframe>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<div style=\"background:url(javascript:alert(1))\">x</div>",
    "<style>body{display:none}</style>",
    "<details open ontoggle=alert(1)>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "<object data='x.swf'></object><embed src=x>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    # math spans are written back as text: markup inside a formula stays text
    "$<img src=x onerror=alert(1)>$",
    "$$</p><script>alert(1)</script>$$",
    r"\(\href{javascript:alert(1)}{x}\) \[<iframe src=x>\]",
]


SAFE_TAGS = {"p", "br", "a", "img", "code", "pre", "div", "button", "span", "strong", "em", "table", "thead",
             "tbody", "tr", "th", "td"}


class Elements(HTMLParser):
    """Every element and attribute a browser would build from the HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, attrs))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_come_out_inert(payload):
    for allow in (False, True):
        out = render_markdown(payload, allow_images=allow)
        parser = Elements()
        parser.feed(out)
        for tag, attrs in parser.found:
            assert tag in SAFE_TAGS, (payload, out)
            for name, value in attrs:
                assert not name.startswith("on") and name != "style", (payload, out)
                if name in ("href", "src"):
                    assert (value or "").startswith(("http://", "https://", "mailto:")), (payload, out)


def test_sanitize_runs_on_html_directly_as_the_last_step():
    dirty = '<p onclick="x()">hi<script>alert(1)</script><a href="javascript:x">l</a><b class="x">b</b></p>'
    clean = sanitize(dirty)
    assert clean.startswith("<p>hi") and "script" not in clean and "javascript" not in clean and "onclick" not in clean
    assert sanitize('<div class="gradio-container">x</div>') == "<div>x</div>"  # no UI-mimicking classes
    assert sanitize('<span class="tok-k">if</span><span class="tok-toolong">x</span>') == \
        '<span class="tok-k">if</span><span>x</span>'


def test_markdown_features():
    out = render_markdown("**bold** and *em*\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1 < 2\n```")
    assert "<strong>bold</strong>" in out and "<em>em</em>" in out
    assert "<table>" in out and "<td>1</td>" in out
    assert '<button class="copy-code" type="button"' in out
    assert '<code class="language-python"><span class="tok-n">x</span>' in out and "&lt;" in out
    plain = render_markdown("```nosuchlang\nx = 1 < 2\n```")
    assert '<code class="language-nosuchlang">x = 1 &lt; 2\n</code>' in plain
    assert render_markdown("<b>raw</b>") == "<p>&lt;b&gt;raw&lt;/b&gt;</p>\n"  # raw HTML shown, not interpreted


def test_links_get_safe_rel_and_remote_images_are_not_fetched():
    link = render_markdown("[site](https://example.com)")
    assert 'href="https://example.com"' in link and "noopener" in link
    image = render_markdown("![cat](https://example.com/cat.png)")
    assert "<img" not in image and 'href="https://example.com/cat.png"' in image and "cat" in image
    allowed = render_markdown("![cat](https://example.com/cat.png)", allow_images=True)
    assert '<img src="https://example.com/cat.png" alt="cat">' in allowed


def test_plain_text_is_escaped():
    assert render_plain('<img src=x onerror="alert(1)">') == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"


@pytest.mark.parametrize("source, expected", [
    (r"$e^{i\pi}+1=0$", r"\(e^{i\pi}+1=0\)"),
    (r"$$\int_0^1 x^2\,dx$$", r"\[\int_0^1 x^2\,dx\]"),
    (r"\(a_1 * b_2 * c\)", r"\(a_1 * b_2 * c\)"),  # no emphasis, no escape processing inside
    ("\\[\nx \\\\ y\n\\]", "\\[\nx \\\\ y\n\\]"),  # multi-line display math keeps its line break command
    ("$a<b$", r"\(a&lt;b\)"),
])
def test_math_spans_are_kept_verbatim_between_canonical_delimiters(source, expected):
    assert render_markdown(source) == f"<p>{expected}</p>\n"


def test_text_that_is_not_math_stays_text():
    assert render_markdown("costs $5 and $10 today") == "<p>costs $5 and $10 today</p>\n"  # pandoc: no digit after
    assert render_markdown("$ x $ and $x $") == "<p>$ x $ and $x $</p>\n"  # `$` must hug the formula
    assert render_markdown(r"a \$x\$ b") == "<p>a $x$ b</p>\n"  # escaped dollars
    assert render_markdown("`$x$` and\n```\n$y$\n```") == \
        "<p><code>$x$</code> and</p>\n<div class=\"code-block\"><button class=\"copy-code\" type=\"button\" " \
        "title=\"Copy code\">Copy</button><pre><code>$y$\n</code></pre></div>\n"
    # a literal `\(` (markdown `\\(`) is split so the browser's KaTeX cannot take it for a delimiter
    out = render_markdown(r"not math: \\(x\\)")
    assert out == "<p>not math: <span>\\</span>(x<span>\\</span>)</p>\n"
    assert not any(d["left"] in out for d in LATEX_DELIMITERS)


def test_browser_delimiters_are_only_the_canonical_pair():
    assert {(d["left"], d["right"], d["display"]) for d in LATEX_DELIMITERS} == {(r"\(", r"\)", False),
                                                                                 (r"\[", r"\]", True)}


def test_reply_footer_is_sanitized_on_its_own_and_wrapped():
    assert render_footer("") == "" and render_footer("  \n") == "" and render_footer("<script>x</script>") == ""
    assert render_footer("<strong>12</strong> tokens\nsource: a.txt") == \
        '<div class="reply-footer"><strong>12</strong> tokens<br>source: a.txt</div>'
    out = render_footer('<img src=x onerror=alert(1)><a href="javascript:x">s</a></div><p>after')
    assert "onerror" not in out and "javascript" not in out and "<img" not in out
    # its stray </div> cannot close the wrapper: everything it wrote stays inside
    assert out == '<div class="reply-footer"><a rel="noopener noreferrer nofollow">s</a><p>after</p></div>'
