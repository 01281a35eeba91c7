"""LoRA training throughput: the Training tab's job (Transformers' Trainer through TrainingManager) against
a bare PyTorch loop over the same model, adapter and batches, and on CUDA QLoRA (4-bit nf4) beside bf16.

    .venv/bin/python bench/training.py [--model models/parlour-demo] [--steps 30] [--threads N]
    python3 bench/training.py --model /tmp/models/parlour-wide --steps 30      # on a GPU (device_check.sh)

Tokens/s counts the non-padding tokens of every step, first step included, over the whole run. The bare
loop is the reference that says what the Trainer costs (it is not how Parlour trains).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["the sea", "mountains", "bread", "trains", "the moon", "gardens", "music", "rain", "cities", "books"]


def write_dataset(path: Path, chats: int) -> Path:
    import json

    lines = []
    for i in range(chats):
        topic = TOPICS[i % len(TOPICS)]
        answer = " ".join(f"Here is fact {k} about {topic}: it is worth a look." for k in range(6))
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Tell me about {topic} ({i})."},
                                              {"role": "assistant", "content": answer}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_loop(backend, plan, steps: int) -> tuple[float, float]:
    """(tokens/s, seconds) of a plain loop: the same LoRA, AdamW and batches, no Trainer."""
    import torch

    from modules.training.job import _Collate
    from modules.training.lora import lora_on

    settings = plan.settings
    pad = backend.tokenizer.pad_token_id if backend.tokenizer.pad_token_id is not None else backend.eos_token_ids[0]
    collate = _Collate(pad)
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in plan.train]
    dtype = backend.model.dtype if backend.model.dtype in (torch.bfloat16, torch.float16) else None
    with lora_on(backend.model, settings) as model:
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
        tokens, start = 0, time.perf_counter()
        for step in range(steps):
            at = (step * settings.micro_batch) % len(rows)
            batch = {k: v.to(model.device) for k, v in collate(rows[at:at + settings.micro_batch] or rows[:1]).items()}
            with torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return tokens / seconds, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--chats", type=int, default=64)
    args = parser.parse_args()

    import torch

    from modules.models import ModelManager
    from modules.settings import Settings
    from modules.training.job import TrainingManager
    from modules.training.settings import TrainingSettings

    cuda = torch.cuda.is_available()
    scratch = Path(tempfile.mkdtemp(prefix="parlour-bench-training-"))
    data = write_dataset(scratch / "bench.jsonl", args.chats)
    threads = Settings(threads_batch=args.threads or None).cpu_threads()
    models = ModelManager(args.model.parent, scratch / "loras", scratch / "offload", threads)
    job = TrainingManager(models, scratch / "loras", scratch / "runs")
    common = dict(max_steps=args.steps, micro_batch=4, cutoff=256, threads=args.threads, save_steps=10**6,
                  learning_rate=1e-3)
    base = {"dtype": "bfloat16"} if cuda else {"dtype": "float32"}
    label = "bf16" if cuda else f"fp32, threads={threads.prompt}"
    variants = [(f"Trainer, LoRA r8 ({label})", base, {}),
                (f"bare PyTorch loop, same batches ({label})", base, None)]
    if cuda:
        variants.append(("Trainer, QLoRA r8 (4-bit nf4, bf16 compute)", base, {"qlora": True}))
    rows = []
    for index, (name, options, extra) in enumerate(variants):
        models.load(args.model.name, "transformers", options)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        plan = job.plan(TrainingSettings(output=f"bench-{index}", **common, **(extra or {})), dataset=data)
        if extra is None:
            torch.set_num_threads(threads.prompt)  # as the job does for its run
            rate, seconds = bare_loop(models.current(), plan, args.steps)
        else:
            start = time.perf_counter()
            final = job.run(plan)
            if final.state != "done":
                print(f"{name}: {final.state}: {final.message}", file=sys.stderr)
                return 1
            rate, seconds = final.tokens_per_second, time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        rows.append((name, rate, seconds, peak))
        print(f"{name}: {rate:,.0f} tokens/s", file=sys.stderr, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)

    first = rows[0][1]
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\n{args.model.name} on {device}, {args.steps} steps of 4 samples (cutoff 256), "
          f"{len(plan.train)} chats\n")
    print("| path | tokens/s | ÷ first | seconds (whole run) |" + (" GPU peak (MiB) |" if cuda else ""))
    print("|---|---|---|---|" + ("---|" if cuda else ""))
    for name, rate, seconds, peak in rows:
        print(f"| {name} | {rate:,.0f} | {rate / first:.2f} | {seconds:.1f} |" + (f" {peak:,.0f} |" if cuda else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
