"""Does a Hub download slow a chat down? One run, one table: a streamed reply's tokens/s while the Model
tab's background download runs, against the same reply with no download (before and after it).

    .venv/bin/python bench/download_stream.py [--model models/parlour-demo] [--tokens 200] [--rounds 5]
                                              [--mbps 80]

A local fake Hub (tests/fake_hub.py) serves a 16 GiB weights file made up as it is sent, at `--mbps`
megabytes a second (a fast connection; the download never finishes during the bench and is cancelled
at the end). The server is a real `server.py` process; the download is started through the UI's own
event API (gradio_client, `/model_download`) and the replies are streamed from /v1/completions
(greedy, EOS banned). The issue's target: tokens/s during the download >= 0.8x without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_hub import FakeHub, Generated  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stream_rate(url: str, tokens: int) -> float:
    """Tokens per second of one streamed reply, from its first token to its end."""
    body = {"prompt": "def main():", "max_tokens": tokens, "temperature": 0, "ban_eos_token": True, "stream": True,
            "stream_options": {"include_usage": True}}
    first = end = None
    count = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            end = time.perf_counter()
    assert first is not None and count == tokens, (count, tokens)
    return (count - 1) / (end - first)


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
    hub = FakeHub({"bench/big": {"config.json": (args.model / "config.json").read_bytes(),
                                 "model.safetensors": Generated(16 << 30, args.mbps * 1e6)}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(work / "hf"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (work / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--models-dir", str(models),
                               "--model", args.model.name, "--user-data", str(work / "user_data"),
                               "--settings", str(work / "settings.yaml")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).json()["model"]:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (work / "server.log").read_text()[-2000:]
            time.sleep(0.2)
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
        running = httpx.get(url + "/health", timeout=5).json()["downloads_running"]
        client.predict(api_name="/model_download_cancel")
        while httpx.get(url + "/health", timeout=5).json()["downloads_running"]:
            time.sleep(0.1)
        after = [stream_rate(url, args.tokens) for _ in range(args.rounds)]
    finally:
        server.terminate()
        server.wait(timeout=30)
        hub.close()
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
