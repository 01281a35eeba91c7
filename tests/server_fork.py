"""Server processes for the tests, forked from a process that has already imported the heavy libraries.

Why: most test files start `server.py` processes of their own, and each start costs ~12 s of CPU on
this 2-core machine, ~9 s of it importing Gradio, torch and Transformers (py-spy of a start). A forked
child starts from those imports already done: a micro-model server is up and loaded for ~3 s of CPU.

What stays as in `python server.py ...`: the child runs server.py as `__main__` with the same argv, working
folder, environment (a parent forks only for the environment it was started with), stdin from /dev/null
and stdout/stderr into the log; it exits through the interpreter's normal shutdown (atexit handlers, non-daemon threads joined). The parent imports only
third-party libraries plus `server.import_gradio` (so Gradio is imported exactly as the server imports it)
and runs no torch operation, so no thread pool exists to be lost in the fork. Start-up itself is tested
with real processes elsewhere (tests/integration/test_startup.py and the benches).

Protocol (the parent's stdin/stdout, one JSON object per line): the test process sends
`{"argv", "cwd", "log", "env"}`; the parent answers `{"pid"}` for each child and `{"exited", "code"}` when one
ends (code as `subprocess.Popen.returncode`: negative for a signal). At end of input it stops its children.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server.py"


def _preimport() -> None:
    sys.path.insert(0, str(ROOT))
    import server

    server.import_gradio()
    import fastapi  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import uvicorn  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.gpt2 import modeling_gpt2  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _serve(inp: int, out: int) -> dict | None:
    """The parent's loop; returns a job only in a forked child (None in the parent, at end of input)."""
    children: dict[int, int] = {}  # pidfd -> pid
    pending = b""
    while True:
        ready, _, _ = select.select([inp, *children], [], [])
        for fd in ready:
            if fd != inp:
                pid = children.pop(fd)
                _, status = os.waitpid(pid, 0)
                os.close(fd)
                os.write(out, (json.dumps({"exited": pid, "code": _code(status)}) + "\n").encode())
                continue
            chunk = os.read(inp, 65536)
            if not chunk:  # the test process is gone or done: its servers go with it
                for pid in children.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                return None
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    for child_fd in (inp, out, *children):
                        os.close(child_fd)
                    return job
                children[os.pidfd_open(pid)] = pid
                os.write(out, (json.dumps({"pid": pid}) + "\n").encode())


def _run(job: dict) -> None:
    """In the child: become `python server.py *argv` run in `cwd`, writing into `log`."""
    import random
    import runpy

    os.environ.clear()
    os.environ.update(job["env"])
    os.chdir(job["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    random.seed()  # a fresh process would not share its random state with its siblings
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    sys.argv = [str(SERVER), *job["argv"]]
    sys.path[0] = str(ROOT)
    runpy.run_path(str(SERVER), run_name="__main__")


def main() -> None:
    inp, out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # anything the imports print goes to the parent's stderr, not into the protocol
    os.close(null)
    _preimport()
    os.write(out, b'{"ready": true}\n')
    job = _serve(inp, out)
    if job is not None:
        _run(job)


# -- the test process's side ---------------------------------------------------------------------------


class ForkedProcess:
    """A forked server as a `subprocess.Popen` is used here: pid, poll, wait, terminate, kill, returncode."""

    def __init__(self, forker: "Forker", pid: int) -> None:
        self._forker = forker
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._forker.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self._forker.exit_code(self.pid, timeout=timeout)
        if code is None:
            raise subprocess.TimeoutExpired(str(SERVER), timeout or 0)
        self.returncode = code
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Forker:
    """The test process's handle on its forking parent (started on first use, one per test process)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.server_fork"], cwd=ROOT, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lock = threading.Lock()  # one start at a time: the answer to a start is the next "pid" line
        self._started: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # pids; None once the parent is gone
        self._changed = threading.Condition()  # for exits
        self._exits: dict[int, int] = {}
        self._ready = threading.Event()
        threading.Thread(target=self._read, name="server-fork-reader", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message: dict[str, Any] = json.loads(line)
            if "ready" in message:
                self._ready.set()
            elif "pid" in message:
                self._started.put(message["pid"])
            else:
                with self._changed:
                    self._exits[message["exited"]] = message["code"]
                    self._changed.notify_all()
        self._ready.set()
        self._started.put(None)
        with self._changed:
            self._changed.notify_all()

    def start(self, argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> ForkedProcess:
        with self._lock:
            self._ready.wait()
            assert self._proc.stdin is not None
            request = {"argv": argv, "cwd": str(cwd), "log": str(log), "env": env}
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
                pid = self._started.get(timeout=120)
            except (OSError, queue.Empty) as exc:
                raise RuntimeError(f"the forking parent did not answer a start: {exc!r}") from exc
            if pid is None:
                raise RuntimeError(f"the forking parent exited with {self._proc.poll()}")
            return ForkedProcess(self, pid)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._proc.poll() is not None, timeout=timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The environment as the imports saw it: pytest rewrites PYTEST_CURRENT_TEST for every test, and no library
    reads it at import (the child still gets the value of its own start)."""
    return tuple(sorted((name, value) for name, value in env.items() if name != "PYTEST_CURRENT_TEST"))


@functools.cache
def _forker(env: tuple[tuple[str, str], ...]) -> Forker:
    forker = Forker(dict(env))
    atexit.register(forker.close)
    return forker


def start(argv: list[str], cwd: Path, log: Path, env: dict[str, str],
          plain: bool = False) -> ForkedProcess | subprocess.Popen:
    """`python server.py *argv` with `env`, forked from a parent started with that same environment (one per
    environment and test process: each pytest-xdist worker has its own). `plain`, or PARLOUR_TEST_FORK=0 in
    the environment: a process of its own."""
    if not plain and env.get("PARLOUR_TEST_FORK") != "0":
        return _forker(_key(env)).start(argv, cwd, log, env)
    return subprocess.Popen([sys.executable, str(SERVER), *argv], cwd=cwd, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


if __name__ == "__main__":
    main()
