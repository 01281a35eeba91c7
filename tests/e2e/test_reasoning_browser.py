"""A reasoning turn in a real browser on the demo model: the thought is a collapsed block above the
answer, it comes back after a reload, and the next prompt does not carry it."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import DEMO_DIR
from tests.e2e.test_chat_browser import new_chat, open_page, send

pytestmark = [pytest.mark.browser, pytest.mark.demo]
BLOCK = "#chatbot [data-testid=bot] details.reasoning"


@pytest.fixture(scope="module")
def server(module_server, tmp_path_factory, models_dir):
    """The demo model (the default) and the micro Llama, both kept loaded: one server for the file."""
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    home = tmp_path_factory.mktemp("reasoning")
    shutil.copytree(DEMO_DIR, home / "models" / "parlour-demo")
    shutil.copytree(models_dir / "parlour-micro", home / "models" / "parlour-micro")
    (home / "presets").mkdir()
    (home / "presets" / "Greedy.yaml").write_text("temperature: 0\nmax_new_tokens: 80\n")  # the demo's own best answer
    return module_server("--presets-dir", str(home / "presets"), "--preset", "Greedy", "--max-loaded-models", "2",
                         models=home / "models", model="parlour-demo")


def test_the_thought_is_a_collapsed_block_kept_out_of_the_next_prompt(browser, server):
    page = open_page(browser, server.url)
    page.wait_for_selector("#chat-thinking", state="visible")  # the demo's template reads enable_thinking
    send(page, server, "Hello")
    page.wait_for_selector(BLOCK)
    block = page.locator(BLOCK).last
    assert block.evaluate("el => el.open") is False  # collapsed once the answer started
    assert block.locator("summary").inner_text().startswith("Thought")
    thought = block.locator(".reasoning-body").evaluate("el => el.textContent").strip()
    assert "greet" in thought
    bubble = page.locator("#chatbot [data-testid=bot] .message-content").last
    answer = bubble.evaluate("el => el.textContent").replace(block.evaluate("el => el.textContent"), "").strip()
    assert answer.startswith("Hello") and thought not in answer
    block.locator("summary").click()  # the user can open it
    assert block.evaluate("el => el.open") is True

    # the next prompt (Show prompt) has the answer but not the thought
    page.get_by_text("Prompt settings").click()
    page.click("#show-prompt")
    page.wait_for_function("() => (document.querySelector('#prompt-preview .cm-content') || {}).innerText")
    prompt = page.locator("#prompt-preview .cm-content").inner_text()
    assert "Hello" in prompt and thought not in prompt

    # reopened from the store: the block is still there
    page.reload()
    page.wait_for_selector(BLOCK)
    again = page.locator(BLOCK).last.locator(".reasoning-body").evaluate("el => el.textContent").strip()
    assert again == thought


def test_switching_thinking_off_answers_without_a_block(browser, server):
    page = open_page(browser, server.url)
    new_chat(page, server)  # the page opens the newest chat: the test before left a thought there
    page.wait_for_selector("#chat-thinking", state="visible")
    page.locator("#chat-thinking input").uncheck()
    send(page, server, "Hello")
    assert page.locator("#chatbot [data-testid=bot]").count() >= 1
    assert page.locator(BLOCK).count() == 0


def pick_model(page, name: str) -> None:
    page.locator("#chat-model input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function("(n) => document.querySelector('#chat-model input').value === n", arg=name)


def test_the_thinking_switch_follows_the_chats_model(browser, server):
    """Shown for a chat on the demo model (its template reads enable_thinking), hidden for one on the micro
    Llama (it does not), whichever model is the default."""
    page = open_page(browser, server.url)
    new_chat(page, server)
    page.wait_for_selector("#chat-thinking", state="visible")
    pick_model(page, "parlour-micro")
    page.wait_for_selector("#chat-thinking", state="hidden")
    send(page, server, "hi")  # the micro model loads for this chat, beside the demo
    assert server.health()["loaded_models"] == 2 and server.health()["model"] == "parlour-demo"
    assert not page.locator("#chat-thinking").is_visible()
    pick_model(page, "parlour-demo")
    page.wait_for_selector("#chat-thinking", state="visible")
