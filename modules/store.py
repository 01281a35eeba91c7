"""Saved chats in SQLite: users, chats, and a tree of messages (branches and versions).

A chat is a tree. Every message points at its parent; the conversation on screen is the path from
the chat's `leaf_id` up to the root. Regenerating a reply adds a *sibling* (same parent, same role),
so old replies stay as versions and `<` `>` browse them by moving the leaf. "Branch here" copies a
path into a new chat.

Every call opens its own short-lived connection (WAL, busy timeout), so threads never share one and
readers never block the writer. Each write is one transaction. A reply is saved while it streams
(`ReplyWriter` flushes every `interval` seconds or `every_tokens` tokens), so a killed process
loses at most the unflushed words; the half reply stays marked `complete = 0`.

Every read takes the user: a chat that belongs to someone else is reported as not found, exactly
like one that does not exist, so ids leak nothing.

A message holds a turn's typed parts (modules/turns.py: text, reasoning, tool calls...) as JSON in
`parts`; `content` is the turn's text, kept beside them for full-text search. The schema is
versioned and upgraded at open by modules/migrations.py (forward only).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from datetime import datetime
from typing import Any, Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from modules import limits
from modules.fileio import MAX_JSON_DEPTH, json_depth, load_json
from modules.migrations import NewerDatabase, migrate
from modules.turns import Part, PartError, TextPart, Turn, dumps_parts, parts_from_json

ROLES = ("system", "user", "assistant")
log = logging.getLogger(__name__)


class ChatNotFound(LookupError):
    """No chat (or message) with that id for this user."""


class StoreError(RuntimeError):
    """The database could not be opened or written; the message says which file and why."""


class DamagedRow(StoreError):
    """One chat or message row holds values the schema does not allow (edited by hand, a bad disk)."""


@dataclass
class StoredMessage:
    id: int
    chat_id: int
    parent_id: int | None
    role: str
    content: str
    meta: dict[str, Any]
    complete: bool
    created: float
    updated: float
    #: the turn's typed parts; () for a row from before parts existed (then: one text part, `content`)
    parts: tuple[Part, ...] = ()
    #: 1-based position among its versions (siblings with the same parent and role), and how many there are
    version: int = 1
    versions: int = 1

    def as_turn(self) -> Turn:
        """The message as a Turn; an extension's reply footer rides along as a UI extra."""
        parts = self.parts or (TextPart(self.content),)
        extras = {"footer": self.meta["footer"]} if self.meta.get("footer") else {}
        if self.meta.get("shown") and self.meta.get("shown_for") == self.content:  # an extension's HTML reply
            extras["shown"] = self.meta["shown"]
        return Turn(self.role, parts, extras=extras)


@dataclass
class ChatInfo:
    id: int
    user: str
    title: str
    character: str
    mode: str
    leaf_id: int | None
    created: float
    updated: float
    settings: dict[str, Any] = field(default_factory=dict)


def _meta(text: str) -> dict[str, Any]:
    """A message's metadata; an unreadable value is reported in the dict, never raised."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"error": "unreadable metadata"}
    return value if isinstance(value, dict) else {"error": "unreadable metadata"}


def _reason(exc: sqlite3.Error) -> str:
    """SQLite's message in a user's words where it has a usual cause."""
    text = str(exc)
    if "disk is full" in text or "disk I/O error" in text:
        return f"the disk is full or failing ({text})"
    if "readonly" in text or "read-only" in text:
        return f"the file or its folder is read-only ({text})"
    if "unable to open" in text:
        return f"the file cannot be opened: its folder may be read-only or missing ({text})"
    if "not a database" in text or "malformed" in text:
        return f"the file is damaged ({text})"
    return text


def _text(value: Any) -> str:
    """Content as text even if a row was damaged into a blob or a number."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


