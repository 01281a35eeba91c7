"""Settings: one pydantic model feeds the command line, `settings.yaml` validation and the docs.

Precedence: defaults < `user_data/settings.yaml` (or `--settings FILE`) < command line. A bad value,
from either source, is reported with the key that holds it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError


class Settings(BaseModel):
    """Every setting of a Parlour process. Field descriptions are the `--help` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # where and how to serve
    port: int = Field(7860, ge=1, le=65535, description="port for the UI and the API")
    listen: bool = Field(False, description="bind all interfaces instead of 127.0.0.1 (needs --auth or --api-key)")
    insecure_listen: bool = Field(False, description="allow --listen without --auth or --api-key")
    # model
    model: str | None = Field(None, description="model (folder name in --models-dir) to load at start; "
                                                "default: the only model there, if there is exactly one")
    models_dir: Path = Field(Path("models"), description="folder of models (Hugging Face folders)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype for the Transformers loader")
    device_map: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the Transformers loader puts the model")
    threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads (default: all cores "
                                                              "but one on machines with 3 or more)")
    # files
    settings: Path = Field(Path("user_data/settings.yaml"), description="settings file (YAML)")
    user_data: Path = Field(Path("user_data"), description="folder for chats, settings and caches")
    presets_dir: Path = Field(Path("presets"), description="folder of sampling presets (YAML)")
    characters_dir: Path = Field(Path("characters"), description="folder of characters (YAML + PNG)")
    instruction_templates_dir: Path = Field(Path("instruction-templates"),
                                            description="folder of instruction templates (YAML)")
    preset: str = Field("Default", description="preset selected at start")
    # UI and API
    api: bool = Field(True, description="serve the OpenAI-compatible API under /v1")
    api_key: SecretStr | None = Field(None, description="key every /v1 request must send (Bearer)")
    auth: SecretStr | None = Field(None, description="UI logins as user:password (several: comma-separated); "
                                                     "each user sees only their own chats")
    auth_file: Path | None = Field(None, description="file of user:password logins, one per line")
    stream_fps: float = Field(20.0, gt=0, le=120, description="most UI updates per second while streaming")
    max_queue: int = Field(64, ge=1, le=10_000, description="most requests waiting for the model")

    def logins(self) -> dict[str, str]:
        """{user: password} from --auth and --auth-file (empty: no login, everyone is "local")."""
        entries: list[str] = []
        if self.auth is not None:
            entries += self.auth.get_secret_value().split(",")
        if self.auth_file is not None:
            try:
                entries += self.auth_file.read_text(encoding="utf-8").replace(",", "\n").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise SettingsError(f"cannot read --auth-file {self.auth_file}: {exc}") from exc
        logins: dict[str, str] = {}
        for entry in (e.strip() for e in entries):
            if not entry or entry.startswith("#"):
                continue
            user, sep, password = entry.partition(":")
            if not sep or not user.strip() or not password:
                raise SettingsError("every login must look like user:password (got an entry without one)")
            logins[user.strip()] = password
        return logins

    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    def torch_threads(self) -> int:
        """Threads for torch: two-core machines keep both, bigger ones leave a core for the server."""
        cores = os.cpu_count() or 1
        return self.threads or (cores if cores <= 2 else cores - 1)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values with secrets masked: safe to log or show."""
        out = self.model_dump(mode="json")
        for key, value in out.items():
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                out[key] = "**********"
        return out


class SettingsError(ValueError):
    """A setting that failed validation; the message names the key and where it came from."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from `Settings`; only flags given on it end up in the namespace."""
    parser = argparse.ArgumentParser(
        prog="server.py", description="Parlour: a browser chat UI and OpenAI-compatible API for local models.",
        argument_default=argparse.SUPPRESS)
    for name, field in Settings.model_fields.items():
        help_text = field.description or ""
        if field.default not in (None, False, True):
            help_text += f" (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(name), metavar=name.upper(), help=help_text)
    return parser


def _format(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{key}: {item['msg']}")
    return f"invalid setting in {source}: " + "; ".join(parts)


def read_yaml_settings(path: Path) -> dict[str, Any]:
    """The mapping in a settings file ({} if the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"invalid settings file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"invalid settings file {path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def load_settings(argv: list[str] | None = None) -> Settings:
    """Parse the command line, merge it over the settings file over the defaults, and validate."""
    cli = vars(build_parser().parse_args(argv))
    try:
        cli_only = Settings.model_validate({k: v for k, v in cli.items()}, strict=False)
    except ValidationError as exc:
        raise SettingsError(_format(exc, "the command line")) from exc
    path = Path(cli.get("settings", Settings.model_fields["settings"].default))
    file_values = read_yaml_settings(path)
    try:
        Settings.model_validate(file_values)
    except ValidationError as exc:
        raise SettingsError(_format(exc, str(path))) from exc
    merged = {**file_values, **cli_only.model_dump(include=set(cli))}
    return Settings.model_validate(merged)
