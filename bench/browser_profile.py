"""Where the browser's CPU goes while a reply streams into the Chat tab (Chromium's own accounting).

    .venv/bin/python bench/browser_profile.py [--model models/parlour-demo] [--tokens 200] [--history 0 100]

For each --history (exchanges already in the chat when the page opens), a server process with the model,
headless Chromium, one reply of --tokens tokens (greedy, EOS banned) sent from the Chat tab:
  - tok/s as the browser shows it, and time to first text (click -> the new bubble has text)
  - the page's main-thread time during the reply from the DevTools Performance domain (Performance.getMetrics:
    TaskDuration, ScriptDuration, RecalcStyleDuration, LayoutDuration; the rest of a task is paint, parsing,
    GC and the browser's own work), per second of streaming
  - the JavaScript functions that took most of it (DevTools Profiler, self time), which says whose work it is
    (Gradio's chatbot, markdown/KaTeX, Svelte's DOM updates, Parlour's page script)
Not run by CI: figures depend on the machine. Use it to decide, from the shares.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, start_server, stop

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRICS = ("TaskDuration", "ScriptDuration", "RecalcStyleDuration", "LayoutDuration")


def seed_chat(user_data: Path, exchanges: int) -> None:
    """A chat with `exchanges` user/assistant pairs (with some markdown), the newest one, so the page opens it."""
    from modules.store import ChatStore

    store = ChatStore(user_data / "chats.sqlite")
    chat = store.create_chat("local", title="long chat")
    for i in range(exchanges):
        store.add_message("local", chat, "user", f"Question {i}: what about **item {i}**?")
        store.add_message("local", chat, "assistant", f"Answer {i}: a list\n\n- first `{i}`\n- second\n\n"
                                                      f"```python\nprint({i})\n```\n")


def start(model: Path, tmp: Path, tokens: int) -> tuple[subprocess.Popen, str]:
    """A server whose default preset makes exactly `tokens` greedy tokens (EOS banned)."""
    (tmp / "presets").mkdir(parents=True, exist_ok=True)
    (tmp / "presets" / "Bench.yaml").write_text(json.dumps({"temperature": 0.0, "max_new_tokens": tokens,
                                                             "ban_eos_token": True}))
    return start_server(model.parent, model.name, tmp / "ud", "--presets-dir", str(tmp / "presets"),
                        "--preset", "Bench")


def profile_reply(browser, url: str, tokens: int) -> dict:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea:not([disabled])")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 500})  # microseconds
    before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    bubbles = page.locator('[data-testid="bot"]').count()
    page.fill("#chat-input textarea", "Hello")
    cdp.send("Profiler.start")
    start_time = time.perf_counter()
    page.click("#send")
    page.wait_for_function(f"() => {{ const b = document.querySelectorAll('[data-testid=\"bot\"]');"
                           f" return b.length > {bubbles} && b[b.length-1].innerText.trim().length > 0; }}", polling="raf")
    first = time.perf_counter() - start_time
    page.wait_for_function(f"() => document.querySelector('#chat-status').innerText.includes('{tokens} tokens')",
                           polling="raf")
    seconds = time.perf_counter() - start_time
    profile = cdp.send("Profiler.stop")["profile"]
    after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    page.close()
    return {"first": first, "seconds": seconds, "metrics": {k: after[k] - before[k] for k in METRICS},
            "functions": self_times(profile)}


def self_times(profile: dict) -> list[tuple[str, float]]:
    """Seconds of self time per JavaScript function (name @ file:line), from a DevTools CPU profile."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    spent: collections.Counter[str] = collections.Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[node_id]["callFrame"]
        name = frame["functionName"] or "(anonymous)"
        if frame["url"]:
            name += f" @ {frame['url'].rsplit('/', 1)[-1].split('?')[0]}:{frame['lineNumber'] + 1}:{frame['columnNumber'] + 1}"
        spent[name] += delta / 1e6
    return [(name, seconds) for name, seconds in spent.most_common(20) if name not in ("(idle)", "(program)")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--history", type=int, nargs="+", default=[0, 100], help="exchanges already in the chat")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        for exchanges in args.history:
            with tempfile.TemporaryDirectory() as tmp:
                seed_chat(Path(tmp) / "ud", exchanges)
                proc, url = start(args.model, Path(tmp), args.tokens)
                try:
                    profile_reply(browser, url, args.tokens)  # warm-up: the page code, caches
                    results[exchanges] = profile_reply(browser, url, args.tokens)
                finally:
                    stop(proc)
        browser.close()

    for exchanges, r in results.items():
        m, secs = r["metrics"], r["seconds"]
        other = m["TaskDuration"] - m["ScriptDuration"] - m["RecalcStyleDuration"] - m["LayoutDuration"]
        print(f"\nChat with {exchanges} exchanges, {args.tokens} tokens: {args.tokens / secs:.1f} tok/s in the browser, "
              f"first text after {r['first'] * 1000:.0f} ms\n")
        print("| page main thread while streaming | ms per second of streaming | share of its busy time |")
        print("|---|---|---|")
        for name, value in (("scripts", m["ScriptDuration"]), ("style recalculation", m["RecalcStyleDuration"]),
                            ("layout", m["LayoutDuration"]), ("other (paint, parse, GC, ...)", other),
                            ("busy in all", m["TaskDuration"])):
            print(f"| {name} | {value / secs * 1000:.0f} | {value / m['TaskDuration']:.0%} |")
        print("\n| JavaScript function (self time) | ms |\n|---|---|")
        for name, seconds in r["functions"]:
            print(f"| `{name}` | {seconds * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
