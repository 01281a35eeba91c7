"""Chat imports: text-generation-webui's histories (current format with versions, timestamps and models, and
its old {"data", "data_visible"} one), Parlour's own export, and malformed files that get one line and
change nothing."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from modules.store import ChatStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tgw"


@pytest.fixture()
def store(tmp_path) -> ChatStore:
    return ChatStore(tmp_path / "chats.sqlite")


def on_screen(store: ChatStore, user: str, chat_id: int) -> list[tuple[str, str, int, int]]:
    return [(m.role, m.content, m.version, m.versions) for m in store.path(user, chat_id)]


def test_current_text_generation_webui_history_keeps_versions_timestamps_and_model(store):
    chat = store.import_chat_file("ann", (FIXTURES / "history-current.json").read_bytes())
    assert on_screen(store, "ann", chat) == [
        ("assistant", "Welcome aboard, Ann.", 1, 1),
        ("user", "Where are we headed?", 1, 1),
        ("assistant", "South, past the reef.", 2, 3),   # the version that was on screen, of three
        ("user", "How long?", 2, 2),                    # an edited user message keeps its first wording
        ("assistant", "Two days, if the wind holds.", 1, 1)]
    path = store.path("ann", chat)
    assert [m.content for m in store.versions("ann", chat, path[2].id)] == [
        "North, to the ice.", "South, past the reef.", "Nowhere yet."]
    assert [m.content for m in store.versions("ann", chat, path[3].id)] == ["How far?", "How long?"]
    assert path[2].meta["model"] == "Mistral-7B-Instruct-v0.3" and path[4].meta["model"] == "Mistral-7B-Instruct-v0.3"
    assert path[1].created == datetime(2026, 3, 2, 9, 16).timestamp()
    assert path[4].created == datetime(2026, 3, 2, 9, 22).timestamp()
    assert store.chat("ann", chat).title == "Where are we headed?"
    # browsing to another version of the reply works like a regenerated one (its branch has no children)
    store.select_version("ann", chat, path[2].id, -1)
    assert [m.content for m in store.path("ann", chat)][-1] == "North, to the ice."


def test_old_text_generation_webui_format_imports(store):
    chat = store.import_chat_file("ann", (FIXTURES / "history-old.json").read_bytes())
    assert on_screen(store, "ann", chat) == [("assistant", "Hello there.", 1, 1), ("user", "Hi! Who are you?", 1, 1),
                                             ("assistant", "A humble assistant.", 1, 1)]


def test_rows_with_tool_and_meta_columns_and_system_rows_import(store):
    history = {"internal": [["Be brief.", "", "", {"role": "system"}], ["hi", "hello", "", {}]],
               "visible": [["Be brief.", ""], ["hi", "hello"]]}
    chat = store.import_chat("ann", history)
    assert [(m.role, m.content) for m in store.path("ann", chat)] == [
        ("system", "Be brief."), ("user", "hi"), ("assistant", "hello")]


def test_parlour_export_round_trip_keeps_times(store):
    chat = store.create_chat("ann", title="t", mode="chat")
    store.add_message("ann", chat, "user", "q")
    before = store.path("ann", chat)[0].created
    new = store.import_chat("bob", store.export_chat("ann", chat))
    assert store.path("bob", new)[0].created == before


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_FILES = [
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"internal": [', "not valid JSON"),
    (DEEP, "nested deeper than 64 levels"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "nested deeper than 64 levels"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"messages": []}', "not a chat file"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": [1], "role": "user", "content": "x"}]}).encode(),
     "messages[0].id: must be a number or text"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": {"a": 1}, "role": "user", "content": "x"}]}).encode(),
     "messages[0].id"),
    (json.dumps({"format": "parlour-chat", "leaf": [1], "messages": []}).encode(), "leaf: must be a number or text"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": 1, "role": ["user"], "content": "x"}]}).encode(),
     "messages[0].role"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": 1, "role": "user", "content": None}]}).encode(),
     "messages[0].content"),
    (json.dumps({"format": "parlour-chat", "messages": [
        {"id": 1, "role": "user", "content": "a"}, {"id": 2, "parent": 5, "role": "user", "content": "b"}]}).encode(),
     "names a parent"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": 1, "role": "user", "content": "a"},
                                                        {"id": 1, "role": "user", "content": "b"}]}).encode(),
     "two messages have the id 1"),
    (json.dumps({"format": "parlour-chat", "settings": [1], "messages": []}).encode(), "settings"),
    (json.dumps({"format": "parlour-chat", "messages": [{"id": 1, "role": "user", "content": "a",
                                                         "meta": ["x"]}]}).encode(), "messages[0].meta"),
    (json.dumps({"internal": [["only one"]]}).encode(), "each entry"),
    (json.dumps({"internal": [[["a"], "b"]]}).encode(), "each entry"),
    (json.dumps({"internal": "text"}).encode(), "must be a list"),
    (json.dumps({"internal": [["a", "b"]], "metadata": [1]}).encode(), "'metadata' must be an object"),
    (json.dumps({"internal": [["a", "b"]], "metadata": {"assistant_0": {"versions": [1, 2]}}}).encode(),
     "versions must be a list of objects"),
    (json.dumps({"data": {"x": 1}}).encode(), "must be a list"),
]


@pytest.mark.parametrize("data,message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_malformed_files_get_one_line_and_change_nothing(store, data, message):
    store.import_chat("ann", {"format": "parlour-chat", "messages": [{"id": 1, "role": "user", "content": "kept"}]})
    before = [(c.id, c.title) for c in store.list_chats("ann")]
    with pytest.raises(ValueError) as caught:
        store.import_chat_file("ann", data)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text and "Traceback" not in text and "unhashable" not in text and len(text) < 300
    assert [(c.id, c.title) for c in store.list_chats("ann")] == before


def test_too_large_file_is_refused_before_parsing(store, monkeypatch):
    import modules.store as store_module

    monkeypatch.setattr(store_module, "MAX_IMPORT_BYTES", 10)
    with pytest.raises(ValueError, match="the limit is 10"):
        store.import_chat_file("ann", b'{"internal": []}')
