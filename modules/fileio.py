"""Small file helpers: atomic writes and size-limited reads."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import yaml


class FileTooLarge(ValueError):
    """A file bigger than the caller accepts."""


class SaveFailed(OSError):
    """A file could not be written. The file that was there (if any) is unchanged and no temp file is
    left behind; the message says why in words a user can act on ("the disk is full")."""

    def __str__(self) -> str:  # the words only, not OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "permission denied (the folder or file is read-only)",
    errno.EPERM: "the operating system refused (the folder or file is read-only or locked)",
    errno.EFBIG: "the file is larger than the system allows",
}


def os_reason(exc: OSError) -> str:
    """A short human reason for an OSError, falling back to the system's own text."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, then rename over.

    Any OS failure (disk full, read-only folder, ...) raises SaveFailed naming the file and the reason;
    the old file is untouched because it is only ever replaced by a complete, fsynced copy.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SaveFailed(exc.errno, f"could not save {path.name}: {os_reason(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # A full disk often shows up only at flush, fsync or close: whatever failed, the half-written
        # temp file goes and the old file stays.
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing could have been created there anyway
        if isinstance(exc, OSError):
            raise SaveFailed(exc.errno, f"could not save {path.name}: {os_reason(exc)}") from exc
        raise


def read_text_limited(path: Path, limit: int) -> str:
    """Read a UTF-8 file, refusing files larger than `limit` bytes before reading them."""
    size = path.stat().st_size
    if size > limit:
        raise FileTooLarge(f"{path.name} is {size:,} bytes; the limit is {limit:,}")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{path.name} is larger than {limit:,} bytes")
    return data.decode("utf-8")


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors/aliases: an alias "bomb" (a few lines expanding to billions of
    items when serialized or walked) is refused before anything is built. Parlour's files never need them."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str):
    """Parse YAML safely: plain data only (no tags that build objects), no aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


class YamlFileError(ValueError):
    """A YAML file that cannot be read as a mapping; the message says why."""


def read_yaml_mapping(path: Path, limit: int) -> dict:
    """The mapping in a YAML file: {} if the file is missing or empty; YamlFileError if it is too large,
    not YAML (or uses tags/aliases), or its top level is not a mapping."""
    if not path.exists():
        return {}
    try:
        data = load_yaml(read_text_limited(path, limit))
    except (yaml.YAMLError, FileTooLarge, UnicodeDecodeError) as exc:
        raise YamlFileError(str(exc)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise YamlFileError(f"the top level must be a mapping, not {type(data).__name__}")
    return data


def unusable_files(names: Iterable[str], load: Callable[[str], object],
                   error: type[Exception]) -> dict[str, str]:
    """{name: why} for every name that `load` refuses with `error`: one broken file is reported by name
    while the others load as usual (the stores' `problems()`)."""
    found = {}
    for name in names:
        try:
            load(name)
        except error as exc:
            found[name] = str(exc)
    return found


#: deepest nesting an imported JSON file (a chat, a card) may have; real ones stay under 10
MAX_JSON_DEPTH = 64


def json_depth(value: object, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and dicts nest in `value` (walked without recursion; stops counting past `limit`)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Parse an imported JSON file; ValueError with one line naming `what` and the fault (not UTF-8, not
    JSON and where, nested deeper than `max_depth`). The parser's own recursion limit becomes that
    error too, so a 100,000-deep file is refused, never a RecursionError."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    if json_depth(value, max_depth) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels")
    return value
