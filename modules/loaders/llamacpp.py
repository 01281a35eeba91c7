"""llama.cpp backend for GGUF files, through llama-cpp-python (an optional install:
`.venv/bin/pip install -r requirements-gguf.txt`; it compiles llama.cpp, ~13 minutes on 2 cores).

Preset fields map to llama.cpp's own samplers where it has them:

| Preset key | llama.cpp |
|---|---|
| temperature (0 = greedy) | temp |
| top_k, top_p, min_p, typical_p | top_k, top_p, min_p, typical_p |
| repetition_penalty | repeat_penalty |
| frequency_penalty, presence_penalty | frequency_penalty, presence_penalty |
| tfs | tfs_z |
| mirostat_mode, mirostat_tau, mirostat_eta | mirostat_mode, mirostat_tau, mirostat_eta |
| seed | set_seed |
| ban_eos_token | a logits processor that masks EOS |

Other samplers (DRY, XTC, ...) are not applied by this loader (the registry's `LLAMACPP_SAMPLERS`).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from modules import reasoning
from modules.loaders.base import Delta, Emit, LoadError, token_stream
from modules.loaders.options import LlamaCppOptions
from modules.loaders.registry import LLAMACPP_SAMPLER_ARGS, LLAMACPP_SAMPLERS
from modules.presets import Preset
from modules.settings import CpuThreads
from modules.templates import CHATML, ChatTemplate



def _gguf_file(path: Path) -> Path:
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if not files:
        raise LoadError(f"{path.name}: no .gguf file in the folder")
    return files[0]


class LlamaCppBackend:
    loader = "llama.cpp"

    def __init__(self, path: Path, options: LlamaCppOptions | None = None, threads: CpuThreads | None = None) -> None:
        options = options or LlamaCppOptions()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LoadError("GGUF models need llama-cpp-python: .venv/bin/pip install -r requirements-gguf.txt "
                            "(it compiles llama.cpp; ~13 minutes on 2 cores, cached afterwards)") from exc
        self.name = path.name
        self.options = options
        start = time.perf_counter()
        split = [float(x) for x in options.tensor_split.split(",")] if options.tensor_split else None
        try:
            self.llm = Llama(model_path=str(_gguf_file(path)), n_ctx=options.n_ctx, n_gpu_layers=options.n_gpu_layers,
                             n_threads=options.threads or (threads.generate if threads else None),
                             n_threads_batch=threads.prompt if threads else None, n_batch=options.n_batch,
                             tensor_split=split, flash_attn=options.flash_attn, use_mmap=options.use_mmap,
                             use_mlock=options.use_mlock, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LoadError(f"{path.name}: llama.cpp could not load it ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
        self.load_seconds = time.perf_counter() - start
        meta = self.llm.metadata or {}
        template = meta.get("tokenizer.chat_template")
        self.has_own_template = bool(template)
        self.chat_template: ChatTemplate | None = ChatTemplate(template or CHATML)
        self.reasoning_format = reasoning.detect(template)
        self.eos_token_ids = (self.llm.token_eos(),)
        self.stop_strings: tuple[str, ...] = ()
        self.architecture = meta.get("general.architecture", "?")

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    @property
    def vocab_size(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def template_vars(self) -> dict[str, Any]:
        bos = self.llm.token_bos()
        return {"bos_token": self.detokenize([bos]) if bos >= 0 else "", "eos_token": ""}

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        import numpy as np

        ids = self.tokenize(prompt) or [self.llm.token_bos()]
        max_new = max(1, min(preset.max_new_tokens, self.context_length - len(ids)))
        kwargs: dict[str, Any] = {"temp": preset.temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                                  "repeat_penalty": 1.0}
        for key, arg in LLAMACPP_SAMPLER_ARGS.items():
            if hasattr(preset, key):
                kwargs[arg] = getattr(preset, key)
        if preset.ban_eos_token:
            eos = self.eos_token_ids[0]

            def ban_eos(_ids, scores):
                scores = np.array(scores, copy=True)
                scores[eos] = -np.inf
                return scores

            kwargs["logits_processor"] = [ban_eos]
        seed = preset.seed if preset.seed >= 0 else random.randrange(2**31)

        def produce(emit: Emit) -> None:
            self.llm.set_seed(seed)
            count = 0
            for token in self.llm.generate(ids, reset=True, **kwargs):
                if cancel.is_set():
                    return
                emit([token])
                count += 1
                if token in self.eos_token_ids or count >= max_new:
                    return

        return token_stream(produce, cancel, self.detokenize, self.eos_token_ids, max_new, self.name)

    def info(self) -> dict[str, Any]:
        return {"loader": self.loader, "name": self.name, "architecture": self.architecture,
                "parameters": self.llm.n_params() if hasattr(self.llm, "n_params") else None,
                "dtype": "gguf", "device": "gpu" if self.options.n_gpu_layers else "cpu",
                "context_length": self.context_length, "load_seconds": round(self.load_seconds, 2),
                "chat_template": "model's own" if self.has_own_template else "ChatML (fallback)",
                "samplers": sorted(LLAMACPP_SAMPLERS)}

    def unload(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None
        del self.llm
