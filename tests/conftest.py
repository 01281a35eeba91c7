"""Shared fixtures: a micro model built locally in seconds, Apps, and real server processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import server_fork  # noqa: E402
from tests.model_cache import cached_model  # noqa: E402

DEMO_DIR = ROOT / "models" / "parlour-demo"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models/ folder holding a barely trained micro Llama and a micro GPT-2 (no download; built once
    and then copied from the cache, see tests/model_cache.py)."""
    folder = tmp_path_factory.mktemp("models")
    cached_model(folder / "parlour-micro", arch="llama", size_name="micro")
    cached_model(folder / "parlour-micro-gpt2", arch="gpt2", size_name="micro")
    return folder


@pytest.fixture(scope="session")
def micro_path(models_dir) -> Path:
    return models_dir / "parlour-micro"


@pytest.fixture(scope="session")
def micro_backend(micro_path):
    from modules.loaders.transformers import TransformersBackend

    return TransformersBackend(micro_path)


@pytest.fixture()
def make_app(models_dir, tmp_path):
    """Build an App over the micro models (settings from keyword arguments)."""
    from modules.app import App
    from modules.settings import Settings

    def _make(**overrides):
        values = {"models_dir": models_dir, "user_data": tmp_path / "user_data",
                  "presets_dir": ROOT / "presets", "settings": tmp_path / "settings.yaml", **overrides}
        return App.build(Settings(**values))

    return _make


def free_port() -> int:
    """A port no process holds now. Each pytest-xdist worker (./test.sh runs four) takes its ports from a
    range of its own, below the kernel's ephemeral ports: two workers can never pick the same port between
    this check and their server's start (the kernel's own bind(0) choice could)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    low = 20000 + 2000 * (int(worker[2:]) if worker[2:].isdigit() else 0)
    for port in random.sample(range(low, low + 2000), 2000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{low + 1999}")


class ServerProcess:
    """`python server.py ...` on a free port; `health()` reads the server's own counters."""

    def __init__(self, args: list[str], cwd: Path, log: Path, plain: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        # forked from a parent that has imported Gradio, torch and Transformers once (tests/server_fork.py);
        # `plain`: a process of its own, as a user starts it
        self.proc = server_fork.start(["--port", str(self.port), *args], cwd=cwd, log=log, env=env, plain=plain)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
            return json.loads(response.read())

    def wait_until(self, predicate, timeout: float = 240.0) -> dict:
        """Poll /health until `predicate(health)` holds (the server's state, not a sleep). The deadline only
        bounds a hung server: a loaded 2-core machine can take minutes to import Gradio and load a model.
        It is under pytest's per-test limit (300 s, pytest.ini), so a wait that never ends says what the
        server's state was instead of being cut off inside a request."""
        deadline = time.monotonic() + timeout
        last: dict | Exception = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                last = self.health()
                if predicate(last):
                    return last
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"server state never matched; last: {last}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def micro_server(tmp: Path, models_dir: Path, *args: str, timeout: float = 600.0, plain: bool = False) -> ServerProcess:
    """`server.py` on the micro model with its data in `tmp`, once the model is loaded (the wait is long:
    a busy machine starts slowly); `plain`: see ServerProcess. The caller stops it."""
    server = ServerProcess(["--user-data", str(tmp / "ud"), "--settings", str(tmp / "s.yaml"),
                            "--models-dir", str(models_dir), "--model", "parlour-micro", *args],
                           cwd=ROOT, log=tmp / "server.log", plain=plain)
    try:
        server.wait_until(lambda h: h["model"] is not None, timeout=timeout)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory, models_dir) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers shared by one test module (each with its own user_data); all stopped at its end.
    A server start costs ~15 s of CPU: tests that can share one do."""
    started: list[ServerProcess] = []

    def start(*args: str, wait_model: bool = True, models: Path | None = None, model: str = "parlour-micro",
              prepare: Callable[[Path], None] | None = None) -> ServerProcess:
        root = tmp_path_factory.mktemp("server")
        if prepare is not None:  # files the server finds in its user_data at start
            (root / "user_data").mkdir()
            prepare(root / "user_data")
        server = ServerProcess(["--models-dir", str(models or models_dir), "--model", model,
                                "--user-data", str(root / "user_data"), "--settings", str(root / "settings.yaml"),
                                *args], cwd=ROOT, log=root / "server.log")
        server.root = root  # type: ignore[attr-defined]
        started.append(server)
        server.wait_until(lambda h: h["model"] is not None if wait_model else True, timeout=180)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture()
def start_server(tmp_path):
    """Start server processes with extra arguments; each is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def _start(*args: str, wait_model: bool = True) -> ServerProcess:
        server = ServerProcess(["--user-data", str(tmp_path / "user_data"),
                                "--settings", str(tmp_path / "settings.yaml"), *args],
                               cwd=ROOT, log=tmp_path / f"server-{len(started)}.log")
        started.append(server)
        server.wait_until(lambda h: h["model"] is not None if wait_model else True)
        return server

    yield _start
    for server in started:
        server.stop()


