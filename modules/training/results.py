"""What a finished run leaves and what it is for: the adapter's card, perplexity before and after it
on a held-out text (rows in the Evaluate tab's table), and merging it into a new model folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modules.loaders import registry
from modules.models import ModelError, ModelManager
from modules.paths import UnsafeName, safe_child
from modules.perplexity import PerplexityLog, PerplexityResult, evaluate
from modules.training import TrainingError

if TYPE_CHECKING:
    from modules.training.job import Plan

CARD_FILE = "parlour-training.json"


def write_card(folder: Path, base: Any, plan: "Plan", losses: list[tuple[int, float]],
               evals: list[tuple[int, float]], seconds: float) -> dict[str, Any]:
    """README.md (for people) and parlour-training.json (for programs) in the adapter folder."""
    info = base.info()
    card = {
        "base_model": plan.model, "architecture": info.get("architecture"), "parameters": info.get("parameters"),
        "quantization": info.get("quantization"),
        "data": {"name": plan.source.name, "sha256": plan.source.sha256, "chats": list(plan.source.chats),
                 "train_samples": len(plan.train), "eval_samples": len(plan.eval),
                 "train_tokens": sum(len(s.input_ids) for s in plan.train)},
        "settings": plan.settings.model_dump(mode="json"),
        "steps": losses[-1][0] if losses else 0,
        "final_train_loss": losses[-1][1] if losses else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "final_eval_perplexity": math.exp(evals[-1][1]) if evals else None,
        "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "losses": losses, "eval_losses": evals,
    }
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    rows = [("base model", f"{plan.model} ({card['architecture']}, "
                           f"{'full precision' if card['quantization'] == 'none' else card['quantization']} weights)"),
            ("data", f"{plan.source.name}, sha256 `{plan.source.sha256[:16]}…`"),
            ("samples", f"{len(plan.train)} trained, {len(plan.eval)} held out"),
            ("steps", str(card["steps"])),
            ("final training loss", _number(card["final_train_loss"])),
            ("final eval loss / perplexity", f"{_number(card['final_eval_loss'])} / "
                                             f"{_number(card['final_eval_perplexity'])}"),
            ("duration", f"{seconds:.0f} s")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    (folder / "README.md").write_text(
        f"# {plan.settings.output}\n\nA LoRA adapter for **{plan.model}**, trained with Parlour.\n\n"
        f"| | |\n|---|---|\n{table}\n\n## Settings\n\n```yaml\n"
        f"{yaml.safe_dump(card['settings'], sort_keys=False)}```\n", encoding="utf-8")
    return card


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def read_card(loras_dir: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((safe_child(loras_dir, name) / CARD_FILE).read_text(encoding="utf-8"))
    except (UnsafeName, OSError, ValueError) as exc:
        raise TrainingError(f"{name} has no readable {CARD_FILE}: {exc}") from exc


def held_out_text(plan: "Plan | None", tokenizer: Any) -> str:
    """The eval split as text (what the adapter never trained on), for perplexity before/after."""
    if plan is None or not plan.eval:
        return ""
    return "\n\n".join(tokenizer.decode(s.input_ids, skip_special_tokens=True) for s in plan.eval)


def compare_perplexity(models: ModelManager, adapter: str, text: str, source: str, log: PerplexityLog,
                       max_length: int = 512, stride: int = 256) -> tuple[PerplexityResult, PerplexityResult]:
    """Perplexity of the loaded model on `text` without, then with, `adapter`; both rows go to `log` (the
    Evaluate tab's table). The adapters applied before are applied again afterwards."""
    backend = models.current()
    if backend is None or not registry.capabilities(backend).lora:
        raise TrainingError("load the adapter's base model with the Transformers loader first")
    if not text.strip():
        raise TrainingError("paste a held-out text (or train with an eval split, whose text is used)")
    previous = list(backend.loras)
    try:
        models.set_loras([])
        with models.gate():
            before = evaluate(models.current(), text, f"{source} · base", max_length, stride, log)
        models.set_loras([adapter])
        with models.gate():
            after = evaluate(models.current(), text, f"{source} · + {adapter}", max_length, stride, log)
    except (ModelError, ValueError) as exc:
        raise TrainingError(str(exc)) from exc
    finally:
        try:
            models.set_loras(previous)
        except ModelError:
            pass  # the model changed meanwhile; nothing to restore
    return before, after


def merge_adapter(models: ModelManager, adapter: str, new_name: str) -> Path:
    """A new model folder in models/: the adapter's base model with the adapter merged into its weights
    (loaded afresh in its stored dtype on the CPU, so the served model is untouched). Written to
    models/.NEW.partial and renamed at the end."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    card = read_card(models.loras_dir, adapter)
    base_path = models.path_of(card["base_model"])
    try:
        dest = safe_child(models.models_dir, new_name)
    except UnsafeName as exc:
        raise TrainingError(f"bad model name: {exc}") from exc
    if dest.exists():
        raise TrainingError(f"{models.models_dir.name}/{new_name} already exists: choose another name")
    tmp = models.models_dir / f".{new_name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto", device_map="cpu",
                                                    trust_remote_code=models.trust_remote_code)
        merged = PeftModel.from_pretrained(base, safe_child(models.loras_dir, adapter)).merge_and_unload()
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_path, trust_remote_code=models.trust_remote_code).save_pretrained(tmp)
        shutil.copyfile(safe_child(models.loras_dir, adapter) / CARD_FILE, tmp / CARD_FILE)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
