"""Write a chats database with the store code of an earlier commit, for the upgrade test.

    python scripts/make_store_fixture.py 420038a tests/fixtures/chats-v1.sqlite

The database is made by that commit's own `modules/store.py` (read from git, run as it was), so the
fixture is exactly what a user of that version has on disk: several users, chats with branches,
regenerated versions, metadata, an unfinished reply, a profile. tests/unit/test_store_migrations.py
opens a copy with today's code and checks that nothing was lost.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def old_store(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:modules/store.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp())
    (folder / "store_then.py").write_text(source)
    spec = importlib.util.spec_from_file_location("store_then", folder / "store_then.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["store_then"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fill(store) -> None:
    store.set_profile("ann", "Ann", "Likes tea.")
    chat = store.create_chat("ann", title="Tea", character="Assistant", mode="instruct",
                             settings={"preset": "Default"})
    q = store.add_message("ann", chat, "user", "What tea is best?")
    store.add_message("ann", chat, "assistant", "Green tea.", meta={"model": "m", "seed": 1, "tokens": 3})
    store.add_message("ann", chat, "assistant", "Black tea, with milk.", parent_id=q,
                      meta={"model": "m", "seed": 2, "tokens": 5})  # a regenerated version
    store.add_message("ann", chat, "user", "Why?")
    store.add_message("ann", chat, "assistant", "Because it is", complete=False)  # cut off mid-reply
    store.branch("ann", chat, q, title="Tea (branch)")
    other = store.create_chat("bob", title="Code", mode="chat")
    store.add_message("bob", other, "system", "Be brief.")
    store.add_message("bob", other, "user", "print hello in python")
    store.add_message("bob", other, "assistant", "```python\nprint('hello')\n```")


def main(argv: list[str]) -> int:
    commit, out = argv
    path = Path(out)
    path.unlink(missing_ok=True)
    store = old_store(commit).ChatStore(path)
    fill(store)
    # one self-contained file: the write-ahead log checkpointed into it, and journal mode back to the default
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    print(f"wrote {path} with the store of {commit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
