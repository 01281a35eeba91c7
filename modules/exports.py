"""Files the UI hands out for download (chat exports, character cards), kept in Gradio's own cache.

They are written straight into Gradio's cache folder, so Gradio serves them as they are instead of
copying them (a copy in /tmp would outlive the chat it came from). Gradio's `delete_cache` timer removes
them after --cache-minutes; deleting a chat removes its exports at once; a restart removes them all.

    <cache>/parlour-exports/<owner>/<what>/<random token>/<file name>

`owner` is a digest of the login (no user names in paths), `what` the chat id or "card"; the random
token makes the download URL unguessable for other logins.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

FOLDER = "parlour-exports"


def cache_dir() -> Path:
    """Gradio's cache folder (GRADIO_TEMP_DIR; server.py points it into --user-data)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def _folder(cache: Path, user: str, what: str) -> Path:
    owner = hashlib.sha256(user.encode()).hexdigest()[:16]
    return cache / FOLDER / owner / what


def write_export(cache: Path, user: str, what: str, name: str, data: bytes) -> Path:
    """Write `data` as `name` for `user`'s download of `what` (a chat id or "card"); OSError if it cannot."""
    folder = _folder(cache, user, what) / secrets.token_hex(16)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def forget(cache: Path, user: str, what: str) -> None:
    """Delete every export of `what` (a deleted chat's downloads)."""
    shutil.rmtree(_folder(cache, user, what), ignore_errors=True)


def clear_all(cache: Path) -> None:
    """Delete every export (at start: the cache is this instance's, and nothing of a previous run is in use)."""
    shutil.rmtree(cache / FOLDER, ignore_errors=True)
