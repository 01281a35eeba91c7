"""Schema migrations: a database written by Parlour 0.1 (tests/fixtures/chats-v1.sqlite, made by that
version's own store code: scripts/make_store_fixture.py) opens with every chat, branch, version and
metadata intact, and typed parts work on it afterwards."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from modules import migrations
from modules.migrations import LATEST
from modules.store import ChatStore, StoreError
from modules.turns import ReasoningPart, TextPart, Turn

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "chats-v1.sqlite"


@pytest.fixture()
def old_db(tmp_path) -> Path:
    path = tmp_path / "chats.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_the_fixture_is_a_version_0_database(old_db):
    assert version(old_db) == 0
    with sqlite3.connect(old_db) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    assert "parts" not in columns


def test_an_old_database_upgrades_losslessly(old_db):
    store = ChatStore(old_db)
    assert version(old_db) == LATEST
    assert store.profile("ann") == {"name": "Ann", "description": "Likes tea."}
    chats = {c.title: c for c in store.list_chats("ann")}
    assert set(chats) == {"Tea", "Tea (branch)"}
    tea = chats["Tea"]
    assert (tea.character, tea.mode, tea.settings) == ("Assistant", "instruct", {"preset": "Default"})
    path = store.path("ann", tea.id)
    assert [m.content for m in path] == ["What tea is best?", "Black tea, with milk.", "Why?", "Because it is"]
    assert [(m.version, m.versions) for m in path] == [(1, 1), (2, 2), (1, 1), (1, 1)]
    assert path[1].meta == {"model": "m", "seed": 2, "tokens": 5}
    assert not path[-1].complete
    older = store.versions("ann", tea.id, path[1].id)[0]
    assert older.content == "Green tea." and older.meta["seed"] == 1
    assert [m.content for m in store.path("ann", chats["Tea (branch)"].id)] == ["What tea is best?"]
    bob = store.list_chats("bob")[0]
    assert [m.role for m in store.path("bob", bob.id)] == ["system", "user", "assistant"]
    # an old message reads as one text part, and search still finds it
    assert path[1].as_turn() == Turn("assistant", (TextPart("Black tea, with milk."),))
    assert [c.title for c, _ in store.search("ann", "milk")] == ["Tea"]


def test_typed_parts_work_on_the_upgraded_database_and_survive_reopening(old_db):
    store = ChatStore(old_db)
    tea = next(c for c in store.list_chats("ann") if c.title == "Tea")
    turn = Turn("assistant", (ReasoningPart("Think of a reason.", tokens=4, seconds=0.5), TextPart("It is strong.")))
    mid = store.add_message("ann", tea.id, "assistant", turn)
    again = ChatStore(old_db)  # opening again migrates nothing and loses nothing
    saved = again.message("ann", tea.id, mid)
    assert saved.content == "It is strong." and saved.as_turn() == turn
    exported = again.export_chat("ann", tea.id)
    assert exported["version"] == 2 and exported["messages"][-1]["parts"][0]["type"] == "reasoning"
    copy = again.import_chat("ann", exported)
    assert again.path("ann", copy)[-1].as_turn().reasoning == "Think of a reason."


def test_a_database_from_a_newer_parlour_is_refused(tmp_path):
    path = tmp_path / "chats.sqlite"
    ChatStore(path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(StoreError, match="newer than this Parlour knows"):
        ChatStore(path)


def test_a_failing_migration_leaves_the_database_as_it_was(old_db, monkeypatch):


    def broken(db):
        db.execute("ALTER TABLE messages ADD COLUMN half_done TEXT")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "MIGRATIONS", (migrations.MIGRATIONS[0], broken))
    with pytest.raises(StoreError):
        ChatStore(old_db)
    with sqlite3.connect(old_db) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    assert version(old_db) == 1 and "half_done" not in columns  # migration 1 committed, 2 rolled back
