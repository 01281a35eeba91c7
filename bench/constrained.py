"""What does a constraint cost? One run, one table of ratios.

    .venv/bin/python bench/constrained.py [--model models/parlour-demo] [--tokens 200] [--runs 5]

Measures, on the same model and prompt, sampling at temperature 1 with a fixed seed:
  single   one reply of `--tokens` tokens through generate() (--batch-size 1): a JSON object of ten
           properties (its strings have a minLength of 120, so the object is still open when the tokens run
           out and both replies have the same length) against the same request unconstrained (EOS banned)
  batch    the batch engine, four rows at once: two constrained and two not, against four unconstrained
  mask     per token: the constraint stage (consume the token, compute llguidance's mask, apply it to the
           logits), over a reply of random allowed tokens
  compile  a 20-property schema compiled from scratch for the model's tokenizer (a fresh compiler each time)
Runs alternate constrained and unconstrained so both see the same machine load; the table shows medians.
Targets (issue #14): single >= 0.90, batch >= 0.85, compile <= 50 ms.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Describe a person as JSON."}]


def object_schema(properties: int, min_length: int) -> dict:
    """An object of `properties` keys: strings, integers and enums in turn, every one required."""
    props: dict[str, dict] = {}
    for i in range(properties):
        if i % 3 == 0:
            props[f"text_{i}"] = {"type": "string", "minLength": min_length, "maxLength": min_length + 20}
        elif i % 3 == 1:
            props[f"count_{i}"] = {"type": "integer", "minimum": 0, "maximum": 100000}
        else:
            props[f"kind_{i}"] = {"enum": ["alpha", "beta", "gamma", "delta"]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def timed(backend, prompt: str, preset) -> tuple[int, float]:
    """(tokens, seconds from the first token to the last): decode speed, prefill left out."""
    first = None
    tokens = 0
    for delta in backend.stream(prompt, preset, threading.Event()):
        if delta.tokens and first is None:
            first = time.perf_counter()
            continue
        tokens += delta.tokens
    return tokens, time.perf_counter() - (first or time.perf_counter())


def rate(samples: list[tuple[int, float]]) -> float:
    return statistics.median(tokens / seconds for tokens, seconds in samples if seconds > 0)


def aggregate(backend, prompt: str, presets: list) -> tuple[int, float]:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(presets)) as pool:
        counts = list(pool.map(lambda p: timed(backend, prompt, p)[0] + 1, presets))
    return sum(counts), time.perf_counter() - start


def mask_seconds(backend, preset, steps: int) -> list[float]:
    """Seconds per constraint-stage call over a reply of `steps` tokens, each picked at random (seeded) among the
    tokens the stage allows: the mask's cost depends on the grammar's state, not on which model chose."""
    import random

    import torch

    stage = backend.constraint_stage(preset, 0)
    scores = torch.zeros(1, backend.model.config.vocab_size)
    rng = random.Random(0)
    ids: list[int] = []
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        allowed = stage(torch.tensor([ids], dtype=torch.long), scores).isfinite()
        times.append(time.perf_counter() - start)
        allowed[0, list(backend.eos_token_ids)] = False
        choices = allowed[0].nonzero()[:, 0].tolist()
        if not choices:
            break
        ids.append(rng.choice(choices))
    return times


def compile_seconds(backend, runs: int) -> list[float]:
    from modules.constraints import Compiler, Constraint

    text = json.dumps(object_schema(20, 5))
    times = []
    for _ in range(runs):
        compiler = Compiler.for_tokenizer(backend.tokenizer, backend.eos_token_ids, backend.model.config.vocab_size)
        start = time.perf_counter()
        compiler.matcher(Constraint("json_schema", text, "json_schema"))
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from modules.loaders.transformers import TransformersBackend
    from modules.presets import Preset

    single = TransformersBackend(args.model)
    prompt = single.chat_template.render(PROMPT)
    schema = object_schema(10, 120)
    base = dict(temperature=1.0, seed=7, max_new_tokens=args.tokens)
    free = Preset(**base, ban_eos_token=True)
    constrained = Preset(**base, json_schema=schema)

    timed(single, prompt, free), timed(single, prompt, constrained)  # warm-up (and the compile)
    free_runs, constrained_runs = [], []
    for _ in range(args.runs):
        free_runs.append(timed(single, prompt, free))
        constrained_runs.append(timed(single, prompt, constrained))
    masks = mask_seconds(single, constrained, args.tokens)
    compiles = compile_seconds(single, args.runs)

    batched = TransformersBackend(args.model, batch_size=4)
    seeds = [Preset(**{**base, "seed": s}, ban_eos_token=True) for s in range(4)]
    mixed = [seeds[0], seeds[1], Preset(**{**base, "seed": 2}, json_schema=schema),
             Preset(**{**base, "seed": 3}, json_schema=schema)]
    aggregate(batched, prompt, seeds), aggregate(batched, prompt, mixed)
    four_free, two_constrained = [], []
    for _ in range(args.runs):
        four_free.append(aggregate(batched, prompt, seeds))
        two_constrained.append(aggregate(batched, prompt, mixed))
    batched.unload()

    f, c = rate(free_runs), rate(constrained_runs)
    bf, bc = rate(four_free), rate(two_constrained)
    mask_ms = [t * 1000 for t in masks]
    rows = [
        ("single: unconstrained tok/s", f"{f:.1f}", f"{args.tokens} tokens, EOS banned"),
        ("single: constrained tok/s", f"{c:.1f}", f"{c / f:.3f} × unconstrained (target ≥ 0.90)"),
        ("batch: 4 unconstrained, aggregate tok/s", f"{bf:.1f}", "4 rows"),
        ("batch: 2 constrained + 2 not, aggregate tok/s", f"{bc:.1f}", f"{bc / bf:.3f} × four unconstrained "
                                                                       "(target ≥ 0.85)"),
        ("mask per token (ms)", f"{statistics.median(mask_ms):.3f}",
         f"median of {len(mask_ms)}; p90 {sorted(mask_ms)[int(len(mask_ms) * 0.9)]:.3f}"),
        ("compile, 20-property schema (ms)", f"{statistics.median(compiles) * 1000:.1f}", "target ≤ 50"),
    ]
    print(f"bench/constrained.py — {args.model.name}, {args.runs} runs (medians)\n")
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
