"""peft's LoRA on the loaded model: can it be trained, which layers get adapters, and putting the
adapters on for a run and taking them off again so the served model is exactly what it was.

The run trains the model the Model tab loaded (no second copy in memory). peft injects its LoRA
layers into that model in place; `lora_on` records what it and Trainer change (requires_grad,
dtypes that QLoRA's preparation upcasts, gradient checkpointing, train mode, use_cache) and puts all
of it back, then `unload()` removes the LoRA layers without merging them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from modules.loaders import registry
from modules.training import TrainingError
from modules.training.settings import TrainingSettings


def quantization(backend: Any) -> str:
    """"none", "8-bit" or "4-bit ..." as the backend reports it."""
    try:
        return str(backend.info().get("quantization", "none"))
    except Exception:  # noqa: BLE001 - a backend that cannot describe itself is treated as plain
        return "none"


def check_trainable(backend: Any, settings: TrainingSettings, cuda: bool) -> None:
    """Raise TrainingError saying why this backend cannot be trained with these settings."""
    if backend is None:
        raise TrainingError("no model is loaded: load the model to train in the Model tab first")
    if backend.loader == "llama.cpp":
        raise TrainingError(f"{backend.name} is a GGUF model (llama.cpp): GGUF weights cannot be trained; "
                            "load the model's Transformers folder instead")
    if backend.loader == "remote":
        raise TrainingError(f"{backend.name} runs on a remote engine: only a model loaded here with the "
                            "Transformers loader can be trained")
    if not registry.capabilities(backend).training:
        raise TrainingError(f"the {backend.loader} loader cannot train models")
    if backend.chat_template is None:
        raise TrainingError(f"{backend.name} has no chat template")
    quant = quantization(backend)
    on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
    if quant != "none" and not on_gpu:
        raise TrainingError(f"{backend.name} is loaded with bitsandbytes {quant} weights on the CPU, which cannot "
                            "be trained: load it without 8-bit/4-bit (or train on a CUDA GPU with QLoRA)")
    devices = {str(d) for d in (getattr(backend.model, "hf_device_map", None) or {}).values()}
    offloaded = devices & {"disk"} or (devices & {"cpu"} if len(devices) > 1 else set())
    if offloaded:  # weights on disk are empty (meta) tensors until used; mixed devices break the optimizer
        raise TrainingError(f"{backend.name} is offloaded to {'/'.join(sorted(offloaded))}: training needs every "
                            "weight in memory on one device (load it without a memory limit or disk offload)")
    if settings.qlora and not cuda:
        raise TrainingError("QLoRA needs a CUDA GPU (bitsandbytes' 4-bit training kernels); untick it to train "
                            "in full precision on the CPU")
    if getattr(backend, "loras", ()):
        raise TrainingError(f"LoRAs are applied to {backend.name} ({', '.join(backend.loras)}): remove them in "
                            "the Model tab first (a new adapter trains on the base model)")


def linear_modules(model: Any) -> list[str]:
    """Names (the last part) of the linear layers an adapter can go on, the output head left out."""
    import torch

    names = set()
    for full, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in {"Linear8bitLt", "Linear4bit", "Conv1D"}:
            names.add(full.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def target_modules(model: Any, setting: str) -> list[str] | str:
    """The `target_modules` for peft: the architecture's usual layers for "auto", else as asked."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as USUAL

    available = linear_modules(model)
    if setting == "all-linear":
        return "all-linear"
    if setting == "auto":
        usual = USUAL.get(getattr(model.config, "model_type", ""), [])
        chosen = [name for name in usual if name in available]
        if not chosen:
            return "all-linear"  # an architecture peft has no table for: every linear layer
        return chosen
    wanted = setting.split(",")
    missing = [name for name in wanted if name not in available]
    if missing:
        raise TrainingError(f"target module {missing[0]!r} is not in this model; its linear layers are "
                            f"{', '.join(available)}")
    return wanted


def mixed_precision(model: Any) -> dict[str, bool]:
    """Trainer's fp16/bf16 flags for the model's weights (full precision on the CPU)."""
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    on_gpu = str(getattr(model, "device", "cpu")).startswith("cuda")
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16 and on_gpu}


@contextlib.contextmanager
def lora_on(model: Any, settings: TrainingSettings) -> Iterator[Any]:
    """Yield the PeftModel for training `model` (the loaded one, changed in place); afterwards the
    LoRA layers are removed and everything training changed is restored."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    before = {name: (p.requires_grad, p.dtype) for name, p in model.named_parameters()}
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    targets = target_modules(model, settings.target_modules)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    set_seed(settings.seed)  # the adapter's initial weights
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    try:
        yield peft_model
    finally:
        base = peft_model.unload()  # the LoRA layers out, the original modules back, nothing merged
        if getattr(base, "is_activation_checkpointing", False):
            base.activation_checkpointing_disable()
        if getattr(base, "_require_grads_hook", None) is not None:
            base.disable_input_require_grads()
        for name, param in base.named_parameters():
            grad, dtype = before.get(name, (param.requires_grad, param.dtype))
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
            param.requires_grad_(grad)
        if use_cache is not None:
            base.config.use_cache = use_cache
        base.train(was_training)
