"""Hugging Face Transformers backend: `generate()` in a worker thread, streamed token by token.

The worker pushes token ids onto an unbounded queue and never waits for the reader, so a slow
browser cannot slow the model. Cancellation is a per-request Event watched by a StoppingCriteria,
so Stop (or a closed connection) ends the worker within one token.

With `--batch-size` above 1 requests go through the batch engine (modules/batching.py) instead. Both
paths start from the prompt cache (modules/prefix_cache.py): the keys/values of the longest beginning
of the prompt read before (by the same user, with the same weights), so only the rest is read.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from modules import reasoning
from modules.batching import BatchEngine, cache_from, cache_layers, supports_plain_cache
from modules.constraint_stage import ConstraintStage
from modules.constraints import Compiler, Constraint, constraint_of
from modules.loaders.base import Delta, Emit, GenerationHooks, LoadError, read_tokens, rss_bytes, token_stream
from modules.loaders.options import TransformersOptions
from modules.prefix_cache import PrefixCache
from modules.presets import Preset
from modules.sampling import ChainContext, build_processors
from modules.settings import CpuThreads
from modules.templates import CHATML, ChatTemplate
from modules.tools import formats as tool_formats

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# generate() fills every unset GenerationConfig field from the model's own generation_config.json
# (Qwen ships top_k=20, temperature=0.7, ...), which would run beside our chain. Explicit neutral
# values keep those out: the preset's chain (modules/sampling.py) is the whole story.
NEUTRAL_GENERATION = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                          eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, guidance_scale=1.0,
                          num_beams=1)
# Greedy decoding never runs the sampling warpers; leaving them out spares a warning per request.
_GREEDY_NEUTRAL = {k: v for k, v in NEUTRAL_GENERATION.items() if k not in {"top_k", "min_p"}}


class _CancelCriteria(StoppingCriteria):
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _EmitStreamer(BaseStreamer):
    """Hands each new token's ids to `emit`; skips the prompt, which generate() sends first."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.emit(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def _decoder(tokenizer: Any) -> Callable[..., str]:
    """`decode(ids, skip_special_tokens)` for this tokenizer: the Rust tokenizer's own where Transformers'
    wrapper adds nothing to it (no model-specific decoding, no clean-up of spaces). The wrapper costs
    ~50 µs a call in Python, the Rust call ~1 µs, and a streamed reply decodes twice per token."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (backend is not None and type(tokenizer)._decode is PreTrainedTokenizerFast._decode
            and not tokenizer.clean_up_tokenization_spaces):
        return lambda ids, skip_special_tokens: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids, skip_special_tokens: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _pick_dtype(name: str) -> torch.dtype | str:
    if name != "auto":
        return _DTYPES[name]
    return "auto" if torch.cuda.is_available() else torch.float32


def quantization_config(options: TransformersOptions):
    """The BitsAndBytesConfig for the options, or None for full-precision weights.

    With a memory limit or disk offload some layers may land on the CPU; Transformers refuses that for
    quantized weights unless those layers are explicitly kept in fp32 there, so the flag is set then.
    """
    if options.load_in_8bit and options.load_in_4bit:
        raise LoadError("choose 8-bit or 4-bit, not both")
    if not (options.load_in_8bit or options.load_in_4bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LoadError("bitsandbytes is not installed: pip install -r requirements.txt") from exc
    from transformers import BitsAndBytesConfig

    offload = bool(options.max_gpu_memory or options.max_cpu_memory or options.disk_offload)
    if options.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=offload)
    return BitsAndBytesConfig(load_in_4bit=True, llm_int8_enable_fp32_cpu_offload=offload,
                              bnb_4bit_quant_type=options.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=options.bnb_4bit_use_double_quant,
                              bnb_4bit_compute_dtype=_DTYPES[options.bnb_4bit_compute_dtype])


def load_kwargs(options: TransformersOptions, offload_dir: Path | None, trust_remote_code: bool) -> dict[str, Any]:
    """from_pretrained() arguments for the options (kept separate so it is testable without a GPU)."""
    device_map: str | None = options.device_map
    if device_map == "auto" and not torch.cuda.is_available():
        device_map = "cpu"
    if device_map == "cuda" and not torch.cuda.is_available():
        raise LoadError("device_map is cuda but no CUDA GPU is available")
    kwargs: dict[str, Any] = {"dtype": _pick_dtype(options.dtype), "device_map": device_map}
    quant = quantization_config(options)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if options.load_in_8bit and options.dtype == "auto":
            kwargs["dtype"] = torch.float16  # int8 matmuls want fp16 activations
    memory: dict[Any, str] = {}
    if options.max_gpu_memory and torch.cuda.is_available():
        memory.update({i: options.max_gpu_memory.replace(" ", "") for i in range(torch.cuda.device_count())})
        # accelerate gives a device missing from max_memory nothing: without a CPU entry, what does not fit
        # the GPU would go to "disk" with no folder and load as empty (meta) weights.
        memory["cpu"] = f"{_ram_mib()}MiB"
    if options.max_cpu_memory:
        memory["cpu"] = options.max_cpu_memory.replace(" ", "")
    if memory:
        kwargs["max_memory"] = memory
        kwargs["device_map"] = "auto"
    if options.disk_offload and offload_dir is not None:
        kwargs["offload_folder"] = str(offload_dir)
        kwargs["device_map"] = "auto"
    if options.attn_implementation != "auto":
        kwargs["attn_implementation"] = options.attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


class TokenScorer:
    """Log-probabilities of tokens as a text grows: each `score` call runs only the new tokens,
    reusing the key/value cache of everything read before (so scoring a streamed reply chunk by
    chunk costs one forward pass over it in all, not one per chunk)."""

    def __init__(self, model: Any, prefix_ids: list[int]) -> None:
        self.model = model
        self.cache: Any = None
        self.next_row: torch.Tensor | None = None  # log-probabilities of the token after what was read
        if prefix_ids:
            self._read(prefix_ids)

    @torch.inference_mode()
    def _read(self, ids: list[int]) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([ids], device=self.model.device), cache=self.cache, use_cache=True)
        self.cache = out.cache
        rows = out.logits[0].float().log_softmax(dim=-1)
        self.next_row = rows[-1]
        return rows

    def score(self, ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """For each of `ids` (which continue what was read): its log-probability and the `top` most likely
        tokens at its place, as (token id, log-probability). The very first token of a text has no
        context: (None, [])."""
        if not ids:
            return []
        before = self.next_row
        rows = self._read(ids)
        previous = rows[:-1] if before is None else torch.cat([before[None], rows[:-1]])
        chosen = previous.gather(1, torch.tensor(ids[len(ids) - previous.shape[0]:], device=previous.device)[:, None])
        values, indices = previous.topk(top, dim=-1) if top else (previous[:, :0], previous[:, :0].long())
        scored = [(float(c), list(zip(i.tolist(), v.tolist())))
                  for c, v, i in zip(chosen[:, 0].cpu(), values.cpu(), indices.cpu())]
        return ([(None, [])] if before is None else []) + scored


def _ram_mib() -> int:
    """This machine's physical memory in MiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _reason(exc: BaseException) -> str:
    """An error's message on one line (huggingface_hub puts the field on the first, the why on the next)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:3])[:300] if lines else exc.__class__.__name__


class TransformersBackend:
    """A causal LM loaded with Transformers."""

    loader = "transformers"
    #: every constraint kind: llguidance compiles them for this model's own tokenizer (modules/constraints.py)

    def __init__(self, path: Path, options: TransformersOptions | None = None, *, offload_dir: Path | None = None,
                 trust_remote_code: bool = False, batch_size: int = 1, threads: CpuThreads | None = None) -> None:
        options = options or TransformersOptions()
        if threads is not None:
            torch.set_num_threads(threads.generate)  # process-wide; the batch engine switches it per step
        self.name = path.name
        self.path = path
        self.options = options
        start = time.perf_counter()
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - config.json's checks raise huggingface_hub's own
            # StrictDataclassError (not a ValueError) for a wrong field type; any failure here is one line
            raise LoadError(f"{path.name}: not a Transformers model folder ({_reason(exc)})") from exc
        if getattr(config, "is_encoder_decoder", False):
            raise LoadError(f"{path.name}: encoder-decoder models ({config.model_type}) are not supported; "
                            "Parlour chats with decoder-only (causal) models")
        if not any(p.suffix in {".safetensors", ".bin"} for p in path.iterdir()):
            raise LoadError(f"{path.name}: no weights (*.safetensors or *.bin) in the folder")
        self._load_kwargs = load_kwargs(options, offload_dir, trust_remote_code)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            # safetensors is preferred; a .bin checkpoint is read with torch.load(weights_only=True)
            # by Transformers 5, which refuses pickled code.
            self.model = AutoModelForCausalLM.from_pretrained(path, **self._load_kwargs)
        except torch.OutOfMemoryError as exc:
            raise LoadError(f"{path.name}: out of memory while loading — try 4-bit or 8-bit, or offload") from exc
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc) or "does not recognize" in str(exc):
                raise LoadError(f"{path.name}: unsupported architecture {config.model_type!r}") from exc
            raise LoadError(f"{path.name}: {_first_line(exc)}") from exc
        except (OSError, KeyError, RuntimeError, ImportError) as exc:
            raise LoadError(f"{path.name}: {_first_line(exc)}") from exc
        except Exception as exc:  # e.g. safetensors' own errors for a corrupt file
            raise LoadError(f"{path.name}: {exc.__class__.__name__}: {_first_line(exc)}") from exc
        self.model.eval()
        self.loras: tuple[str, ...] = ()
        self.load_seconds = time.perf_counter() - start
        self.device = str(self.model.device)
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        template = getattr(self.tokenizer, "chat_template", None)
        self.has_own_template = isinstance(template, str)
        self.chat_template: ChatTemplate | None = ChatTemplate(template if self.has_own_template else CHATML)
        self.stop_strings = tuple(s for s in (self.tokenizer.decode([i]) for i in self.eos_token_ids) if s.strip())
        self._decode = _decoder(self.tokenizer)
        # "add BOS" means: as the model's tokenizer would (Llama's adds one, ChatML models' do not)
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
        self.reasoning_format = reasoning.detect(template if self.has_own_template else None)
        self._last_logits: tuple[tuple[int, ...], torch.Tensor] | None = None  # see next_token_logits
        native = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048)
        self._ctx = options.context_length or native
        # Batched generation (--batch-size > 1): concurrent requests share forward passes; the pipeline's
        # queue lets `max_concurrency` requests in at once.
        self.threads = threads
        # Both need caches of plain keys/values in every layer (not linear-attention states).
        self._plain_cache = supports_plain_cache(self.model)
        if not self._plain_cache:
            log.info("%s: its cache is not plain keys/values in every layer: no prompt cache, no batching", path.name)
        self.prefix_cache = self._new_prefix_cache()
        self.max_concurrency = batch_size if self._plain_cache else 1
        self.engine: BatchEngine | None = None
        self._constraints: Compiler | None = None  # built at the first constrained request (see constraint_compiler)
        if self.max_concurrency > 1:
            self.engine = self._new_engine()

    def _new_engine(self) -> BatchEngine:
        return BatchEngine(self.model, self.eos_token_ids, self._pad_token_id(), self.max_concurrency, self.device,
                           threads=self.threads, prefix_cache=self.prefix_cache)

    def _new_prefix_cache(self) -> PrefixCache | None:
        """A prompt cache for the current weights (a new one whenever they change: its keys/values
        belong to the weights that computed them), or None when off."""
        if not self._plain_cache or not self.options.prompt_cache_mib:
            return None
        return PrefixCache(self.options.prompt_cache_mib * 2**20)

    def _pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_token_ids or (0,))[0]

    @property
    def context_length(self) -> int:
        return self._ctx

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self._decode(ids, True)

    @property
    def vocab_size(self) -> int:
        """Token ids run 0..vocab_size-1 (the embedding's rows; may exceed the tokenizer's own count)."""
        return int(self.model.config.vocab_size)

    def tokenize_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` and each token's (start, end) character span in it (the API's streamed
        logprobs hand out a token's text with its entry)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def prompt_ids(self, prompt: str, preset: Preset) -> list[int]:
        """The prompt's token ids as generation sees them: BOS per `add_bos_token`, then cut from the
        left to `preset.prompt_budget` when `truncation_length` is set."""
        ids = self.tokenize(prompt)
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            if preset.add_bos_token and self._adds_bos and ids[:1] != [bos]:
                ids = [bos] + ids
            elif not preset.add_bos_token and ids[:1] == [bos]:
                ids = ids[1:]
        if preset.truncation_length:
            ids = ids[-preset.prompt_budget(self._ctx):]
        if not ids:  # generate() needs at least one token: start from BOS when there is nothing else
            ids = [bos if bos is not None else self.eos_token_ids[0]]
        return ids

    def chain_context(self, ids: list[int], preset: Preset, model: Any = None,
                      generator: torch.Generator | None = None, thinking: bool = False) -> ChainContext:
        """What the sampler chain needs from this model (see modules/sampling.py); `model` is the one
        a running request holds (an adapter change swaps self.model); `generator` the request's own.
        `thinking`: the prompt opened a reasoning block, so a constraint applies only from the answer on."""
        model = model if model is not None else self.model
        negative = self.tokenize(preset.negative_prompt) if preset.negative_prompt else None
        return ChainContext(eos_token_ids=self.eos_token_ids, device=self.device, prompt_ids=tuple(ids),
                            encode=self.tokenize, vocab_size=model.config.vocab_size,
                            model=model if preset.guidance_scale != 1.0 else None, negative_ids=negative,
                            generator=generator, constraint=self.constraint_stage(preset, len(ids), thinking))

    def constraint_compiler(self) -> Compiler:
        """The constraint compiler for this model's tokenizer (made once; it caches compiled constraints)."""
        if self._constraints is None:
            self._constraints = Compiler.for_tokenizer(self.tokenizer, self.eos_token_ids, self.model.config.vocab_size)
        return self._constraints

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile it for this model (errors are ConstraintError); the request that follows reuses the result."""
        self.constraint_compiler().matcher(constraint)

    def constraint_stage(self, preset: Preset, prompt_length: int, thinking: bool = False) -> ConstraintStage | None:
        """A fresh constraint stage for one reply, or None when the preset does not constrain it."""
        constraint = constraint_of(preset)
        if constraint is None:
            return None
        wait_for = self.tokenize(self.reasoning_format.answer_start) if thinking else ()
        return self.constraint_compiler().stage(constraint, prompt_length, wait_for, self.eos_token_ids)

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

    def token_scorer(self, prefix_ids: list[int]) -> "TokenScorer":
        """A TokenScorer that has read `prefix_ids` (the API's logprobs; see modules/api/logprobs.py)."""
        return TokenScorer(self.model, prefix_ids)

    def token_text(self, token_id: int) -> str:
        """One token as text, special tokens included (they matter when inspecting a distribution)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def template_vars(self) -> dict[str, Any]:
        return {"bos_token": self.tokenizer.bos_token or "", "eos_token": self.tokenizer.eos_token or ""}

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event,
               hooks: GenerationHooks | None = None, cache_scope: str = "",
               constraint_after_thought: bool = False) -> Iterator[Delta]:
        """`cache_scope`: whose partition of the prompt cache this request may reuse and fill (see
        modules/prefix_cache.py for why users do not share one). `constraint_after_thought`: the prompt
        opened a reasoning block and the preset's constraint applies from its end on (the pipeline says)."""
        ids = self.prompt_ids(prompt, preset)
        model = self.model  # an adapter change swaps self.model; this request keeps the one it started with
        prefix_cache = self.prefix_cache  # ... and the prompt cache of those weights
        input_ids = torch.tensor([ids], device=model.device)
        if hooks is not None and hooks.tokenizer is not None:
            prompt, new_ids, embeds = hooks.tokenizer(prompt, input_ids, None)
            if embeds is not None:
                log.warning("an extension's tokenizer_modifier returned input_embeds; this backend ignores them")
            new_ids = torch.as_tensor(new_ids, dtype=torch.long, device=model.device)
            if new_ids.dim() == 1:
                new_ids = new_ids.unsqueeze(0)
            if new_ids.dim() == 2 and new_ids.shape[0] == 1 and new_ids.shape[1] > 0:
                input_ids = new_ids
            else:
                log.warning("ignoring tokenizer_modifier input_ids of shape %s", tuple(new_ids.shape))
        max_new = max(1, min(preset.max_new_tokens, self._ctx - input_ids.shape[1]))
        decode = self._stream_decoder(preset)
        thinking = constraint_after_thought
        if self.engine is not None and not (hooks and hooks.logits_processors):
            # The batch engine applies the preset's own chain; extension logits processors need generate().
            prompt_ids = input_ids[0].tolist()
            return read_tokens(self.engine.submit(prompt_ids, preset, max_new, cancel,
                                                  context=self.chain_context(prompt_ids, preset, model, thinking=thinking),
                                                  scope=cache_scope),
                               cancel, decode, self.eos_token_ids, max_new)
        seed = preset.seed if preset.seed >= 0 else random.randrange(2**31)
        neutral = _GREEDY_NEUTRAL if preset.greedy else NEUTRAL_GENERATION
        config = GenerationConfig(do_sample=not preset.greedy, max_new_tokens=max_new, **neutral,
                                  eos_token_id=list(self.eos_token_ids) or None,
                                  pad_token_id=self.tokenizer.pad_token_id or (self.eos_token_ids or [0])[0])
        # generate() draws its tokens from torch's seeded global generator; the chain's own draws (XTC)
        # come from a generator seeded the same way, so the reply is reproducible either way
        generator = torch.Generator(device=self.device).manual_seed(seed)
        processors = build_processors(preset, self.eos_token_ids, device=self.device,
                                      context=self.chain_context(input_ids[0].tolist(), preset, model, generator,
                                                                 thinking))
        if hooks is not None and hooks.logits_processors is not None:
            processors.eos_token_ids = self.eos_token_ids  # extensions such as long_replies need them
            processors = LogitsProcessorList(hooks.logits_processors(processors, input_ids))

        def produce(emit: Emit) -> None:
            torch.manual_seed(seed)
            ids = input_ids[0].tolist()
            prefix = prefix_cache.match(cache_scope, ids) if prefix_cache is not None else None
            # generate() reads only the tokens past what `past` holds, and adds to it what it reads
            past = cache_from(prefix.kv) if prefix is not None else None
            try:
                with torch.inference_mode():
                    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         generation_config=config, logits_processor=processors,
                                         stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                                         streamer=_EmitStreamer(emit), cache=past)
            except torch.OutOfMemoryError:
                if prefix_cache is not None:
                    prefix_cache.clear()  # give its memory back: the next request may fit
                raise
            if prefix_cache is not None:
                read = past.get_seq_length()
                prefix_cache.store(cache_scope, out[0, :read].tolist(), cache_layers(past))

        return token_stream(produce, cancel, decode, self.eos_token_ids, max_new, self.name)

    def _stream_decoder(self, preset: Preset):
        """How a reply's token ids become text: special tokens left out (skip_special_tokens), except
        those that mark reasoning blocks (GPT-OSS's channel tokens are special), which the pipeline
        needs to see to split the thinking from the answer. The end-of-sequence token is never part of
        the reply, special or not (a constrained JSON reply would end invalid with a visible `</s>`)."""
        ends = frozenset(self.eos_token_ids)
        if not preset.skip_special_tokens:
            return lambda part: self._decode([i for i in part if i not in ends], False)
        hidden = self._hidden_ids | ends
        if not self._kept_ids and ends <= self._hidden_ids:  # the tokenizer's own skipping is the same
            return lambda part: self._decode(part, True)
        return lambda part: self._decode([i for i in part if i not in hidden], False)

    @property
    def reasoning_format(self) -> reasoning.ReasoningFormat:
        return self._reasoning

    @reasoning_format.setter
    def reasoning_format(self, fmt: reasoning.ReasoningFormat) -> None:
        self._reasoning = fmt
        specials = set(self.tokenizer.all_special_ids)
        specials |= {i for i, added in self.tokenizer.added_tokens_decoder.items() if added.special}
        markers = "".join((*fmt.markers(), *tool_formats.MARKERS))  # the pipeline reads these in the reply
        kept = {i for i in specials if self.tokenizer.convert_ids_to_tokens(i) in markers}
        self._hidden_ids = frozenset(specials - kept)
        self._kept_ids = frozenset(kept)

    def set_loras(self, paths: list[Path]) -> None:
        """Apply these LoRA adapters (several are concatenated), or remove all with []."""
        from peft import PeftModel

        model = self.model
        if self.options.load_in_4bit and not self.device.startswith("cuda"):
            # bitsandbytes 0.50 on CPU repacks 4-bit weights at the first forward pass, and a later
            # state_dict() (peft reads one to load an adapter) corrupts them: start from fresh weights.
            model = AutoModelForCausalLM.from_pretrained(self.path, **self._load_kwargs).eval()
        elif isinstance(model, PeftModel):
            model = model.unload()  # back to the plain base model, adapters removed
        if paths:
            names = [p.name for p in paths]
            model = PeftModel.from_pretrained(model, paths[0], adapter_name=names[0])
            for path, name in zip(paths[1:], names[1:]):
                model.load_adapter(path, adapter_name=name)
            if len(paths) > 1:
                model.add_weighted_adapter(names, [1.0] * len(names), combination_type="cat", adapter_name="combined")
                model.set_adapter("combined")
            model.eval()
        self.model = model
        self._last_logits = None  # another model now: the inspect views' cached logits are stale
        self.prefix_cache = self._new_prefix_cache()  # and the prompt cache's keys/values
        self.loras = tuple(p.name for p in paths)
        if self.engine is not None:  # the batch engine must run the model with its new adapters
            self.engine.close()
            self.engine = self._new_engine()

    def next_token_probabilities(self, prompt: str, top: int, preset: Preset | None = None) -> list[tuple[str, float]]:
        """The `top` most likely next tokens after `prompt` with their probabilities; with `preset`, after its
        samplers (so cut-off tokens get 0). For /v1/internal/logits."""
        ids = self.tokenize(prompt) or [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None
                                        else self.eos_token_ids[0]]
        ids = ids[-(self._ctx - 1):]
        input_ids = torch.tensor([ids], device=self.model.device)
        with torch.inference_mode():
            scores = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[:, -1, :].float()
            if preset is not None:
                context = self.chain_context(ids, preset)
                scores = build_processors(preset, self.eos_token_ids, device=self.device, context=context)(input_ids, scores)
            probs = torch.softmax(scores, dim=-1)[0]
            values, indices = torch.topk(probs, min(top, probs.shape[0]))
        return [(self.tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    def info(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        quant = getattr(self.model.config, "quantization_config", None)
        if quant is not None:
            quant = quant.to_dict() if hasattr(quant, "to_dict") else dict(quant)
            quantization = "8-bit" if quant.get("load_in_8bit") else f"4-bit {quant.get('bnb_4bit_quant_type', '')}"
        else:
            quantization = "none"
        memory = {"weights_mib": round(self.model.get_memory_footprint() / 2**20, 1),
                  "process_rss_mib": round(rss_bytes() / 2**20, 1)}
        if torch.cuda.is_available():
            memory["gpu_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        return {"loader": self.loader, "name": self.name, "architecture": self.model.config.model_type,
                "parameters": params, "dtype": str(self.model.dtype).replace("torch.", ""),
                "quantization": quantization, "device": self.device, "context_length": self._ctx,
                "memory": memory, "load_seconds": round(self.load_seconds, 2), "loras": list(self.loras),
                "prompt_cache": self.prefix_cache.stats() if self.prefix_cache is not None else None,
                "chat_template": "model's own" if self.has_own_template else "ChatML (fallback)"}

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.prefix_cache = None
        del self.model
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
