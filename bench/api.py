"""API overhead and concurrency, in one run against the demo model.

    python bench/api.py [--models-dir models] [--model parlour-demo] [--tokens 200] [--repeat 15] [--micro]

--micro: the micro model (untrained, built in seconds) instead of the demo model: its forward pass costs
little, as a small model's does on a GPU, so what the table shows is Parlour's own cost per token.

Measures, with the same prompt and greedy decoding (EOS banned, so every run makes exactly --tokens):
  raw      model.generate() in this process: tok/s, and the time to the first token (max_new_tokens=1)
  API      a real server process: non-streaming and streaming tok/s (ratio to raw), streaming time to
           first token minus raw first-token time, latency of a 1-token request; streaming again on a
           second server with --stream-interval-ms 0 (a chunk per token), and chunks per streamed reply
  many     1/2/4/8 simultaneous requests: total time, aggregate tok/s, time relative to one request,
           batched (the default, --batch-size 4) and one at a time (--batch-size 1)
Medians of --repeat runs; API/raw ratios are medians of each API run against the raw runs
right before and after it (the machine's speed drifts), with their range. Builds the demo model first if it is missing (about 3 minutes).
Not run by CI: numbers depend on the machine; the table goes in the README.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, bench_model, post, start_server, stop

PROMPT = "<|im_start|>user\nTell me about the capital of France.<|im_end|>\n<|im_start|>assistant\n"


def median_of(repeat: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeat))


class Raw:
    """Plain model.generate() in this process with torch's own thread count (every core): the baseline,
    what a user gets from Transformers alone. (The server generates on one core fewer, see CpuThreads.)"""

    def __init__(self, path: Path) -> None:
        import torch

        from modules.loaders.transformers import TransformersBackend

        self.torch = torch
        self.backend = TransformersBackend(path)
        self.ids = torch.tensor([self.backend.tokenize(PROMPT)])
        self.generate(8)  # warm up

    def generate(self, n: int) -> float:
        """Seconds for exactly n new tokens (greedy, EOS banned)."""
        torch, ids, eos = self.torch, self.ids, list(self.backend.eos_token_ids)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                              max_new_tokens=n, suppress_tokens=eos, eos_token_id=eos,
                                              pad_token_id=eos[0])
        assert out.shape[1] - ids.shape[1] == n
        return time.perf_counter() - start


def stream(url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first text, total seconds, chunks with text) of one streamed completion."""
    start = time.perf_counter()
    first = None
    chunks = 0
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data: {"):
                if json.loads(line[6:])["choices"][0]["text"]:
                    chunks += 1
                    first = first if first is not None else time.perf_counter() - start
            elif line.startswith(b"data: [DONE]"):
                break
    return first or 0.0, time.perf_counter() - start, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="parlour-demo")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--micro", action="store_true", help="the micro model (see above)")
    args = parser.parse_args()
    path = bench_model("micro") if args.micro else args.models_dir / args.model
    args.models_dir, args.model = path.parent, path.name
    if not path.is_dir():
        from modules.demo_model import build

        print(f"building the demo model in {path} (about 3 minutes)…", flush=True)
        build(path, arch="llama", size_name="demo")

    raw = Raw(path)
    with tempfile.TemporaryDirectory() as tmp:
        server, base = start_server(args.models_dir, args.model, Path(tmp) / "default")
        # the same, sending a chunk per token (idle while the other is measured)
        per_token, base0 = start_server(args.models_dir, args.model, Path(tmp) / "per-token",
                                        "--stream-interval-ms", "0")
        try:
            url = f"{base}/v1/completions"
            url0 = f"{base0}/v1/completions"
            body = {"prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0, "ban_eos_token": True}
            post(url, {**body, "max_tokens": 8})  # warm up
            post(url0, {**body, "max_tokens": 8})
            check = post(url, body)
            assert check["usage"]["completion_tokens"] == args.tokens, check["usage"]
            # Interleaved, and each API run is compared with the raw runs just before and after it: the
            # machine's speed drifts (other tenants), and a ratio of neighbours cancels the drift.
            raw_runs, raw_firsts, runs = [raw.generate(args.tokens)], [], {"api": [], "stream": [], "stream0": []}
            for _ in range(args.repeat):
                api = _timed(lambda: post(url, body))
                streamed, streamed0 = stream(url, body), stream(url0, body)
                raw_runs.append(raw.generate(args.tokens))
                baseline = (raw_runs[-2] + raw_runs[-1]) / 2
                runs["api"].append((baseline / api, api))
                runs["stream"].append((baseline / streamed[1], *streamed))
                runs["stream0"].append((baseline / streamed0[1], *streamed0))
                raw_firsts.extend(raw.generate(1) for _ in range(3))
            raw_tps = args.tokens / statistics.median(raw_runs)
            raw_first = statistics.median(raw_firsts)
            stream_first = statistics.median(r[1] for r in runs["stream"])
            chunks = statistics.median(r[3] for r in runs["stream"])
            chunks0 = statistics.median(r[3] for r in runs["stream0"])
            one_token = median_of(args.repeat * 3, lambda: _timed(lambda: post(url, {**body, "max_tokens": 1})))
            many = concurrency(url, body, args.tokens, args.repeat)
        finally:
            stop(server)
            stop(per_token)
        # the same requests against a server that takes them one at a time through generate()
        server, base = start_server(args.models_dir, args.model, Path(tmp) / "serial", "--batch-size", "1")
        try:
            url = f"{base}/v1/completions"
            post(url, {**body, "max_tokens": 8})
            serial = concurrency(url, body, args.tokens, args.repeat)
        finally:
            stop(server)

    def ratio(key: str, seconds_at: int) -> tuple[str, str]:
        """tok/s (median) and the median ratio to raw with its range over the runs."""
        ratios = [r[0] for r in runs[key]]
        tps = args.tokens / statistics.median(r[seconds_at] for r in runs[key])
        return f"{tps:.1f}", f"{statistics.median(ratios):.3f} x raw (runs {min(ratios):.2f}-{max(ratios):.2f})"

    api, streamed, streamed0 = ratio("api", 1), ratio("stream", 2), ratio("stream0", 2)
    rows = [
        ("raw generate tok/s", f"{raw_tps:.1f}", ""),
        ("API non-streaming tok/s", api[0], api[1] + " target >= 0.97"),
        ("API streaming tok/s", streamed[0], streamed[1] + " target >= 0.95"),
        ("  text chunks per streamed reply", f"{chunks:.0f}", "default --stream-interval-ms 10"),
        ("API streaming, a chunk per token, tok/s", streamed0[0],
         streamed0[1] + f" ({chunks0:.0f} chunks; --stream-interval-ms 0)"),
        ("raw first token (ms)", f"{raw_first * 1000:.1f}", ""),
        ("API streaming first token (ms)", f"{stream_first * 1000:.1f}",
         f"+{(stream_first - raw_first) * 1000:.1f} ms over raw (target <= 30)"),
        ("API 1-token request (ms)", f"{one_token * 1000:.1f}", "target <= 50"),
    ]
    for label, table in (("default --batch-size 4", many), ("--batch-size 1", serial)):
        for k, seconds in table.items():
            rows.append((f"{k} concurrent x {args.tokens} tok, {label} (s)", f"{seconds:.2f}",
                         f"{k * args.tokens / seconds:.1f} tok/s aggregate, {seconds / table[1]:.2f} x one request"
                         + (" (target for 4: <= 2)" if k == 4 else "")))
    width = max(len(r[0]) for r in rows)
    print(f"\nParlour API bench: {args.model}, {args.tokens} tokens, greedy, median of {args.repeat}\n")
    print(f"| {'measure':<{width}} | {'value':>9} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|------")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>9} | {note}")


def concurrency(url: str, body: dict, tokens: int, repeat: int) -> dict[int, float]:
    """Total seconds for k simultaneous requests, k = 1, 2, 4, 8: medians of `repeat` rounds, each
    round measuring every k, so a change in the machine's load hits all of them alike."""
    runs: dict[int, list[float]] = {k: [] for k in (1, 2, 4, 8)}
    for _ in range(repeat):
        for k in runs:
            with concurrent.futures.ThreadPoolExecutor(k) as pool:
                start = time.perf_counter()
                results = list(pool.map(lambda _: post(url, body), range(k)))
                runs[k].append(time.perf_counter() - start)
            assert all(r["usage"]["completion_tokens"] == tokens for r in results)
    return {k: statistics.median(seconds) for k, seconds in runs.items()}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
