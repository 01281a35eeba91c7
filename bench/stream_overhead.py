"""How much does Parlour cost on top of raw `model.generate`? One run, one table of ratios.

    .venv/bin/python bench/stream_overhead.py [--model models/parlour-demo] [--tokens 200] [--runs 3]

Levels, each on the same model, 200 new tokens, EOS banned, greedy:
  raw       model.generate() in this process (no streamer), at the fastest thread count Parlour may pick
            (with the default --threads: the default and one fewer, as the batch engine's tuner tries them)
  pipeline  App.pipeline.stream() in this process (worker thread, streamer, stop strings)
  client    gradio_client against a server process (the Chat tab's event API)
  browser   headless Chromium: click Send -> last token visible in #chatbot
Also: time to first token at each level, page HTTP 200 after process start, chat input usable
after navigation, and process RSS (raw process vs server).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return kb / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_in_process(app, backend, messages, preset, tokens: int, runs: int,
                     thread_counts: list[int]) -> dict[str, tuple[float, float]]:
    """Raw generate() (at each of `thread_counts`; the fastest is the anchor, so a thread count that suits
    the model better is not counted as Parlour's gain) and the pipeline, interleaved run by run so both
    see the same machine load."""
    import torch

    from modules.generation import GenerationRequest

    prompt = backend.chat_template.render(messages)
    ids = torch.tensor([backend.tokenize(prompt)])
    eos = list(backend.eos_token_ids)
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, suppress_tokens=eos, eos_token_id=eos,
                  pad_token_id=eos[0])
    raw: dict[int, tuple[list[float], list[float]]] = {count: ([], []) for count in thread_counts}
    pipe_rates, pipe_firsts = [], []
    with torch.inference_mode():
        backend.model.generate(ids, max_new_tokens=5, **kwargs)  # warm-up
    before = torch.get_num_threads()
    for _ in range(runs):
        for count, (rates, firsts) in raw.items():
            torch.set_num_threads(count)
            with torch.inference_mode():
                start = time.perf_counter()
                backend.model.generate(ids, max_new_tokens=1, **kwargs)
                firsts.append(time.perf_counter() - start)
                start = time.perf_counter()
                out = backend.model.generate(ids, max_new_tokens=tokens, **kwargs)
                rates.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
        torch.set_num_threads(before)
        start = time.perf_counter()
        first = None
        for update in app.pipeline.stream(GenerationRequest(preset=preset, messages=messages)):
            if first is None and update.tokens:
                first = time.perf_counter() - start
        pipe_rates.append(update.tokens / (time.perf_counter() - start))
        pipe_firsts.append(first)
    by_count = {count: (median(rates), median(firsts)) for count, (rates, firsts) in raw.items()}
    best = max(by_count, key=lambda count: by_count[count][0])
    return {"raw": by_count[best], "raw_threads": best, "raw_by_threads": by_count,
            "pipeline": (median(pipe_rates), median(pipe_firsts))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, presets: Path, threads: int | None) -> tuple[subprocess.Popen, str, float]:
    """A server process at the user's defaults (its own thread choice, tuner included) unless `threads`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--models-dir",
                             str(model_dir.parent), "--model", model_dir.name, "--presets-dir", str(presets),
                             "--preset", "Bench", "--user-data", str(presets / "ud"),
                             "--settings", str(presets / "settings.yaml"),
                             *(["--threads", str(threads)] if threads else [])],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page_ready = None
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                health = json.loads(response.read())
            if page_ready is None:
                with urllib.request.urlopen(url + "/", timeout=5) as response:
                    if response.status == 200:
                        page_ready = time.perf_counter() - start
            if health["model"]:
                return proc, url, page_ready
        except OSError:
            pass
        time.sleep(0.05)


def bench_client(url: str, preset, runs: int, tokens: int) -> tuple[float, float]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    values = list(preset.model_dump().values())
    rates, firsts = [], []
    for i in range(runs + 1):
        start = time.perf_counter()
        first = None
        job = client.submit("Hello", *values, api_name="/chat_send")
        for output in job:
            chatbot = output[1]
            if first is None and len(chatbot) > 1 and chatbot[1]["content"]:
                first = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        status = job.outputs()[-1][2]
        assert f"{tokens} tokens" in status, status
        if i:  # the first run warms the connection up
            rates.append(tokens / elapsed)
            firsts.append(first)
    return median(rates), median(firsts)


