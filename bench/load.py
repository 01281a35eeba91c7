"""Bounded load: N concurrent API streams plus M browser sessions chatting for a fixed time.

    .venv/bin/python bench/load.py --streams 50 --browsers 5 --seconds 120

Starts a real server (the demo model unless --model/--models-dir say otherwise), warms it up, then runs
the load and prints a table: requests answered, refused with 503 (queue bound --max-queue), failed;
RSS after warm-up and at the end; threads at rest before and after; queue length at the end; ERROR
lines in the server log. tests/reliability/test_load.py runs a small version of the same in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Tally:
    answered: int = 0
    refused_503: int = 0
    failed: list[str] = field(default_factory=list)
    browser_replies: int = 0


async def _stream_once(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, tally: Tally) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens,
            "stream": True}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code == 503:
            await response.aread()
            tally.refused_503 += 1
            return
        if response.status_code != 200:
            tally.failed.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            return
        done = False
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"error"' in line:
                tally.failed.append(line[:200])
        if done:
            tally.answered += 1
        else:
            tally.failed.append("stream ended without [DONE]")


async def api_load(url: str, model: str, streams: int, deadline: float, max_tokens: int, tally: Tally) -> None:
    """`streams` clients, each sending one streaming request after another until the deadline."""
    limits = httpx.Limits(max_connections=streams + 5, max_keepalive_connections=streams + 5)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    await _stream_once(client, url, model, max_tokens, tally)
                except httpx.HTTPError as exc:
                    tally.failed.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(streams)))


def browser_load(url: str, sessions: int, deadline: float, tally: Tally, errors: list[str]) -> None:
    """`sessions` browser pages (one Chromium), each sending a message and waiting for the reply, again
    and again until the deadline. Runs in its own thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import BROWSER_ARGS

    idle = ("() => !document.querySelector('[data-testid=status-tracker].generating, "
            "[data-testid=status-tracker].pending')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        try:
            pages = []
            for _ in range(sessions):
                page = browser.new_context().new_page()
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                page.goto(url)
                page.wait_for_selector("#chat-input textarea", timeout=60_000)
                pages.append(page)
            sent = [0] * sessions
            while time.monotonic() < deadline:
                for i, page in enumerate(pages):  # round robin: each page has one message in flight
                    if sent[i] and not page.evaluate(idle):
                        continue
                    page.fill("#chat-input textarea", f"Hello {sent[i]}")
                    page.click("#send")
                    sent[i] += 1
                pages[0].wait_for_timeout(200)  # Playwright's own event pump between polls of the pages
            for page in pages:  # the last message of each page gets its reply too
                page.wait_for_function(idle, timeout=120_000)
                tally.browser_replies += page.locator("#chatbot [data-testid=bot]").count()
        finally:
            browser.close()


def run(url: str, model: str, health: Any, streams: int, browsers: int, seconds: float, max_tokens: int,
        warmup_seconds: float = 5.0) -> dict[str, Any]:
    """Warm up with the same mixed load (so caches, pools and the browsers' sessions exist before the
    baseline), measure the resting state, run the load, wait for the queue to drain; the figures."""
    start_threads = _wait_idle(health)["threads"]  # the server at rest before any load
    warm_deadline = time.monotonic() + warmup_seconds
    warm_browsers = None
    if browsers:
        warm_browsers = threading.Thread(target=browser_load, args=(url, browsers, warm_deadline, Tally(), []))
        warm_browsers.start()
    asyncio.run(api_load(url, model, streams, warm_deadline, max_tokens, Tally()))
    if warm_browsers is not None:
        warm_browsers.join()
    _wait_idle(health)
    rest = _settled(health, start_threads)
    tally, page_errors = Tally(), []
    deadline = time.monotonic() + seconds
    browser_thread = None
    if browsers:
        browser_thread = threading.Thread(target=browser_load, args=(url, browsers, deadline, tally, page_errors))
        browser_thread.start()
    started = time.monotonic()
    peak = {"waiting": 0}

    rss: list[tuple[float, int]] = []  # (seconds into the load, RSS): does growth level off or go on?

    async def watch() -> None:
        while time.monotonic() < deadline:
            state = health()
            peak["waiting"] = max(peak["waiting"], state["queue_waiting"])
            rss.append((time.monotonic() - started, state["rss_bytes"]))
            await asyncio.sleep(0.5)

    async def both() -> None:
        await asyncio.gather(api_load(url, model, streams, deadline, max_tokens, tally), watch())

    asyncio.run(both())
    if browser_thread is not None:
        browser_thread.join()
    elapsed = time.monotonic() - started
    _wait_idle(health)
    end = _settled(health, rest["threads"])
    return {"streams": streams, "browsers": browsers, "seconds": round(elapsed, 1),
            "answered": tally.answered, "refused_503": tally.refused_503, "failed": len(tally.failed),
            "failures": tally.failed[:5] + page_errors[:5], "browser_replies": tally.browser_replies,
            "requests_per_s": round((tally.answered + tally.browser_replies) / elapsed, 1),
            "peak_queue": peak["waiting"], "queue_end": end["queue_waiting"], "active_end": end["active"],
            "rss_warm_mib": round(rest["rss_bytes"] / 2**20, 1), "rss_end_mib": round(end["rss_bytes"] / 2**20, 1),
            "rss_growth": round(end["rss_bytes"] / rest["rss_bytes"] - 1, 4),
            "rss_by_quarter_mib": [round(max(b for t, b in rss if t <= elapsed * q / 4) / 2**20, 1)
                                   for q in (1, 2, 3, 4) if any(t <= elapsed * q / 4 for t, _ in rss)],
            "threads_rest": rest["threads"], "threads_end": end["threads"]}


def _wait_idle(health: Any, timeout: float = 120.0) -> dict[str, Any]:
    """The server's counters once nothing runs or waits (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        state = health()
        if state["active"] == 0 and state["queue_waiting"] == 0:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server never went idle: {state}")
        time.sleep(0.1)


def _settled(health: Any, threads: int, timeout: float = 60.0) -> dict[str, Any]:
    """The counters once the thread count is back to `threads` (the API's worker pool lets idle threads
    go after a few seconds), or after `timeout`: a count still above it then is a leak."""
    deadline = time.monotonic() + timeout
    state = health()
    while state["threads"] > threads and time.monotonic() < deadline:
        time.sleep(0.5)
        state = health()
    return state


def table(figures: dict[str, Any], error_lines: int) -> str:
    rows = [("API streams / browser sessions", f"{figures['streams']} / {figures['browsers']}"),
            ("load duration (s)", figures["seconds"]),
            ("API streams answered", figures["answered"]),
            ("API requests refused with 503", figures["refused_503"]),
            ("browser replies", figures["browser_replies"]),
            ("failed (neither answered nor 503)", figures["failed"]),
            ("answered requests per second", figures["requests_per_s"]),
            ("longest queue seen / at the end", f"{figures['peak_queue']} / {figures['queue_end']}"),
            ("RSS after warm-up → end (MiB)", f"{figures['rss_warm_mib']} → {figures['rss_end_mib']} "
                                              f"({figures['rss_growth'] * 100:+.1f}%)"),
            ("RSS peak by quarter of the load (MiB)", " / ".join(map(str, figures["rss_by_quarter_mib"]))),
            ("threads at rest before → after (settled)", f"{figures['threads_rest']} → {figures['threads_end']}"),
            ("ERROR lines in the server log", error_lines)]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main() -> int:
    from tests.conftest import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--browsers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup-seconds", type=float, default=30.0, help="the same load, before the baseline")
    parser.add_argument("--max-queue", type=int, default=32, help="server's --max-queue (beyond it: 503)")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--model", default="parlour-demo")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parlour-load-"))
    server = ServerProcess(["--models-dir", args.models_dir, "--model", args.model, "--max-queue", str(args.max_queue),
                            "--user-data", str(work / "user_data"), "--settings", str(work / "settings.yaml")],
                           cwd=ROOT, log=work / "server.log")
    try:
        server.wait_until(lambda h: h["model"] is not None, timeout=180)
        figures = run(server.url, args.model, server.health, args.streams, args.browsers, args.seconds,
                      args.max_tokens, args.warmup_seconds)
    finally:
        server.stop()
    errors = [line for line in server.log.read_text().splitlines() if " ERROR " in line or "Traceback" in line]
    print(table(figures, len(errors)))
    print(json.dumps({**figures, "error_lines": errors[:5]}, indent=1), file=sys.stderr)
    return 0 if not figures["failed"] and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