class ChatStore:
    """All saved chats of all users in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.db_path = Path(path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                migrate(db)
        except (sqlite3.DatabaseError, StoreError, NewerDatabase) as exc:
            raise StoreError(f"cannot open the chats database {self.db_path}: {exc}") from exc

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection. SQLite's own errors (disk full, read-only file, a damaged file)
        leave as StoreError naming the database and the reason, so the UI can say it in one line."""
        try:
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            # WAL + NORMAL: a committed transaction survives a killed process (not a power cut mid-checkpoint).
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"the chats database {self.db_path.name} cannot be opened: {_reason(exc)}") from exc
        try:
            yield db
        except sqlite3.IntegrityError:
            raise  # a broken invariant (a bug), not a fault of the disk: keep its own type
        except sqlite3.Error as exc:
            raise StoreError(f"the chats database {self.db_path.name} failed: {_reason(exc)}") from exc
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlocks).

        Nothing of a failed transaction is kept: a full disk or a read-only file at any statement or at
        COMMIT rolls the whole change back, and the error says the change was not saved."""
        with self._connect() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # SQLite may already have rolled back itself (SQLITE_FULL)
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"not saved: the chats database {self.db_path.name} cannot be written: "
                                 f"{_reason(exc)}") from exc

    # -- users ---------------------------------------------------------------------------------
    def profile(self, user: str) -> dict[str, str]:
        with self._connect() as db:
            row = db.execute("SELECT display_name, description FROM users WHERE name = ?", (user,)).fetchone()
        if row is None:
            return {"name": "You" if user == "local" else user, "description": ""}
        return {"name": _text(row["display_name"]) or user, "description": _text(row["description"])}

    def set_profile(self, user: str, name: str, description: str) -> None:
        limits.check_text("name", name)
        limits.check_text("about you", description)
        with self._write() as db:
            db.execute("INSERT INTO users(name, display_name, description, created) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET display_name = excluded.display_name, "
                       "description = excluded.description", (user, name.strip(), description, time.time()))

    # -- chats ---------------------------------------------------------------------------------
    def create_chat(self, user: str, title: str = "", character: str = "", mode: str = "chat",
                    settings: dict[str, Any] | None = None) -> int:
        limits.check_text("title", title)
        now = time.time()
        with self._write() as db:
            cur = db.execute("INSERT INTO chats(user, title, character, mode, settings, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (user, title.strip(), character, mode, json.dumps(settings or {}), now, now))
            return int(cur.lastrowid)

    def _chat_row(self, db: sqlite3.Connection, user: str, chat_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM chats WHERE id = ? AND user = ?", (int(chat_id), user)).fetchone()
        if row is None:
            raise ChatNotFound(f"chat {chat_id} not found")
        return row

    @staticmethod
    def _info(row: sqlite3.Row) -> ChatInfo:
        try:
            return ChatInfo(id=row["id"], user=row["user"], title=_text(row["title"]),
                            character=_text(row["character"]), mode=_text(row["mode"]),
                            leaf_id=row["leaf_id"] if isinstance(row["leaf_id"], int) else None,
                            created=float(row["created"] or 0), updated=float(row["updated"] or 0),
                            settings=_meta(row["settings"]))
        except (TypeError, ValueError) as exc:
            raise DamagedRow(f"chat {row['id']} is damaged in the database and cannot be shown ({exc})") from exc

    def chat(self, user: str, chat_id: int) -> ChatInfo:
        with self._connect() as db:
            return self._info(self._chat_row(db, user, chat_id))

    def list_chats(self, user: str, character: str | None = None, mode: str | None = None) -> list[ChatInfo]:
        """The user's chats, newest activity first (optionally only one character's or mode's)."""
        sql = "SELECT * FROM chats WHERE user = ?"
        args: list[Any] = [user]
        if character is not None:
            sql += " AND character = ?"
            args.append(character)
        if mode is not None:
            sql += " AND mode = ?"
            args.append(mode)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY updated DESC, id DESC", args).fetchall()
        out = []
        for row in rows:
            try:
                out.append(self._info(row))
            except DamagedRow as exc:  # reported, and never hides the others
                log.warning("%s", exc)
        return out

    def rename_chat(self, user: str, chat_id: int, title: str) -> None:
        limits.check_text("title", title)
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            db.execute("UPDATE chats SET title = ? WHERE id = ?", (title.strip(), chat_id))

    def update_chat(self, user: str, chat_id: int, **values: Any) -> None:
        """Change a chat's character, mode or settings."""
        allowed = {"character", "mode", "settings"}
        if not set(values) <= allowed:
            raise ValueError(f"unknown chat fields: {sorted(set(values) - allowed)}")
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            for key, value in values.items():
                db.execute(f"UPDATE chats SET {key} = ? WHERE id = ?",
                           (json.dumps(value) if key == "settings" else value, chat_id))

    def rename_character(self, old: str, new: str) -> int:
        """Every user's chats with character `old` now belong to `new` (a renamed character keeps its
        chats); returns how many moved."""
        with self._write() as db:
            return db.execute("UPDATE chats SET character = ? WHERE character = ?", (new, old)).rowcount

    def delete_chat(self, user: str, chat_id: int) -> None:
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            db.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))

    # -- messages ------------------------------------------------------------------------------
    @staticmethod
    def _message(row: sqlite3.Row) -> StoredMessage:
        try:
            return ChatStore._message_unchecked(row)
        except (TypeError, ValueError) as exc:
            raise DamagedRow(f"message {row['id']} of chat {row['chat_id']} is damaged in the database ({exc})") from exc

    @staticmethod
    def _message_unchecked(row: sqlite3.Row) -> StoredMessage:
        try:
            parts = parts_from_json(json.loads(row["parts"] or "[]"))
        except (PartError, TypeError, ValueError) as exc:  # the text in `content` still shows
            log.warning("message %s of chat %s: unreadable parts (%s); showing its text", row["id"], row["chat_id"], exc)
            parts = ()
        return StoredMessage(id=row["id"], chat_id=row["chat_id"], parent_id=row["parent_id"],
                             role=_text(row["role"]), content=_text(row["content"]), meta=_meta(row["meta"]),
                             complete=bool(row["complete"]), created=float(row["created"] or 0),
                             updated=float(row["updated"] or 0), parts=parts)

    def add_message(self, user: str, chat_id: int, role: str, content: str | Turn,
                    parent_id: int | None | Literal["leaf"] = "leaf", meta: dict[str, Any] | None = None, complete: bool = True) -> int:
        """Append a message (text, or a Turn's parts) under `parent_id` (default: the chat's current
        leaf); it becomes the new leaf."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        parts = content.parts if isinstance(content, Turn) else (TextPart(content),)
        content = Turn(role, parts).text
        limits.check_text("message", content)
        now = time.time()
        with self._write() as db:
            chat = self._chat_row(db, user, chat_id)
            parent = chat["leaf_id"] if parent_id == "leaf" else parent_id
            if parent is not None:
                self._message_row(db, chat_id, parent)
            cur = db.execute("INSERT INTO messages(chat_id, parent_id, role, content, parts, meta, complete, created, "
                             "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (chat_id, parent, role, content, dumps_parts(parts), json.dumps(meta or {}),
                              int(complete), now, now))
            mid = int(cur.lastrowid)
            first_line = content.strip().splitlines()[0][:60] if role == "user" and content.strip() else ""
            title = chat["title"] or first_line
            db.execute("UPDATE chats SET leaf_id = ?, updated = ?, title = ? WHERE id = ?", (mid, now, title, chat_id))
            return mid

    @staticmethod
    def _message_row(db: sqlite3.Connection, chat_id: int, message_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM messages WHERE id = ? AND chat_id = ?", (int(message_id), chat_id)).fetchone()
        if row is None:
            raise ChatNotFound(f"message {message_id} not found in chat {chat_id}")
        return row

    def update_message(self, user: str, chat_id: int, message_id: int, content: str | None = None,
                       meta: dict[str, Any] | None = None, complete: bool | None = None,
                       parts: tuple[Part, ...] | None = None) -> None:
        """Change a message's parts (a streaming flush), only its words (`content`: an edit keeps the
        reasoning and tool parts), its metadata (merged) or its completeness."""
        limits.check_text("message", content if parts is None else Turn("assistant", parts).text)
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            row = self._message_row(db, chat_id, message_id)
            now = time.time()
            if content is not None and parts is None:
                parts = self._message(row).as_turn().with_text(content).parts
            if parts is not None:
                db.execute("UPDATE messages SET content = ?, parts = ?, updated = ? WHERE id = ?",
                           (Turn(row["role"], parts).text, dumps_parts(parts), now, message_id))
            if meta is not None:
                db.execute("UPDATE messages SET meta = ? WHERE id = ?",
                           (json.dumps({**_meta(row["meta"]), **meta}), message_id))
            if complete is not None:
                db.execute("UPDATE messages SET complete = ? WHERE id = ?", (int(complete), message_id))
            db.execute("UPDATE chats SET updated = ? WHERE id = ?", (now, chat_id))

    def delete_message(self, user: str, chat_id: int, message_id: int) -> int | None:
        """Delete a message and everything after it (all branches); the leaf moves to its parent, returned."""
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            row = self._message_row(db, chat_id, message_id)
            db.execute("DELETE FROM messages WHERE id = ?", (message_id,))  # children go by ON DELETE CASCADE
            db.execute("UPDATE chats SET leaf_id = ?, updated = ? WHERE id = ?",
                       (row["parent_id"], time.time(), chat_id))
            return row["parent_id"]

    def set_leaf(self, user: str, chat_id: int, message_id: int | None) -> None:
        """Show the path ending at `message_id` (None: the empty chat)."""
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            if message_id is not None:
                self._message_row(db, chat_id, message_id)
            db.execute("UPDATE chats SET leaf_id = ? WHERE id = ?", (message_id, chat_id))

    def path(self, user: str, chat_id: int, leaf_id: int | None | Literal["leaf"] = "leaf") -> list[StoredMessage]:
        """The conversation from the root to the leaf, each message with its version number."""
        with self._connect() as db:
            chat = self._chat_row(db, user, chat_id)
            rows = db.execute("SELECT * FROM messages WHERE chat_id = ?", (chat_id,)).fetchall()
        by_id: dict[int, StoredMessage] = {}
        for row in rows:
            try:
                by_id[row["id"]] = self._message(row)
            except DamagedRow as exc:  # the rest of the chat still opens
                log.warning("%s", exc)
        node = chat["leaf_id"] if leaf_id == "leaf" else leaf_id
        out: list[StoredMessage] = []
        seen: set[int] = set()
        while node is not None and node in by_id and node not in seen:  # `seen` guards a damaged cycle
            seen.add(node)
            out.append(by_id[node])
            node = by_id[node].parent_id
        out.reverse()
        for msg in out:
            siblings = sorted((m for m in by_id.values() if m.parent_id == msg.parent_id and m.role == msg.role),
                              key=lambda m: m.id)
            msg.versions = len(siblings)
            msg.version = next(i for i, m in enumerate(siblings, 1) if m.id == msg.id)
        return out

    def message(self, user: str, chat_id: int, message_id: int) -> StoredMessage:
        with self._connect() as db:
            self._chat_row(db, user, chat_id)
            return self._message(self._message_row(db, chat_id, message_id))

    def versions(self, user: str, chat_id: int, message_id: int) -> list[StoredMessage]:
        """Every version of a message: its siblings with the same parent and role, oldest first."""
        with self._connect() as db:
            self._chat_row(db, user, chat_id)
            row = self._message_row(db, chat_id, message_id)
            rows = db.execute("SELECT * FROM messages WHERE chat_id = ? AND parent_id IS ? AND role = ? ORDER BY id",
                              (chat_id, row["parent_id"], row["role"])).fetchall()
        return [self._message(r) for r in rows]

    def select_version(self, user: str, chat_id: int, message_id: int, step: int) -> int:
        """Move to the previous (-1) or next (+1) version of a message; the leaf follows its newest branch."""
        versions = self.versions(user, chat_id, message_id)
        ids = [m.id for m in versions]
        index = max(0, min(len(ids) - 1, ids.index(message_id) + step))
        target = ids[index]
        with self._write() as db:
            self._chat_row(db, user, chat_id)
            leaf = target
            while True:  # follow the most recent child down to a leaf
                child = db.execute("SELECT id FROM messages WHERE chat_id = ? AND parent_id = ? "
                                   "ORDER BY updated DESC, id DESC LIMIT 1", (chat_id, leaf)).fetchone()
                if child is None:
                    break
                leaf = child["id"]
            db.execute("UPDATE chats SET leaf_id = ? WHERE id = ?", (leaf, chat_id))
        return target

    def branch(self, user: str, chat_id: int, message_id: int, title: str | None = None) -> int:
        """A new chat holding a copy of the path from the root to `message_id`."""
        path = self.path(user, chat_id, leaf_id=message_id)
        if not path or path[-1].id != message_id:
            raise ChatNotFound(f"message {message_id} not found in chat {chat_id}")
        info = self.chat(user, chat_id)
        now = time.time()
        with self._write() as db:
            cur = db.execute("INSERT INTO chats(user, title, character, mode, settings, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (user, limits.check_text("title", title) or
                              f"{(info.title or 'Chat')[:limits.MAX_TITLE_CHARS - 9]} (branch)", info.character,
                              info.mode, json.dumps(info.settings), now, now))
            new_id = int(cur.lastrowid)
            parent = None
            for msg in path:
                parent = db.execute("INSERT INTO messages(chat_id, parent_id, role, content, parts, meta, complete, "
                                    "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    (new_id, parent, msg.role, msg.content, dumps_parts(msg.as_turn().parts),
                                     json.dumps(msg.meta), int(msg.complete), msg.created, msg.updated)).lastrowid
            db.execute("UPDATE chats SET leaf_id = ? WHERE id = ?", (parent, new_id))
        return new_id

    def search(self, user: str, query: str, limit: int = 50) -> list[tuple[ChatInfo, str]]:
        """The user's chats whose messages or title match `query`, with a snippet; newest first."""
        words = [w for w in query.replace('"', " ").split() if w]
        if not words:
            return []
        fts = " ".join(f'"{w}"' for w in words)  # each word quoted: user text is never FTS syntax
        with self._connect() as db:
            rows = db.execute(
                "SELECT c.*, snippet(messages_fts, 0, '[', ']', '…', 12) AS snip FROM messages_fts "
                "JOIN messages m ON m.id = messages_fts.rowid JOIN chats c ON c.id = m.chat_id "
                "WHERE messages_fts MATCH ? AND c.user = ? ORDER BY c.updated DESC LIMIT ?",
                (fts, user, limit * 4)).fetchall()
            like = "%" + query.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            titled = db.execute("SELECT *, title AS snip FROM chats WHERE user = ? AND title LIKE ? ESCAPE '\\' "
                                "ORDER BY updated DESC LIMIT ?", (user, like, limit)).fetchall()
        found: dict[int, tuple[ChatInfo, str]] = {}
        for row in list(rows) + list(titled):
            if row["id"] not in found:
                try:
                    found[row["id"]] = (self._info(row), _text(row["snip"]))
                except DamagedRow as exc:
                    log.warning("%s", exc)
        return sorted(found.values(), key=lambda item: -item[0].updated)[:limit]

    # -- export / import -----------------------------------------------------------------------
    def export_chat(self, user: str, chat_id: int) -> dict[str, Any]:
        """The whole tree as JSON-able data (format `parlour-chat`, version 2: each message's typed `parts`
        beside its `content` text, which version-1 readers use)."""
        info = self.chat(user, chat_id)
        with self._connect() as db:
            rows = db.execute("SELECT * FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,)).fetchall()
        messages = [self._message(r) for r in rows]
        return {"format": "parlour-chat", "version": 2, "title": info.title, "character": info.character,
                "mode": info.mode, "created": info.created, "leaf": info.leaf_id, "settings": info.settings,
                "messages": [{"id": m.id, "parent": m.parent_id, "role": m.role, "content": m.content,
                              "parts": m.as_turn().to_json()["parts"], "meta": m.meta, "complete": m.complete,
                              "created": m.created} for m in messages]}

    def import_chat_file(self, user: str, data: bytes) -> int:
        """A new chat from an uploaded file (Parlour's export or a text-generation-webui history); ValueError
        with one line saying what is wrong, and nothing written, for anything else."""
        if len(data) > MAX_IMPORT_BYTES:
            raise ValueError(f"the chat file is {len(data):,} bytes; the limit is {MAX_IMPORT_BYTES:,}")
        return self.import_chat(user, load_json(data, "the chat file"))

    def import_chat(self, user: str, data: Any) -> int:
        """A new chat from `export_chat` data or a text-generation-webui history (its current format, with
        versions, timestamps and model names, or its old `{"data", "data_visible"}` one). Everything is
        checked before the one transaction that writes it: a bad file changes nothing."""
        if not isinstance(data, dict):
            raise ValueError(f"a chat file must hold a JSON object, not {_json_type(data)}")
        if json_depth(data) > MAX_JSON_DEPTH:
            raise ValueError(f"the chat file is nested deeper than {MAX_JSON_DEPTH} levels")
        if data.get("format") == "parlour-chat":
            tree = _checked(_ImportedChat, data)
        elif any(key in data for key in ("internal", "visible", "data", "data_visible")):
            tree = _tgw_tree(data)
        else:
            raise ValueError("not a chat file: expected Parlour's export (\"format\": \"parlour-chat\") or a "
                             "text-generation-webui history (an \"internal\" or \"data\" list)")
        return self._import_tree(user, tree)

    def _import_tree(self, user: str, chat: "_ImportedChat") -> int:
        ids = [m.id for m in chat.messages]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"chat file: two messages have the id {duplicate!r}")
        now = time.time()
        with self._write() as db:
            cur = db.execute("INSERT INTO chats(user, title, character, mode, settings, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (user, chat.title.strip()[:MAX_TITLE_CHARS] or "Imported chat", chat.character,
                              chat.mode, json.dumps(chat.settings), now, now))
            chat_id = int(cur.lastrowid)
            new_ids: dict[Any, int] = {}
            for m in chat.messages:  # parents come before children in an export (ordered by id)
                parent = new_ids.get(m.parent) if m.parent is not None else None
                if m.parent is not None and parent is None:
                    raise ValueError(f"chat file: message {m.id!r} names a parent that comes later or is missing")
                created = m.created if m.created is not None else now
                parts = m.typed_parts()
                new_ids[m.id] = int(db.execute(
                    "INSERT INTO messages(chat_id, parent_id, role, content, parts, meta, complete, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (chat_id, parent, m.role, Turn(m.role, parts).text, dumps_parts(parts), json.dumps(m.meta),
                     int(m.complete), created, created)).lastrowid)
            if chat.leaf is not None and chat.leaf not in new_ids:
                raise ValueError(f"chat file: the leaf {chat.leaf!r} is not one of its messages")
            leaf = new_ids[chat.leaf] if chat.leaf is not None else (list(new_ids.values())[-1] if new_ids else None)
            db.execute("UPDATE chats SET leaf_id = ? WHERE id = ?", (leaf, chat_id))
        return chat_id


