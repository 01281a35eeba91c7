"""Screenshots of every tab at desktop width and at a phone's 390x844, to look at the UI without running it.

    .venv/bin/python scripts/screenshots.py                    # the demo model, PNGs in user_data/screenshots/
    .venv/bin/python scripts/screenshots.py --model NAME --out /tmp/shots

It starts its own server (a fresh user_data folder inside --out, so your chats are not touched), has a
short chat with the model (a real reply: the demo model thinks first, so its reasoning block shows),
then opens each tab in headless Chromium (/usr/bin/chromium, as the browser tests use) and saves:
`desktop-<tab>.png` (the whole page) and `phone-<tab>.png` (the first screen, what a phone shows
without scrolling), plus `phone-chat-drawer.png` (the chat list and settings open), `phone-chat-full.png`
and `desktop-chat-light.png`. It prints the files it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TABS = ["Chat", "Notebook", "Parameters", "Character", "Model", "Training", "Session"]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IDLE = "() => !document.querySelector('[data-testid=status-tracker].generating, [data-testid=status-tracker].pending')"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as response:
        return json.loads(response.read())


def wait_for(url: str, predicate, proc: subprocess.Popen, what: str, timeout: float = 900.0) -> dict:
    """Poll the server's /health until `predicate` holds (its state, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} while waiting for {what}")
        try:
            state = health(url)
            if predicate(state):
                return state
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def start_server(args: argparse.Namespace, home: Path) -> tuple[subprocess.Popen, str]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copytree(ROOT / "characters", home / "characters")
    (home / "presets").mkdir()
    # short replies, so the script does not wait on a long one
    (home / "presets" / "Screenshots.yaml").write_text("temperature: 0.7\nmax_new_tokens: 120\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--models-dir", str(args.models_dir),
               "--model", args.model, "--user-data", str(home / "user_data"), "--settings",
               str(home / "settings.yaml"), "--characters-dir", str(home / "characters"), "--presets-dir",
               str(home / "presets"), "--preset", "Screenshots"]
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    wait_for(url, lambda h: h["model"] is not None, proc, "the model to load")
    return proc, url


def open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:  # a phone: the tabs that do not fit are in Gradio's overflow menu
        page.locator(".overflow-menu button").first.click()
        page.locator(".overflow-dropdown button", has_text=name).first.click()
    page.wait_for_function(IDLE)
    page.evaluate("window.scrollTo(0, 0)")


def chat_once(page, url: str, proc: subprocess.Popen, text: str) -> None:
    before = health(url)["requests"]
    page.fill("#chat-input textarea", text)
    page.click("#send")
    wait_for(url, lambda h: h["requests"] > before and h["active"] == 0, proc, "the reply", timeout=600)
    page.wait_for_selector("#chatbot [data-testid=bot] .msg-actions")
    page.wait_for_function(IDLE)


def shoot(browser, url: str, proc: subprocess.Popen, out: Path, size: dict, prefix: str) -> list[Path]:
    phone = size is PHONE
    context = browser.new_context(viewport=size, device_scale_factor=2 if phone else 1, is_mobile=phone,
                                  has_touch=phone)
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    written = []

    def save(name: str, full: bool) -> None:
        path = out / f"{prefix}-{name}.png"
        page.screenshot(path=str(path), full_page=full)
        written.append(path)

    if not page.locator("#chatbot [data-testid=bot]").count():  # the first size has the chat; the second reopens it
        chat_once(page, url, proc, "Hello! Who are you?")
        chat_once(page, url, proc, "Can you write a tiny Python function that adds two numbers?")
    else:
        page.wait_for_selector("#chatbot [data-testid=bot] .msg-actions")
    page.evaluate("window.scrollTo(0, 0)")  # the first screen, as the page opens
    save("chat", full=not phone)
    if phone:
        save("chat-full", full=True)
        page.click("#drawer-toggle")
        page.wait_for_function("() => window.parlour.drawerOpen()")
        page.wait_for_timeout(400)  # the drawer's slide-in transition, for the picture only
        save("chat-drawer", full=False)
        page.mouse.click(size["width"] - 10, size["height"] // 2)  # beside the drawer: it closes
    else:
        page.click("#theme-toggle")
        page.wait_for_function("() => !document.body.classList.contains('dark')")
        save("chat-light", full=True)
        page.click("#theme-toggle")
    for tab in TABS[1:]:
        open_tab(page, tab)
        save(tab.lower(), full=not phone)
    context.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="parlour-demo")
    parser.add_argument("--out", type=Path, default=ROOT / "user_data" / "screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed script still stops its server

    args.out.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args, args.out / "server-home")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                 args=BROWSER_ARGS)
            written = shoot(browser, url, proc, args.out, DESKTOP, "desktop")
            written += shoot(browser, url, proc, args.out, PHONE, "phone")
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
