"""Hugging Face Transformers backend: `generate()` in a worker thread, streamed token by token.

The worker pushes token ids onto an unbounded queue and never waits for the reader, so a slow
browser cannot slow the model. Cancellation is a per-request Event watched by a StoppingCriteria,
so Stop (or a closed connection) ends the worker within one token.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from modules.loaders.base import Delta, IncrementalDecoder, LoadOptions
from modules.presets import Preset
from modules.sampling import SUPPORTED_KEYS, ChainContext, build_processors
from modules.templates import CHATML, ChatTemplate

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_END = object()
# generate() fills every unset GenerationConfig field from the model's own generation_config.json
# (Qwen ships top_k=20, temperature=0.7, ...), which would run beside our chain. Explicit neutral
# values keep those out: the preset's chain (modules/sampling.py) is the whole story.
NEUTRAL_GENERATION = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                          eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, guidance_scale=1.0,
                          num_beams=1)


class LoadError(RuntimeError):
    """A model that could not be loaded; the message says why in one line."""


class _CancelCriteria(StoppingCriteria):
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer(BaseStreamer):
    """Hands each new token's ids to a queue; skips the prompt, which generate() sends first."""

    def __init__(self, out: queue.SimpleQueue) -> None:
        self.out = out
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.out.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def _pick_dtype(name: str) -> torch.dtype | str:
    if name != "auto":
        return _DTYPES[name]
    return "auto" if torch.cuda.is_available() else torch.float32


class TransformersBackend:
    """A causal LM loaded with Transformers."""

    loader = "transformers"

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.name = path.name
        self.path = path
        start = time.perf_counter()
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise LoadError(f"{path.name}: not a Transformers model folder ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if getattr(config, "is_encoder_decoder", False):
            raise LoadError(f"{path.name}: encoder-decoder models ({config.model_type}) are not supported; "
                            "Parlour chats with decoder-only (causal) models")
        device_map = options.device_map
        if device_map == "auto" and not torch.cuda.is_available():
            device_map = "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_pick_dtype(options.dtype),
                                                              device_map=device_map)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise LoadError(f"{path.name}: {first}") from exc
        self.model.eval()
        self.load_seconds = time.perf_counter() - start
        self.device = str(self.model.device)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        template = getattr(self.tokenizer, "chat_template", None)
        self.has_own_template = isinstance(template, str)
        self.chat_template: ChatTemplate | None = ChatTemplate(template if self.has_own_template else CHATML)
        self.stop_strings = tuple(s for s in (self.tokenizer.decode([i]) for i in self.eos_token_ids) if s.strip())
        self._last_logits: tuple[tuple[int, ...], torch.Tensor] | None = None  # see next_token_logits
        self._ctx = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048)

    @property
    def context_length(self) -> int:
        return self._ctx

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def supported_samplers(self) -> frozenset[str]:
        """Preset keys this backend honours: every one (the whole chain in modules/sampling.py)."""
        return SUPPORTED_KEYS

    def prompt_ids(self, prompt: str, preset: Preset) -> list[int]:
        """The prompt's token ids as generation sees them: BOS per `add_bos_token`, then cut from the
        left to `truncation_length` minus the reply's room when that is set."""
        ids = self.tokenize(prompt)
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            # "add" means: as the model's tokenizer would (Llama's adds one, ChatML models' do not).
            adds_bos = self.tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
            if preset.add_bos_token and adds_bos and ids[:1] != [bos]:
                ids = [bos] + ids
            elif not preset.add_bos_token and ids[:1] == [bos]:
                ids = ids[1:]
        if preset.truncation_length:
            room = max(1, preset.truncation_length - preset.max_new_tokens)
            ids = ids[-room:]
        if not ids:  # generate() needs at least one token: start from BOS when there is nothing else
            ids = [bos if bos is not None else self.eos_token_ids[0]]
        return ids

    def chain_context(self, ids: list[int], preset: Preset) -> ChainContext:
        """What the sampler chain needs from this model (see modules/sampling.py)."""
        negative = self.tokenize(preset.negative_prompt) if preset.negative_prompt else None
        return ChainContext(eos_token_ids=self.eos_token_ids, device=self.device, prompt_ids=tuple(ids),
                            encode=self.tokenize, vocab_size=self.model.config.vocab_size,
                            model=self.model if preset.guidance_scale != 1.0 else None, negative_ids=negative)

    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        """The model's raw logits for the token after `ids` (shape [1, vocab]); for the inspect views.

        The last answer is kept: moving a slider re-runs the chain, not the model (processors never
        change their input in place, so sharing the tensor is safe)."""
        key = tuple(ids)
        cached = self._last_logits
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device))
        logits = out.logits[:, -1, :].float()
        self._last_logits = (key, logits)
        return logits

    def token_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities of every position's next token (shape [len(ids), vocab]), one forward pass."""
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.model.device))
        return out.logits[0].float().log_softmax(dim=-1).cpu()

    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (they matter when inspecting a distribution)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def template_vars(self) -> dict[str, Any]:
        return {"bos_token": self.tokenizer.bos_token or "", "eos_token": self.tokenizer.eos_token or ""}

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        ids = self.prompt_ids(prompt, preset)
        max_new = max(1, min(preset.max_new_tokens, self._ctx - len(ids)))
        input_ids = torch.tensor([ids], device=self.model.device)
        seed = preset.seed if preset.seed >= 0 else random.randrange(2**31)
        config = GenerationConfig(do_sample=not preset.greedy, max_new_tokens=max_new, **NEUTRAL_GENERATION,
                                  eos_token_id=list(self.eos_token_ids) or None,
                                  pad_token_id=self.tokenizer.pad_token_id or (self.eos_token_ids or [0])[0])
        processors = build_processors(preset, self.eos_token_ids, device=self.device,
                                      context=self.chain_context(ids, preset))
        out: queue.SimpleQueue = queue.SimpleQueue()
        streamer = _QueueStreamer(out)

        def work() -> None:
            try:
                torch.manual_seed(seed)
                with torch.inference_mode():
                    self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                        generation_config=config, logits_processor=processors,
                                        stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                                        streamer=streamer)
            except BaseException as exc:  # handed to the reader, which re-raises it in its own thread
                out.put(exc)
            finally:
                out.put(_END)

        worker = threading.Thread(target=work, name=f"generate-{self.name}", daemon=True)
        worker.start()
        decoder = IncrementalDecoder(lambda part: self.tokenizer.decode(
            part, skip_special_tokens=preset.skip_special_tokens))
        generated = 0
        last_token = None
        try:
            while True:
                item = out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                generated += len(item)
                last_token = item[-1]
                text = decoder.add(item)
                yield Delta(text, len(item))
            if cancel.is_set():
                reason = "cancelled"
            elif last_token in self.eos_token_ids:
                reason = "stop"
            else:
                reason = "length" if generated >= max_new else "stop"
            yield Delta(decoder.flush(), 0, reason)
        finally:
            # The reader left (finished, Stop, closed connection): end the worker within one token.
            cancel.set()
            worker.join()

    def info(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        return {"loader": self.loader, "name": self.name, "architecture": self.model.config.model_type,
                "parameters": params, "dtype": str(self.model.dtype).replace("torch.", ""),
                "device": self.device, "context_length": self._ctx, "load_seconds": round(self.load_seconds, 2),
                "chat_template": "model's own" if self.has_own_template else "ChatML (fallback)"}

    def unload(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
