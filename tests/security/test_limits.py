"""One set of limits (modules/limits.py), enforced the same way by the UI and the API: a message, stop
strings (count and length), a chat title, names, a template, max tokens, request bodies. Each refusal
is one clear line naming the field and the limit, and nothing is generated for it."""

from __future__ import annotations

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from pydantic import ValidationError

from modules import limits
from modules.chat import PromptOptions, resolve_options
from modules.limits import LimitError
from modules.presets import Preset
from modules.store import ChatStore
from tests.e2e.test_chat_browser import IDLE, open_page, send

TOO_LONG = "x" * (limits.MAX_MESSAGE_CHARS + 1)
STOPS = [f"stop{i}" for i in range(limits.MAX_STOP_STRINGS + 1)]


# -- the services the UI's handlers call ------------------------------------------------------------
def test_store_limits(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite")
    chat = store.create_chat("ann", title="ok")
    with pytest.raises(LimitError, match="message is 500,001 characters; at most 500,000"):
        store.add_message("ann", chat, "user", TOO_LONG)
    message = store.add_message("ann", chat, "user", "fine")
    with pytest.raises(LimitError, match="message"):
        store.update_message("ann", chat, message, content=TOO_LONG)  # an edit
    for call in (lambda: store.rename_chat("ann", chat, "t" * 201), lambda: store.create_chat("ann", title="t" * 201),
                 lambda: store.branch("ann", chat, message, title="t" * 201)):
        with pytest.raises(LimitError, match="title is 201 characters; at most 200"):
            call()
    with pytest.raises(LimitError, match="name"):
        store.set_profile("ann", "n" * 201, "")
    with pytest.raises(LimitError, match="about you"):
        store.set_profile("ann", "Ann", TOO_LONG)
    # branching a chat whose title is at the limit keeps the branch's title within it
    store.rename_chat("ann", chat, "t" * 200)
    branched = store.branch("ann", chat, message)
    assert len(store.chat("ann", branched).title) <= 200
    assert [m.content for m in store.path("ann", chat)] == ["fine"]  # nothing refused was written


class _App:
    """What resolve_options reads: characters, templates and the store."""

    def __init__(self, tmp_path):
        from modules.characters import CharacterStore
        from modules.chat import TemplateLibrary

        self.characters = CharacterStore(tmp_path / "characters")
        self.templates = TemplateLibrary(tmp_path / "templates")
        self.store = ChatStore(tmp_path / "chats.sqlite")


@pytest.mark.parametrize("field, value, message", [
    ("custom_stops", tuple(STOPS), "17 given; at most 16"),
    ("custom_stops", ("s" * 1001,), "1,001 characters; at most 1,000"),
    ("system_message", TOO_LONG, "system message"),
    ("chat_instruct_command", TOO_LONG, "chat-instruct command"),
    ("template_source", "{{ 'x' }}" * 40_000, "template"),
    ("name1", "n" * 201, "name"),
    ("context", TOO_LONG, "context"),
    ("user_bio", TOO_LONG, "about you"),
    ("start_reply_with", TOO_LONG, "start reply with"),
])
def test_prompt_options_limits(tmp_path, field, value, message):
    with pytest.raises(LimitError, match=message):
        resolve_options(_App(tmp_path), "local", mode="instruct", **{field: value})


def test_an_incognito_message_is_checked_before_anything_runs(tmp_path):
    # incognito chats never reach the store: the chat service checks the new message and the turns itself
    from modules.conversation import ChatService, ChatView, Setup
    from modules.turns import Turn

    chats = ChatService(_App(tmp_path))  # no pipeline: nothing may get as far as generating
    setup = Setup(PromptOptions(), Preset())
    with pytest.raises(LimitError, match="message"):
        next(chats.send("local", ChatView(incognito=True), TOO_LONG, setup))
    long_past = ChatView(incognito=True, turns=(Turn.of("user", TOO_LONG), Turn.of("assistant", "hi")))
    with pytest.raises(LimitError, match="message"):
        next(chats.regenerate("local", long_past, setup))


@pytest.mark.parametrize("values, field", [
    ({"custom_stopping_strings": STOPS}, "custom_stopping_strings"),
    ({"custom_stopping_strings": ["s" * 1001]}, "custom_stopping_strings"),
    ({"banned_strings": [f"b{i}" for i in range(limits.MAX_STRING_LIST + 1)]}, "banned_strings"),
    ({"dry_sequence_breakers": ["d" * 1001]}, "dry_sequence_breakers"),
    ({"max_new_tokens": limits.MAX_NEW_TOKENS + 1}, "max_new_tokens"),
])
def test_preset_limits_shared_by_the_parameters_tab_and_the_api(values, field):
    with pytest.raises(ValidationError, match=field):
        Preset(**values)


# -- the API ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(module_server):
    return module_server()


@pytest.mark.parametrize("extra, param", [
    ({"stop": STOPS}, "stop"),
    ({"stop": STOPS[:10], "stopping_strings": STOPS[:10]}, None),  # together over the limit
    ({"custom_stopping_strings": STOPS}, "custom_stopping_strings"),
    ({"messages": [{"role": "user", "content": TOO_LONG}]}, "messages.0.content"),
    ({"name1": "n" * 201, "mode": "chat"}, "name1"),
    ({"context": TOO_LONG, "mode": "chat"}, "context"),
    ({"max_tokens": limits.MAX_NEW_TOKENS + 1}, "max_tokens"),
])
def test_api_limits(server, extra, param):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert param is None or error["param"] == param, error
    assert "at most" in error["message"] or "less than or equal" in error["message"], error
    assert len(error["message"]) < 300
    assert server.health()["requests"] == 0


def test_event_api_limits(server):
    """The UI's own event API (gradio_client) refuses the same values with the same messages."""
    client = Client(server.url, verbose=False)
    values = list(Preset(max_new_tokens=2).model_dump().values())
    with pytest.raises(AppError, match="at most 500,000"):
        client.predict(TOO_LONG, *values, api_name="/chat_send")
    stops = list(values)
    stops[list(Preset.model_fields).index("custom_stopping_strings")] = STOPS
    with pytest.raises(AppError, match="at most 16"):
        client.predict("hi", *stops, api_name="/chat_send")
    assert server.health()["requests"] == 0


# -- the Chat tab in a browser -----------------------------------------------------------------------
def status(page) -> str:
    return page.inner_text("#chat-status")


def test_chat_tab_limits(server, browser):
    page = open_page(browser, server.url)
    try:
        before = server.health()["requests"]
        page.fill("#chat-input textarea", TOO_LONG)
        page.click("#send")
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('at most')")
        assert "the message is 500,001 characters; at most 500,000" in status(page)
        page.wait_for_function(IDLE)
        assert server.health()["requests"] == before
        assert page.locator("#chatbot [data-testid=user]").count() == 0  # the message was not kept
        # a normal message works, then the chat's title is bounded
        send(page, server, "hello")
        page.fill("#rename-title textarea", "T" * 1000)
        page.click("#rename-chat")
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('title is')")
        assert "the title is 1,000 characters; at most 200" in status(page)
        assert not any("TTTT" in label for label in page.locator("#chat-list label").all_inner_texts())
        # too many custom stop strings
        page.get_by_text("Prompt settings").click()
        page.fill("#custom-stops textarea", "\n".join(STOPS))
        before = server.health()["requests"]
        page.fill("#chat-input textarea", "and again")
        page.click("#send")
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('stop strings')")
        assert "custom stop strings: 17 given; at most 16" in status(page)
        page.wait_for_function(IDLE)
        assert server.health()["requests"] == before
    finally:
        page.context.close()
