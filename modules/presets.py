"""Sampling presets: the `Preset` model and the YAML files in `presets/`.

`Preset` is the one source of truth for sampling: its fields' ranges, defaults and descriptions feed
the Parameters tab sliders, YAML validation, the API's accepted fields and the docs table. A preset
file stores only the keys that differ from neutral (the field defaults), using text-generation-webui's
key names, so its preset files load as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules.fileio import FileTooLarge, atomic_write_text, load_yaml, read_text_limited
from modules.paths import UnsafeName, safe_child

MAX_PRESET_BYTES = 256 * 1024


def _group(name: str) -> dict[str, Any]:
    return {"group": name}


class Preset(BaseModel):
    """Sampling and length settings for one generation. Defaults are neutral (change nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(512, ge=1, le=32768, description="most tokens to generate",
                                json_schema_extra=_group("other"))
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="divides the logits; 0 means greedy "
                               "(always the most likely token)", json_schema_extra=_group("curve"))
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="keep the most likely tokens whose probabilities "
                         "add up to top_p (1 = off)", json_schema_extra=_group("cutoffs"))
    top_k: int = Field(0, ge=0, le=200_000, description="keep only the k most likely tokens (0 = off)",
                       json_schema_extra=_group("cutoffs"))
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="drop tokens less likely than min_p times the most "
                         "likely one (0 = off)", json_schema_extra=_group("cutoffs"))
    repetition_penalty: float = Field(1.0, ge=1.0, le=5.0, description="divide the logits of tokens already "
                                      "in the context (1 = off)", json_schema_extra=_group("repetition"))
    seed: int = Field(-1, ge=-1, le=2**63 - 1, description="random seed (-1 = a new one each time)",
                      json_schema_extra=_group("other"))
    ban_eos_token: bool = Field(False, description="never end the reply with the end-of-sequence token",
                                json_schema_extra=_group("other"))

    def changed(self) -> dict[str, Any]:
        """Only the keys that differ from neutral: what a preset file stores."""
        neutral = Preset()
        return {k: v for k, v in self.model_dump().items() if v != getattr(neutral, k)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class PresetError(ValueError):
    """A preset that cannot be read or written; the message names the file and the key."""


def _describe(error: ValidationError, name: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{key}: {item['msg']}")
    return f"preset {name!r}: " + "; ".join(parts)


def parse_preset(text: str, name: str = "preset") -> Preset:
    """Validate YAML preset text (safe_load only)."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PresetError(f"preset {name!r} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PresetError(f"preset {name!r}: the top level must be a mapping of keys to values, "
                          f"not {type(data).__name__}")
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise PresetError(_describe(exc, name)) from exc


class PresetStore:
    """The YAML presets in one folder, addressed by name (the file name without `.yaml`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.yaml") if p.is_file() and not p.is_symlink())

    def _path(self, name: str) -> Path:
        try:
            return safe_child(self.folder, name, ".yaml")
        except UnsafeName as exc:
            raise PresetError(f"bad preset name: {exc}") from exc

    def load(self, name: str) -> Preset:
        path = self._path(name)
        if not path.is_file():
            raise PresetError(f"preset {name!r} does not exist in {self.folder}")
        try:
            text = read_text_limited(path, MAX_PRESET_BYTES)
        except (FileTooLarge, UnicodeDecodeError) as exc:
            raise PresetError(f"preset {name!r}: {exc}") from exc
        return parse_preset(text, name)

    def save(self, name: str, preset: Preset) -> Path:
        path = self._path(name)
        atomic_write_text(path, yaml.safe_dump(preset.changed(), sort_keys=False) if preset.changed() else "{}\n")
        return path

    def delete(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise PresetError(f"preset {name!r} does not exist")
        path.unlink()
