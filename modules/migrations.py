"""Forward-only schema migrations for the chats database (modules/store.py).

Each migration is a function of a connection, run once, in order, inside one transaction that also
sets SQLite's `user_version` to its number, so a crash mid-upgrade leaves the database as it was.
A database written by a newer Parlour (a higher version than this code knows) is refused rather
than guessed at. Add a migration by appending a function: never edit one that has shipped.

Version 0 is a database from before migrations existed (Parlour 0.1): it already has the tables of
migration 1, whose statements are `IF NOT EXISTS`, so it upgrades in place with nothing lost.
"""

from __future__ import annotations

import sqlite3
from typing import Callable


def _execute_each(db: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement: executescript() would COMMIT the migration's transaction.
    A statement ends where SQLite says it is complete (a trigger's body holds `;` of its own)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            db.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {buffer.strip()[:60]}")


def _v1_base(db: sqlite3.Connection) -> None:
    """Parlour 0.1's schema: users, chats, messages as a tree, full-text search over messages."""
    _execute_each(db, """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    character TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'chat',
    leaf_id INTEGER,
    settings TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chats_by_user ON chats(user, updated DESC);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}',
    complete INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages(chat_id, parent_id);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS messages_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_au AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
""")


def _v2_parts(db: sqlite3.Connection) -> None:
    """Typed parts of a turn (modules/turns.py) as JSON. `content` stays the turn's text, for search and
    for readers of version 1; '[]' (every older row) means one text part equal to `content`."""
    db.execute("ALTER TABLE messages ADD COLUMN parts TEXT NOT NULL DEFAULT '[]'")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1_base, _v2_parts)
LATEST = len(MIGRATIONS)


class NewerDatabase(RuntimeError):
    """The file was written by a newer Parlour; this version will not guess at its schema."""


def migrate(db: sqlite3.Connection) -> int:
    """Bring `db` (autocommit connection) to the latest version; returns the version it had."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > LATEST:
        raise NewerDatabase(f"schema version {found} is newer than this Parlour knows ({LATEST}): upgrade Parlour")
    for number in range(found + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[number - 1](db)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return found