@contextlib.contextmanager
def serving(home: Path, *args: str, short_preset: int | None = None) -> Iterator[ServerProcess]:
    """A server process whose user data and settings live in `home`, with the model of `args` loaded;
    `short_preset`: a preset `Short` of that many new tokens, chosen at start (for browser tests that
    send messages and want quick replies)."""
    if short_preset is not None:
        (home / "presets").mkdir(exist_ok=True)
        (home / "presets" / "Short.yaml").write_text(f"max_new_tokens: {short_preset}\nban_eos_token: true\n")
        args = (*args, "--presets-dir", str(home / "presets"), "--preset", "Short")
    process = ServerProcess(["--user-data", str(home / "user_data"), "--settings", str(home / "settings.yaml"),
                             *args], cwd=ROOT, log=home / "server.log")
    try:
        process.wait_until(lambda h: h["model"] is not None)
        yield process
    finally:
        process.stop()


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright. Missing Chromium is a failure, not a skip.
    Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it is open,
    which would break later tests that call asyncio.run()."""
    from playwright.sync_api import sync_playwright

    from playwright.sync_api import expect

    assert Path("/usr/bin/chromium").exists(), "Chromium is missing: ./test.sh installs it (apt-get install chromium)"
    expect.set_options(timeout=BROWSER_WAIT_MS)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        yield _PatientBrowser(instance)
        instance.close()


#: How long a page waits for what a test asks for (an element, an event's result). Playwright's 30 s
#: default is too short for a 2-core machine under load: an event behind a generating model, or a page
#: while another server starts, can take longer. Every wait still ends as soon as its condition holds.
BROWSER_WAIT_MS = 180_000


class _PatientBrowser:
    """The launched browser; its pages and contexts wait up to BROWSER_WAIT_MS. It keeps what each page's
    console said, so that a failed browser test reports what its open pages showed (pytest_runtest_makereport)."""

    def __init__(self, inner) -> None:
        self._inner = inner

    @staticmethod
    def _watch(page) -> None:
        page.console_said = said = []  # its console errors and warnings, on the page as `page.dialogs` is
        page.on("console", lambda m: said.append(f"{m.type}: {m.text}"[:500]) if m.type in ("error", "warning")
                else None)
        page.on("pageerror", lambda e: said.append(f"page error: {e}"[:500]))

    def new_page(self, **kwargs):
        page = self._inner.new_page(**kwargs)
        page.set_default_timeout(BROWSER_WAIT_MS)
        self._watch(page)
        return page

    def new_context(self, **kwargs):
        context = self._inner.new_context(**kwargs)
        context.set_default_timeout(BROWSER_WAIT_MS)
        context.on("page", self._watch)
        return context

    def report(self) -> str:
        """What every open page shows now: its chat, status line and console (for a failed test's report)."""
        lines = []
        for context in self._inner.contexts:
            for page in context.pages:
                try:
                    shown = page.evaluate("""() => ({
                        chat: [...document.querySelectorAll('#chatbot [data-testid=user], #chatbot [data-testid=bot]')]
                              .map(e => `${e.dataset.testid}: ${e.innerText.replace(/\\s+/g, ' ').slice(0, 200)}`),
                        bars: document.querySelectorAll('#chatbot .msg-actions').length,
                        status: document.querySelector('#chat-status')?.innerText,
                        chats: [...document.querySelectorAll('#chat-list label')].map(e => e.innerText),
                        busy: document.querySelectorAll('[data-testid=status-tracker].generating, '
                                                        + '[data-testid=status-tracker].pending').length,
                        toasts: [...document.querySelectorAll('.toast-body')].map(e => e.innerText)})""")
                except Exception as exc:  # a page that is closing or navigating
                    shown = f"unreadable: {exc}"
                lines.append(f"{page.url}: {shown}")
                lines += [f"  {m}" for m in getattr(page, "console_said", [])[-20:]]
        return "\n".join(lines)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test's report adds what its open pages showed at the failure."""
    outcome = yield
    report = outcome.get_result()
    browser = item.funcargs.get("browser") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(browser, _PatientBrowser):
        report.sections.append(("open pages at the failure", browser.report()))
