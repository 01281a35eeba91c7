"""Helpers for the black-box security tests: a second local web origin (the
"attacker" page and a request recorder), CPU time of the server process, and Gradio logins."""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import BROWSER_ARGS, ServerProcess, free_port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_in_window(pid: int, seconds: float = 3.0) -> float:
    """CPU seconds the process uses over the next `seconds` of wall-clock time (a measurement window,
    not a synchronisation: the assertion is on CPU time, which a loaded machine does not inflate)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


class _Site(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.html = "<!doctype html><title>other site</title><p>another local web page</p>"
        self.hits: list[str] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        body = self.server.html.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_site() -> Iterator[_Site]:
    """A web page served by another local program on another port (a dev server, a malicious package):
    `.url`, `.hits` (paths requested from it)."""
    site = _Site(free_port())
    site.url = f"http://127.0.0.1:{site.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield site
    site.shutdown()
    site.server_close()


def login_cookies(server: ServerProcess, user: str, password: str, host: str | None = None) -> httpx.Cookies:
    """Log in through Gradio's /login form; the cookies a browser would then hold."""
    headers = {"Host": host} if host else {}
    response = httpx.post(server.url + "/login", data={"username": user, "password": password}, headers=headers,
                          timeout=30)
    assert response.status_code == 200, response.text
    assert response.cookies, "no login cookie"
    return response.cookies


@pytest.fixture(scope="module")
def resolving_browser():
    """Chromium whose resolver maps *.test names to 127.0.0.1: pages can be served under names that are not
    localhost (as with --listen on a LAN) while every request stays on this machine."""
    from playwright.sync_api import sync_playwright

    assert Path("/usr/bin/chromium").exists(), "Chromium is missing: ./test.sh installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=[*BROWSER_ARGS, "--host-resolver-rules=MAP *.test 127.0.0.1"])
        yield browser
        browser.close()
