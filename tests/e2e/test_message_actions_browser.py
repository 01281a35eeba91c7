"""Actions on each message, where the eye is, in a real browser: version arrows (`>` on the newest
version regenerates), edit in place, branch here, copy, regenerate; the chatbot's bin deletes the chat;
"waiting for the model" until the first token and "Stopped" after Stop."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import serving
from tests.e2e.test_chat_browser import (IDLE, act, bots, edit_in_place, new_chat, open_editor, open_page, settle,
                                        users, wait_version)
from tests.e2e.test_chat_browser import send as send_message

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    home = tmp_path_factory.mktemp("actions")
    with serving(home, "--models-dir", str(models_dir), "--model", "parlour-micro", short_preset=10) as process:
        yield process


def page_for(browser, server):
    """A fresh chat page (no dialog handler: the bin's test answers its question itself)."""
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("#chat-input textarea")
    new_chat(page, server)
    return page


def send(page, server, text: str) -> None:
    """Send `text` (the chat tests' send: the new question and its reply drawn) and wait for both of the
    exchange's action bars, drawn once the reply is saved."""
    send_message(page, server, text)
    page.wait_for_function("(n) => document.querySelectorAll('#chatbot .msg-actions').length >= n",
                           arg=2 * len(users(page)))


def status(page) -> str:
    return page.inner_text("#chat-status")


def test_arrows_edit_branch_copy_and_regenerate_on_the_messages_themselves(browser, server):
    page = page_for(browser, server)
    send(page, server, "hello there")
    first = bots(page)[-1]
    wait_version(page, 1, "1/1")
    assert page.locator("#chatbot .mi-1 .act-prev.off").count() == 1  # nothing before version 1
    # `>` on the newest version of the last reply makes a new version (text-generation-webui's rule)
    before = server.health()["requests"]
    act(page, 1, "next")
    settle(page, server, before + 1)
    wait_version(page, 1, "2/2")
    second = bots(page)[-1]
    act(page, 1, "prev")
    wait_version(page, 1, "1/2")
    assert bots(page)[-1] == first
    act(page, 1, "next")  # not the newest now: it browses
    wait_version(page, 1, "2/2")
    assert bots(page)[-1] == second and server.health()["requests"] == before + 1
    # the regenerate button on the last reply: a third version
    act(page, 1, "regenerate")
    settle(page, server, before + 2)
    wait_version(page, 1, "3/3")

    # copy: the words of the reply, without its reasoning block or buttons
    act(page, 1, "copy")
    page.wait_for_selector("#chatbot .mi-1 .act-copy.done")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert " ".join(copied.split()) == bots(page)[-1] and "3/3" not in copied

    # edit in place: the editor opens in the bubble with the message's own words; Escape cancels
    editor = open_editor(page, 0, "#chatbot [data-testid=user]")
    assert editor.input_value() == "hello there"
    editor.press("Escape")
    page.wait_for_selector("#chatbot .msg-editor", state="detached")
    assert users(page) == ["hello there"]
    edit_in_place(page, 0, "hello, **edited**")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Saved the edit')")
    assert users(page) == ["hello, edited"]  # markdown rendered from the saved words
    assert page.locator("#chatbot [data-testid=user] strong").inner_text() == "edited"
    page.reload()
    page.wait_for_selector("#chatbot .mi-1 .msg-version")
    assert users(page) == ["hello, edited"]
    wait_version(page, 1, "3/3")

    # branch here, at the question: a new chat holding only it, opened; the first chat keeps its reply
    act(page, 0, "branch")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Branched')")
    assert users(page) == ["hello, edited"] and bots(page) == []
    assert page.locator("#chat-list label").count() == 2
    page.close()


def test_the_bin_deletes_the_chat_after_asking(browser, server):
    page = page_for(browser, server)
    send(page, server, "a chat to throw away")
    chats = page.locator("#chat-list label").count()
    answers = iter([False, True])
    page.on("dialog", lambda d: d.accept() if next(answers) else d.dismiss())
    page.click("#chatbot button[aria-label=Clear]")  # Gradio's bin in the chatbot's corner
    page.wait_for_function(IDLE)
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length === 1")
    assert page.locator("#chat-list label").count() == chats  # "keep": still there, drawn again
    page.click("#chatbot button[aria-label=Clear]")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Deleted the chat')")
    assert page.locator("#chat-list label").count() == chats - 1
    assert not [label for label in page.locator("#chat-list label").all_inner_texts()
                if "a chat to throw away" in label]
    page.close()


def test_waiting_for_the_model_until_the_first_token_and_stopped_after_stop(browser, start_server, models_dir,
                                                                            tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "Long.yaml").write_text("max_new_tokens: 1800\nban_eos_token: true\n")
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--presets-dir", str(presets),
                          "--preset", "Long", "--batch-size", "1")
    # an API client keeps the model busy: the browser's request has to wait its turn
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    body = {"model": "parlour-micro", "prompt": "Once", "max_tokens": 1800, "stream": True, "ban_eos_token": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    server.wait_until(lambda h: h["active"] == 1 and h["tokens"] > 0)
    page = open_page(browser, server.url)
    page.fill("#chat-input textarea", "are you there?")
    page.click("#send")
    page.wait_for_selector("#chatbot [data-testid=bot] .waiting-indicator")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText"
                           ".includes('Waiting for the model')")
    assert page.locator("#chatbot [data-testid=bot]").count() == 1  # the reply's place, before any word
    response.close()
    connection.close()  # the API client goes away: its request ends, the browser's begins
    page.wait_for_selector("#chatbot .waiting-indicator", state="detached")  # the first token is shown
    page.wait_for_function("() => !document.querySelector('#chat-status').innerText.includes('Waiting')")
    assert server.health()["active"] == 1  # still writing (1800 tokens): Stop ends it
    page.click("#stop")
    server.wait_until(lambda h: h["active"] == 0)
    page.wait_for_function("() => /^Stopped after \\d+ tokens\\./.test(document.querySelector('#chat-status')"
                           ".innerText.trim())")
    # the stopped reply is drawn as saved, with its actions (it can be continued or regenerated)
    page.wait_for_selector("#chatbot .mi-1 .act-regenerate")
    assert bots(page)[-1].strip()
    page.close()
