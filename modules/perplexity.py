"""Perplexity of the loaded Transformers model on a text, with a sliding window.

    .venv/bin/python -m modules.perplexity --model parlour-demo --file notes.txt [--max-length 512 --stride 256]

Each window scores only the tokens the previous window did not, with up to `max_length - stride`
tokens of earlier context; perplexity is exp(total negative log-likelihood / scored tokens).
Results are kept in `user_data/perplexity.jsonl` (model, loader, quantization, text, ppl, time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from modules.loaders import registry

MAX_TEXT_CHARS = 20_000_000


@dataclass(frozen=True)
class PerplexityResult:
    model: str
    loader: str
    quantization: str
    text: str  # a short label: file name or the first words and a hash of pasted text
    tokens: int
    max_length: int
    stride: int
    perplexity: float
    seconds: float
    when: str


def perplexity(backend, text: str, max_length: int = 512, stride: int = 256,
               progress: Callable[[float], None] | None = None) -> tuple[float, int]:
    """(perplexity, scored tokens) of `text` under the backend's model."""
    import torch

    if not registry.capabilities(backend).perplexity:
        raise ValueError(f"perplexity needs a model loaded with the Transformers loader, not {backend.loader}")
    if stride < 1 or max_length < 2 or stride > max_length:
        raise ValueError("need 1 <= stride <= max_length and max_length >= 2")
    max_length = min(max_length, backend.context_length)
    stride = min(stride, max_length)
    ids = torch.tensor([backend.tokenize(text)])
    total = ids.shape[1]
    if total < 2:
        raise ValueError("the text is shorter than two tokens")
    nll_sum, scored, previous_end = 0.0, 0, 0
    model = backend.model
    with torch.inference_mode():
        for begin in range(0, total, stride):
            end = min(begin + max_length, total)
            window = ids[:, begin:end].to(model.device)
            new = end - previous_end  # tokens this window scores for the first time
            logits = model(window).logits.float()
            # position i predicts token i+1; score only the last `new` targets (the first token of the
            # text has no prediction)
            targets = window[:, 1:]
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            take = min(new, targets.shape[1])
            nll_sum -= log_probs[:, -take:].sum().item()
            scored += take
            previous_end = end
            if progress:
                progress(end / total)
            if end == total:
                break
    return math.exp(nll_sum / scored), scored


def label_for(text: str, source: str | None = None) -> str:
    if source:
        return source
    words = " ".join(text.split()[:6])
    return f"{words[:40]}… #{hashlib.sha256(text.encode()).hexdigest()[:8]}"


class PerplexityLog:
    """Past results, one JSON object a line (appends are atomic enough: one short write each)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, result: PerplexityResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(result)) + "\n")

    def all(self) -> list[PerplexityResult]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(PerplexityResult(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn or hand-broken line hides only itself
        return out


def evaluate(backend, text: str, source: str | None, max_length: int, stride: int, log: PerplexityLog,
             progress: Callable[[float], None] | None = None) -> PerplexityResult:
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"the text is longer than {MAX_TEXT_CHARS:,} characters")
    start = time.perf_counter()
    ppl, tokens = perplexity(backend, text, max_length, stride, progress)
    info = backend.info()
    result = PerplexityResult(model=backend.name, loader=backend.loader, quantization=info.get("quantization", "none"),
                              text=label_for(text, source), tokens=tokens, max_length=max_length, stride=stride,
                              perplexity=round(ppl, 4), seconds=round(time.perf_counter() - start, 2),
                              when=time.strftime("%Y-%m-%d %H:%M"))
    log.add(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Perplexity of a model on a text file (sliding window).")
    parser.add_argument("--model", required=True, help="folder name in --models-dir")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--log", type=Path, default=Path("user_data/perplexity.jsonl"))
    args = parser.parse_args(argv)
    from modules.loaders.transformers import TransformersBackend
    from modules.paths import safe_child

    backend = TransformersBackend(safe_child(args.models_dir, args.model))
    result = evaluate(backend, args.file.read_text(encoding="utf-8"), args.file.name, args.max_length, args.stride,
                      PerplexityLog(args.log))
    print(f"{result.model}: perplexity {result.perplexity:.3f} over {result.tokens} tokens ({result.seconds} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
