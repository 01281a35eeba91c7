"""Test models built once and reused across runs, keyed by what built them.

Training the micro models takes seconds on a quiet machine but minutes on a loaded 2-core one, and
every session of the suite needs them. The key covers the builder's source, its arguments and the
versions of the libraries that write the files, so a change to any of them builds afresh. Folders are
copied out of the cache (tests may add files to a model folder) and written there atomically (a
half-written entry is never used).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """Where built models are kept: $PARLOUR_TEST_CACHE, else ~/.cache/parlour/test-models."""
    env = os.environ.get("PARLOUR_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "parlour" / "test-models"


def cache_key(builder: Path, **arguments: Any) -> str:
    import sentencepiece
    import tokenizers
    import torch
    import transformers

    material = {"source": builder.read_text(encoding="utf-8"), "arguments": arguments,
                "versions": [torch.__version__, transformers.__version__, tokenizers.__version__,
                             sentencepiece.__version__]}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_model(dest: Path, arch: str = "llama", size_name: str = "micro", steps: int | None = None,
                 tokenizer: str = "bpe") -> Path:
    """`modules.demo_model.build(dest, ...)`, from the cache when the same build was made before."""
    from modules.demo_model import build

    key = cache_key(ROOT / "modules" / "demo_model.py", arch=arch, size=size_name, steps=steps, tokenizer=tokenizer)
    entry = cache_root() / f"{arch}-{size_name}{'' if tokenizer == 'bpe' else '-' + tokenizer}-{key}"
    if not (entry / "config.json").is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch = entry.parent / f".{entry.name}.{uuid.uuid4().hex}"
        build(scratch, arch=arch, size_name=size_name, steps=steps, progress=False, tokenizer_kind=tokenizer)
        try:
            scratch.rename(entry)  # atomic; another process that built the same entry first wins
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(entry, dest)
    return dest
