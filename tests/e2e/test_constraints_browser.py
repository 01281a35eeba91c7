"""The Parameters tab's "Constrain output" group in a real browser: pick the JSON grammar file, see a broken edit
refused under the box while the good grammar stays in use, chat (and write in the Notebook), and the reply parses
as JSON."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import DEMO_DIR

pytestmark = [pytest.mark.browser, pytest.mark.demo]

IDLE = "() => !document.querySelector('[data-testid=status-tracker].generating, [data-testid=status-tracker].pending')"


def held_grammar(grammar: str, text: str, cut: bool) -> bool:
    """Assert `text` is what `grammar` allows: whole JSON, or (`cut`: the reply ended at a length limit)
    a start of it that the grammar allows byte for byte. Whether it is whole."""
    from modules.constraints import Compiler, constraint_of
    from modules.presets import Preset

    matcher = Compiler.generic().matcher(constraint_of(Preset(grammar_string=grammar)))
    assert matcher.consume_tokens(list(text.encode())) and not matcher.is_error(), text
    if matcher.is_accepting():
        assert isinstance(json.loads(text), dict), text
        return True
    assert cut, f"neither whole JSON nor cut at a length limit: {text!r}"
    return False


def test_pick_the_json_grammar_and_the_chat_reply_is_json(browser, start_server, tmp_path):
    # the trained demo model: it thinks first, then the grammar holds from the end of its thought (whether its
    # strings end before its context does depends on its weights: see held_grammar)
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    models = tmp_path / "models"
    shutil.copytree(DEMO_DIR, models / DEMO_DIR.name)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "Seeded.yaml").write_text("seed: 1\ntemperature: 0.7\nmax_new_tokens: 600\n")
    server = start_server("--models-dir", str(models), "--model", DEMO_DIR.name, "--presets-dir", str(presets),
                          "--preset", "Seeded")
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)

    page.get_by_role("tab", name="Parameters").click()
    page.locator("#grammar-file input").click()
    page.get_by_role("option", name="json.gbnf", exact=True).click()
    status = page.locator("#constraint-grammar_string-status")
    status.get_by_text("in use: the reply follows this GBNF grammar").wait_for()
    assert page.locator("#constraint-grammar_string textarea").input_value().startswith("# A JSON object")

    # a broken edit: the reason under the box, and the JSON grammar stays in use
    box = page.locator("#constraint-grammar_string textarea")
    box.fill('root ::= "{" [a-')
    box.blur()
    status.get_by_text("the last good setting stays in use").wait_for()
    assert "line 1, column" in status.inner_text()
    # and a second constraint while one is in use is refused the same way
    schema = page.locator("#constraint-json_schema textarea")
    schema.fill('{"type": "object"}')
    schema.blur()
    page.locator("#constraint-json_schema-status").get_by_text("the grammar is in use: clear it first").wait_for()
    # saved with a preset: the grammar in use, not the broken edit
    page.locator("#preset-save-name textarea, #preset-save-name input").first.fill("JSON replies")
    page.locator("#preset-save").click()
    page.get_by_text("Saved preset JSON replies").wait_for()
    import yaml

    saved = yaml.safe_load((presets / "JSON replies.yaml").read_text())
    assert saved["grammar_string"].startswith("# A JSON object") and "json_schema" not in saved
    # loading a preset fills the editors from it: another preset clears the grammar, this one brings it back
    # (and the schema box's refused text goes: the editors show what is in use)
    grammar_text = "() => document.querySelector('#constraint-grammar_string textarea').value"
    for name, shown in (("Seeded", "=== ''"), ("JSON replies", ".startsWith('# A JSON object')")):
        page.locator("#preset-dropdown input").click()
        page.get_by_role("option", name=name, exact=True).click()
        page.wait_for_function(f"() => ({grammar_text})(){shown}")
    assert schema.input_value() == ""

    page.get_by_role("tab", name="Chat").click()
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "Describe yourself as a JSON object.")
    page.click("#send")
    server.wait_until(lambda h: h["requests"] >= before + 1 and h["active"] == 0, timeout=240)
    # the reply's action bar comes with the last redraw, after the service saved how the reply ended (the model's
    # request is over before that: reading the store at once could miss its finish_reason)
    page.wait_for_selector("#chatbot .msg-actions.mi-1 .act-regenerate")

    from modules.store import ChatStore

    store = ChatStore(tmp_path / "user_data" / "chats.sqlite")
    chat = store.list_chats("local")[0]
    reply = store.path("local", chat.id)[-1]
    assert reply.role == "assistant" and reply.as_turn().reasoning  # it thought freely first
    # the saved reply, as the model wrote it, follows the grammar byte for byte, and is whole JSON unless the
    # demo model's 512-token context ended inside it (whether its strings end depends on the weights, which
    # differ with the CPU that trained them: on one machine type it rambled in a string until its context
    # was full, 5 of 6 seeds)
    assert reply.meta.get("finish_reason") in ("stop", "length"), reply.meta  # it ended by itself, not by an error
    complete = held_grammar(saved["grammar_string"], reply.content, reply.meta.get("finish_reason") == "length")
    bubble = page.locator("#chatbot [data-testid=bot] .message-content").last
    assert bubble.locator("details.reasoning").count() == 1  # the thought, in its collapsed block
    # the answer's words: without the thought and without the message's action bar (its version label)
    answer = bubble.evaluate("(el) => { const c = el.cloneNode(true); c.querySelectorAll('details, .msg-actions')"
                             ".forEach((d) => d.remove()); return c.innerText; }").strip()
    assert answer.startswith("{") and (answer.endswith("}") or not complete), answer

    # the Notebook takes the same setting: the continuation is JSON too
    page.get_by_role("tab", name="Notebook").click()
    prompt = "The record, as JSON: "
    page.fill("#notebook-input textarea", prompt)
    before = server.health()["requests"]
    page.click("#notebook-generate")
    server.wait_until(lambda h: h["requests"] >= before + 1 and h["active"] == 0, timeout=240)
    page.wait_for_function(IDLE)
    page.wait_for_function("(p) => document.querySelector('#notebook-input textarea').value.length > p.length",
                           arg=prompt)
    written = page.locator("#notebook-input textarea").input_value()
    assert written.startswith(prompt), written
    cut = "hit max_new_tokens" in page.inner_text("#notebook-status")
    held_grammar(saved["grammar_string"], written[len(prompt):], cut)
    page.close()
