"""Uploads are bounded (--max-upload-mb, default 50 MB), need a login with --auth, come only from the
server's own pages, and leave the cache after --cache-minutes; chat exports live in the same cache (no
copy in /tmp) and go when their chat is deleted."""

from __future__ import annotations

import glob
import time
from pathlib import Path

import httpx
import pytest

from modules.limits import MAX_UPLOAD_MB
from modules.settings import Settings
from tests.e2e.test_chat_browser import IDLE, open_page, send
from tests.security.conftest import login_cookies

MB = 1024 * 1024


def cache(server) -> Path:
    return server.root / "user_data" / "cache" / "gradio"


def cached_files(server) -> set[Path]:
    return {p for p in cache(server).rglob("*") if p.is_file()}


def upload(server, size: int, cookies=None, chunked: bool = False, name: str = "card.png", **headers):
    data = b"\x89PNG" + b"\0" * (size - 4)
    if chunked:  # no Content-Length: the server must count while reading
        boundary = "parlourboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return httpx.post(server.url + "/gradio_api/upload", cookies=cookies, timeout=120,
                          content=iter([body[i:i + MB] for i in range(0, len(body), MB)]),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers})
    return httpx.post(server.url + "/gradio_api/upload", files={"files": (name, data)}, cookies=cookies,
                      timeout=120, headers=headers)


def wait_for(predicate, timeout: float = 180.0) -> None:
    """Poll a condition of the server's files (a state, not a sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.2)


def test_default_limit_is_50_mb():
    assert MAX_UPLOAD_MB == 50 and Settings().max_upload_mb == 50


@pytest.fixture(scope="module")
def open_server(module_server):
    return module_server("--cache-minutes", "0.05")  # 3 s: "a short time", short enough to watch


def test_upload_over_the_limit_is_413_and_leaves_nothing(open_server):
    before = cached_files(open_server)
    for chunked in (False, True):
        response = upload(open_server, 60 * MB, chunked=chunked, name="big.png")
        assert response.status_code == 413, (chunked, response.status_code, response.text[:200])
        assert "52428800" in response.text.replace(",", "")  # the limit, in bytes
    assert not list(cache(open_server).rglob("big.png"))
    assert not (cached_files(open_server) - before), "a refused upload left files behind"


def test_uploads_leave_the_cache_after_cache_minutes(open_server):
    response = upload(open_server, MB // 2, name="small.png")
    assert response.status_code == 200, response.text
    path = Path(response.json()[0])
    assert path.is_relative_to(cache(open_server)) and path.exists()
    wait_for(lambda: not path.exists())


def test_uploads_from_another_origin_are_refused(open_server, other_site):
    before = cached_files(open_server)
    response = upload(open_server, MB // 4, Origin=f"http://127.0.0.1:{other_site.server_address[1]}")
    assert response.status_code == 403
    assert cached_files(open_server) == before


@pytest.fixture(scope="module")
def auth_server(module_server):
    return module_server("--auth", "ann:pw-ann,bob:pw-bob", "--max-upload-mb", "1")


def test_uploads_need_a_login(auth_server):
    before = cached_files(auth_server)
    for cookies in (None, httpx.Cookies({"access-token-unsecure-x": "forged"})):
        response = upload(auth_server, MB // 4, cookies=cookies)
        assert response.status_code in (401, 403), response.status_code
    assert cached_files(auth_server) == before
    cookies = login_cookies(auth_server, "ann", "pw-ann")
    assert upload(auth_server, 2 * MB, cookies=cookies).status_code == 413  # --max-upload-mb 1
    assert upload(auth_server, MB // 2, cookies=cookies).status_code == 200


def test_chat_export_lives_in_the_cache_and_goes_with_its_chat(auth_server, browser):
    tmp_exports = set(glob.glob("/tmp/parlour-export-*"))
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(auth_server.url)
        page.fill("input[type=text]", "ann")
        page.fill("input[type=password]", "pw-ann")
        page.keyboard.press("Enter")
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
        page.wait_for_function(IDLE)
        send(page, auth_server, "hello there")
        page.get_by_text("Character cards and chat files").click()
        page.click("#export-chat")
        link = page.wait_for_selector("#download a[href]")
        assert b'"format": "parlour-chat"' in page.request.get(link.get_attribute("href")).body()
        exports = [p for p in cache(auth_server).rglob("chat-*.json")]
        assert len(exports) == 1 and "parlour-exports" in exports[0].parts, exports  # one copy, Parlour's own
        assert set(glob.glob("/tmp/parlour-export-*")) == tmp_exports  # nothing outside the cache
        # another login cannot list it, and the URL is not guessable (a random folder per export)
        assert len(exports[0].parent.name) == 32
        page.click("#delete-chat")
        page.click("#confirm-delete")
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Deleted')")
        wait_for(lambda: not exports[0].exists(), timeout=30)
        assert not list(cache(auth_server).rglob("chat-*.json"))
        assert page.request.get(link.get_attribute("href")).status in (403, 404)
    finally:
        context.close()


def test_exports_leave_the_cache_after_cache_minutes(open_server, browser):
    page = open_page(browser, open_server.url)
    try:
        send(page, open_server, "hello")
        page.get_by_text("Character cards and chat files").click()
        page.click("#export-chat")
        page.wait_for_selector("#download a[href]")
        # gone after --cache-minutes (3 s here) although the chat still exists
        wait_for(lambda: not list(cache(open_server).rglob("chat-*.json")))
        assert page.locator("#chat-list label").count() == 1
    finally:
        page.context.close()


def test_a_restart_clears_old_exports(module_server):
    def leftover(user_data: Path) -> None:
        old = user_data / "cache" / "gradio" / "parlour-exports" / "someone" / "7" / "token"
        old.mkdir(parents=True)
        (old / "chat-7.json").write_text("{}")

    server = module_server(prepare=leftover)
    assert not (cache(server) / "parlour-exports" / "someone").exists()
