"""The chats database: branches, versions, users, search, concurrency, damage, kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from modules.turns import TextPart
from modules.store import ChatNotFound, ChatStore, ReplyWriter

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(tmp_path) -> ChatStore:
    return ChatStore(tmp_path / "chats.sqlite")


def contents(store, user, chat_id):
    return [(m.role, m.content) for m in store.path(user, chat_id)]


def test_wal_and_linear_chat(store):
    chat = store.create_chat("ann", character="Assistant")
    store.add_message("ann", chat, "user", "hello there")
    store.add_message("ann", chat, "assistant", "hi")
    assert contents(store, "ann", chat) == [("user", "hello there"), ("assistant", "hi")]
    assert store.chat("ann", chat).title == "hello there"  # first user line becomes the title
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_regenerate_keeps_versions_and_browsing_moves_the_leaf(store):
    chat = store.create_chat("ann")
    q = store.add_message("ann", chat, "user", "q")
    a1 = store.add_message("ann", chat, "assistant", "first")
    a2 = store.add_message("ann", chat, "assistant", "second", parent_id=q)
    store.add_message("ann", chat, "user", "follow-up")  # continues from version 2
    path = store.path("ann", chat)
    assert [m.content for m in path] == ["q", "second", "follow-up"]
    assert (path[1].version, path[1].versions) == (2, 2)
    assert store.select_version("ann", chat, a2, -1) == a1
    assert [m.content for m in store.path("ann", chat)] == ["q", "first"]
    store.select_version("ann", chat, a1, +1)  # back to version 2 follows its newest branch
    assert [m.content for m in store.path("ann", chat)] == ["q", "second", "follow-up"]
    assert store.select_version("ann", chat, a2, +1) == a2  # clamps at the last version


def test_branch_copies_the_path_and_leaves_the_original(store):
    chat = store.create_chat("ann", title="Trip")
    store.add_message("ann", chat, "user", "a")
    b = store.add_message("ann", chat, "assistant", "b")
    store.add_message("ann", chat, "user", "c")
    new = store.branch("ann", chat, b)
    assert contents(store, "ann", new) == [("user", "a"), ("assistant", "b")]
    assert len(store.path("ann", chat)) == 3
    store.add_message("ann", new, "user", "d")
    assert len(store.path("ann", chat)) == 3 and len(store.path("ann", new)) == 3


def test_edit_delete_rename_and_newest_first(store):
    first = store.create_chat("ann", title="one")
    second = store.create_chat("ann", title="two")
    m = store.add_message("ann", first, "user", "typo")
    store.update_message("ann", first, m, content="fixed")
    assert contents(store, "ann", first) == [("user", "fixed")]
    assert [c.id for c in store.list_chats("ann")] == [first, second]  # first was touched last
    store.rename_chat("ann", second, "renamed")
    assert store.chat("ann", second).title == "renamed"
    store.delete_chat("ann", second)
    with pytest.raises(ChatNotFound):
        store.chat("ann", second)
    assert [c.id for c in store.list_chats("ann")] == [first]


def test_users_are_isolated(store):
    chat = store.create_chat("ann")
    store.add_message("ann", chat, "user", "ann's secret")
    assert store.list_chats("bob") == []
    for call in (lambda: store.path("bob", chat), lambda: store.add_message("bob", chat, "user", "x"),
                 lambda: store.delete_chat("bob", chat), lambda: store.export_chat("bob", chat),
                 lambda: store.branch("bob", chat, 1), lambda: store.rename_chat("bob", chat, "x")):
        with pytest.raises(ChatNotFound):
            call()
    assert store.search("bob", "secret") == []
    with pytest.raises(ChatNotFound):
        store.message("bob", chat, 1)
    assert store.message("ann", chat, 1).content == "ann's secret"
    assert [c.id for c, _ in store.search("ann", "secret")] == [chat]
    assert contents(store, "ann", chat) == [("user", "ann's secret")]


def test_full_text_search_sees_edits_and_ignores_fts_syntax(store):
    chat = store.create_chat("ann", title="animals")
    m = store.add_message("ann", chat, "user", "the platypus lays eggs")
    other = store.create_chat("ann", title="other")
    store.add_message("ann", other, "user", "nothing here")
    hits = store.search("ann", "platypus")
    assert [c.id for c, _ in hits] == [chat] and "[platypus]" in hits[0][1]
    store.update_message("ann", chat, m, content="the echidna too")
    assert store.search("ann", "platypus") == []
    assert [c.id for c, _ in store.search("ann", "echidna")] == [chat]
    assert store.search("ann", 'NEAR( "x* OR') == []  # user text is quoted, never FTS syntax
    assert [c.id for c, _ in store.search("ann", "other")] == [other]  # titles match too


def test_concurrent_writers_lose_nothing(store):
    chats = [store.create_chat("ann") for _ in range(4)]
    errors = []

    def write(chat_id):
        try:
            for i in range(25):
                store.add_message("ann", chat_id, "user" if i % 2 == 0 else "assistant", f"{chat_id}-{i}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c,)) for c in chats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for c in chats:
        assert [m.content for m in store.path("ann", c)] == [f"{c}-{i}" for i in range(25)]


def test_a_damaged_row_does_not_hide_other_chats(store):
    good = store.create_chat("ann", title="good")
    store.add_message("ann", good, "user", "fine")
    bad = store.create_chat("ann", title="bad")
    m = store.add_message("ann", bad, "assistant", "hello")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE messages SET meta = 'not json{', content = X'80ff' WHERE id = ?", (m,))
        db.execute("UPDATE chats SET settings = '[broken' WHERE id = ?", (bad,))
    assert {c.id for c in store.list_chats("ann")} == {good, bad}
    assert contents(store, "ann", good) == [("user", "fine")]
    damaged = store.path("ann", bad)[0]
    assert damaged.meta == {"error": "unreadable metadata"} and "\ufffd" in damaged.content


def test_export_import_roundtrip_keeps_versions(store):
    chat = store.create_chat("ann", title="t", character="Example", mode="instruct")
    q = store.add_message("ann", chat, "user", "q")
    store.add_message("ann", chat, "assistant", "v1", meta={"seed": 1})
    store.add_message("ann", chat, "assistant", "v2", parent_id=q, meta={"seed": 2})
    data = store.export_chat("ann", chat)
    new = store.import_chat("bob", data)
    path = store.path("bob", new)
    assert [(m.content, m.version, m.versions) for m in path] == [("q", 1, 1), ("v2", 2, 2)]
    assert path[1].meta == {"seed": 2}
    info = store.chat("bob", new)
    assert (info.character, info.mode) == ("Example", "instruct")


def test_import_text_generation_webui_history(store):
    history = {"internal": [["<|BEGIN-VISIBLE-CHAT|>", "Hello!"], ["hi", "how are you"]],
               "visible": [["", "Hello!"], ["hi", "how are you"]]}
    chat = store.import_chat("ann", history)
    assert contents(store, "ann", chat) == [("assistant", "Hello!"), ("user", "hi"), ("assistant", "how are you")]
    with pytest.raises(ValueError, match="not a chat file"):
        store.import_chat("ann", {"foo": 1})
    with pytest.raises(ValueError, match="each entry"):
        store.import_chat("ann", {"internal": [["only one"]]})


def test_reply_writer_flushes_by_tokens(store):
    chat = store.create_chat("ann")
    m = store.add_message("ann", chat, "assistant", "", complete=False)
    writer = ReplyWriter(store, "ann", chat, m, interval=3600, every_tokens=4)
    assert not writer.update((TextPart("ab"),), 2)
    assert store.path("ann", chat)[0].content == ""
    assert writer.update((TextPart("abcd"),), 4)
    assert store.path("ann", chat)[0].content == "abcd"
    writer.flush((TextPart("abcdef"),), 6, meta={"tokens": 6}, complete=True)
    saved = store.path("ann", chat)[0]
    assert (saved.content, saved.complete, saved.meta) == ("abcdef", True, {"tokens": 6})


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from modules.store import ChatStore, ReplyWriter
    from modules.turns import TextPart
    store = ChatStore({db!r})
    for n in range(3):
        c = store.create_chat("ann", title=f"done {{n}}")
        store.add_message("ann", c, "user", "q")
        store.add_message("ann", c, "assistant", "a")
    chat = store.create_chat("ann", title="streaming")
    store.add_message("ann", chat, "user", "tell me")
    mid = store.add_message("ann", chat, "assistant", "", complete=False)
    writer = ReplyWriter(store, "ann", chat, mid, interval=3600, every_tokens=1)
    text = ""
    i = 0
    while True:
        i += 1
        text += f"w{{i}} "
        writer.update((TextPart(text),), i)
        print(len(text), flush=True)
""")


