"""One chat turn, three entry points — the Chat tab, a plain OpenAI request, a request with
text-generation-webui's chat fields — and the same hooks fire exactly once each, with the same
message, in the documented order (a meta-test of "one chat path")."""

from __future__ import annotations

import textwrap

import pytest
from fastapi.testclient import TestClient

RECORDER = textwrap.dedent("""
    calls = []

    def state_modifier(state):
        calls.append(("state_modifier", state.get("mode")))
        return state

    def chat_input_modifier(text, visible_text, state):
        calls.append(("chat_input_modifier", text, visible_text))
        return text + " [ci]", visible_text

    def input_modifier(string, state, is_chat=False):
        calls.append(("input_modifier", string, is_chat))
        return string + " [in]"

    def history_modifier(history):
        calls.append(("history_modifier", [list(p) for p in history["internal"]]))
        return history

    def bot_prefix_modifier(string, state):
        calls.append(("bot_prefix_modifier", string))
        return string

    def output_modifier(string, state, is_chat=False):
        calls.append(("output_modifier", is_chat))
        return string

    def reply_footer(stats, state):
        calls.append(("reply_footer", stats["finish_reason"]))
        return ""
""")
ORDER = ["state_modifier", "chat_input_modifier", "input_modifier", "history_modifier", "bot_prefix_modifier",
         "output_modifier", "reply_footer"]


@pytest.fixture()
def app(make_app, tmp_path):
    folder = tmp_path / "user_data" / "extensions" / "recorder"
    folder.mkdir(parents=True)
    (folder / "script.py").write_text(RECORDER)
    app = make_app(extensions=["recorder"], batch_size=1)
    app.models.load("parlour-micro")
    return app


def calls(app) -> list[tuple]:
    return app.extensions.loaded["recorder"].module.calls


def via_chat_tab(app) -> None:
    """The Chat tab's Send handler, called as Gradio calls it."""
    from modules import ui

    blocks = ui.build(app)
    send = next(f for f in blocks.fns.values() if getattr(f.fn, "__name__", "") == "on_send")
    values = [c.value for c in send.inputs[2:]]  # the controls' defaults (mode, character, ..., presets)
    mode = next(i for i, c in enumerate(send.inputs[2:]) if getattr(c, "elem_id", "") == "chat-mode")
    values[mode] = "instruct"
    max_new = next(i for i, c in enumerate(send.inputs[2:]) if getattr(c, "label", "") == "max_new_tokens")
    values[max_new] = 4
    session = {"chat_id": None, "incognito": False, "turns": (), "selected": None, "images": False}
    outputs = list(send.fn(None, "hello", session, *values))
    assert not str(outputs[-1][4]).startswith("⚠️"), outputs[-1][4]


def via_api(app, **fields) -> None:
    from modules.api import build_api

    client = TestClient(build_api(app))
    response = client.post("/chat/completions", json={"messages": [{"role": "user", "content": "hello"}],
                                                      "max_tokens": 4, **fields})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("entry", ["chat tab", "api", "api with chat fields"])
def test_every_entry_point_runs_each_hook_once_with_the_same_message(app, entry):
    {"chat tab": lambda: via_chat_tab(app), "api": lambda: via_api(app),
     "api with chat fields": lambda: via_api(app, mode="instruct", name1="You", character="Assistant")}[entry]()
    seen = calls(app)
    assert [c[0] for c in seen] == ORDER, seen  # each once, in the documented order
    by = {c[0]: c for c in seen}
    assert by["state_modifier"][1] == "instruct"
    assert by["chat_input_modifier"][1:] == ("hello", "hello")
    assert by["input_modifier"][1:] == ("hello [ci]", True)
    assert by["history_modifier"][1] == [["hello [ci] [in]", ""]]
    assert by["bot_prefix_modifier"][1].endswith("assistant\n")  # what opens the reply's turn (ChatML)
    assert by["output_modifier"][1] is True


def test_the_chat_tab_saves_the_message_as_the_hooks_made_it(app):
    via_chat_tab(app)
    chat = app.store.list_chats("local")[0]
    assert app.store.path("local", chat.id)[0].content == "hello [ci] [in]"
