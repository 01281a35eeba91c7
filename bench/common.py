"""What the benches share: a Parlour server process, JSON posts, streamed replies timed chunk by chunk,
and the bench-only models built here (no download)."""

from __future__ import annotations

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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models_dir: Path, model: str, tmp: Path, *extra: str, port: int | None = None,
                 timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """A server process with `model` loaded; returns it and its base URL."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--models-dir",
                             str(models_dir), "--model", model, "--user-data", str(tmp), "--settings",
                             str(tmp / "settings.yaml"), *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if json.loads(response.read())["model"]:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not load the model in time")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def stream_times(url: str, body: dict) -> tuple[float, list[float], str]:
    """Stream one completion (chat or text): (start, arrival time of each chunk with text, the text)."""
    start = time.perf_counter()
    times, parts = [], []
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if line.startswith(b"data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if text:
                    times.append(time.perf_counter())
                    parts.append(text)
            elif line.startswith(b"data: [DONE]"):
                break
    return start, times, "".join(parts)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """median (min-max) of `values`."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


BENCH_MODELS = Path.home() / ".cache" / "parlour" / "bench-models"


def bench_model(name: str) -> Path:
    """A bench-only model, built on first use in ~/.cache/parlour/bench-models: "micro" (the tests' micro
    Llama: its forward pass costs little, so Parlour's own cost per token shows) or "long" (see
    build_long_model)."""
    path = BENCH_MODELS / f"parlour-{name}"
    if name == "long":
        return build_long_model(path)
    if not (path / "config.json").is_file():
        from modules.demo_model import build

        build(path, arch="llama", size_name=name, progress=False)
    return path


def build_long_model(path: Path) -> Path:
    """A ~26M-parameter Llama with a 4,096-token context and the demo model's tokenizer, untrained
    (random weights, seeded): big enough that reading a long prompt costs what it does on real models
    of its size. Built in seconds; kept in `path`."""
    if (path / "config.json").is_file():
        return path
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    demo = ROOT / "models" / "parlour-demo"
    if not (demo / "tokenizer.json").is_file():
        raise SystemExit("the demo model's tokenizer is needed: python -m modules.demo_model")
    tokenizer = AutoTokenizer.from_pretrained(demo)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    scratch = path.with_name(path.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    LlamaForCausalLM(config).save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    scratch.rename(path)
    return path
