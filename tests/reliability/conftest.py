"""Fault injection for the reliability tests: a full disk and a read-only folder, as close to the real
thing as this machine allows.

Files (presets, characters, per-model settings) are written by `fileio.atomic_write_bytes`:
- *disk full*: the temp file's descriptor is opened on `/dev/full`, so the kernel itself answers the
  write with ENOSPC (nothing is mocked about the error, only where the bytes go); a second variant makes
  `fsync` fail with ENOSPC, which is where delayed-allocation filesystems and NFS report a full disk.
- *read-only*: without root, `chmod 0555` on the folder; as root (CI containers) chmod denies nothing,
  so the folder is made immutable with `chattr +i`, which even root cannot write into. Where the
  filesystem has no such flag (some overlay filesystems), temp-file creation is made to fail with EROFS,
  which is what a read-only mount answers.

The chats database (SQLite) is written by SQLite itself, so:
- *disk full*: every connection gets `PRAGMA max_page_count` = its current size, so the next page SQLite
  needs fails with SQLITE_FULL, the very error it raises when the disk is out of space.
- *read-only*: the database file is made immutable (`chattr +i` as root, chmod otherwise), so SQLite opens
  it read-only and refuses writes with SQLITE_READONLY; without the flag, `PRAGMA query_only` gives the
  same SQLITE_READONLY.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from modules import fileio
from modules.store import ChatStore


def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed): kind, size and content hash. Two equal snapshots
    mean nothing was created, deleted or changed. `ignore`: file names left out (SQLite's files, whose
    bytes change on reads too)."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        if path.name in ignore:
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Make `paths` (folders or files) read-only for this process; yields how it was done."""
    done: list[tuple[str, Path, int]] = []
    method = "chmod"
    try:
        for path in paths:
            if os.geteuid() != 0:
                mode = path.stat().st_mode
                path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
                done.append(("chmod", path, mode))
            elif _chattr("+i", path):
                method = "chattr"
                done.append(("chattr", path, 0))
            else:
                method = "erofs"
        if method == "erofs":
            _refuse_writes(monkeypatch)
        yield method
    finally:
        for how, path, mode in reversed(done):
            if how == "chmod":
                path.chmod(mode)
            else:
                _chattr("-i", path)


def _refuse_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: what a read-only mount answers (EROFS) for new files and SQLite writes."""
    def no_temp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", no_temp)
    _every_connection(monkeypatch, lambda db: db.execute("PRAGMA query_only=ON"))


def _every_connection(monkeypatch: pytest.MonkeyPatch, prepare: Callable) -> None:
    original = ChatStore._connect

    @contextlib.contextmanager
    def connect(self):
        with original(self) as db:
            prepare(db)
            yield db

    monkeypatch.setattr(ChatStore, "_connect", connect)


def disk_full(monkeypatch: pytest.MonkeyPatch, where: str = "write") -> None:
    """From now on every file save and every database write meets a full disk."""
    if where == "write":
        real_mkstemp = tempfile.mkstemp

        def mkstemp_on_dev_full(*args, **kwargs):
            fd, name = real_mkstemp(*args, **kwargs)  # the temp file exists, as it would on a full disk
            os.close(fd)
            return os.open("/dev/full", os.O_WRONLY), name

        monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp_on_dev_full)
    else:
        def fsync_full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fileio.os, "fsync", fsync_full)

    def cap(db) -> None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={max(pages, 1)}")

    _every_connection(monkeypatch, cap)


@pytest.fixture()
def snapshot_of() -> Callable[[Path], dict[str, tuple]]:
    return snapshot
