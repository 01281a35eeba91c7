"""Training data: a file (or saved chats) read into records, naming the file and line of anything wrong.

Formats — `auto` picks one from the first record, then holds every record to it:

- openai:   JSONL of `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}`
- sharegpt: JSONL of `{"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}]}`
- alpaca:   JSONL (or one JSON array) of `{"instruction": "...", "input": "...", "output": "..."}`
            (`input` and `system` optional); it becomes a user turn and an assistant turn
- text:     a .txt / .md file, or JSONL of `{"text": "..."}`; cut into token windows when formatted

Everything is checked here, before a model is touched: a bad line stops the run with its line number.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from modules.paths import UnsafeName, check_name
from modules.training import TrainingError

MAX_DATASET_BYTES = 256 * 2**20  # far more text than a LoRA run on one machine gets through
SUFFIXES = (".jsonl", ".json", ".txt", ".md")
TEXT_SUFFIXES = {".txt", ".md", ".text"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
          "gpt": "assistant", "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class DataError(TrainingError):
    """A dataset that cannot be trained on; the message names the file and line, or the reason."""


@dataclass(frozen=True)
class Record:
    """One training example before tokenizing: a chat (`messages`) or a plain text (`text`)."""

    source: str  # where it came from, for messages: "chats.jsonl line 3", "chat 12 'Trip'"
    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None


def _size_check(path: Path, name: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{name} cannot be read: {exc.strerror or exc}") from exc
    if size > MAX_DATASET_BYTES:
        raise DataError(f"{name} is {size / 2**30:.1f} GiB; the largest training file is "
                        f"{MAX_DATASET_BYTES // 2**20} MiB: split it or keep a sample of it")


def _decoded_lines(data: bytes, name: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name} line {number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                            f"{exc.start + 1}): is this a text or JSONL file?") from exc
        if line.strip():
            yield number, line


def _objects(data: bytes, name: str, suffix: str) -> Iterator[tuple[str, Any]]:
    """(where, parsed value) for each record: JSONL lines, or the items of one JSON array."""
    if suffix == ".json" or data.lstrip()[:1] == b"[":
        try:
            items = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: not UTF-8 text (byte offset {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {exc.lineno}: not JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(items, list):
            raise DataError(f"{name}: a JSON file must hold an array of records, not {type(items).__name__}")
        for index, item in enumerate(items, 1):
            yield f"{name} item {index}", item
        return
    for number, line in _decoded_lines(data, name):
        try:
            yield f"{name} line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " — plain text? choose the text format" if number == 1 else ""
            raise DataError(f"{name} line {number}: not JSON ({exc.msg}, column {exc.colno}){hint}") from exc


def detect_format(value: Any) -> str | None:
    """The format a parsed record looks like, or None."""
    if not isinstance(value, dict):
        return None
    if "messages" in value:
        return "openai"
    if "conversations" in value:
        return "sharegpt"
    if "instruction" in value or "output" in value:
        return "alpaca"
    if "text" in value:
        return "text"
    return None


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts (text parts only)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if any(p.get("type") not in ("text", None) for p in value):
            raise DataError(f"{where}: only text content can be trained on (found a {value[0].get('type')!r} part)")
        return "".join(str(p.get("text", "")) for p in value)
    raise DataError(f"{where}: content must be text, not {type(value).__name__}")


def _turns(items: Any, where: str, role_key: str, content_key: str, field: str) -> tuple[dict[str, str], ...]:
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: '{field}' must be a non-empty list of messages")
    turns = []
    for index, item in enumerate(items, 1):
        at = f"{where}, message {index}"
        if not isinstance(item, dict):
            raise DataError(f"{at}: must be an object with '{role_key}' and '{content_key}'")
        missing = [k for k in (role_key, content_key) if k not in item]
        if missing:
            raise DataError(f"{at}: missing '{missing[0]}'")
        role = _ROLES.get(str(item[role_key]).lower())
        if role is None:
            raise DataError(f"{at}: role {item[role_key]!r} cannot be trained on (use system, user or assistant)")
        turns.append({"role": role, "content": _content(item[content_key], at)})
    return tuple(turns)


def _record(value: dict[str, Any], where: str, fmt: str) -> Record:
    looks = detect_format(value)
    if looks != fmt:
        seen = f"it looks like {looks}" if looks else f"its keys are {', '.join(sorted(value)[:6]) or 'none'}"
        need = {"openai": "'messages'", "sharegpt": "'conversations'", "alpaca": "'instruction' and 'output'",
                "text": "'text'"}[fmt]
        raise DataError(f"{where}: not {fmt} data — {fmt} needs {need}, but {seen}")
    if fmt == "openai":
        return Record(where, _turns(value["messages"], where, "role", "content", "messages"))
    if fmt == "sharegpt":
        return Record(where, _turns(value["conversations"], where, "from", "value", "conversations"))
    if fmt == "text":
        if not isinstance(value["text"], str):
            raise DataError(f"{where}: 'text' must be a string")
        return Record(where, text=value["text"])
    for key in ("instruction", "output"):
        if not isinstance(value.get(key), str):
            raise DataError(f"{where}: missing '{key}' (Alpaca needs instruction and output as text)")
    for key in ("input", "system"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise DataError(f"{where}: '{key}' must be text")
    prompt = value["instruction"] + (f"\n\n{value['input']}" if value.get("input") else "")
    turns = ([{"role": "system", "content": value["system"]}] if value.get("system") else [])
    return Record(where, tuple(turns + [{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": value["output"]}]))


def read_file(path: Path, data_format: str = "auto", name: str | None = None) -> list[Record]:
    """Every record of a dataset file, or DataError naming the file and line of the first bad one."""
    name = name or path.name
    _size_check(path, name)
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if data_format == "text" or (data_format == "auto" and suffix in TEXT_SUFFIXES):
        text = "\n".join(line for _, line in _decoded_lines(data, name))  # checks UTF-8 line by line
        if not text.strip():
            raise DataError(f"{name} holds no text")
        return [Record(name, text=data.decode("utf-8-sig"))]
    records: list[Record] = []
    fmt = None if data_format == "auto" else data_format
    for where, value in _objects(data, name, suffix):
        if not isinstance(value, dict):
            raise DataError(f"{where}: a record must be a JSON object, not {type(value).__name__}")
        fmt = fmt or detect_format(value)
        if fmt is None:
            raise DataError(f"{where}: unknown format (found {', '.join(sorted(value)[:6])}); expected 'messages' "
                            "(OpenAI), 'conversations' (ShareGPT), 'instruction'/'output' (Alpaca) or 'text'")
        records.append(_record(value, where, fmt))
    if not records:
        raise DataError(f"{name} holds no samples (the file is empty)")
    return records


def read_chats(store: Any, user: str, chat_ids: list[int]) -> list[Record]:
    """Saved chats (modules/store.py ChatStore) as records: each chat's current branch, in order."""
    from modules.store import ChatNotFound

    if not chat_ids:
        raise DataError("no chats chosen")
    records = []
    for chat_id in chat_ids:
        try:
            info = store.chat(user, chat_id)
            path = store.path(user, chat_id)
        except ChatNotFound as exc:
            raise DataError(f"chat {chat_id} does not exist") from exc
        where = f"chat {chat_id} ({info.title or 'untitled'!r})"
        turns = tuple({"role": _ROLES.get(m.role, m.role), "content": m.content} for m in path if m.content.strip())
        bad = next((t["role"] for t in turns if t["role"] not in ("system", "user", "assistant")), None)
        if bad is not None:
            raise DataError(f"{where}: role {bad!r} cannot be trained on")
        if not turns:
            raise DataError(f"{where} has no messages")
        records.append(Record(where, turns))
    return records


