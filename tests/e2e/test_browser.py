"""The UI in headless Chromium against a real server process on the micro models."""

import pytest

pytestmark = pytest.mark.browser

BOT = '[data-testid="bot"]'
IDLE = "() => !document.querySelector('#chatbot .generating, #chatbot .pending, #chat-status .generating')"


def bot_text(page) -> str:
    bubbles = page.locator(BOT)
    return bubbles.last.inner_text() if bubbles.count() else ""


@pytest.fixture()
def long_presets(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "Long.yaml").write_text("max_new_tokens: 1800\nban_eos_token: true\n")
    (folder / "Greedy.yaml").write_text("temperature: 0.0\nmax_new_tokens: 24\nban_eos_token: true\n")
    return folder


def test_send_with_enter_streams_a_reply(browser, start_server, models_dir, long_presets):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--presets-dir", str(long_presets), "--preset", "Greedy")
    page = browser.new_page()
    page.goto(server.url)
    page.fill("#chat-input textarea", "Hello there")
    page.keyboard.press("Enter")
    page.wait_for_selector(BOT)
    page.wait_for_function(IDLE)
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('24 tokens')")
    assert page.locator('[data-testid="user"]').last.inner_text().strip() == "Hello there"
    assert bot_text(page).strip()
    assert page.input_value("#chat-input textarea") == ""
    assert server.health()["requests"] == 1
    page.close()


def test_stop_halts_the_reply_and_the_model_thread(browser, start_server, models_dir, long_presets):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--presets-dir", str(long_presets), "--preset", "Long")
    page = browser.new_page()
    page.goto(server.url)
    page.fill("#chat-input textarea", "Tell me everything")
    page.click("#send")
    page.wait_for_function(f"() => {{ const b = document.querySelectorAll('{BOT}'); "
                           "return b.length && b[b.length - 1].innerText.trim().length > 0; }")
    page.click("#stop")
    stopped = server.wait_until(lambda h: h["active"] == 0 and h["requests"] == 1)
    assert stopped["tokens"] < 1800  # it did not run to max_new_tokens
    page.wait_for_function(IDLE)
    shown = bot_text(page)
    assert shown.strip()
    # The model thread is gone: the server's token counter does not move any more, and a new
    # request is served at once (it would queue behind a still-running one).
    page.fill("#chat-input textarea", "again")
    page.click("#send")
    server.wait_until(lambda h: h["requests"] == 2)
    assert server.health()["tokens"] >= stopped["tokens"]
    page.click("#stop")
    server.wait_until(lambda h: h["active"] == 0)
    page.close()


def test_load_a_model_from_the_model_tab(browser, start_server, models_dir):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro")
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Model").click()
    page.click("#model-dropdown input")
    page.get_by_role("option", name="parlour-micro-gpt2").click()
    page.click("#model-load")
    page.wait_for_function("() => document.querySelector('#model-status').innerText.includes('gpt2')")
    assert server.health()["model"] == "parlour-micro-gpt2"
    page.close()