# -- what an imported chat may hold -----------------------------------------------------------------
MAX_IMPORT_BYTES = 50 * 1024 * 1024
MAX_TITLE_CHARS = 200
_Id = Union[StrictInt, StrictStr]


class _ImportedMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: _Id
    parent: Optional[_Id] = None
    role: Literal["system", "user", "assistant"]
    content: StrictStr
    #: version 2 exports: the turn's typed parts (modules/turns.py); version 1 has only `content`
    parts: Optional[list[Any]] = None
    meta: dict[str, Any] = {}
    complete: StrictBool = True
    created: Optional[float] = Field(None, allow_inf_nan=False)

    @field_validator("parts")
    @classmethod
    def _readable_parts(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            try:
                parts_from_json(value)
            except PartError as exc:
                raise ValueError(str(exc)) from None
        return value

    def typed_parts(self) -> tuple[Part, ...]:
        return parts_from_json(self.parts) if self.parts else (TextPart(self.content),)


class _ImportedChat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    title: StrictStr = ""
    character: StrictStr = ""
    mode: Literal["chat", "instruct", "chat-instruct"] = "chat"
    settings: dict[str, Any] = {}
    leaf: Optional[_Id] = None
    messages: list[_ImportedMessage]


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _checked(model: type[BaseModel], data: Any, what: str = "chat file") -> Any:
    """`model` validated from `data`; the first problem as one line naming where it is."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part in ("int", "str"))]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
        message = error["msg"].replace("Input should be", "must be")
        if loc and loc[-1] in ("id", "parent", "leaf"):  # a union: pydantic reports only its first member
            message = "must be a number or text"
        raise ValueError(f"{what}: {where or 'top level'}: {message}") from None


def _tgw_time(value: Any) -> float | None:
    """text-generation-webui's message timestamps ("Jan 05, 2026 14:03", local time) as epoch seconds."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.strptime(value.strip(), "%b %d, %Y %H:%M").timestamp()
    except ValueError:
        return None


def _tgw_tree(data: dict[str, Any]) -> _ImportedChat:
    """A text-generation-webui history as a chat tree. Each row [user, reply, ...] gives a user message and a
    reply; `metadata["user_<i>"/"assistant_<i>"]` give their timestamps, the model and their versions
    (regenerations and edits), which become sibling versions; the current one continues the chat."""
    rows = data["internal"] if "internal" in data else data.get("data")
    if not isinstance(rows, list):
        raise ValueError("text-generation-webui history: 'internal' (or 'data') must be a list of [user, reply] rows")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError("text-generation-webui history: 'metadata' must be an object")
    messages: list[dict[str, Any]] = []
    parent: int | None = None
    title = ""
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) >= 2 and isinstance(row[0], str) and isinstance(row[1], str)):
            raise ValueError("text-generation-webui history: each entry must be [user text, reply text] "
                             f"(row {i} is not)")
        extra = row[3] if len(row) > 3 and isinstance(row[3], dict) else {}
        for role, key, text in (("user", f"user_{i}", row[0]), ("assistant", f"assistant_{i}", row[1])):
            if role == "user" and text == "<|BEGIN-VISIBLE-CHAT|>":
                continue
            info = metadata.get(key) or {}
            if not isinstance(info, dict):
                raise ValueError(f"text-generation-webui history: metadata[{key!r}] must be an object")
            versions = info.get("versions") or []
            if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
                raise ValueError(f"text-generation-webui history: metadata[{key!r}].versions must be a list of objects")
            contents = [v.get("content") for v in versions if isinstance(v.get("content"), str)]
            if not text and not contents:
                continue
            current = info.get("current_version_index", len(contents) - 1)
            if not contents or not isinstance(current, int) or not 0 <= current < len(contents):
                contents, current, versions = [text], 0, [{}]
            contents[current] = text  # the row holds the version on screen
            chosen = None
            for n, content in enumerate(contents):
                version = versions[n] if n < len(versions) else {}
                meta = {"imported_from": "text-generation-webui"}
                model = version.get("model_name") or (info.get("model_name") if n == current else None)
                if isinstance(model, str) and model and model != "None":
                    meta["model"] = model
                created = _tgw_time(version.get("timestamp")) or (_tgw_time(info.get("timestamp"))
                                                                  if n == current else None)
                messages.append({"id": len(messages), "parent": parent,
                                 "role": "system" if role == "user" and extra.get("role") == "system" else role,
                                 "content": content, "meta": meta, "created": created})
                if n == current:
                    chosen = len(messages) - 1
            parent = chosen
            if role == "user" and not title:
                title = text.strip().splitlines()[0][:60] if text.strip() else ""
    return _checked(_ImportedChat, {"title": title or "Imported chat", "messages": messages, "leaf": parent},
                    "text-generation-webui history")


