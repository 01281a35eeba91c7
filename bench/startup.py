"""Start-up: how soon the page answers after the process starts, and how soon the chat input is usable.

    .venv/bin/python bench/startup.py [--model models/parlour-demo] [--runs 5] [--imports]

Each run starts a fresh server process (`server.py`, the model given) and measures:
  page        process start -> the first HTTP 200 for / (target <= 5 s)
  model       process start -> /health names the loaded model (it loads after the page is up)
  input       headless Chromium: navigation -> the chat input box enabled, once the model is loaded
              (target <= 1.2 s); and the same for a navigation right when the page first answers
Medians (range) of --runs. With --imports, one more start under `python -X importtime` lists the packages
that took longest to import (own time, summed by top-level package), which is where start-up goes.
Not run by CI: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, free_port, spread, stop

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(model: Path, tmp: Path, *python_flags: str, stderr=subprocess.DEVNULL) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *python_flags, str(ROOT / "server.py"), "--port", str(port),
                             "--models-dir", str(model.parent), "--model", model.name, "--user-data", str(tmp),
                             "--settings", str(tmp / "settings.yaml")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=stderr)
    return proc, f"http://127.0.0.1:{port}", start


def wait_for(check, proc: subprocess.Popen, timeout: float = 300) -> float:
    """perf_counter() when `check()` first returns true (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.perf_counter()
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        time.sleep(0.02)
    raise SystemExit("the server did not start in time")


def page_answers(url: str) -> bool:
    with urllib.request.urlopen(url + "/", timeout=10) as response:
        return response.status == 200


def model_loaded(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        return bool(json.loads(response.read())["model"])


def input_usable(browser, url: str) -> float:
    page = browser.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea:not([disabled])")
    seconds = time.perf_counter() - start
    page.close()
    return seconds


def imports(model: Path, tmp: Path) -> list[tuple[str, float]]:
    """Own import time by top-level package, for one start (until the model is loaded)."""
    log = tmp / "importtime.txt"
    with log.open("w") as err:
        proc, url, _ = launch(model, tmp / "imports", "-X", "importtime", stderr=err)
        try:
            wait_for(lambda: model_loaded(url), proc)
        finally:
            stop(proc)
    own: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, _cumulative, name = line[len("import time:"):].split("|", 2)
            own[name.strip().split(".")[0]] += int(self_us) / 1e6
    return own.most_common(12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--imports", action="store_true", help="also list what takes longest to import")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    page, model, ready, early = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        for run in range(args.runs + 1):  # the first run warms the disk cache; not counted
            proc, url, start = launch(args.model, Path(tmp) / f"run{run}")
            try:
                answered = wait_for(lambda: page_answers(url), proc) - start
                first = input_usable(browser, url)  # while the model is still loading
                loaded = wait_for(lambda: model_loaded(url), proc) - start
                usable = input_usable(browser, url)
            finally:
                stop(proc)
            if run:
                page.append(answered)
                model.append(loaded)
                early.append(first)
                ready.append(usable)
        browser.close()
        top = imports(args.model, Path(tmp)) if args.imports else []

    print(f"\nParlour start-up: {args.model.name}, median (range) of {args.runs} starts\n")
    print("| measure | seconds | target |\n|---|---|---|")
    print(f"| page answers after process start | {spread(page)} | <= 5 |")
    print(f"| model loaded after process start | {spread(model)} | |")
    print(f"| chat input usable after navigation (model loaded) | {spread(ready)} | <= 1.2 |")
    print(f"| chat input usable after navigation (as the page first answers) | {spread(early)} | |")
    if top:
        print("\n| package (own import time, one start under -X importtime, which slows it) | seconds |\n|---|---|")
        for name, seconds in top:
            print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
