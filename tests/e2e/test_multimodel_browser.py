"""Several models in the UI, in headless Chromium against a real server: load a second model beside the
first, switch a chat to it, reload the page and find the chat still on it; a download from a local fake
Hub with its progress shown while a chat goes on, then the new model in the dropdown."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_chat_browser import bots, open_page, settle
from tests.e2e.test_parameters_browser import assert_no_error_toast, open_tab
from tests.fake_hub import FakeHub, model_repo

pytestmark = pytest.mark.browser
LLAMA, GPT2 = "parlour-micro", "parlour-micro-gpt2"


@pytest.fixture()
def presets(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "Short.yaml").write_text("max_new_tokens: 12\nban_eos_token: true\ntemperature: 0\n")
    return folder


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def send(page, server, text: str, requests: int) -> None:
    page.fill("#chat-input textarea", text)
    page.keyboard.press("Enter")
    settle(page, server, requests)
    page.wait_for_function(f"() => document.querySelectorAll('#chatbot [data-testid=bot]').length >= {requests}")


def states(server) -> dict:
    return httpx.get(server.url + "/v1/internal/models", timeout=30).json()["models"]


def test_a_second_model_loads_beside_the_first_and_a_chat_keeps_its_model(browser, start_server, models_dir,
                                                                          presets):
    server = start_server("--models-dir", str(models_dir), "--model", LLAMA, "--max-loaded-models", "2",
                          "--presets-dir", str(presets), "--preset", "Short")
    page = open_page(browser, server.url)
    send(page, server, "Hello there", requests=1)  # a chat on the first model
    assert page.locator("#chat-model input").input_value() == LLAMA
    page.locator("#header-model").get_by_text(f"{LLAMA} (transformers").wait_for()

    open_tab(page, "Model")
    choose(page, "model-dropdown", GPT2)
    page.click("#model-load")
    page.locator("#model-status").get_by_text("loaded in").wait_for()
    page.wait_for_function(f"() => document.querySelector('#loaded-models').innerText.includes('{GPT2}')")
    shown = page.locator("#loaded-models").inner_text()
    assert shown.count(f"{LLAMA}\n") == 1 and shown.count(GPT2) == 1  # the first one is still loaded
    seen = states(server)
    assert seen[LLAMA]["state"] == seen[GPT2]["state"] == "loaded" and seen[LLAMA]["evictions"] == 0
    assert seen[LLAMA]["memory_mib"] > 0 and seen[GPT2]["memory_mib"] > 0

    open_tab(page, "Chat")
    assert page.locator("#chat-model input").input_value() == LLAMA  # the open chat keeps its own model
    choose(page, "chat-model", GPT2)
    page.locator("#header-model").get_by_text(f"{GPT2} (transformers").wait_for()
    send(page, server, "And you?", requests=2)
    # the reply's metadata (its version label's tooltip): GPT-2 wrote it
    page.wait_for_function("(name) => { const labels = document.querySelectorAll('#chatbot .msg-version'); "
                           "return labels.length > 0 && labels[labels.length - 1].title.includes(name); }", arg=GPT2)
    assert len(bots(page)) == 2

    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(f"() => document.querySelector('#chat-model input').value === '{GPT2}'")
    page.locator("#header-model").get_by_text(f"{GPT2} (transformers").wait_for()
    assert len(bots(page)) == 2  # the same chat, reopened
    assert_no_error_toast(page)

    # After Unload the header no longer names a loaded model for this chat
    open_tab(page, "Model")
    choose(page, "model-dropdown", GPT2)
    page.click("#model-unload")
    page.locator("#header-model").get_by_text(f"No model loaded for this chat: {GPT2} loads with the next message").wait_for()
    assert states(server)[GPT2]["state"] == "available"
    page.close()


def test_a_download_shows_progress_while_a_chat_answers_then_joins_the_list(browser, start_server, models_dir,
                                                                            micro_path, presets, monkeypatch,
                                                                            tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(models_dir / LLAMA, models / LLAMA)
    hub = FakeHub({"tester/tiny": model_repo(micro_path, extra_mib=24)})
    hub.hold("notes.txt")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the server process inherits it
    try:
        server = start_server("--models-dir", str(models), "--model", LLAMA, "--presets-dir", str(presets),
                              "--preset", "Short")
        page = open_page(browser, server.url)
        open_tab(page, "Model")
        page.get_by_text("Download from Hugging Face").click()
        page.fill("#download-repo textarea, #download-repo input", "tester/tiny")
        page.click("#download-run")
        hub.halfway.wait(timeout=300)
        # the progress bar is shown part-way (the transfer is held halfway by the fake Hub)
        page.wait_for_function("() => { const t = document.querySelector('#download-progress').innerText;"
                               " return /\\b([1-9]\\d?)%/.test(t) && t.includes('tester/tiny'); }", timeout=300_000)
        assert page.locator("#download-progress progress").count() == 1
        assert server.health()["downloads_running"]

        open_tab(page, "Chat")  # the chat answers while the download runs
        send(page, server, "Hello there", requests=1)
        assert bots(page)[-1].strip()
        assert server.health()["downloads_running"]

        hub.release()
        open_tab(page, "Model")
        page.locator("#download-status").get_by_text("tester/tiny:").wait_for(timeout=300_000)
        assert "✅" in page.locator("#download-status").inner_text()
        page.locator("#model-dropdown input").click()
        page.get_by_role("option", name="tester_tiny", exact=True).wait_for()  # listed, no restart
        assert_no_error_toast(page)
        page.close()
    finally:
        hub.close()
