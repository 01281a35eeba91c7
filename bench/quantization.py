"""Full precision vs bitsandbytes 8-bit vs 4-bit nf4, side by side, in one run.

    .venv/bin/python bench/quantization.py [--model models/parlour-demo] [--tokens 100]

On a CUDA GPU the baseline is fp16; on CPU it is fp32 (bitsandbytes also runs there, slower).
Prints load time, weights footprint (and GPU memory allocated), and greedy tok/s.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import torch

    from modules.loaders.options import TransformersOptions
    from modules.loaders.transformers import TransformersBackend
    from modules.presets import Preset

    cuda = torch.cuda.is_available()
    base = "float16" if cuda else "float32"
    variants = [(base, TransformersOptions(dtype=base)),
                ("8-bit", TransformersOptions(load_in_8bit=True)),
                ("4-bit nf4", TransformersOptions(load_in_4bit=True, bnb_4bit_compute_dtype=base))]
    preset = Preset(temperature=0.0, max_new_tokens=args.tokens, ban_eos_token=True)
    rows = []
    for label, options in variants:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        backend = TransformersBackend(args.model, options)
        load = time.perf_counter() - start
        prompt = backend.chat_template.render([{"role": "user", "content": "Tell me a story."}])
        list(backend.stream(prompt, preset.model_copy(update={"max_new_tokens": 5}), threading.Event()))
        rates = []
        for _ in range(args.runs):
            start = time.perf_counter()
            tokens = sum(d.tokens for d in backend.stream(prompt, preset, threading.Event()))
            rates.append(tokens / (time.perf_counter() - start))
        info = backend.info()
        gpu = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "n/a"
        rows.append((label, load, info["memory"]["weights_mib"], gpu, sorted(rates)[len(rates) // 2]))
        backend.unload()
        del backend
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"\n{args.model.name} on {device}, {args.tokens} greedy tokens, median of {args.runs}\n")
    print("| weights | load (s) | footprint (MiB) | GPU peak (MiB) | tok/s | tok/s ÷ baseline |")
    print("|---|---|---|---|---|---|")
    for label, load, footprint, gpu, rate in rows:
        print(f"| {label} | {load:.2f} | {footprint:.1f} | {gpu} | {rate:.1f} | {rate / rows[0][4]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
