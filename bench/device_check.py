"""The GPU check: what CI (CPU only) cannot show about the Transformers loader on CUDA.

    python bench/device_check.py [--model models/parlour-demo] [--wide /tmp/models/parlour-wide]

Run it on a machine with an NVIDIA GPU, from the repository root (bench/device_check.sh sets up the
lent device machine and runs it). Each check prints PASS or FAIL with what it saw; the exit status is
the number of failures. It checks, on the trained demo model:

- fp16 on the GPU, bitsandbytes 8-bit (LLM.int8) and 4-bit (nf4 + double quantization, fp4 with bf16
  compute): the layers really are bitsandbytes' Linear8bitLt / Linear4bit on CUDA, `info()` says so,
  the footprint shrinks, and greedy text stays close to fp16's (token agreement is reported);
- a memory limit that forces CPU offload of a quantized model loads (the fp32-offload flag) and generates;
- the sampler chain on CUDA tensors: a seeded, many-sampler preset gives the same text twice;
- the batch engine on CUDA: four concurrent greedy requests each give their lone-request text;
- a LoRA adapter (QLoRA style) applied on top of 4-bit weights changes the reply, and removing it
  restores it;
- next-token probabilities and per-token log-probabilities (the API's logprobs) on the GPU.

Then, with --wide (an untrained ~400M model: `python -m modules.demo_model --size wide --steps 0`), a
table of load time, footprint, GPU peak memory and greedy tok/s for fp16 / 8-bit / 4-bit, as ratios of
fp16 measured in the same run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from modules.loaders.options import TransformersOptions  # noqa: E402
from modules.loaders.transformers import TransformersBackend  # noqa: E402
from modules.presets import Preset  # noqa: E402

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = Preset(temperature=0.0, max_new_tokens=32, ban_eos_token=True)


class Checks:
    """Collects PASS/FAIL lines; a check that raises is a FAIL with the exception."""

    def __init__(self) -> None:
        self.failures = 0

    def run(self, name: str, check: Callable[[], str]) -> None:
        try:
            detail = check()
            print(f"PASS  {name}: {detail}", flush=True)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the next check still runs
            self.failures += 1
            print(f"FAIL  {name}: {exc.__class__.__name__}: {exc}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()


def reply_ids(backend: TransformersBackend, preset: Preset = GREEDY) -> list[int]:
    """The reply to PROMPT under `preset` (greedy by default), as token ids."""
    prompt = backend.chat_template.render(PROMPT)
    text = "".join(d.text for d in backend.stream(prompt, preset, threading.Event()))
    return backend.tokenize(text)


def agreement(a: list[int], b: list[int]) -> float:
    """Share of the first tokens the two continuations have in common before they diverge."""
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(1, max(len(a), len(b)))


def layer_types(backend: TransformersBackend) -> set[str]:
    return {type(m).__name__ for m in backend.model.modules() if "Linear" in type(m).__name__}


def correctness(model: Path, checks: Checks) -> None:
    state: dict[str, object] = {}

    def fp16() -> str:
        backend = TransformersBackend(model, TransformersOptions(dtype="float16"))
        assert backend.device.startswith("cuda"), backend.device
        state["fp16"] = reply_ids(backend)
        state["fp16_mib"] = backend.info()["memory"]["weights_mib"]
        text = backend.detokenize(state["fp16"])
        backend.unload()
        return f"device {backend.device}, reply {text[:60]!r}"

    def quantized(options: TransformersOptions, layer: str, label: str) -> Callable[[], str]:
        def check() -> str:
            backend = TransformersBackend(model, options)
            info = backend.info()
            types = layer_types(backend)
            assert layer in types, f"no {layer} layers: {types}"
            weight = next(m.weight for m in backend.model.modules() if type(m).__name__ == layer)
            assert weight.device.type == "cuda", weight.device
            assert info["quantization"] == label, info["quantization"]
            assert info["memory"]["weights_mib"] < state["fp16_mib"], (info["memory"], state["fp16_mib"])
            ids = reply_ids(backend)
            backend.unload()
            return (f"{layer} on {weight.device}, weights {info['memory']['weights_mib']} MiB vs fp16 "
                    f"{state['fp16_mib']} MiB, greedy agreement with fp16 {agreement(ids, state['fp16']):.2f}")
        return check

    checks.run("fp16 on CUDA", fp16)
    checks.run("8-bit LLM.int8", quantized(TransformersOptions(load_in_8bit=True), "Linear8bitLt", "8-bit"))
    checks.run("4-bit nf4 + double quant", quantized(
        TransformersOptions(load_in_4bit=True, bnb_4bit_use_double_quant=True), "Linear4bit", "4-bit nf4"))
    checks.run("4-bit fp4, bf16 compute", quantized(
        TransformersOptions(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="bfloat16"),
        "Linear4bit", "4-bit fp4"))

    def offload() -> str:
        # A limit far below the model's size: accelerate must put most layers on the CPU.
        backend = TransformersBackend(model, TransformersOptions(load_in_8bit=True, max_gpu_memory="4MiB"))
        placement = set(getattr(backend.model, "hf_device_map", {}).values())
        ids = reply_ids(backend)
        backend.unload()
        assert "cpu" in placement, placement
        return f"device map {sorted(map(str, placement))}, {len(ids)} tokens generated"

    checks.run("8-bit with a GPU memory limit offloads to CPU", offload)

    def samplers() -> str:
        backend = TransformersBackend(model, TransformersOptions(dtype="float16"))
        preset = Preset(seed=1234, max_new_tokens=40, temperature=0.9, top_k=40, top_p=0.95, min_p=0.02,
                        typical_p=0.95, repetition_penalty=1.15, frequency_penalty=0.2, dry_multiplier=0.8,
                        xtc_probability=0.3, dynamic_temperature=True, dynatemp_low=0.5, dynatemp_high=1.5)
        first, second = reply_ids(backend, preset), reply_ids(backend, preset)
        mirostat = reply_ids(backend, Preset(seed=7, max_new_tokens=20, mirostat_mode=2))
        backend.unload()
        assert first == second, "same seed, different text"
        assert mirostat, "mirostat produced nothing"
        return f"seeded chain repeatable ({len(first)} tokens); mirostat {len(mirostat)} tokens"

    checks.run("sampler chain on CUDA tensors", samplers)

    def batched() -> str:
        backend = TransformersBackend(model, TransformersOptions(dtype="float16"), batch_size=4)
        prompts = [backend.chat_template.render([{"role": "user", "content": q}]) for q in
                   ("Hello", "What is the capital of Italy?", "Tell me a story.", "How are you?")]

        def one(prompt: str) -> str:
            return "".join(d.text for d in backend.stream(prompt, GREEDY, threading.Event()))

        alone = [one(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(one, prompts))
        backend.unload()
        same = sum(a == b for a, b in zip(alone, together))
        assert same >= 3, list(zip(alone, together))  # fp16 padding may flip a near-tie in one reply
        return f"{same}/4 concurrent replies equal their lone-request text"

    checks.run("batch engine on CUDA", batched)

    def lora() -> str:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            base = AutoModelForCausalLM.from_pretrained(model)
            get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False)).save_pretrained(Path(tmp) / "noisy")
            backend = TransformersBackend(model, TransformersOptions(load_in_4bit=True))
            plain = reply_ids(backend)
            backend.set_loras([Path(tmp) / "noisy"])
            adapted = reply_ids(backend)
            backend.set_loras([])
            restored = reply_ids(backend)
            backend.unload()
        assert adapted != plain, "the adapter changed nothing"
        assert restored == plain, "removing the adapter did not restore the reply"
        return "adapter on 4-bit weights changes the reply; removing it restores it"

    checks.run("LoRA on 4-bit weights", lora)

    def probabilities() -> str:
        backend = TransformersBackend(model, TransformersOptions(dtype="float16"))
        prompt = backend.chat_template.render(PROMPT)
        top = backend.next_token_probabilities(prompt, 5)
        logprobs = backend.token_logprobs(backend.tokenize(prompt))
        backend.unload()
        total = sum(p for _, p in top)
        assert 0 < total <= 1.0001 and top == sorted(top, key=lambda t: -t[1]), top
        assert torch.allclose(logprobs.exp().sum(-1), torch.ones(logprobs.shape[0]), atol=1e-3)
        return f"top-5 {[(t, round(p, 3)) for t, p in top]}"

    checks.run("next-token probabilities and log-probabilities", probabilities)


def raw_rate(backend: TransformersBackend, tokens: int, runs: int) -> float:
    """Greedy tok/s of the model's own generate() with no Parlour code around it (the ceiling)."""
    ids = torch.tensor([backend.tokenize(backend.chat_template.render(PROMPT))], device=backend.model.device)
    rates = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=tokens, min_new_tokens=tokens)
        torch.cuda.synchronize()
        rates.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def benchmark(model: Path, tokens: int, runs: int) -> None:
    variants = [("float16", TransformersOptions(dtype="float16")),
                ("8-bit", TransformersOptions(load_in_8bit=True)),
                ("4-bit nf4", TransformersOptions(load_in_4bit=True)),
                ("4-bit nf4, bf16 compute", TransformersOptions(load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16")),
                ("float16 again (order check)", TransformersOptions(dtype="float16"))]
    preset = GREEDY.model_copy(update={"max_new_tokens": tokens})
    rows = []
    for label, options in variants:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        backend = TransformersBackend(model, options)
        load = time.perf_counter() - start
        reply_ids(backend, preset)  # warm-up: a whole reply, so the GPU clocks are up before timing
        rates = []
        for _ in range(runs):
            torch.cuda.synchronize()
            start = time.perf_counter()
            prompt = backend.chat_template.render(PROMPT)
            count = sum(d.tokens for d in backend.stream(prompt, preset, threading.Event()))
            torch.cuda.synchronize()
            rates.append(count / (time.perf_counter() - start))
        rows.append((label, load, backend.info()["memory"]["weights_mib"],
                     torch.cuda.max_memory_allocated() / 2**20, sorted(rates)[len(rates) // 2]))
        if label == "float16":
            rows.append(("float16, bare generate()", load, rows[-1][2], rows[-1][3], raw_rate(backend, tokens, runs)))
        backend.unload()
        del backend
    print(f"\n{model.name} on {torch.cuda.get_device_name(0)}, {tokens} greedy tokens, median of {runs}\n")
    print("| weights | load (s) | footprint (MiB) | GPU peak (MiB) | tok/s | tok/s ÷ fp16 | footprint ÷ fp16 |")
    print("|---|---|---|---|---|---|---|")
    for label, load, footprint, peak, rate in rows:
        print(f"| {label} | {load:.1f} | {footprint:.0f} | {peak:.0f} | {rate:.1f} | {rate / rows[0][4]:.2f} "
              f"| {footprint / rows[0][2]:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "parlour-demo")
    parser.add_argument("--wide", type=Path, help="a bigger model for the speed/memory table")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--table-only", action="store_true", help="skip the correctness checks")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: this check is for a GPU machine (CI covers the CPU paths)")
        return 1
    import bitsandbytes
    import transformers

    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"bitsandbytes {bitsandbytes.__version__}", flush=True)
    checks = Checks()
    if not args.table_only:
        correctness(args.model, checks)
    if args.wide:
        checks.run("speed and memory table", lambda: benchmark(args.wide, args.tokens, args.runs) or "printed above")
    print(f"\n{checks.failures} check(s) failed")
    return checks.failures


if __name__ == "__main__":
    raise SystemExit(main())
