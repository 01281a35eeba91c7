"""The loader registry: every loader declares, in one place, what it is and what it can do.

    spec = LOADERS["transformers"]
    spec.options            # the pydantic options model (Model tab, API `args`, config-user.yaml)
    spec.recognizes(path)   # does this file/folder in models/ belong to it?
    spec.build(name, path, options, context)   # -> a loaded Backend (imports the heavy library lazily)
    spec.capabilities       # samplers, logprobs, LoRA, constraints, tools, ... (read by UI, API, manager)

Settings choices (`--loader`), the Model tab, the API and the model manager all read this table;
nothing else lists loader names or probes a backend with `hasattr`. A capability is a fact about
the loader, not about one loaded instance, so the UI can describe a loader before anything loads.

This module imports nothing heavy (no torch, no llama_cpp): `settings.py` reads it at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from pydantic import BaseModel

from modules.loaders.options import LlamaCppOptions, RemoteOptions, TransformersOptions

if TYPE_CHECKING:
    from modules.loaders.base import Backend
    from modules.settings import CpuThreads

REMOTE_PREFIX = "remote:"


@dataclass(frozen=True)
class Capabilities:
    """What a loader can do. The UI greys out and the API refuses (400 naming the field) what it cannot."""

    #: the Preset keys it honours; None means every key (the whole chain of modules/sampling.py)
    samplers: frozenset[str] | None = None
    #: token log-probabilities of a reply (OpenAI `logprobs`) and of an echoed prompt
    logprobs: bool = False
    #: the next-token distribution and each sampler stage's (Notebook's inspector, /v1/internal/logits)
    logits: bool = False
    #: OpenAI `logit_bias` by token id (needs the vocabulary's size)
    logit_bias: bool = False
    #: sliding-window perplexity (the Evaluate tab)
    perplexity: bool = False
    #: peft LoRA adapters applied at run time
    lora: bool = False
    #: LoRA training on the loaded weights (the Training tab; needs the torch model and its tokenizer)
    training: bool = False
    #: the engine applies the model's own chat template to chat messages (stream_chat); Parlour then
    #: sends messages, not prompt text, whenever messages say exactly what the turn means
    engine_templates: bool = False
    #: constrained-output kinds it enforces (modules/constraints.py's KINDS: "json_schema", "gbnf",
    #: "lark", "regex"); a request with another kind is refused naming the loader
    constraints: frozenset[str] = frozenset()
    #: `tools` in a request: passed to the engine ("engine") or rendered and parsed by Parlour ("parse")
    tools: Literal["none", "parse", "engine"] = "none"
    #: image parts in a turn
    vision: bool = False
    #: where a reply's reasoning comes from: "text" (Parlour finds the markers in the generated text)
    #: or "engine" (the engine returns it apart, as `reasoning_content`)
    reasoning: Literal["text", "engine"] = "text"


@dataclass(frozen=True)
class BuildContext:
    """What the model manager hands every loader (each takes what it needs)."""

    offload_dir: Path | None = None
    trust_remote_code: bool = False
    batch_size: int = 1
    threads: "CpuThreads | None" = None


@dataclass(frozen=True)
class LoaderSpec:
    name: str
    description: str
    options: type[BaseModel]
    #: whether a file or folder in models/ is a model for this loader
    recognizes: Callable[[Path], bool]
    #: (model name, its path or None for remote models, validated options, context) -> Backend
    build: Callable[[str, Path | None, Any, BuildContext], "Backend"]
    capabilities: Capabilities = field(default_factory=Capabilities)
    #: Settings fields (command-line flags) that are this loader's options when set
    settings_keys: tuple[str, ...] = ()
    #: names of this loader's models start with this (remote engines' models); "" for files in models/
    name_prefix: str = ""


# -- recognising files ------------------------------------------------------------------------------
def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def is_gguf(path: Path) -> bool:
    """A GGUF file Parlour lists: split files only by their first part (`-00001-of-00003.gguf`)."""
    import re

    if not (path.is_file() and path.suffix == ".gguf"):
        return False
    split = re.search(r"-(\d{5})-of-(\d{5})\.gguf$", path.name)
    return split is None or split.group(1) == "00001"


def _gguf_model(path: Path) -> bool:
    return is_gguf(path) or (path.is_dir() and any(is_gguf(p) for p in path.glob("*.gguf")))


# -- building (heavy imports happen here, only when that loader is used) ------------------------------
def _build_transformers(name: str, path: Path | None, options: Any, context: BuildContext) -> "Backend":
    from modules.loaders.transformers import TransformersBackend

    assert path is not None
    return TransformersBackend(path, options, offload_dir=context.offload_dir,
                               trust_remote_code=context.trust_remote_code, batch_size=context.batch_size,
                               threads=context.threads)


def _build_llamacpp(name: str, path: Path | None, options: Any, context: BuildContext) -> "Backend":
    from modules.loaders.llamacpp import LlamaCppBackend

    assert path is not None
    return LlamaCppBackend(path, options, threads=context.threads)


def _build_remote(name: str, path: Path | None, options: Any, context: BuildContext) -> "Backend":
    from modules.loaders.remote import RemoteBackend

    return RemoteBackend(name.removeprefix(REMOTE_PREFIX), options)


#: Preset key -> llama-cpp-python generate() argument: the samplers llama.cpp has itself
LLAMACPP_SAMPLER_ARGS: Mapping[str, str] = MappingProxyType({
    "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
    "repetition_penalty": "repeat_penalty", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty", "tfs": "tfs_z", "mirostat_mode": "mirostat_mode",
    "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta"})
#: ... plus what modules/loaders/llamacpp.py applies around them
LLAMACPP_SAMPLERS = frozenset({"temperature", "seed", "max_new_tokens", "ban_eos_token", "grammar_string",
                               "json_schema", *LLAMACPP_SAMPLER_ARGS})
ALL_CONSTRAINTS = frozenset({"json_schema", "gbnf", "lark", "regex"})

# Listed in the order the UI shows them. Recognisers do not overlap (a folder with GGUF files is
# llama.cpp's even if it has a config.json), so a path has at most one default loader.
LOADERS: Mapping[str, LoaderSpec] = MappingProxyType({spec.name: spec for spec in (
    LoaderSpec("transformers", "Hugging Face folders with Transformers (CPU or CUDA, bitsandbytes 4/8-bit)",
               TransformersOptions, lambda path: is_hf_folder(path) and not _gguf_model(path), _build_transformers,
               Capabilities(samplers=None, logprobs=True, logits=True, logit_bias=True, perplexity=True, lora=True,
                            training=True, constraints=ALL_CONSTRAINTS, tools="parse"),
               settings_keys=("dtype", "device_map", "load_in_8bit", "load_in_4bit")),
    LoaderSpec("llama.cpp", "GGUF files through llama-cpp-python", LlamaCppOptions, _gguf_model, _build_llamacpp,
               # llama.cpp's grammar sampler reads GBNF; JSON schemas are converted to it (llamacpp.gbnf_for)
               Capabilities(samplers=LLAMACPP_SAMPLERS, constraints=frozenset({"json_schema", "gbnf"}), tools="parse"),
               settings_keys=("n_ctx", "n_gpu_layers")),
    LoaderSpec("remote", "any OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama, another Parlour)",
               RemoteOptions, lambda path: False, _build_remote,
               # constraints are passed through to the engine (remote.constraint_fields), which applies them
               Capabilities(samplers=None, engine_templates=True, constraints=ALL_CONSTRAINTS, tools="engine",
                            reasoning="engine"),
               name_prefix=REMOTE_PREFIX),
)})

LoaderName = Literal[tuple(LOADERS)]  # type: ignore[valid-type]


class UnknownLoader(ValueError):
    """A loader name that is not in the registry."""


def spec(name: str) -> LoaderSpec:
    try:
        return LOADERS[name]
    except KeyError:
        raise UnknownLoader(f"unknown loader {name!r}: choose one of {', '.join(LOADERS)}") from None


def capabilities(backend: Any) -> Capabilities:
    """The capabilities of a loaded backend (by its `loader` name)."""
    return spec(backend.loader).capabilities


def loader_for_name(name: str) -> str | None:
    """The loader a model name implies by itself (remote engines' `remote:` names), else None."""
    return next((s.name for s in LOADERS.values() if s.name_prefix and name.startswith(s.name_prefix)), None)


def infer(path: Path) -> str | None:
    """The default loader for a file or folder in models/, or None if no loader recognises it."""
    return next((s.name for s in LOADERS.values() if s.recognizes(path)), None)


def supported_samplers(backend: Any) -> frozenset[str] | None:
    """Preset keys the backend honours (None: all of them)."""
    return capabilities(backend).samplers
