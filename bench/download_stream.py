"""Does a Hub download slow a chat down? One run, one table: a streamed reply's tokens/s while the Model
tab's background download runs, against the same reply with no download (before and after it).

    .venv/bin/python bench/download_stream.py [--model models/parlour-demo] [--tokens 200] [--rounds 5]
                                              [--mbps 80]

A local fake Hub (tests/fake_hub.py, in a process of its own so that serving does not slow the bench's
measuring client) serves a 16 GiB weights file made up as it is sent, at `--mbps` megabytes a second
(a fast connection; the download never finishes during the bench and is cancelled at the end). The server is a real `server.py` process; the download is started through the UI's own
event API (gradio_client, `/model_download`) and the replies are streamed from /v1/completions
(greedy, EOS banned). The issue's target: tokens/s during the download >= 0.8x without it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, get, start_server, stop, stream_times

from tests.fake_hub import FakeHub, Generated


def stream_rate(url: str, tokens: int) -> float:
    """Chunks (one per token here: greedy, short tokens) per second of one streamed reply, from its first
    token to its end."""
    body = {"prompt": "def main():", "max_tokens": tokens, "temperature": 0, "ban_eos_token": True}
    _start, times, _text = stream_times(url + "/v1/completions", body)
    assert len(times) > 1, "the reply streamed no text"
    return (len(times) - 1) / (times[-1] - times[0])


def serve_hub(config: bytes, mbps: float, urls: multiprocessing.Queue) -> None:
    """The fake Hub's process: serve until killed."""
    hub = FakeHub({"bench/big": {"config.json": config, "model.safetensors": Generated(16 << 30, mbps * 1e6)}})
    urls.put(hub.url)
    threading.Event().wait()


def downloaded_bytes(models: Path) -> int:
    partial = models / "bench_big.partial"
    return sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) if partial.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mbps", type=float, default=80.0, help="the fake Hub's pace, MB/s")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="parlour-bench-"))
    models = work / "models"
    shutil.copytree(args.model, models / args.model.name)
    context = multiprocessing.get_context("fork")  # before this process has any thread
    urls = context.Queue()
    hub = context.Process(target=serve_hub, args=((args.model / "config.json").read_bytes(), args.mbps, urls),
                          daemon=True)
    hub.start()
    os.environ.update(HF_ENDPOINT=urls.get(timeout=60), HF_HOME=str(work / "hf"))  # the server inherits them
    server, url = start_server(models, args.model.name, work / "user_data")
    try:
        stream_rate(url, 20)  # warm-up
        before = [stream_rate(url, args.tokens) for _ in range(args.rounds)]

        from gradio_client import Client

        client = Client(url, verbose=False)
        client.predict("bench/big", "", api_name="/model_download")
        while downloaded_bytes(models) < 8 << 20:  # the transfer is under way
            time.sleep(0.05)
        start_bytes, start = downloaded_bytes(models), time.perf_counter()
        during = [stream_rate(url, args.tokens) for _ in range(args.rounds)]
        speed = (downloaded_bytes(models) - start_bytes) / (time.perf_counter() - start) / 1e6
        running = get(url + "/health")["downloads_running"]
        client.predict(api_name="/model_download_cancel")
        while get(url + "/health")["downloads_running"]:
            time.sleep(0.1)
        after = [stream_rate(url, args.tokens) for _ in range(args.rounds)]
    finally:
        stop(server)
        hub.kill()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(before + after)
    print(f"\n{args.model.name}, {args.tokens} tokens a reply, {args.rounds} replies per row, "
          f"download at {speed:.0f} MB/s (fake Hub paced at {args.mbps:.0f}), still running at the end: {running}\n")
    print("| replies | tok/s median | range | ratio to no download |")
    print("|---|---|---|---|")
    for label, rates in (("no download (before)", before), ("during the download", during),
                         ("no download (after)", after)):
        print(f"| {label} | {statistics.median(rates):.1f} | {min(rates):.1f}–{max(rates):.1f} | "
              f"{statistics.median(rates) / base:.2f} |")
    print(f"\ntarget: during / without >= 0.80 → {statistics.median(during) / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
