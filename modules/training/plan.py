"""Planning a run: every check before a step runs or a file is written — the model can be trained, the
name is free, the data reads, tokenizes and fits — and the tokenized samples that come out of it.

A run lives in `user_data/training-runs/NAME/`: `run.json` (settings, data source and its sha256, model,
seconds so far) and Trainer's `checkpoint-N/` folders. Trainer writes `trainer_state.json` last in a
checkpoint, so a checkpoint with a readable one is complete; a kill mid-save leaves the previous one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modules.models import ModelManager
from modules.paths import UnsafeName, safe_child
from modules.training import TrainingError
from modules.training.data import Record, fingerprint, read_chats, read_file
from modules.training.formatting import Formatter, Sample, split
from modules.training.lora import check_trainable, target_modules
from modules.training.settings import TrainingSettings

RUN_FILE = "run.json"
_CHECKPOINT_FILES = ("trainer_state.json", "adapter_config.json", "optimizer.pt", "scheduler.pt")


@dataclass(frozen=True)
class DataSource:
    """Where a run's data comes from, enough to read it again on Resume and to check it is unchanged."""

    name: str  # the file's name, or "saved chats"
    path: str | None = None
    chats: tuple[int, ...] = ()
    user: str = "local"
    sha256: str = ""


@dataclass
class Plan:
    """A checked run, ready to start: the tokenized samples and where everything goes."""

    settings: TrainingSettings
    source: DataSource
    model: str
    train: list[Sample]
    eval: list[Sample]
    report: str
    total_steps: int
    run_dir: Path
    resume_from: Path | None = None
    seconds_before: float = 0.0


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint-N in a run folder (see the module docstring), or None."""
    found = []
    for path in run_dir.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-", 1)[1])
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
        weights = (path / "adapter_model.safetensors").is_file() or (path / "adapter_model.bin").is_file()
        if weights and all((path / name).is_file() for name in _CHECKPOINT_FILES):
            found.append((step, path))
    return max(found)[1] if found else None


class Planner:
    """Makes Plans for the model `models` has loaded, adapters in `loras_dir`, runs in `runs_dir`."""

    def __init__(self, models: ModelManager, loras_dir: Path, runs_dir: Path, store: Any = None) -> None:
        self.models = models
        self.loras_dir = loras_dir
        self.runs_dir = runs_dir
        self.store = store

    def _checked_backend(self, settings: TrainingSettings) -> Any:
        import torch

        backend = self.models.current()
        check_trainable(backend, settings, torch.cuda.is_available())
        if settings.cutoff > backend.context_length:
            raise TrainingError(f"the cutoff ({settings.cutoff} tokens) is longer than {backend.name}'s context "
                                f"({backend.context_length})")
        return backend

    def names(self, output: str) -> tuple[Path, Path]:
        try:
            final, run_dir = safe_child(self.loras_dir, output), safe_child(self.runs_dir, output)
        except UnsafeName as exc:
            raise TrainingError(f"bad adapter name: {exc}") from exc
        if final.exists():
            raise TrainingError(f"{self.loras_dir.name}/{output} already exists: choose another name")
        return final, run_dir

    def _records(self, settings: TrainingSettings, source: DataSource) -> list[Record]:
        if source.path is not None:
            return read_file(Path(source.path), settings.data_format, name=source.name)
        if self.store is None:
            raise TrainingError("saved chats are not available here")
        return read_chats(self.store, source.user, list(source.chats))

    def plan(self, settings: TrainingSettings, dataset: Path | None = None, chats: list[int] | None = None,
             user: str = "local") -> Plan:
        """Check the model, the name and the data, and tokenize it: TrainingError (or DataError, naming
        the file and line) for anything wrong."""
        backend = self._checked_backend(settings)
        _, run_dir = self.names(settings.output)
        checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is not None:
            raise TrainingError(f"a stopped run named {settings.output} exists (at {checkpoint.name}): Resume it, "
                                "or choose another name")
        if dataset is None and not chats:
            raise TrainingError("choose a dataset file or saved chats to train on")
        if dataset is not None:
            source = DataSource(name=dataset.name, path=str(dataset.resolve()))
        else:
            source = DataSource(name="saved chats", chats=tuple(chats or ()), user=user)
        records = self._records(settings, source)
        source = replace(source, sha256=fingerprint(Path(source.path) if source.path else None, records))
        return self._formatted(settings, source, records, backend, run_dir)

    def _formatted(self, settings: TrainingSettings, source: DataSource, records: list[Record], backend: Any,
                   run_dir: Path) -> Plan:
        targets = target_modules(backend.model, settings.target_modules)  # a wrong name fails here, not mid-run
        formatted = Formatter.for_backend(backend, settings).format(records)
        train, held = split(formatted.samples, settings.eval_split, settings.seed)
        report = formatted.report(settings.cutoff) + (f"; {len(held)} held out for evaluation" if held else "")
        report += f"; LoRA on {targets if isinstance(targets, str) else ', '.join(targets)}"
        return Plan(settings=settings, source=source, model=backend.name, train=train, eval=held, report=report,
                    total_steps=settings.total_steps(len(train)), run_dir=run_dir)

    def resume(self, name: str) -> Plan:
        """The plan that continues the stopped run `name` from its newest complete checkpoint."""
        try:
            run_dir = safe_child(self.runs_dir, name)
            meta = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
            settings = TrainingSettings.model_validate(meta["settings"])
            source = DataSource(**{**meta["source"], "chats": tuple(meta["source"].get("chats", ()))})
        except UnsafeName as exc:
            raise TrainingError(f"bad run name: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"run {name!r} cannot be read: {exc}") from exc
        backend = self._checked_backend(settings)
        if backend.name != meta.get("model"):
            raise TrainingError(f"run {name} trains {meta.get('model')}, but {backend.name} is loaded: load "
                                f"{meta.get('model')} first")
        self.names(settings.output)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise TrainingError(f"run {name} has no complete checkpoint to resume from")
        records = self._records(settings, source)
        if fingerprint(Path(source.path) if source.path else None, records) != source.sha256:
            raise TrainingError(f"{source.name} changed since run {name} started (its sha256 differs): resuming "
                                "would train on other data; start a new run instead")
        plan = self._formatted(settings, source, records, backend, run_dir)
        plan.resume_from = checkpoint
        plan.seconds_before = float(meta.get("seconds", 0.0))
        return plan

    def resumable(self, running: str | None = None) -> list[str]:
        """Names of stopped (or interrupted) runs that have a complete checkpoint (not the `running` one)."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir()
                      if p.is_dir() and p.name != running and (p / RUN_FILE).is_file() and latest_checkpoint(p))
