"""What an open Parlour page costs while nobody uses it: Chromium's CPU per second, with the page's early
script (modules/ui/frames.js) and without it (the same page with that script taken out), in one run.

    .venv/bin/python bench/idle_page.py [--model models/parlour-demo] [--seconds 20] [--rounds 3]

Each round opens the Chat tab, waits until the page is idle, then reads the CPU time of every Chromium
process from /proc over --seconds. Not run by CI: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, spread, start_server, stop



def chromium_seconds() -> float:
    """CPU seconds (user + system) of every Chromium process now running."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"chrom" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def idle_cores(browser, url: str, seconds: float, early_script: bool, idle: str) -> float:
    page = browser.new_page()
    if not early_script:  # the page as Gradio alone writes it
        from modules.ui.early_script import FRAMES_JS

        def without(route):
            response = route.fetch()
            route.fulfill(response=response, body=response.text().replace(f"<script>{FRAMES_JS}</script>", "", 1))
        page.route(url + "/", without)
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(idle)
    time.sleep(2)  # the page's own start-up work ends (a measurement window, not a wait for an event)
    before = chromium_seconds()
    time.sleep(seconds)
    used = chromium_seconds() - before
    page.close()
    return used / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.conftest import BROWSER_ARGS
    from tests.e2e.test_chat_browser import IDLE

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model.parent, args.model.name, Path(tmp) / "ud")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                     args=BROWSER_ARGS)
                runs: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(args.rounds):  # paired, alternating
                    for early in (False, True):
                        runs[early].append(idle_cores(browser, url, args.seconds, early, IDLE))
                browser.close()
        finally:
            stop(proc)
    without, with_script = statistics.median(runs[False]), statistics.median(runs[True])
    print("| idle Chat page, Chromium CPU | cores (median) | runs |\n|---|---|---|")
    print(f"| Gradio's page alone | {without:.3f} | {spread(runs[False], '{:.3f}')} |")
    print(f"| Parlour's page (early script) | {with_script:.3f} | {spread(runs[True], '{:.3f}')} |")
    print(f"| ratio | {with_script / without:.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
