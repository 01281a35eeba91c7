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

Constraints use llama.cpp's own grammar sampler: a GBNF `grammar_string` as it is, a `json_schema` converted
to GBNF by llama-cpp-python's converter. That converter honours fewer keywords than llguidance (no number
bounds, few string formats), so a schema using one it would skip is refused with the keyword's path rather
than followed loosely (`LLAMACPP_SCHEMA_KEYWORDS`). Lark grammars and regexes are not supported here.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from modules import reasoning
from modules.constraints import Constraint, ConstraintError, check, check_schema, gbnf_as_lark, pointer, schema_nodes
from modules.loaders.base import Delta, Emit, LoadError, token_stream
from modules.loaders.options import LlamaCppOptions
from modules.loaders.registry import LLAMACPP_SAMPLER_ARGS, LLAMACPP_SAMPLERS
from modules.presets import Preset
from modules.settings import CpuThreads
from modules.templates import CHATML, ChatTemplate



#: JSON schema keywords llama-cpp-python's schema-to-GBNF converter enforces (or that only annotate); a schema
#: with any other is refused. `oneOf` is enforced as `anyOf` (a value matching two branches is accepted).
LLAMACPP_SCHEMA_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "format", "minLength",
    "maxLength", "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
    "readOnly", "writeOnly"})
#: one unescaped character of a JSON string, for llama.cpp's GBNF: printable ASCII but `"` and `\`, then every
#: Unicode scalar value above U+007F (no surrogates)
JSON_CHAR = r"[ !#-\[\]-~\u0080-\uD7FF\uE000-\U0010FFFF]"
LLAMACPP_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})


def gbnf_for(constraint: Constraint) -> str:
    """The GBNF grammar llama.cpp samples with for `constraint` (ConstraintError if it has none)."""
    if constraint.kind == "gbnf":
        return constraint.text
    if constraint.kind != "json_schema":
        raise ConstraintError(f"llama.cpp takes GBNF grammars and JSON schemas, not a {constraint.kind}", constraint.key)
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = constraint.schema
    if schema is False:
        raise ConstraintError("the schema false matches nothing", constraint.key)
    check_schema(schema, constraint.key)
    for path, node in schema_nodes({} if schema is True else schema):
        unknown = sorted(set(node) - LLAMACPP_SCHEMA_KEYWORDS)
        if unknown:
            raise ConstraintError(f"unsupported JSON schema keyword {unknown[0]!r} at {pointer(path)} (the llama.cpp "
                                  "loader's schema converter does not enforce it)", constraint.key)
        if node.get("format") is not None and node["format"] not in LLAMACPP_FORMATS:
            raise ConstraintError(f"unsupported string format {node['format']!r} at {pointer(path)} (the llama.cpp "
                                  f"loader enforces: {', '.join(sorted(LLAMACPP_FORMATS))})", constraint.key)
    try:
        grammar = json_schema_to_gbnf(json.dumps({} if schema is True else schema))
    except Exception as exc:  # its own asserts and KeyErrors (a dangling $ref, an unanchored pattern)
        raise ConstraintError(f"llama.cpp's schema converter refused it: {exc.__class__.__name__}: {exc}",
                              constraint.key) from exc
    # llama-cpp-python 0.3's string character is [^"\\], which lets control characters (a raw newline) into
    # strings, and llama.cpp reads bytes that are not UTF-8 (0xFB...) as characters too: narrow it to what JSON
    # allows, as Unicode scalar values (a version that fixed the rule leaves nothing to replace)
    return re.sub(r'(?m)^char ::= \[\^"\\\\\]', lambda _: "char ::= " + JSON_CHAR, grammar)


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

    def check_constraint(self, constraint: Constraint) -> None:
        """The GBNF for `constraint` must parse in llama.cpp itself (a grammar it cannot parse would give it no
        sampler at all); a syntax error is located by llguidance's GBNF parser."""
        import llama_cpp

        grammar = gbnf_for(constraint)
        sampler = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            gbnf_as_lark(grammar, constraint.key)  # raises with the line and column when it finds the fault
            raise ConstraintError("llama.cpp could not parse the grammar", constraint.key)
        llama_cpp.llama_sampler_free(sampler)

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        import numpy as np
        from llama_cpp import LlamaGrammar

        constraint = check(self, preset)  # the kind, then llama.cpp's own parse: a bad grammar must never reach it
        grammar = LlamaGrammar.from_string(gbnf_for(constraint)) if constraint is not None else None
        ids = self.tokenize(prompt) or [self.llm.token_bos()]
        max_new = max(1, min(preset.max_new_tokens, self.context_length - len(ids)))
        kwargs: dict[str, Any] = {"temp": preset.temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                                  "repeat_penalty": 1.0}
        for key, arg in LLAMACPP_SAMPLER_ARGS.items():
            if hasattr(preset, key):
                kwargs[arg] = getattr(preset, key)
        if preset.ban_eos_token and grammar is None:  # a constraint decides where the reply may end
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
            for token in self.llm.generate(ids, reset=True, grammar=grammar, **kwargs):
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
