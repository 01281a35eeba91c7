"""The rough edges a newcomer hit, each in a real browser: the Copy button on code blocks can be seen and
clicked; a model that cannot load says why in one line; a symbolic link in models/ is named with what to
do; the header stops naming the model after Unload; the Refresh buttons draw a shipped icon; temperature
sliders reach 5 as presets may; "Saved preset" stays; the perplexity plot draws a bar for one result,
from zero; the default character's prompt reads well."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import serving
from tests.e2e.test_chat_browser import IDLE

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def home(tmp_path_factory, micro_path):
    home = tmp_path_factory.mktemp("edges")
    models = home / "models"
    models.mkdir()
    shutil.copytree(micro_path, models / "parlour-micro")
    broken = models / "broken"  # a config.json that huggingface_hub's checks reject
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    (broken / "model.safetensors").write_bytes(b"unused")
    shutil.copytree(micro_path, home / "elsewhere" / "big-model")
    (models / "big").symlink_to(home / "elsewhere" / "big-model", target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def server(home):
    with serving(home, "--models-dir", str(home / "models"), "--model", "parlour-micro", short_preset=8) as process:
        yield process


def open_page(browser, url: str, **context):
    page = browser.new_context(**context).new_page()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    return page


def test_the_copy_button_on_a_code_block_is_on_top_and_copies(browser, server):
    page = open_page(browser, server.url, permissions=["clipboard-read", "clipboard-write"])
    page.fill("#chat-input textarea", "Here:\n\n```python\nprint('ahoy')\n```")
    page.click("#dummy-reply")  # a reply written by hand: no model needed for a code block
    button = page.locator("#chatbot [data-testid=bot] button.copy-code")
    button.wait_for()
    # what a click at the button's centre reaches is the button itself, not the <pre> painted over it
    assert button.evaluate("(b) => { b.scrollIntoView({block: 'center'}); const r = b.getBoundingClientRect();"
                           " const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);"
                           " return Boolean(hit) && b.contains(hit) && getComputedStyle(b).visibility === 'visible'"
                           " && r.width > 0 && r.height > 0; }")
    button.click()
    page.wait_for_function("() => navigator.clipboard.readText().then((t) => t.trim() === \"print('ahoy')\")")
    page.context.close()


def test_model_tab_failures_links_unload_and_icons(browser, server, home):
    page = open_page(browser, server.url)
    for tab, selector in (("Chat", "#refresh-characters"), ("Parameters", "#preset-refresh"),
                          ("Model", "#model-refresh")):  # an icon file that ships with Parlour, drawn
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_function("(s) => { const i = document.querySelector(`${s} img`);"
                               " return Boolean(i) && i.complete && i.naturalWidth > 0; }", arg=selector)
    links = page.inner_text("#model-links")
    assert "big" in links and str(home / "elsewhere" / "big-model") in links and "--models-dir" in links
    page.click("#model-dropdown input")
    assert page.get_by_role("option", name="big").count() == 0  # not listed: the link is not followed
    page.get_by_role("option", name="broken").click()
    page.click("#model-load")
    page.wait_for_function("() => document.querySelector('#model-status').innerText.includes('could not load')")
    line = page.inner_text("#model-status").strip()
    assert "\n" not in line and "vocab_size" in line and "still loaded: parlour-micro" in line, line
    assert server.health()["model"] == "parlour-micro"
    assert "parlour-micro" in page.inner_text("#header-model")
    page.click("#model-unload")
    server.wait_until(lambda h: h["model"] is None)
    # the header names the open chat's model, now as not loaded (it loads again with the next message)
    page.wait_for_function("() => { const t = document.querySelector('#header-model').innerText;"
                           " return !t.includes('parlour-micro (') && /not loaded|No model loaded|loads with/.test(t); }")
    page.context.close()


def test_parameters_evaluate_and_the_default_prompt(browser, server):
    page = open_page(browser, server.url)
    if server.health()["model"] is None:  # the test before unloaded it
        page.get_by_role("tab", name="Model").click()
        page.click("#model-dropdown input")
        page.get_by_role("option", name="parlour-micro").click()
        page.click("#model-load")
        server.wait_until(lambda h: h["model"] == "parlour-micro")
        page.wait_for_function(IDLE)
    # the default character's context reads well in the prompt
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("Prompt settings").click()
    page.fill("#chat-input textarea", "hi")
    page.click("#show-prompt")
    page.wait_for_function("() => document.querySelector('#prompt-preview').innerText.includes('hi')")
    prompt = page.inner_text("#prompt-preview")
    assert "Assistant" in page.input_value("#character input") and "You's" not in prompt and "helpful" in prompt
    # temperature sliders go to 5, as a preset may
    page.get_by_role("tab", name="Parameters").click()
    for name in ("temperature", "dynatemp_low", "dynatemp_high"):
        assert page.get_attribute(f"#param-{name} input[type=range]", "max") == "5", name
    # "Saved preset" stays once every event it started is over
    page.fill("#preset-save-name textarea, #preset-save-name input", "Mine")
    page.click("#preset-save")
    page.wait_for_function("() => document.querySelector('#preset-status').innerText.includes('Saved preset')")
    page.wait_for_function(IDLE)
    assert "Saved preset" in page.inner_text("#preset-status")
    # one perplexity result draws one bar, on an axis from zero
    page.get_by_role("tab", name="Model").click()
    page.get_by_role("tab", name="Evaluate").click()
    page.fill("#ppl-text textarea", "The cat sat on the mat. " * 20)
    page.click("#ppl-run")
    page.wait_for_function("() => document.querySelector('#ppl-status').innerText.includes('perplexity')")
    page.wait_for_selector("#ppl-plot g.mark-rect path")
    assert page.locator("#ppl-plot g.mark-rect path").count() == 1
    axis = page.locator("#ppl-plot [aria-label^='Y-axis']").get_attribute("aria-label")
    assert "values from 0 " in axis, axis
    page.context.close()



# Ask for a frame from a script named like Gradio's status tracker (the name is what modules/ui/frames.js
# looks for in the caller's stack) or like any other: the id it got (negative: a timer stands in) and when
# the callback ran.
FRAME_FROM = """(file) => new Promise((done) => {
    const ask = new Function('callback', 'return requestAnimationFrame(callback)\\n//# sourceURL=' + file);
    const start = performance.now();
    const id = ask(() => done([id, performance.now() - start]));
})"""


def test_a_page_at_rest_draws_no_frames_for_gradios_status_timer(browser, server):
    """Gradio's status tracker timer (leaked by its loading screen) drew 60 frames a second on an idle page."""
    page = open_page(browser, server.url)
    # the script runs first in the page, before Gradio's own: what Gradio's modules keep is the wrapped one
    assert "statustracker" in page.evaluate("() => document.head.firstElementChild.textContent")
    tracker, waited = page.evaluate(FRAME_FROM, "assets/statustracker-probe.js")
    assert tracker < 0 and waited >= 450  # a half-second timer instead of the next frame
    assert page.evaluate(FRAME_FROM, "assets/another-module.js")[0] > 0  # every other script gets frames
    # while a tracker waits, its frames are frames again (its timer shows the elapsed time as before)
    page.evaluate("() => document.querySelector('[data-testid=status-tracker]').classList.add('pending')")
    assert page.evaluate(FRAME_FROM, "assets/statustracker-probe.js")[0] > 0
    page.context.close()
