"""The UI in headless Chromium against a real server process on the micro models."""

import pytest

from tests.e2e.test_chat_browser import login

pytestmark = pytest.mark.browser

BOT = '[data-testid="bot"]'
IDLE = "() => !document.querySelector('#chatbot .generating, #chatbot .pending, #chat-status .generating')"
# the newest reply has words of its own (before its first token it shows the "Waiting for the model" line)
WRITING = (f"() => {{ const b = document.querySelectorAll('{BOT}'); const last = b[b.length - 1]; "
           "return !!last && !last.querySelector('.waiting-indicator') && last.innerText.trim().length > 0; }")


def bot_text(page) -> str:
    bubbles = page.locator(BOT)
    return bubbles.last.inner_text() if bubbles.count() else ""


# One server for the first three tests (a server start is ~15 s of CPU): each logs in as its own user, so
# each starts on an empty chat list whatever ran before it, and counts the server's requests from its start.
USERS = ("enter", "stopper", "hasty")


@pytest.fixture(scope="module")
def server(module_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    (folder / "Long.yaml").write_text("max_new_tokens: 1800\nban_eos_token: true\n")
    (folder / "Greedy.yaml").write_text("temperature: 0.0\nmax_new_tokens: 24\nban_eos_token: true\n")
    return module_server("--presets-dir", str(folder), "--preset", "Long",
                         "--auth", ",".join(f"{user}:pw-{user}" for user in USERS))


def own_page(browser, server, user: str):
    assert user in USERS
    return login(browser, server.url, user, f"pw-{user}")


def test_send_with_enter_streams_a_reply(browser, server):
    page = own_page(browser, server, "enter")
    # the server starts with Long (for the Stop test): this page picks Greedy (the status below counts its 24 tokens)
    page.get_by_role("tab", name="Parameters").click()
    page.locator("#preset-dropdown input").click()
    page.get_by_role("option", name="Greedy", exact=True).click()
    page.get_by_text("Loaded preset Greedy").wait_for()
    page.get_by_role("tab", name="Chat").click()
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "Hello there")
    page.keyboard.press("Enter")
    page.wait_for_selector(BOT)
    page.wait_for_function(IDLE)
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('24 tokens')")
    assert page.locator('[data-testid="user"]').last.inner_text().strip() == "Hello there"
    assert bot_text(page).strip()
    assert page.input_value("#chat-input textarea") == ""
    assert server.health()["requests"] == before + 1
    page.close()


def test_stop_halts_the_reply_and_the_model_thread(browser, server):
    page = own_page(browser, server, "stopper")  # the Long preset: 1800 tokens
    before = server.health()
    page.fill("#chat-input textarea", "Tell me everything")
    page.click("#send")
    page.wait_for_function(WRITING)
    page.click("#stop")
    stopped = server.wait_until(lambda h: h["active"] == 0 and h["requests"] == before["requests"] + 1)
    assert stopped["tokens"] - before["tokens"] < 1800  # it did not run to max_new_tokens
    page.wait_for_function(IDLE)
    shown = bot_text(page)
    assert shown.strip()
    # The model thread is gone: the server's token counter does not move any more, and a new
    # request is served at once (it would queue behind a still-running one).
    page.fill("#chat-input textarea", "again")
    page.click("#send")
    server.wait_until(lambda h: h["requests"] == before["requests"] + 2)
    assert server.health()["tokens"] >= stopped["tokens"]
    page.click("#stop")
    server.wait_until(lambda h: h["active"] == 0)
    page.close()


def test_a_message_sent_the_moment_after_stop_goes_out(browser, server):
    # Stop, then Send at once, before the stopped reply's end has reached the page: the message waits
    # for that end and goes out (it was lost while Stop was a Gradio cancel: the page held the Send until
    # the cancelled event ended, and a cancelled event's end never released it)
    page = own_page(browser, server, "hasty")
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "Tell me everything")
    page.click("#send")
    page.wait_for_function(WRITING)
    page.click("#stop")
    page.fill("#chat-input textarea", "And now this")
    page.click("#send")
    server.wait_until(lambda h: h["requests"] == before + 2)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=user]').length == 2")
    assert [t.strip() for t in page.locator('[data-testid="user"]').all_inner_texts()] == \
        ["Tell me everything", "And now this"]
    page.wait_for_function("() => document.querySelectorAll('[data-testid=bot]').length == 2")
    page.wait_for_function(WRITING)
    page.click("#stop")
    page.wait_for_function("() => /^Stopped after \\d+ tokens\\./.test(document.querySelector('#chat-status')"
                           ".innerText.trim())")
    server.wait_until(lambda h: h["active"] == 0)
    assert page.locator(BOT).count() == 2  # both replies are there, each ended where it was stopped
    page.close()


def test_load_a_model_from_the_model_tab(browser, start_server, models_dir):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro")
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Model").click()
    page.click("#model-dropdown input")
    page.get_by_role("option", name="parlour-micro-gpt2").click()
    page.click("#model-load")
    page.wait_for_function("() => { const t = document.querySelector('#model-status').innerText;"
                           " return t.includes('gpt2') && t.includes('loaded in'); }")
    assert server.health()["model"] == "parlour-micro-gpt2"
    page.close()
