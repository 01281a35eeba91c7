"""ModelManager: what is in `models/`, and the one loaded model.

The loaded backend is the only process-wide thing in Parlour; this object owns it. A new model is
loaded beside the old one and swapped in only once it works, so a broken folder never leaves the
app without the model it had. Swaps and adapter changes happen under the queue's `exclusive()`
gate, so no generation is using the model while it changes. A long job that needs the model to itself
(training a LoRA) `claim`s it: the gate is held for the whole job and every load, unload or adapter
change is refused until it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from modules.fileio import YamlFileError, atomic_write_text, read_yaml_mapping
from modules import reasoning
from modules.loaders import registry
from modules.loaders.base import Backend, LoadError
from modules.loaders.registry import BuildContext, LoaderName
from modules.paths import UnsafeName, safe_child
from modules.settings import CpuThreads

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


class ModelError(RuntimeError):
    """A model that cannot be listed or loaded; the message is one line for the user."""


class SettingsFileError(ModelError):
    """models/config-user.yaml as a whole cannot be read (not YAML, not a mapping, too large)."""


class ModelSettings(BaseModel):
    """What "Save settings" remembers for one model in models/config-user.yaml."""

    loader: LoaderName | None = None
    options: dict[str, Any] = {}
    preset: str | None = None
    template: str | None = None
    #: reasoning markers (modules/reasoning.py): auto (None), off, think, gpt-oss, or {start, end}
    reasoning: str | dict[str, str] | None = None


class ModelSettingsStore:
    """models/config-user.yaml: per-model settings keyed by model name (YAML, safe_load, atomic writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            return read_yaml_mapping(self.path, 1_000_000)
        except YamlFileError as exc:
            raise SettingsFileError(f"{self.path.name} cannot be read (a mapping of model names is expected): {exc}") from exc

    def get(self, name: str) -> ModelSettings:
        raw = self._read().get(name)
        if raw is None:
            return ModelSettings()
        try:
            saved = ModelSettings.model_validate(raw)
            if saved.loader:
                registry.spec(saved.loader).options.model_validate(saved.options)
            reasoning.parse_setting(saved.reasoning)
        except ValidationError as exc:
            raise ModelError(f"{self.path.name}, model {name!r}: {exc.errors()[0]['loc']}: "
                             f"{exc.errors()[0]['msg']}") from exc
        except reasoning.ReasoningSettingError as exc:
            raise ModelError(f"{self.path.name}, model {name!r}: {exc}") from exc
        return saved

    def save(self, name: str, settings: ModelSettings) -> None:
        data = self._read()
        data[name] = settings.model_dump(mode="json", exclude_none=True)
        try:
            atomic_write_text(self.path, yaml.safe_dump(data, sort_keys=True))
        except OSError as exc:  # the old file is intact (atomic write)
            raise ModelError(f"settings for {name!r} were not saved: {exc}") from exc


@dataclass(frozen=True)
class Claim:
    """Who holds the loaded model for a long job, and what requests meanwhile get.

    `refuse_requests`: new generation requests fail at once (the API's 503 with Retry-After) instead
    of waiting in the queue; `retry_after()` is the job's own estimate of the seconds it has left."""

    owner: str
    model: str
    refuse_requests: bool = False
    retry_after: Callable[[], int] = lambda: 60


class ModelManager:
    def __init__(self, models_dir: Path, loras_dir: Path, offload_dir: Path, threads: CpuThreads,
                 trust_remote_code: bool = False, batch_size: int = 1,
                 gate: Callable[[], ContextManager[None]] | None = None) -> None:
        self.models_dir = models_dir
        self.loras_dir = loras_dir
        self.offload_dir = offload_dir
        self.threads = threads
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.gate = gate or contextlib.nullcontext
        self.saved = ModelSettingsStore(models_dir / "config-user.yaml")
        self._backend: Backend | None = None
        self._lock = threading.RLock()  # one load, unload or adapter change at a time
        self.loading: str | None = None
        self.last_error: str | None = None
        self.last_used = time.monotonic()
        self.idle_unloaded: tuple[str, str, dict[str, Any]] | None = None
        #: the long job holding the loaded model (see `claim`), or None
        self.claimed: Claim | None = None

    # ---- what is there
    def list(self) -> list[str]:
        """Model names: HF folders (config.json) and GGUF files (first part of split files)."""
        if not self.models_dir.is_dir():
            return []
        names = []
        for path in sorted(self.models_dir.iterdir(), key=lambda p: p.name.lower()):
            if path.name.startswith(".") or path.name.endswith(".partial") or path.is_symlink():
                continue
            if registry.infer(path):
                names.append(path.name)
        return names

    def refused_links(self) -> list[tuple[str, str]]:
        """(name, where it points) for each symbolic link in the models folder. Links are not followed:
        a model name must stay inside its folder (modules/paths.py), as every other name does; the
        Model tab lists these with what to do instead (README, "Models and loaders")."""
        if not self.models_dir.is_dir():
            return []
        refused = []
        for path in sorted(self.models_dir.iterdir(), key=lambda p: p.name.lower()):
            if path.is_symlink() and not path.name.startswith("."):
                try:
                    safe_child(self.models_dir, path.name)
                except UnsafeName:
                    refused.append((path.name, os.readlink(path)))
        return refused

    def list_loras(self) -> list[str]:
        if not self.loras_dir.is_dir():
            return []
        return sorted(p.name for p in self.loras_dir.iterdir()  # ".NAME.partial-*": an adapter being written
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                      and (p / "adapter_config.json").is_file())

    def default_model(self) -> str | None:
        """The model to load when none was named: the only one, or the demo model among several."""
        names = self.list()
        if len(names) == 1:
            return names[0]
        return "parlour-demo" if "parlour-demo" in names else None

    def path_of(self, name: str) -> Path:
        try:
            path = safe_child(self.models_dir, name)
        except UnsafeName as exc:
            target = dict(self.refused_links()).get(name)
            if target is not None:
                raise ModelError(f"{name!r} is a symbolic link (to {target}); Parlour does not follow links out "
                                 f"of {self.models_dir}: move the model into it, or start with --models-dir set "
                                 "to the folder that holds the model") from exc
            raise ModelError(f"bad model name: {exc}") from exc
        if not path.exists():
            raise ModelError(f"model {name!r} is not in {self.models_dir}")
        if registry.infer(path) is None:
            raise ModelError(f"{name!r} is not a model: no config.json and no .gguf file")
        return path

    def current(self) -> Backend | None:
        return self._backend

    # ---- loading
    def resolve(self, name: str, loader: str | None, options: dict[str, Any] | None) -> tuple[str, BaseModel]:
        """The loader and validated options for a load: explicit > saved per-model settings > inferred."""
        saved = ModelSettings()
        by_name = registry.loader_for_name(name)
        if by_name is None:
            try:
                saved = self.saved.get(name)
            except SettingsFileError as exc:
                # A hand-broken config-user.yaml must not stop every model from loading: say so and load
                # with the explicit (or default) options instead. (A bad entry for this model is still
                # an error for this model.)
                log.warning("ignoring saved settings: %s", exc)
        if by_name is not None:
            chosen = by_name
        else:
            path = self.path_of(name)  # always: an explicit loader must not skip the name check
            chosen = loader or saved.loader or registry.infer(path)
        try:
            spec = registry.spec(chosen)
        except registry.UnknownLoader as exc:
            raise ModelError(str(exc)) from exc
        # Explicit options (command line, Model tab, API) win key by key over the saved ones.
        values = {**(saved.options if saved.loader == chosen else {}), **(options or {})}
        try:
            return chosen, spec.options.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ModelError(f"{chosen} option {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc

    def _build(self, name: str, loader: str, options: BaseModel) -> Backend:
        spec = registry.spec(loader)
        path = None if spec.name_prefix else self.path_of(name)
        context = BuildContext(offload_dir=self.offload_dir, trust_remote_code=self.trust_remote_code,
                               batch_size=self.batch_size, threads=self.threads)
        return spec.build(name, path, options, context)

    def _apply_saved_reasoning(self, name: str, backend: Backend) -> None:
        """The per-model reasoning markers, over what the backend read from its template."""
        try:
            fmt = reasoning.parse_setting(self.saved.get(name).reasoning) if not registry.loader_for_name(name) else None
        except ModelError as exc:  # reported when the settings are read for the load; markers stay auto
            log.warning("%s", exc)
            return
        if fmt is not None:
            backend.reasoning_format = fmt

    def default_loader(self, name: str) -> str | None:
        """The loader `name` would load with: its saved one, else what its name or files imply."""
        by_name = registry.loader_for_name(name)
        if by_name is not None:
            return by_name
        try:
            return self.saved.get(name).loader or registry.infer(self.path_of(name))
        except ModelError:
            return None

    def remote_models(self, options: dict[str, Any]) -> list[str]:
        """The models a remote engine offers, as names this manager loads (`remote:<id>`)."""
        from modules.loaders.remote import list_remote_models

        try:
            return [registry.REMOTE_PREFIX + model_id for model_id in list_remote_models(options)]
        except LoadError as exc:
            raise ModelError(str(exc)) from exc

    def load(self, name: str, loader: str | None = None, options: dict[str, Any] | None = None,
             progress: Progress | None = None) -> Backend:
        """Load `name` and make it current. On failure the previous model stays loaded."""
        say = progress or (lambda fraction, message: None)
        with self._lock:
            self._refuse_if_claimed()
            self.loading = name
            try:
                chosen, validated = self.resolve(name, loader, options)
                say(0.1, f"loading {name} with {chosen}")
                try:
                    backend = self._build(name, chosen, validated)
                except LoadError as exc:
                    raise ModelError(str(exc)) from exc
                except MemoryError as exc:
                    raise ModelError(f"{name}: out of memory while loading") from exc
                self._apply_saved_reasoning(name, backend)
                say(0.9, "swapping the model in")
                with self.gate():
                    old, self._backend = self._backend, backend
                    if old is not None:
                        old.unload()
                self.last_error = None
                self.idle_unloaded = None
                self.last_used = time.monotonic()
                say(1.0, f"loaded {name}")
                log.info("loaded %s with %s in %.1f s", name, chosen, getattr(backend, "load_seconds", 0.0))
                return backend
            except ModelError as exc:
                self.last_error = str(exc)
                raise
            finally:
                self.loading = None

    def unload(self) -> None:
        with self._lock:
            self._refuse_if_claimed()
            with self.gate():
                old, self._backend = self._backend, None
                if old is not None:
                    old.unload()

    def set_loras(self, names: list[str]) -> list[str]:
        """Apply exactly these LoRAs from loras/ to the loaded Transformers model ([] removes all)."""
        with self._lock:
            self._refuse_if_claimed()
            backend = self._backend
            if backend is None or not registry.capabilities(backend).lora:
                raise ModelError("LoRAs need a model loaded with a loader that applies them (Transformers)")
            paths = []
            for name in names:
                try:
                    path = safe_child(self.loras_dir, name)
                except UnsafeName as exc:
                    raise ModelError(f"bad LoRA name: {exc}") from exc
                if not (path / "adapter_config.json").is_file():
                    raise ModelError(f"LoRA {name!r} is not in {self.loras_dir}")
                paths.append(path)
            with self.gate():
                try:
                    backend.set_loras(paths)
                except (ValueError, OSError, RuntimeError, KeyError) as exc:
                    raise ModelError(f"could not apply {', '.join(names)}: {exc}") from exc
            return list(backend.loras)

    def save_settings(self, name: str, loader: str, options: dict[str, Any], preset: str | None = None,
                      template: str | None = None, reasoning_setting: str | dict[str, str] | None = None) -> None:
        chosen, validated = self.resolve(name, loader, options)
        try:
            reasoning.parse_setting(reasoning_setting)
        except reasoning.ReasoningSettingError as exc:
            raise ModelError(str(exc)) from exc
        self.saved.save(name, ModelSettings(loader=chosen, options=validated.model_dump(mode="json", exclude_defaults=True),
                                            preset=preset, template=template, reasoning=reasoning_setting))
        backend = self._backend
        if backend is not None and backend.name == name:  # the loaded model follows at once
            template_source = backend.chat_template.source if backend.chat_template else None
            backend.reasoning_format = reasoning.detect(template_source, reasoning_setting)

    # ---- a long job that owns the model
    def _refuse_if_claimed(self) -> None:
        claim = self.claimed
        if claim is not None:
            raise ModelError(f"{claim.owner} is using {claim.model}: stop it first (Training tab)")

    @contextlib.contextmanager
    def claim(self, owner: str, refuse_requests: bool = False,
              retry_after: Callable[[], int] = lambda: 60) -> Iterator[Backend]:
        """Hold the loaded model for a long job (training): wait until no generation uses it, then keep
        the queue's gate for the whole job. Meanwhile loads, unloads, adapter changes and idle unloads
        are refused with a ModelError naming `owner`, and requests wait in the queue (or, with
        `refuse_requests`, fail at once: see Pipeline.stream). One claim at a time."""
        with self._lock:
            self._refuse_if_claimed()
            backend = self._backend
            if backend is None:
                raise ModelError("no model is loaded: load one in the Model tab first")
            self.claimed = Claim(owner, backend.name, refuse_requests, retry_after)
        try:
            with self.gate():
                yield backend
        finally:
            with self._lock:
                self.claimed = None
                self.last_used = time.monotonic()

    # ---- idle unload
    def unload_if_idle(self, idle_seconds: float) -> bool:
        """Unload the model if nothing used it for `idle_seconds`; remember it for `ensure_loaded`."""
        with self._lock:
            backend = self._backend
            if backend is None or self.claimed is not None or time.monotonic() - self.last_used < idle_seconds:
                return False
            options = getattr(backend, "options", None)
            self.idle_unloaded = (backend.name, backend.loader,
                                  options.model_dump(mode="python") if isinstance(options, BaseModel) else {})
            self.unload()
            log.info("unloaded %s after %.0f s idle", backend.name, idle_seconds)
            return True

    def ensure_loaded(self) -> Backend | None:
        """The current model, reloading the one that was unloaded for being idle (a request is coming)."""
        self.last_used = time.monotonic()
        if self._backend is None and self.idle_unloaded is not None:
            name, loader, options = self.idle_unloaded
            self.load(name, loader, options)
        return self.current()

    # ---- status
    def status(self) -> str:
        """One line for the UI."""
        if self.loading:
            return f"Loading {self.loading}…"
        if self.claimed is not None:
            return f"{self.claimed.model}: {self.claimed.owner} (requests wait or are refused until it ends)"
        backend = self._backend
        if backend is None:
            if self.idle_unloaded:
                return f"{self.idle_unloaded[0]} unloaded while idle; it reloads on the next request"
            return "No model loaded" + (f" — last error: {self.last_error}" if self.last_error else "")
        info = backend.info()
        params = f", {info['parameters'] / 1e6:.1f}M params" if info.get("parameters") else ""
        return (f"{info['name']} ({info['loader']}, {info.get('architecture', '?')}{params}, "
                f"{info.get('dtype', '?')}, {info.get('device', '?')}, context {info['context_length']})")

    def info(self) -> dict[str, Any] | None:
        backend = self._backend
        return backend.info() if backend is not None else None

    def load_in_background(self, name: str, loader: str | None = None, options: dict[str, Any] | None = None,
                           after: threading.Event | None = None) -> threading.Thread:
        """Start loading `name` in a thread (server start: the page answers before the model is ready);
        with `after`, the loading waits for that Event (the server's start: see server.create_app)."""
        def run() -> None:
            if after is not None:
                after.wait()
            try:
                self.load(name, loader, options)
            except ModelError as exc:
                log.error("could not load %s: %s", name, exc)

        self.loading = name
        thread = threading.Thread(target=run, name="model-load", daemon=True)
        thread.start()
        return thread