def fingerprint(path: Path | None, records: list[Record]) -> str:
    """sha256 of the data: the file's bytes, or (saved chats) the records themselves."""
    digest = hashlib.sha256()
    if path is not None:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(json.dumps([(r.source, r.messages, r.text) for r in records], sort_keys=True).encode())
    return digest.hexdigest()


def list_datasets(folder: Path) -> list[str]:
    """Dataset files directly in `folder` (user_data/training/)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def dataset_path(folder: Path, name: str) -> Path:
    """The file `name` in `folder`, refusing names that leave it."""
    from modules.paths import safe_child

    try:
        path = safe_child(folder, name)
    except UnsafeName as exc:
        raise DataError(f"bad dataset name: {exc}") from exc
    if not path.is_file() or path.is_symlink():
        raise DataError(f"{name} is not in {folder}")
    return path


def save_upload(source: Path, folder: Path) -> str:
    """Copy an uploaded file into `folder` under its own (checked) name; a different file already there
    under that name is kept and the upload gets a numbered name. Returns the name."""
    _size_check(source, source.name)
    try:
        name = check_name(source.name)
    except UnsafeName as exc:
        raise DataError(f"bad file name: {exc}") from exc
    if Path(name).suffix.lower() not in SUFFIXES:
        raise DataError(f"{name}: training files are {', '.join(SUFFIXES)}")
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, number = name, 1
    while (folder / candidate).exists():
        if (folder / candidate).read_bytes() == source.read_bytes():
            return candidate
        number += 1
        candidate = f"{stem}-{number}{suffix}"
    tmp = folder / f".{candidate}.upload"
    shutil.copyfile(source, tmp)
    tmp.replace(folder / candidate)
    return candidate
