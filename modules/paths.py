"""Turn a user-supplied name into a path that cannot leave its folder.

Every file a user names (preset, character, model, template, ...) goes through `safe_child`. A name is
a single path component: no separators (nor their Unicode look-alikes), no NUL, no `..`, not
absolute, not a reserved device name, not too long. Symlinks that point outside the folder are refused.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

MAX_NAME = 120
# Characters that act, or look, like path separators; refused rather than normalised so that a
# name never silently turns into a different one.
_SEPARATORS = set("/\\\x00") | {"\u2215", "\u2044", "\u29f8", "\uff0f", "\uff3c", "\u2216", "\ufe68"}
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


class UnsafeName(ValueError):
    """A name that would escape its folder or cannot be a file name."""


def check_name(name: str) -> str:
    """Return `name` stripped if it is a safe single file name, else raise UnsafeName."""
    if not isinstance(name, str):
        raise UnsafeName("a name must be text")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise UnsafeName("the name is empty")
    if len(name) > MAX_NAME:
        raise UnsafeName(f"the name is longer than {MAX_NAME} characters")
    if any(ch in _SEPARATORS for ch in name) or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise UnsafeName(f"the name {name[:40]!r} contains a path separator or control character")
    if name in {".", ".."} or name.startswith("."):
        raise UnsafeName(f"the name {name[:40]!r} may not start with a dot")
    if "%" in name and re.search(r"%[0-9a-fA-F]{2}", name):
        raise UnsafeName(f"the name {name[:40]!r} contains URL-encoded characters")
    if _RESERVED.match(name) or name.endswith((" ", ".")):
        raise UnsafeName(f"the name {name[:40]!r} is reserved on some systems")
    return name


def safe_child(root: Path, name: str, suffix: str = "") -> Path:
    """The path of `name` + `suffix` directly inside `root`; raise UnsafeName if it would escape."""
    name = check_name(name)
    root_resolved = root.resolve()
    path = root / f"{name}{suffix}"
    resolved = path.resolve()
    if resolved.parent != root_resolved:
        raise UnsafeName(f"{name!r} points outside {root}")
    return path
