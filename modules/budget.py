"""How much room loaded models may take: a count and/or GPU and CPU memory budgets.

    budget = Budget(max_models=2, gpu_mib=parse_size("20GiB"), cpu_mib=None)
    need = estimate(path, "transformers", options)     # before loading: from the weight files
    budget.alone_problem(need)                          # None, or why it can never fit (a 400 for the API)
    budget.fits([resident footprints], need)            # room beside the others?

A model's footprint is estimated from its weight files before it loads (bytes on disk, scaled by the
dtype it will have and by 8/4-bit quantization) and measured once it has loaded (Transformers'
`get_memory_footprint()`, a GGUF file's size). Remote engines' models take no local memory and do
not count against `max_models`: they are connections, not weights.

Nothing here imports torch; whether a GPU is there is the caller's to say.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Device = Literal["gpu", "cpu", "none"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(GiB|MiB|GB|MB)\s*$")
_UNIT_MIB = {"MiB": 1.0, "GiB": 1024.0, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20}
_DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "float64": 8.0}
SIZE_PATTERN = _SIZE.pattern


def _mib(value: float) -> str:
    """MiB for people: "1,200", "12", "2.5"."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")


def parse_size(text: str) -> float:
    """`"20GiB"` -> 20480.0 (MiB). Raises ValueError for anything else."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 512MiB or 20GiB")
    return float(match.group(1)) * _UNIT_MIB[match.group(2)]


@dataclass(frozen=True)
class Footprint:
    """Where a model's weights live and how much they take (MiB)."""

    device: Device
    mib: float

    def __str__(self) -> str:
        return "no local memory" if self.device == "none" else f"{_mib(self.mib)} MiB of {self.device.upper()} memory"


@dataclass(frozen=True)
class Budget:
    """Room for loaded models. `max_models` counts local models only; a memory budget of None is no limit."""

    max_models: int = 1
    gpu_mib: float | None = None
    cpu_mib: float | None = None

    def _limit(self, device: Device) -> tuple[float | None, str]:
        if device == "gpu":
            return self.gpu_mib, "--gpu-memory-budget"
        if device == "cpu":
            return self.cpu_mib, "--cpu-memory-budget"
        return None, ""

    def alone_problem(self, need: Footprint) -> str | None:
        """Why a model with this footprint cannot be loaded even with nothing else loaded, or None."""
        limit, flag = self._limit(need.device)
        if limit is not None and need.mib > limit:
            return f"needs about {_mib(need.mib)} MiB of {need.device.upper()} memory; {flag} is {_mib(limit)} MiB"
        return None

    def fits(self, residents: list[Footprint], new: Footprint | None = None, count: bool = True) -> bool:
        """Whether `residents` (plus `new`) stay within the memory limits and, with `count`, `max_models`."""
        everything = residents + ([new] if new is not None else [])
        local = [f for f in everything if f.device != "none"]
        if count and len(local) > self.max_models:
            return False
        for device in ("gpu", "cpu"):
            limit, _ = self._limit(device)  # type: ignore[arg-type]
            if limit is not None and sum(f.mib for f in local if f.device == device) > limit:
                return False
        return True

    def describe(self) -> str:
        parts = [f"{self.max_models} model{'s' if self.max_models != 1 else ''}"]
        if self.gpu_mib is not None:
            parts.append(f"{_mib(self.gpu_mib)} MiB GPU")
        if self.cpu_mib is not None:
            parts.append(f"{_mib(self.cpu_mib)} MiB CPU")
        return ", ".join(parts)


# -- estimates before loading ---------------------------------------------------------------------
def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.iterdir() if p.is_file() and p.suffix in {".safetensors", ".bin", ".gguf"}]


def _stored_dtype(path: Path) -> str:
    """The checkpoint's dtype from config.json (Transformers 5 writes `dtype`, older ones `torch_dtype`)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float16"
    value = config.get("dtype") or config.get("torch_dtype") or "float16"
    return value if value in _DTYPE_BYTES else "float16"


def estimate(path: Path | None, loader: str, options: Any, gpu_available: bool) -> Footprint:
    """The footprint `path` will have once loaded with `options` (None path: a remote model)."""
    if path is None or loader == "remote":
        return Footprint("none", 0.0)
    on_disk = sum(p.stat().st_size for p in _weight_files(path)) / 2**20
    if loader == "llama.cpp":
        on_gpu = gpu_available and getattr(options, "n_gpu_layers", 0) != 0
        return Footprint("gpu" if on_gpu else "cpu", on_disk)
    device_map = getattr(options, "device_map", "auto")
    on_gpu = device_map == "cuda" or (device_map == "auto" and gpu_available)
    stored = _stored_dtype(path)
    params = on_disk / _DTYPE_BYTES[stored]  # in "MiB of parameters": bytes per parameter cancel out below
    if getattr(options, "load_in_4bit", False):
        per_param = 0.5
    elif getattr(options, "load_in_8bit", False):
        per_param = 1.0
    else:
        dtype = getattr(options, "dtype", "auto")
        if dtype == "auto":  # the checkpoint's own dtype on a GPU, float32 on the CPU (see transformers.py)
            dtype = stored if on_gpu else "float32"
        per_param = _DTYPE_BYTES.get(dtype, 4.0)
    return Footprint("gpu" if on_gpu else "cpu", params * per_param)


def measured(info: dict[str, Any], fallback: Footprint) -> Footprint:
    """A loaded model's footprint from its `info()`; the estimate when the backend does not say."""
    device = str(info.get("device", ""))
    if info.get("loader") == "remote" or device == "remote":
        return Footprint("none", 0.0)
    placed: Device = "gpu" if device.startswith(("cuda", "gpu")) else "cpu"
    weights = (info.get("memory") or {}).get("weights_mib")
    return Footprint(placed, float(weights) if weights is not None else fallback.mib)
