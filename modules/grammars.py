"""Grammar files for the Parameters tab's "Constrain output" box.

Two folders are listed: `user_data/grammars/` (the user's own, where text-generation-webui keeps its
`.gbnf` files, so they can be copied over as they are) and `grammars/` (the ones Parlour ships: json, a
list, yes/no, arithmetic). The shipped folder is read in place rather than copied into user_data: an
update then reaches every user, and deleting a copy never brings it back by surprise. A user's file
with the same name as a shipped one is the one used.
"""

from __future__ import annotations

from pathlib import Path

from modules.fileio import FileTooLarge, read_text_limited
from modules.paths import UnsafeName, safe_child
from modules.presets import MAX_CONSTRAINT_CHARS

SHIPPED = Path(__file__).resolve().parents[1] / "grammars"
SUFFIXES = (".gbnf", ".lark")


class GrammarError(ValueError):
    """A grammar file that cannot be read; the message names it."""


class GrammarLibrary:
    """The grammar files in `folders`, first folder first (a name found there hides the same name later)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders

    @classmethod
    def for_user_data(cls, user_data: Path) -> "GrammarLibrary":
        return cls([user_data / "grammars", SHIPPED])

    def names(self) -> list[str]:
        """File names (with their suffix), sorted."""
        found: set[str] = set()
        for folder in self.folders:
            if folder.is_dir():
                found.update(p.name for p in folder.iterdir()
                             if p.suffix in SUFFIXES and p.is_file() and not p.is_symlink())
        return sorted(found)

    def read(self, name: str) -> str:
        if not name.endswith(SUFFIXES):
            raise GrammarError(f"{name!r} is not a grammar file (.gbnf or .lark)")
        for folder in self.folders:
            try:
                path = safe_child(folder, name)
            except UnsafeName as exc:
                raise GrammarError(f"bad grammar name: {exc}") from exc
            if path.is_file() and not path.is_symlink():
                try:
                    return read_text_limited(path, MAX_CONSTRAINT_CHARS)
                except (FileTooLarge, UnicodeDecodeError, OSError) as exc:
                    raise GrammarError(f"grammar {name!r}: {exc}") from exc
        raise GrammarError(f"grammar {name!r} does not exist")