def bench_browser(url: str, runs: int, tokens: int) -> tuple[float, float, float]:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    rates, firsts, ready = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        for i in range(runs + 1):
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("#chat-input textarea:not([disabled])")
            ready.append(time.perf_counter() - start)
            page.fill("#chat-input textarea", "Hello")
            start = time.perf_counter()
            page.click("#send")
            page.wait_for_function("() => { const b = document.querySelectorAll('[data-testid=\"bot\"]');"
                                   " return b.length && b[b.length-1].innerText.trim().length > 0; }", polling="raf")
            first = time.perf_counter() - start
            page.wait_for_function(f"() => document.querySelector('#chat-status').innerText.includes('{tokens} tokens')",
                                   polling="raf")
            elapsed = time.perf_counter() - start
            if i:
                rates.append(tokens / elapsed)
                firsts.append(first)
            page.close()
        browser.close()
    return median(rates), median(firsts), median(ready)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: Parlour's default)")
    args = parser.parse_args()

    import tempfile


    from modules.app import App
    from modules.presets import Preset
    from modules.settings import Settings

    settings = Settings(models_dir=args.model.parent, threads=args.threads)
    threads = settings.cpu_threads()
    counts = [threads.generate - 1, threads.generate] if threads.tune and threads.generate > 1 else [threads.generate]
    app = App.build(settings)
    backend = app.models.load(args.model.name)
    messages = [{"role": "user", "content": "Hello"}]
    preset = Preset(temperature=0.0, max_new_tokens=args.tokens, ban_eos_token=True)

    measured = bench_in_process(app, backend, messages, preset, args.tokens, args.runs, counts)
    (raw_rate, raw_first), (pipe_rate, pipe_first) = measured["raw"], measured["pipeline"]
    raw_rss = rss_mib()
    app.models.unload()
    del backend
    with tempfile.TemporaryDirectory() as tmp:
        presets = Path(tmp)
        (presets / "Bench.yaml").write_text(json.dumps(preset.changed()))
        proc, url, page_ready = start_server(args.model, presets, args.threads)
        try:
            client_rate, client_first = bench_client(url, preset, args.runs, args.tokens)
            browser_rate, browser_first, input_ready = bench_browser(url, args.runs, args.tokens)
            server_rss = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait()

    raw_threads = ", ".join(f"{count} thread{'s' * (count > 1)} {rate:.1f} tok/s"
                            for count, (rate, _first) in measured["raw_by_threads"].items())
    print(f"\nmodel {args.model.name}, {args.tokens} new tokens, EOS banned, greedy, median of {args.runs} runs, "
          f"{os.cpu_count()} cores; server at {'--threads ' + str(args.threads) if args.threads else 'default threads'}; "
          f"raw generate() at {raw_threads} (the faster is the anchor)\n")
    print("| level | tok/s | ÷ raw | first token (ms) | first token − raw (ms) |")
    print("|---|---|---|---|---|")
    for name, rate, first in [("raw generate", raw_rate, raw_first), ("pipeline", pipe_rate, pipe_first),
                              ("Gradio client", client_rate, client_first),
                              ("browser (Chromium)", browser_rate, browser_first)]:
        print(f"| {name} | {rate:.1f} | {rate / raw_rate:.2f} | {first * 1000:.0f} | {(first - raw_first) * 1000:+.0f} |")
    print("\n| start-up and memory | value |\n|---|---|")
    print(f"| page HTTP 200 after process start | {page_ready:.1f} s |")
    print(f"| chat input usable after navigation | {input_ready:.2f} s |")
    print(f"| RSS raw process (model loaded, after generate) | {raw_rss:.0f} MiB |")
    print(f"| RSS server (after client and browser use) | {server_rss:.0f} MiB (+{server_rss - raw_rss:.0f} MiB) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
