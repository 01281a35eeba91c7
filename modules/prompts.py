"""The Notebook's files: saved prompts and each user's autosaved text, without Gradio.

Saved prompts are `user_data/prompts/NAME.txt` (text-generation-webui's folder and format: the file is
the prompt), shared by every user like presets; names go through `modules.paths` so none leaves the
folder. The autosave is one file per user, `user_data/notebook/USER.txt`, written atomically on every
edit, so the text survives a reload, a closed tab and a restarted server; with `--auth` each login has
its own. A user name that cannot be a file name is stored under a hash of it instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from modules.fileio import FileTooLarge, SaveFailed, atomic_write_text, os_reason, read_text_limited
from modules.paths import UnsafeName, check_name, safe_child

MAX_PROMPT_BYTES = 4 * 1024 * 1024


class PromptError(ValueError):
    """A prompt that cannot be read, saved or deleted; one line saying why."""


def _read(path: Path, what: str) -> str:
    try:
        return read_text_limited(path, MAX_PROMPT_BYTES)
    except FileNotFoundError as exc:
        raise PromptError(f"{what} not found") from exc
    except (FileTooLarge, UnicodeDecodeError) as exc:
        raise PromptError(f"{what}: {exc}") from exc


def _write(path: Path, text: str, what: str) -> None:
    if len(text.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise PromptError(f"{what} is larger than {MAX_PROMPT_BYTES:,} bytes")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except SaveFailed as exc:
        raise PromptError(f"not saved: {exc}") from exc
    except OSError as exc:
        raise PromptError(f"{what} was not saved: {os_reason(exc)}") from exc


class PromptLibrary:
    """`user_data/prompts/*.txt`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.stem for p in self.root.glob("*.txt") if not p.name.startswith(".")), key=str.lower)

    def _path(self, name: str) -> Path:
        try:
            return safe_child(self.root, name, ".txt")
        except UnsafeName as exc:
            raise PromptError(f"prompt name: {exc}") from exc

    def load(self, name: str) -> str:
        return _read(self._path(name), f"prompt {name!r}")

    def save(self, name: str, text: str) -> str:
        """Save (or replace) a prompt; returns its name as stored."""
        if not (name or "").strip():
            raise PromptError("type a name for the prompt first")
        path = self._path(name)
        _write(path, text, f"prompt {path.stem!r}")
        return path.stem

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError as exc:
            raise PromptError(f"prompt {name!r} not found") from exc
        except OSError as exc:
            raise PromptError(f"prompt {name!r} was not deleted: {os_reason(exc)}") from exc


class NotebookDrafts:
    """Each user's Notebook text, `user_data/notebook/USER.txt`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, user: str) -> Path:
        try:
            name = check_name(user)
        except UnsafeName:
            name = "user-" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:24]
        return safe_child(self.root, name, ".txt")

    def load(self, user: str) -> str:
        """The user's last text ("" before the first edit)."""
        path = self._path(user)
        return _read(path, "the notebook") if path.exists() else ""

    def save(self, user: str, text: str) -> None:
        _write(self._path(user), text or "", "the notebook")
