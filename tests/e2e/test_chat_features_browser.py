"""Chat rendering and tools in a real browser: LaTeX, send-to-notebook, character avatars, reply footers.

One server process (micro model) serves every test in this file; each test opens its own page and
starts from a new chat, so the order of the tests does not matter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.e2e.test_chat_browser import IDLE, new_chat, open_page as open_chat_page, settle, users

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


# An extension whose footer counts the reply's tokens and tries to run script in the page.
FOOTER_PROBE = """
def reply_footer(stats, state):
    return (f"<strong>{stats['tokens']}</strong> probe tokens <img src=x onerror=alert('footer')>"
            "<script>alert('footer')</script>")
"""


def red_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (300, 300), (255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    home = tmp_path_factory.mktemp("features")
    (home / "presets").mkdir()
    (home / "presets" / "Short.yaml").write_text("max_new_tokens: 8\nban_eos_token: true\n")
    process = ServerProcess(["--user-data", str(home / "user_data"), "--settings", str(home / "settings.yaml"),
                             "--models-dir", str(models_dir), "--model", "parlour-micro",
                             "--presets-dir", str(home / "presets"), "--preset", "Short",
                             "--characters-dir", str(home / "characters"), "--extensions", "footer_probe", "hold_tokens"],
                            cwd=ROOT, log=home / "server.log")
    shutil.copytree(ROOT / "characters", home / "characters")
    (home / "characters" / "Painter.yaml").write_text("name: Painter\ngreeting: Hello, I paint.\ncontext: Paints.\n")
    (home / "characters" / "Painter.png").write_bytes(red_png())
    # hold_tokens pauses a reply while its `hold` file exists: a message can be sent while one is being written
    shutil.copytree(ROOT / "tests" / "fixtures" / "extensions" / "hold_tokens",
                    home / "user_data" / "extensions" / "hold_tokens")
    probe = home / "user_data" / "extensions" / "footer_probe"
    probe.mkdir(parents=True)
    (probe / "script.py").write_text(FOOTER_PROBE)
    try:
        process.wait_until(lambda h: h["model"] is not None)
        yield process
    finally:
        process.stop()


@pytest.fixture()
def hold(server):
    """The file that holds a reply mid-way while it exists; gone after the test whatever happens."""
    path = server.log.parent / "user_data" / "extensions" / "hold_tokens" / "hold"
    yield path
    path.unlink(missing_ok=True)


def open_page(browser, url: str):
    """The chat page (its waits are the browser fixture's: patient, for 2 busy cores)."""
    return open_chat_page(browser, url)


def dummy_reply(page, text: str) -> None:
    """Put `text` on screen as a reply without the model (the 'Send dummy reply' button)."""
    page.fill("#chat-input textarea", text)
    page.click("#dummy-reply")
    wait_for_bubble(page, "bot", text.split("$")[0].strip()[:12])


def wait_for_bubble(page, role: str, text: str) -> None:
    """Wait for a `role` ("user" or "bot") message holding `text`: the event's own result, where a count
    of bubbles taken before could come from a chat being replaced, and an idle check could pass before
    the event started."""
    page.wait_for_function("([role, t]) => [...document.querySelectorAll(`#chatbot [data-testid=${role}]`)]"
                           ".some(b => b.textContent.includes(t))", arg=[role, text])


def test_latex_renders_with_local_katex_and_stays_inert(browser, server):
    page = open_page(browser, server.url)
    outside: list[str] = []  # every request must stay on this server: no CDN
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:")) else outside.append(r.url))
    new_chat(page, server)
    dummy_reply(page, r"Euler: $e^{i\pi}+1=0$, and $$\int_0^1 x^2\,dx = \frac{1}{3}$$ "
                      r"costs $5 and $10. \(\href{javascript:alert(1)}{click}\)")
    bubble = page.locator("#chatbot [data-testid=bot]").last
    bubble.locator(".katex").first.wait_for()
    assert bubble.locator(".katex").count() == 3
    assert bubble.locator(".katex-display").count() == 1  # $$...$$ is display math
    assert bubble.locator(".katex-display .mfrac").count() == 1
    # KaTeX's own stylesheet and fonts (served by this server) are applied
    family = bubble.locator(".katex").first.evaluate("e => getComputedStyle(e).fontFamily")
    assert "KaTeX" in family
    text = bubble.inner_text()
    assert "costs $5 and $10." in text  # dollars in prose stay prose
    # \href needs KaTeX's `trust`, which stays off: no javascript link, nothing ran
    assert bubble.locator("a[href^='javascript' i]").count() == 0
    page.wait_for_function("() => document.fonts.status === 'loaded'")
    assert page.evaluate("() => window.__xss") == [] and page.dialogs == []
    assert outside == []
    page.close()


def test_send_to_notebook_puts_the_next_prompt_in_the_notebook_tab(browser, server):
    page = open_page(browser, server.url)
    new_chat(page, server)
    page.fill("#chat-input textarea", "earlier question")
    page.click("#dummy-message")
    wait_for_bubble(page, "user", "earlier question")  # that event also clears the input box: wait for it
    dummy_reply(page, "earlier answer")
    page.fill("#chat-input textarea", "the pending question")  # typed, not sent: Send would add it
    page.get_by_text("Prompt settings").click()
    page.click("#send-to-notebook")
    notebook = page.locator("#notebook-input textarea")
    notebook.wait_for(state="visible")  # the Notebook tab opened
    page.wait_for_function("() => document.querySelector('#notebook-input textarea').value.includes('pending')")
    prompt = notebook.input_value()
    # instruct mode with the model's own (ChatML) template: the whole conversation, then the reply's start
    assert prompt.index("<|im_start|>user\nearlier question<|im_end|>") < \
        prompt.index("<|im_start|>assistant\nearlier answer<|im_end|>") < \
        prompt.index("<|im_start|>user\nthe pending question<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert page.locator("#chat-input textarea").is_hidden()  # the Chat tab is no longer shown
    # the prompt is now the notebook's own text: it can be edited and generated from
    before = server.health()["requests"]
    page.click("#notebook-generate")
    settle(page, server, before + 1)
    assert notebook.input_value().startswith(prompt)
    page.close()


def pick_character(page, name: str) -> None:
    page.fill("#character input", name)
    page.press("#character input", "Enter")
    page.wait_for_function(IDLE)


def test_character_picture_is_the_bot_avatar(browser, server):
    page = open_page(browser, server.url)
    pick_character(page, "Painter")
    # the character's chat is open once its greeting shows (the wait that knows the switch has landed)
    wait_for_bubble(page, "bot", "Hello, I paint")
    avatar = page.locator("#chatbot .avatar-container img").first
    avatar.wait_for()
    src = avatar.get_attribute("src")
    assert src.startswith("data:image/png;base64,")  # inline: no file route to the characters folder
    # the browser decoded it: the thumbnail of the 300x300 picture, red
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 128", arg=avatar.element_handle())
    # a character without a picture has no avatar
    pick_character(page, "Assistant")
    page.wait_for_function("() => ![...document.querySelectorAll('#chatbot [data-testid=bot]')]"
                           ".some((b) => b.innerText.includes('Hello, I paint'))")
    dummy_reply(page, "a plain reply")
    page.wait_for_function("() => !document.querySelector('#chatbot .avatar-container img')")
    page.close()


def test_extension_reply_footer_shows_under_the_reply_sanitized_and_saved(browser, server):
    page = open_page(browser, server.url)
    new_chat(page, server)
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "hello")
    page.click("#send")
    settle(page, server, before + 1)
    footer = page.locator("#chatbot [data-testid=bot] .reply-footer").last
    footer.wait_for()
    assert footer.inner_text().strip() == "8 probe tokens"  # the Short preset: 8 tokens, eos banned
    assert footer.locator("strong").inner_text() == "8"
    assert footer.locator("img, script").count() == 0
    # it is part of the saved reply: a reload shows it again
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.locator("#chatbot [data-testid=bot] .reply-footer").last.wait_for()
    assert page.evaluate("() => window.__xss") == [] and page.dialogs == []
    page.close()


def test_a_message_sent_while_a_reply_is_written_goes_out_when_it_ends(browser, server, hold):
    page = open_page(browser, server.url)
    new_chat(page, server)
    before = server.health()["requests"]
    hold.touch()
    page.fill("#chat-input textarea", "the first message")
    page.click("#send")
    server.wait_until(lambda h: h["active"] == 1)  # its reply is held mid-way
    wait_for_bubble(page, "user", "the first message")
    page.fill("#chat-input textarea", "the second message")
    page.press("#chat-input textarea", "Enter")
    page.click("#send")  # pressed twice: still one message
    assert page.locator("#chat-input textarea").input_value() == "the second message"  # waiting its turn
    hold.unlink()
    settle(page, server, before + 2)
    wait_for_bubble(page, "user", "the second message")
    page.wait_for_function("() => document.querySelector('#chat-input textarea').value === ''")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot] .reply-footer').length === 2")
    assert [u.split("\n")[0] for u in users(page)] == ["the first message", "the second message"]
    assert server.health()["requests"] == before + 2
    page.close()