def test_kill_minus_nine_mid_reply_keeps_every_chat(tmp_path):
    db = tmp_path / "chats.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), db=str(db))],
                            stdout=subprocess.PIPE, text=True)
    flushed = 0
    for line in proc.stdout:  # each line is printed after a committed flush
        flushed = int(line)
        if flushed > 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ChatStore(db)
    chats = store.list_chats("ann")
    assert sorted(c.title for c in chats) == ["done 0", "done 1", "done 2", "streaming"]
    for c in chats:
        assert store.path("ann", c.id)  # every chat opens
    streaming = next(c for c in chats if c.title == "streaming")
    reply = store.path("ann", streaming.id)[-1]
    assert reply.role == "assistant" and not reply.complete
    assert len(reply.content) >= flushed and reply.content.startswith("w1 w2 ")


def test_delete_message_removes_its_subtree_and_moves_the_leaf(store):
    chat = store.create_chat("ann")
    q = store.add_message("ann", chat, "user", "keep")
    a = store.add_message("ann", chat, "assistant", "zebra one")
    store.add_message("ann", chat, "user", "zebra two")
    store.add_message("ann", chat, "assistant", "v2", parent_id=q)
    assert store.delete_message("ann", chat, a) == q
    assert contents(store, "ann", chat) == [("user", "keep")]
    assert store.search("ann", "zebra") == []  # the subtree left the search index too
    assert [m.content for m in store.versions("ann", chat, q)] == ["keep"]


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    from modules.store import StoreError

    bad = tmp_path / "chats.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="chats.sqlite"):
        ChatStore(bad)
    assert bad.read_bytes() == b"this is not sqlite" * 100  # left as it was, for the user to inspect
