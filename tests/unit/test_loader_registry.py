"""The loader registry is the one list of loaders: everything else reads it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from modules.loaders import registry
from modules.loaders.registry import LOADERS, infer
from modules.settings import Settings, _choices

ROOT = Path(__file__).resolve().parents[2]


def _backend_class(name: str):
    from modules.loaders.llamacpp import LlamaCppBackend
    from modules.loaders.remote import RemoteBackend
    from modules.loaders.transformers import TransformersBackend

    return {"transformers": TransformersBackend, "llama.cpp": LlamaCppBackend, "remote": RemoteBackend}[name]


def test_every_loader_declares_itself_completely():
    for name, spec in LOADERS.items():
        assert spec.name == name
        assert spec.description and spec.options.model_fields
        assert _backend_class(name).loader == name  # a backend reports the registry's name
        for key in spec.settings_keys:  # each flag that feeds a loader option exists as a setting
            assert key in Settings.model_fields, (name, key)


def test_settings_offer_exactly_the_registered_loaders():
    assert _choices(Settings.model_fields["loader"].annotation) == tuple(LOADERS)
    with pytest.raises(ValueError):
        Settings(loader="exllama")


def test_unknown_loader_is_a_clear_error():
    with pytest.raises(registry.UnknownLoader, match="choose one of transformers, llama.cpp, remote"):
        registry.spec("exllama")


def test_inference_from_files(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    both = tmp_path / "both"
    both.mkdir()
    (both / "config.json").write_text("{}")
    (both / "m.gguf").write_bytes(b"GGUF")
    second = tmp_path / "big-00002-of-00002.gguf"
    second.write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("x")
    assert infer(hf) == "transformers"
    assert infer(gguf) == "llama.cpp"
    assert infer(both) == "llama.cpp"  # GGUF files win over a config.json
    assert infer(second) is None  # split files are listed by their first part only
    assert infer(tmp_path / "notes.txt") is None
    assert registry.loader_for_name("remote:qwen") == "remote" and registry.loader_for_name("qwen") is None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_model_tab_imports_no_loader_module():
    used = _imports(ROOT / "modules" / "ui" / "model.py")
    assert not {m for m in used if m.startswith("modules.loaders") and m != "modules.loaders.registry"}


def test_no_module_probes_a_backend_for_what_it_can_do():
    """Capabilities come from the registry: no `hasattr(backend, ...)` anywhere in modules/."""
    offenders = []
    for path in (ROOT / "modules").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr"
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "backend"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_loader_modules_do_not_import_the_model_manager():
    """No import circle: loaders are below the manager (they raise LoadError, it says ModelError)."""
    code = ("import sys; import modules.loaders.remote, modules.loaders.llamacpp; "
            "print('modules.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_capabilities_of_a_loaded_backend(micro_backend):
    caps = registry.capabilities(micro_backend)
    assert caps.logprobs and caps.lora and caps.logits and caps.samplers is None
    assert micro_backend.vocab_size == micro_backend.model.config.vocab_size
