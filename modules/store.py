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
from typing import Any, Iterator, Literal

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
        with self._write() as db:
            db.execute("INSERT INTO users(name, display_name, description, created) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET display_name = excluded.display_name, "
                       "description = excluded.description", (user, name.strip(), description, time.time()))

    # -- chats ---------------------------------------------------------------------------------
    def create_chat(self, user: str, title: str = "", character: str = "", mode: str = "chat",
                    settings: dict[str, Any] | None = None) -> int:
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
                             (user, title or f"{info.title or 'Chat'} (branch)", info.character, info.mode,
                              json.dumps(info.settings), now, now))
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

    def import_chat(self, user: str, data: dict[str, Any]) -> int:
        """A new chat from `export_chat` data or text-generation-webui's history JSON."""
        if not isinstance(data, dict):
            raise ValueError("a chat file must hold a JSON object")
        if data.get("format") == "parlour-chat":
            return self._import_tree(user, data)
        if isinstance(data.get("internal"), list) or isinstance(data.get("visible"), list):
            pairs = data.get("internal") or data.get("visible")
            turns: list[tuple[str, str]] = []
            for pair in pairs:
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                    raise ValueError("text-generation-webui history: each entry must be [user, reply]")
                if pair[0] and pair[0] != "<|BEGIN-VISIBLE-CHAT|>":
                    turns.append(("user", pair[0]))
                if pair[1]:
                    turns.append(("assistant", pair[1]))
            return self._import_linear(user, "Imported chat", turns)
        raise ValueError("not a chat file: expected Parlour's export or text-generation-webui's history "
                         "(with an 'internal' list)")

    def _import_linear(self, user: str, title: str, turns: list[tuple[str, str]]) -> int:
        # As one tree, so the import is one transaction: a failure halfway (a full disk) leaves no half chat.
        messages = [{"id": i, "parent": i - 1 if i else None, "role": role, "content": content}
                    for i, (role, content) in enumerate(turns)]
        return self._import_tree(user, {"title": title, "messages": messages})

    def _import_tree(self, user: str, data: dict[str, Any]) -> int:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ValueError("chat file: 'messages' must be a list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError("chat file: every message needs a role (system/user/assistant) and text content")
        parts_of: dict[int, tuple[Part, ...]] = {}
        for n, m in enumerate(messages):  # version 2: typed parts; version 1 has only the text
            if m.get("parts") is not None:
                try:
                    parts_of[n] = parts_from_json(m["parts"])
                except PartError as exc:
                    raise ValueError(f"chat file: message {m.get('id', n)}: {exc}") from exc
        now = time.time()
        with self._write() as db:
            cur = db.execute("INSERT INTO chats(user, title, character, mode, settings, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (user, str(data.get("title") or "Imported chat"), str(data.get("character") or ""),
                              str(data.get("mode") or "chat"), json.dumps(data.get("settings") or {}), now, now))
            chat_id = int(cur.lastrowid)
            new_ids: dict[Any, int] = {}
            for n, m in enumerate(messages):  # parents come before children in an export (ordered by id)
                parent = new_ids.get(m.get("parent")) if m.get("parent") is not None else None
                if m.get("parent") is not None and parent is None:
                    raise ValueError(f"chat file: message {m.get('id')} names a parent that comes later or is missing")
                parts = parts_of.get(n) or (TextPart(m["content"]),)
                new_ids[m.get("id")] = int(db.execute(
                    "INSERT INTO messages(chat_id, parent_id, role, content, parts, meta, complete, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (chat_id, parent, m["role"], Turn(m["role"], parts).text, dumps_parts(parts),
                     json.dumps(m.get("meta") or {}), int(bool(m.get("complete", True))), now, now)).lastrowid)
            leaf = new_ids.get(data.get("leaf"), list(new_ids.values())[-1] if new_ids else None)
            db.execute("UPDATE chats SET leaf_id = ? WHERE id = ?", (leaf, chat_id))
        return chat_id


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
