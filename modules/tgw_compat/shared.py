"""`modules.shared` for text-generation-webui extensions, bound to one App.

Read live from the App on every access: `model`, `tokenizer`, `model_name`, `bos_token`, `eos_token`
(the loaded backend's; None / 'None' without one). `tokenizer` is the model's Hugging Face tokenizer
for the Transformers backend, else a small view with `encode` / `decode` over the backend's own.
Built once from the App's settings: `args` (text-generation-webui's flag names; Parlour's values where
Parlour has the setting, None/False otherwise, never a secret), `settings` (its settings.yaml keys:
sampler defaults of the start preset, mode, character, ... plus every `<extension>-<param>` key) and
`user_data_dir` (the folder that holds `characters/`). `gradio` maps text-generation-webui's component
names to the Parlour controls that do the same job (see modules/ui/extensions.py); a name Parlour
has no control for raises MissingComponent. Everything an extension assigns here stays here.

(One copy of this module per App; see the package docstring.)
"""

import argparse
import copy
from pathlib import Path
from typing import Any

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)

logger = _compat.module("logging_colors").logger
gradio = _compat.gradio
persistent_interface_state: dict[str, Any] = {}
processing_message = "*Is typing...*"
stop_everything = False
need_restart = False
is_seq2seq = False
is_multimodal = False
model_dirty_from_training = False
lora_names: list[str] = []

#: text-generation-webui's command-line flags (argparse names), all present as in its `shared.args`
_TGW_ARGS = (
    "user_data_dir multi_user model lora model_dir lora_dir model_menu settings extensions verbose idle_timeout "
    "image_model image_model_dir image_dtype image_attn_backend image_cpu_offload image_compile image_quant loader "
    "ctx_size cache_type model_draft draft_max gpu_layers_draft device_draft ctx_size_draft spec_type "
    "gpu_layers cpu_moe mmproj streaming_llm tensor_split split_mode no_mmap mlock no_kv_offload batch_size "
    "ubatch_size threads threads_batch numa parallel extra_flags cpu cpu_memory disk disk_cache_dir load_in_8bit "
    "bf16 no_cache trust_remote_code force_safetensors no_use_fast attn_implementation load_in_4bit use_double_quant "
    "compute_dtype quant_type gpu_split listen listen_port listen_host share auto_launch gradio_auth "
    "gradio_auth_path ssl_keyfile ssl_certfile subpath old_colors portable api public_api public_api_id api_port "
    "api_key admin_key api_enable_ipv6 api_disable_ipv4 nowebui chat_buttons").split()


def _args(settings: Any) -> argparse.Namespace:
    args = argparse.Namespace(**{name: None for name in _TGW_ARGS})
    if settings is None:
        return args
    user_data = Path(settings.user_data)
    values = {
        "user_data_dir": str(user_data), "model": settings.model, "model_dir": str(settings.models_dir),
        "lora_dir": str(settings.loras_dir), "settings": str(settings.settings),
        "extensions": list(dict.fromkeys([*settings.default_extensions, *settings.extensions])),
        "verbose": False, "idle_timeout": int(settings.idle_unload_minutes or 0), "loader": settings.loader,
        "ctx_size": settings.n_ctx or 0, "gpu_layers": settings.n_gpu_layers, "threads": settings.threads,
        "threads_batch": settings.threads_batch, "batch_size": settings.batch_size,
        "cpu": settings.device_map == "cpu", "trust_remote_code": settings.trust_remote_code,
        "disk_cache_dir": str(user_data / "cache"), "listen": settings.listen,
        "listen_host": "0.0.0.0" if settings.listen else None, "listen_port": settings.port, "share": False,
        "auto_launch": False, "multi_user": bool(settings.logins()), "api": settings.api,
        "api_port": settings.port, "public_api": False, "nowebui": False, "portable": False,
    }
    for key, value in values.items():
        setattr(args, key, value)
    return args


def _settings(app: Any) -> dict[str, Any]:
    if app is None:
        return {}
    out: dict[str, Any] = {}
    try:
        out.update(app.start_preset().model_dump())
    except Exception:  # noqa: BLE001 - a broken preset file leaves only the other keys
        pass
    out.update({"preset": app.settings.preset, "mode": "instruct", "character": "Assistant", "name1": "You",
                "stream": True, "default_extensions": list(app.settings.default_extensions),
                "custom_stopping_strings": "", "show_controls": True})
    out.update(app.settings.extension_params)
    return out


def _user_data_dir(settings: Any) -> Path:
    if settings is None:
        return Path("user_data")
    characters = Path(settings.characters_dir)
    # text-generation-webui keeps characters/ (and presets/, models/) inside user_data_dir
    return characters.parent if characters.name == "characters" else Path(settings.user_data)


args = _args(getattr(_compat.app, "settings", None))
settings = _settings(_compat.app)
default_settings = copy.deepcopy(settings)
user_data_dir = _user_data_dir(getattr(_compat.app, "settings", None))


def is_chat() -> bool:
    return True


class _TokenizerView:
    """`encode` / `decode` over a backend without a Hugging Face tokenizer (llama.cpp, remote)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        eos = tuple(getattr(backend, "eos_token_ids", ()) or ())
        self.eos_token_id = eos[0] if eos else None
        self.bos_token_id = None
        self.eos_token = self.bos_token = None

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        return list(self._backend.tokenize(str(text)))

    def decode(self, ids: Any, *args: Any, **kwargs: Any) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self._backend.detokenize([int(i) for i in ids])


def _backend() -> Any:
    app = _compat.app
    return app.models.current() if app is not None else None


def _tokenizer() -> Any:
    backend = _backend()
    if backend is None:
        return None
    return getattr(backend, "tokenizer", None) or _TokenizerView(backend)


_missing = missing_attributes("modules.shared")


def __getattr__(name: str) -> Any:
    if name == "model":
        backend = _backend()
        return getattr(backend, "model", backend)
    if name == "tokenizer":
        return _tokenizer()
    if name == "model_name":
        backend = _backend()
        return backend.name if backend is not None else "None"
    if name in ("bos_token", "eos_token"):
        default = "<s>" if name == "bos_token" else "</s>"
        return getattr(_tokenizer(), name, None) or default
    return _missing(name)
