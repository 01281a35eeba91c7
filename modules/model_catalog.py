"""What can be loaded: the models in `models/` (and a remote engine's), their loaders and options
(explicit > saved in models/config-user.yaml > inferred), and what each will cost once loaded.

`ModelManager` (modules/models.py) builds on this to keep several of them loaded.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from modules import reasoning
from modules.budget import Footprint, estimate
from modules.fileio import YamlFileError, atomic_write_text, read_yaml_mapping
from modules.loaders import registry
from modules.loaders.base import Backend, LoadError
from modules.loaders.registry import BuildContext, LoaderName
from modules.paths import UnsafeName, safe_child
from modules.settings import CpuThreads

log = logging.getLogger("modules.models")  # one logger for listing and loading (tests and operators read it)


class ModelError(RuntimeError):
    """A model that cannot be listed or loaded; the message is one line for the user."""


class ModelNotFound(ModelError):
    """A name that is no model here, nor an alias of one (the API's 404)."""


class ModelTooLarge(ModelError):
    """A model that cannot fit the memory budget even with nothing else loaded (the API's 400)."""


class ModelClaimed(ModelError):
    """A load, unload or adapter change of a model that a long job (training) holds, or a load that would
    need its room (the API's 409, or 503 with Retry-After for a request that named a model)."""

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


class ModelCatalog:
    """The models that can be loaded, and how each would load."""

    def __init__(self, models_dir: Path, loras_dir: Path, offload_dir: Path, threads: CpuThreads,
                 trust_remote_code: bool = False, batch_size: int = 1,
                 remote_options: dict[str, Any] | None = None, gpu_available: bool | None = None) -> None:
        self.models_dir = models_dir
        self.loras_dir = loras_dir
        self.offload_dir = offload_dir
        self.threads = threads
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        #: connection options for `remote:` names (--remote-url); None: only explicitly loaded remote models
        self.remote_options = remote_options
        self._gpu = gpu_available
        self.saved = ModelSettingsStore(models_dir / "config-user.yaml")

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
        # ".NAME.partial-*": an adapter being written by training; "NAME.partial": one being downloaded
        return sorted(p.name for p in self.loras_dir.iterdir() if p.is_dir() and not p.is_symlink()
                      and not p.name.startswith(".") and not p.name.endswith(".partial")
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

    def save_settings(self, name: str, loader: str, options: dict[str, Any], preset: str | None = None,
                      template: str | None = None, reasoning_setting: str | dict[str, str] | None = None) -> None:
        chosen, validated = self.resolve(name, loader, options)
        try:
            reasoning.parse_setting(reasoning_setting)
        except reasoning.ReasoningSettingError as exc:
            raise ModelError(str(exc)) from exc
        self.saved.save(name, ModelSettings(loader=chosen, options=validated.model_dump(mode="json", exclude_defaults=True),
                                            preset=preset, template=template, reasoning=reasoning_setting))

    def _gpu_available(self) -> bool:
        if self._gpu is None:
            import torch

            self._gpu = torch.cuda.is_available()
        return self._gpu

    def _jit_options(self, name: str) -> dict[str, Any] | None:
        """Options for a load no one spelled out: a remote engine's connection (--remote-url), else none
        (the model's saved settings then apply, see `resolve`)."""
        return dict(self.remote_options) if registry.loader_for_name(name) and self.remote_options else None

    def _checked(self, name: str) -> str:
        """`name` if it can be loaded by name (a folder or file in models/, or a remote name)."""
        if registry.loader_for_name(name) is None:
            self.path_of(name)
        return name

    def plan(self, name: str, loader: str | None, options: dict[str, Any] | None) -> tuple[str, BaseModel, Footprint]:
        """The loader, validated options and expected footprint of loading `name` so."""
        chosen, validated = self.resolve(name, loader, options)
        path = None if registry.spec(chosen).name_prefix else self.path_of(name)
        return chosen, validated, estimate(path, chosen, validated, self._gpu_available())

    def planned_context_length(self, name: str) -> int | None:
        """The context `name` will have once loaded with its saved options (None when only the engine knows)."""
        try:
            chosen, options = self.resolve(name, None, self._jit_options(name))
        except ModelError:
            return None
        if chosen == "llama.cpp":
            return getattr(options, "n_ctx", None)
        if chosen == "transformers":
            if getattr(options, "context_length", None):
                return options.context_length
            try:
                config = json.loads((self.path_of(name) / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError, ModelError):
                return None
            value = config.get("max_position_embeddings") or config.get("n_positions")
            return int(value) if isinstance(value, int) else None
        return None