class ReplyWriter:
    """Saves a streaming reply: the message row exists from the first token and grows as parts arrive.

    `update(parts, tokens)` writes only when `interval` seconds passed or `every_tokens` tokens arrived
    since the last write, so the database sees a few writes a second, not one per token.
    """

    def __init__(self, store: ChatStore, user: str, chat_id: int, message_id: int, interval: float = 0.5,
                 every_tokens: int = 32) -> None:
        self.store, self.user, self.chat_id, self.message_id = store, user, chat_id, message_id
        self.interval, self.every_tokens = interval, every_tokens
        self._last_time = time.monotonic()
        self._last_tokens = 0
        self._saved = None

    def update(self, parts: tuple[Part, ...], tokens: int) -> bool:
        """Flush if due; return whether it wrote."""
        if time.monotonic() - self._last_time < self.interval and tokens - self._last_tokens < self.every_tokens:
            return False
        self.flush(parts, tokens)
        return True

    def flush(self, parts: tuple[Part, ...], tokens: int, meta: dict[str, Any] | None = None,
              complete: bool = False) -> None:
        self.store.update_message(self.user, self.chat_id, self.message_id,
                                  parts=parts if parts != self._saved or complete else None,
                                  meta=meta, complete=complete)
        self._saved = parts
        self._last_time = time.monotonic()
        self._last_tokens = tokens
