"""The Notebook tab in a real browser: Undo and Regenerate, saved prompts, the text kept across a page
reload, and no tokenizer error when a slider moves over an empty notebook."""

from __future__ import annotations

import pytest

from tests.conftest import serving
from tests.e2e.test_chat_browser import IDLE

pytestmark = pytest.mark.browser
TEXT = "#notebook-input textarea"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-home")


@pytest.fixture(scope="module")
def server(home, models_dir):
    with serving(home, "--models-dir", str(models_dir), "--model", "parlour-micro", "--max-loaded-models", "2",
                 short_preset=12) as process:
        yield process


def notebook(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    page.get_by_role("tab", name="Notebook").click()
    page.locator(TEXT).wait_for()
    return page


def generate(page, server, button: str) -> None:
    before = server.health()["requests"]
    page.click(button)
    server.wait_until(lambda h: h["requests"] > before and h["active"] == 0)
    page.wait_for_function(IDLE)
    page.wait_for_function("() => /\\d+ tokens/.test(document.querySelector('#notebook-status').innerText)")


def saved_text(home) -> str:
    path = home / "user_data" / "notebook" / "local.txt"
    return path.read_text() if path.exists() else ""


def test_an_empty_notebook_and_a_moved_slider_show_no_error(browser, server):
    page = notebook(browser, server.url)
    assert page.locator(TEXT).input_value() == ""
    page.get_by_role("tab", name="Parameters").click()
    box = page.locator("#param-top_k input[type='number']")
    box.fill("7")
    box.press("Enter")
    page.get_by_role("tab", name="Notebook").click()
    page.wait_for_function("() => document.querySelector('#inspect-status').innerText.includes('Write some text')")
    page.wait_for_function(IDLE)
    assert page.locator("[data-testid='toast-body'].error").count() == 0
    assert "text_target" not in page.inner_text("#inspect-status")
    page.close()


def reload_notebook(page) -> None:
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    page.get_by_role("tab", name="Notebook").click()


def test_undo_regenerate_saved_prompts_and_the_text_after_a_reload(browser, server, home):
    start = "def add(a, b):"
    page = notebook(browser, server.url)
    page.locator(TEXT).fill(start)
    generate(page, server, "#notebook-generate")
    first = page.locator(TEXT).input_value()
    assert first.startswith(start) and len(first) > len(start)
    page.click("#notebook-undo")
    page.wait_for_function("(t) => document.querySelector('#notebook-input textarea').value === t", arg=start)
    generate(page, server, "#notebook-regenerate")
    again = page.locator(TEXT).input_value()
    assert again.startswith(start) and len(again) > len(start)
    # Regenerate starts from the text before the last generation, not from its result
    generate(page, server, "#notebook-regenerate")
    third = page.locator(TEXT).input_value()
    assert third.startswith(start) and not (third.startswith(again) and len(third) > len(again))
    server.wait_until(lambda h: saved_text(home) == third, timeout=120)  # autosaved after the generation

    # a saved prompt: a text file in user_data/prompts, back from the dropdown after a reload
    page.fill("#notebook-prompt-name textarea, #notebook-prompt-name input", "adder")
    page.click("#notebook-prompt-save")
    page.wait_for_function("() => document.querySelector('#notebook-status').innerText.includes('Saved prompt adder')")
    assert (home / "user_data" / "prompts" / "adder.txt").read_text() == third

    # typing is saved as it happens: a reload brings the text back
    page.locator(TEXT).fill("")
    page.locator(TEXT).press_sequentially("my own words, kept")  # typed, key by key
    server.wait_until(lambda h: saved_text(home) == "my own words, kept", timeout=120)
    reload_notebook(page)
    page.wait_for_function("() => document.querySelector('#notebook-input textarea').value === 'my own words, kept'")
    page.locator("#notebook-prompt input").click()
    page.get_by_role("option", name="adder", exact=True).click()
    page.wait_for_function("(t) => document.querySelector('#notebook-input textarea').value === t", arg=third)

    # delete the prompt (the browser asks first)
    page.once("dialog", lambda d: d.accept())
    page.click("#notebook-prompt-delete")
    page.wait_for_function("() => document.querySelector('#notebook-status').innerText.includes('Deleted prompt')")
    assert not (home / "user_data" / "prompts" / "adder.txt").exists()
    page.close()


def test_the_notebook_continues_with_its_own_model_and_the_chat_keeps_its_own(browser, server, home):
    page = notebook(browser, server.url)
    # the page load puts the user's saved text back: typed before it arrives, the new text would be replaced
    page.wait_for_function("(t) => document.querySelector('#notebook-input textarea').value === t",
                           arg=saved_text(home))
    page.fill(TEXT, "Once upon a time")
    assert page.locator("#notebook-model input").input_value() == "parlour-micro"  # the default model at first
    page.locator("#notebook-model input").click()
    page.get_by_role("option", name="parlour-micro-gpt2", exact=True).click()
    page.click("#notebook-count")  # reading tokens never loads a model
    page.wait_for_function("() => document.querySelector('#notebook-status').innerText"
                           ".includes('parlour-micro-gpt2 is not loaded yet')")
    assert server.health()["loaded_models"] == 1
    generate(page, server, "#notebook-generate")
    assert "parlour-micro-gpt2" in page.inner_text("#notebook-status")  # the status names the model that wrote it
    assert page.input_value(TEXT).startswith("Once upon a time") and len(page.input_value(TEXT)) > len("Once upon a time")
    health = server.health()
    assert health["loaded_models"] == 2 and health["model"] == "parlour-micro"  # loaded beside the chat's model
    page.click("#notebook-count")
    page.wait_for_function("() => /^\\d+ tokens \\(context/.test(document.querySelector('#notebook-status').innerText)")
    page.get_by_role("tab", name="Chat").click()
    assert page.locator("#chat-model input").input_value() == "parlour-micro"
    page.close()


def test_text_typed_before_the_page_load_answers_is_kept(browser, server, home):
    """A loaded machine can answer the page load (which brings the saved draft) after the user has begun to
    type: the draft fills an empty box but never replaces typed text."""
    (home / "user_data" / "notebook").mkdir(parents=True, exist_ok=True)
    (home / "user_data" / "notebook" / "local.txt").write_text("an older draft")
    (home / "user_data" / "prompts").mkdir(parents=True, exist_ok=True)
    (home / "user_data" / "prompts" / "late-arrival.txt").write_text("x")  # listed only by the page load
    page = browser.new_page()
    held, released = [], []

    def hold(route):  # every event waits until the user has typed
        route.continue_() if released else held.append(route)

    page.route("**/queue/join*", hold)
    page.goto(server.url)
    page.get_by_role("tab", name="Notebook").click()
    page.locator(TEXT).fill("typed at once")
    page.wait_for_function("() => document.querySelector('#notebook-input textarea').value === 'typed at once'")
    assert held, "the page load was not sent"
    released.append(True)
    for route in held:
        route.continue_()
    page.locator("#notebook-prompt input").click()
    page.get_by_role("option", name="late-arrival", exact=True).wait_for()  # the page load has answered
    page.keyboard.press("Escape")
    page.wait_for_function(IDLE)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    assert page.locator(TEXT).input_value() == "typed at once"
    server.wait_until(lambda h: saved_text(home) == "typed at once", timeout=120)
    page.close()
