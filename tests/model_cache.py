"""Test models built once and reused across runs (modules/demo_model.py's `build_cached`).

Training the micro models takes seconds on a quiet machine but minutes on a loaded 2-core one, and
every session of the suite needs them. The cache key covers the builder's source, its arguments and
the versions of the libraries that write the files, so any change builds afresh. Folders are copied
out of the cache (tests may add files to a model folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from modules.demo_model import build_cached


def cache_root() -> Path:
    """Where built models are kept: $PARLOUR_MODEL_CACHE, else ~/.cache/parlour/models."""
    env = os.environ.get("PARLOUR_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "parlour" / "models"


def cached_model(dest: Path, arch: str = "llama", size_name: str = "micro", steps: int | None = None,
                 tokenizer: str = "bpe") -> Path:
    return build_cached(dest, cache_root(), arch=arch, size_name=size_name, steps=steps, progress=False,
                        tokenizer_kind=tokenizer)
