"""Names that users and files control (a character card's name, a preset's and a model's file name, an
imported chat's metadata, an error that quotes a name) are shown as the characters they are: no Markdown,
no HTML, no LaTeX, and no request leaves for a remote image without the "load remote images" opt-in.
Checked in a real browser whose every request is recorded."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from modules.characters import blank_png, png_with_text
from modules.render import literal
from tests.conftest import ROOT
from tests.e2e.test_chat_browser import IDLE


def card(name: str) -> bytes:
    data = {"spec": "chara_card_v2", "data": {"name": name, "first_mes": "hi"}}
    return png_with_text(blank_png(), "chara", base64.b64encode(json.dumps(data).encode()))


@pytest.fixture(scope="module")
def hostile(other_site) -> str:
    """A name that is a remote image, an HTML image, bold text and a display formula at once; every URL
    in it points at the other local site, which records any request."""
    site = f"127.0.0.1:{other_site.server_address[1]}"
    return f"![t](https:{site}) <img src=https:{site}> **b** $$x^2$$ _e_ [l](https:{site})"


@pytest.fixture(scope="module")
def server(module_server, models_dir, tmp_path_factory, hostile):
    root = tmp_path_factory.mktemp("names")
    models = root / "models"
    shutil.copytree(models_dir / "parlour-micro", models / hostile)
    presets = root / "presets"
    shutil.copytree(ROOT / "presets", presets)
    (presets / f"{hostile}.yaml").write_text("temperature: 0.5\n")
    characters = root / "characters"
    shutil.copytree(ROOT / "characters", characters)
    return module_server("--models-dir", str(models), "--model", hostile, "--presets-dir", str(presets),
                         "--characters-dir", str(characters), models=models)


@pytest.fixture()
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.requests = []
    context.on("request", lambda request: page.requests.append(request.url))
    page.goto(server.url)
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    page.wait_for_function(IDLE)
    yield page
    context.close()


def shows_literally(page, selector: str, text: str) -> None:
    """The element shows `text` exactly, as text: nothing in it became an image, link, emphasis or formula."""
    element = page.locator(selector)
    element.get_by_text("**b**", exact=False).first.wait_for(timeout=60_000)
    assert text in " ".join(element.inner_text().split()), element.inner_text()
    assert element.locator("img, a, em, .katex, math, strong strong").count() == 0, element.inner_html()


def no_request_left(page, server, other_site) -> None:
    port = f":{other_site.server_address[1]}"
    assert not [url for url in page.requests if port in url], page.requests
    assert all(url.startswith(server.url) or url.startswith("data:") for url in page.requests), \
        [u for u in page.requests if not u.startswith(server.url)]
    assert other_site.hits == []


def test_model_name_in_the_header(page, server, other_site, hostile):
    shows_literally(page, "#header-model", hostile)
    no_request_left(page, server, other_site)


def test_imported_character_name_in_the_status_line(page, server, other_site, hostile, tmp_path):
    path = tmp_path / "card.png"
    path.write_bytes(card(hostile))
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#card-import input[type=file]", str(path))
    shows_literally(page, "#chat-status", f"Imported character {hostile}")
    no_request_left(page, server, other_site)


def test_an_error_quoting_a_name_is_text(page, server, other_site, hostile, tmp_path):
    """A card whose name cannot be a file name: the error (status line and warning toast) quotes it as text."""
    path = tmp_path / "card.png"
    path.write_bytes(card("a/b " + hostile))
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#card-import input[type=file]", str(path))
    status = page.locator("#chat-status")
    status.get_by_text("a/b").wait_for(timeout=60_000)
    assert "a/b ![t](https:" in status.inner_text(), status.inner_text()
    assert status.locator("img, a, em, .katex").count() == 0, status.inner_html()
    toasts = page.locator("[data-testid='toast-body']")
    toasts.first.wait_for(timeout=60_000)
    assert "a/b ![t](https:" in toasts.first.inner_text()
    assert toasts.locator("img, a, em, .katex").count() == 0
    no_request_left(page, server, other_site)


def test_preset_name_in_the_status_line(page, server, other_site, hostile):
    page.get_by_role("tab", name="Parameters").click()
    page.fill("#preset-dropdown input", hostile)
    page.press("#preset-dropdown input", "Enter")
    shows_literally(page, "#preset-status", f"Loaded preset {hostile}")
    no_request_left(page, server, other_site)


def test_imported_chat_metadata_in_the_version_label(page, server, other_site, hostile, tmp_path):
    chat = {"format": "parlour-chat", "version": 1, "title": hostile, "messages": [
        {"id": 1, "parent": None, "role": "user", "content": "hi", "meta": {}},
        {"id": 2, "parent": 1, "role": "assistant", "content": "hello",
         "meta": {"model": hostile, "seed": f"<img src=https:127.0.0.1:{other_site.server_address[1]}>",
                  "tokens": "**b**"}}]}
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(chat))
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#chat-import input[type=file]", str(path))
    # the reply's metadata is its version label's tooltip: an attribute, so text whatever it holds
    label = page.locator("#chatbot .msg-version").last
    label.wait_for()
    assert hostile in label.get_attribute("title") and "**b** tokens" in label.get_attribute("title")
    assert page.locator("#chatbot .message-content").locator("img, a, em, .katex, math").count() == 0
    # the title is a label of the chat list: text there as well
    assert any(hostile in label for label in page.locator("#chat-list label").all_inner_texts())
    no_request_left(page, server, other_site)


def test_literal_reads_back_as_written():
    from markdown_it import MarkdownIt

    for name in ("![t](https:tracker.example)", "<img src=x onerror=alert(1)>", "**b** _e_ `c` # h", "$$x$$ \\(y\\)",
                 "a\nb\r\nc", "[l](javascript:alert(1))", "&amp; &#33;"):
        html = MarkdownIt("commonmark").render(literal(name))
        assert "<img" not in html and "<a " not in html and "<em>" not in html and "<strong>" not in html, html
        assert "<code>" not in html and "<h1>" not in html
