"""Settings: one pydantic model feeds the command line, `settings.yaml` validation and the docs.

Precedence: defaults < `user_data/settings.yaml` (or `--settings FILE`) < command line. A bad value,
from either source, is reported with the key that holds it.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from modules import limits
from modules.budget import SIZE_PATTERN, Budget, parse_size
from modules.fileio import YamlFileError, load_yaml, read_yaml_mapping
from modules.loaders import registry
from modules.loaders.registry import LoaderName



#: who API requests act as: their own profile and extension state, never a login's (see README, Security)
API_USER = "api"


@dataclass(frozen=True)
class CpuThreads:
    """CPU threads for a local model, split as llama.cpp splits them (n_threads / n_threads_batch).

    `prompt` while reading a prompt: big matrix products that use every core (a 512-token prefill of
    the ~400M wide model: 2.8 s on 2 threads, 4.9 s on 1). `generate` while making tokens one at a time.
    Whether one thread fewer generates as fast depends on the model: on 2 cores a float32 model is
    bound by memory (1 thread = 1.03x 2 threads, and the free core serves HTTP: API streaming 0.98x raw
    vs 0.95x), a bfloat16 one by arithmetic (2 threads 1.64x faster than 1). So with `tune` the batch
    engine tries `generate - 1` against `generate` on its own steps and keeps the fewer unless the
    more are clearly faster (`modules.batching.ThreadTuner`).
    """

    generate: int
    prompt: int
    tune: bool = False


class Settings(BaseModel):
    """Every setting of a Parlour process. Field descriptions are the `--help` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # where and how to serve
    port: int = Field(7860, ge=1, le=65535, description="port for the UI and the API")
    listen: bool = Field(False, description="bind all interfaces instead of 127.0.0.1 (needs --auth, and --api-key unless --no-api)")
    insecure_listen: bool = Field(False, description="allow --listen without --auth or --api-key (trusted networks only)")
    # model
    model: str | None = Field(None, description="model (folder name in --models-dir) to load at start; "
                                                "default: the only model there, if there is exactly one")
    models_dir: Path = Field(Path("models"), description="folder of models (Hugging Face folders, *.gguf files)")
    loras_dir: Path = Field(Path("loras"), description="folder of LoRA adapters (peft folders)")
    loader: LoaderName | None = Field(None, description="loader for --model (default: inferred from the files)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Transformers: weights dtype (default auto)")
    device_map: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Transformers: where the weights go (default auto: the GPU if there is one)")
    load_in_8bit: bool | None = Field(None, description="Transformers: bitsandbytes 8-bit weights")
    load_in_4bit: bool | None = Field(None, description="Transformers: bitsandbytes 4-bit weights (nf4)")
    n_ctx: int | None = Field(None, ge=16, le=1_048_576, description="llama.cpp: context length (default 4096)")
    n_gpu_layers: int | None = Field(None, ge=-1, le=1000, description="llama.cpp: layers on the GPU (-1 all)")
    remote_url: str | None = Field(None, pattern=r"^https?://[^\s]+$",
                                   description="OpenAI-compatible server (vLLM, TGI, Ollama, ...) to offer as "
                                               "remote models, e.g. http://gpu-box:8000/v1")
    remote_api_key: SecretStr | None = Field(None, description="Bearer key for --remote-url")
    trust_remote_code: bool = Field(False, description="let Transformers run Python code shipped with a model "
                                                       "(only from the command line; never from the browser)")
    idle_unload_minutes: float | None = Field(None, gt=0, description="unload each model after this many "
                                              "minutes unused; it reloads on its next request")
    max_loaded_models: int = Field(1, ge=1, le=64, description="models kept loaded at once (a request for another "
                                   "one loads it and unloads the least recently used idle one; remote engines' "
                                   "models do not count)")
    gpu_memory_budget: str | None = Field(None, pattern=SIZE_PATTERN, description="most GPU memory the loaded "
                                          "models may take together, e.g. 20GiB (estimated from the weight files "
                                          "before a load, measured after)")
    cpu_memory_budget: str | None = Field(None, pattern=SIZE_PATTERN, description="most CPU memory the loaded "
                                          "models may take together, e.g. 16GiB")
    model_alias: dict[str, str] = Field(default_factory=dict, description="other names for models, as "
                                        "ALIAS=MODEL (several), e.g. gpt-4o-mini=parlour-demo")
    list_loaded_only: bool = Field(False, description="GET /v1/models lists only the loaded models (default: "
                                   "every model Parlour can serve, with its state)")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads for generating tokens (default: "
                                "all cores on 1-2 core machines, else all but one; the batch engine then "
                                "tries one fewer and keeps it if it is as fast)")
    threads_batch: int | None = Field(None, ge=1, le=512, description="CPU threads for reading prompts "
                                                                    "(default: all cores)")
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
    batch_size: int = Field(4, ge=1, le=64, description="requests the Transformers backend generates together "
                                                     "(shared forward passes; 1: one at a time through generate())")
    stream_interval_ms: float = Field(10.0, ge=0, le=1000, description="API streaming: while tokens come faster "
                                      "than this, they share a chunk (first text and end go at once; 0: a chunk "
                                      "per token)")
    max_queue: int = Field(64, ge=1, le=10_000, description="most requests waiting for the model")
    admin_key: SecretStr | None = Field(None, description="key the API's model list/load/unload routes require "
                                                         "(Bearer); when unset they take --api-key like the rest")
    cors_origin: str | None = Field(None, description="comma-separated origins (scheme://host:port) besides the "
                                    "server's own that browsers may send requests from: CORS for /v1, and the "
                                    "public origin behind a proxy that rewrites Host (default: none, same origin only)")
    max_body_bytes: int = Field(limits.MAX_BODY_BYTES, ge=1024, le=1024**3, description="largest request body in "
                                "bytes, for /v1 and the UI's events (larger: 413; uploads: --max-upload-mb)")
    max_upload_mb: float = Field(limits.MAX_UPLOAD_MB, gt=0, le=100_000, description="largest uploaded file "
                                 "(character card, chat import) in MB (larger: 413)")
    cache_minutes: float = Field(10.0, gt=0, le=10_080, description="minutes uploaded files and downloads "
                                 "(exports) stay in the cache before they are deleted (a chat's exports also go "
                                 "when the chat is deleted)")
    admin_users: list[str] = Field(default_factory=list, description="logins that may manage MCP servers, "
                                   "user tool files and extensions in the Session tab (without --auth the local "
                                   "user is admin, unless --listen)")
    # tools
    mcp_config: Path | None = Field(None, description="MCP servers to connect, in Claude Desktop's mcp.json format "
                                    "(stdio commands, Streamable HTTP URLs); edited by hand only (default: "
                                    "USER_DATA/mcp.json)")
    tool_timeout: float = Field(30.0, gt=0, le=3600, description="seconds a tool call (a user tool file, an MCP "
                                "server) may take before it is stopped and reported as an error")
    tool_calls_per_turn: int = Field(10, ge=1, le=100, description="most tool calls the Chat tab runs for one "
                                     "reply before the model must answer in words")
    # extensions
    extensions: list[str] = Field(default_factory=list, description="extensions to enable, in load order "
                                  "(folders in extensions/ or user_data/extensions/, or installed packages)")
    default_extensions: list[str] = Field(default_factory=list, description="extensions enabled at start "
                                          "(usually set in settings.yaml; --extensions adds to them)")
    extension_timeout: float = Field(10.0, gt=0, le=600, description="seconds an extension hook may take "
                                     "before it is skipped")
    #: settings.yaml keys shaped `<extension>-<param>` (text-generation-webui's convention); not a flag
    extension_params: dict[str, Any] = Field(default_factory=dict, description="per-extension parameters as "
                                             "EXTENSION-PARAM=VALUE (in settings.yaml: `EXTENSION-PARAM: value`)")

    @model_validator(mode="before")
    @classmethod
    def _collect_extension_params(cls, data: Any) -> Any:
        """Move `<extension>-<param>` keys into extension_params; every other unknown key stays an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        params = dict(data.get("extension_params") or {})
        for key in [k for k in data if isinstance(k, str) and "-" in k and not k.startswith("-")]:
            if key.replace("-", "_") in cls.model_fields:
                raise ValueError(f"unknown key {key!r}: settings use underscores ({key.replace('-', '_')!r})")
            params[key] = data.pop(key)
        if params:
            data["extension_params"] = params
        return data

    @field_validator("api_key", "admin_key", "remote_api_key")
    @classmethod
    def _real_key(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        """An empty key (`--api-key "$UNSET"`) would open every route to an empty Bearer, and a key with
        spaces around it could never match (the header is stripped): both are refused."""
        if value is None:
            return value
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError(f"{_flag(info.field_name)} is empty: give a real key, or leave the flag out")
        if key != key.strip():
            raise ValueError(f"{_flag(info.field_name)} starts or ends with whitespace, so no request could match it")
        return value

    @field_validator("auth")
    @classmethod
    def _some_logins(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("--auth is empty: give user:password logins, or leave the flag out")
        return value

    @field_validator("cors_origin")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        for origin in (o.strip() for o in (value or "").split(",") if o.strip()):
            if not re.fullmatch(r"https?://[^\s/?#*]+/?", origin):
                raise ValueError(f"{origin!r} is not an origin like http://localhost:8000 (scheme and host, no path; "
                                 "'*' and 'null' are not allowed)")
        return value

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
            if not sep or not user.strip() or not password.strip():
                raise SettingsError("every login must look like user:password with a password that is not empty "
                                    "(got an entry without one)")
            if user.strip() == API_USER:
                raise SettingsError(f"the login name {API_USER!r} is reserved: API requests act as that user")
            logins[user.strip()] = password
        if not logins and (self.auth is not None or self.auth_file is not None):
            raise SettingsError("--auth / --auth-file hold no user:password login (only blank lines or comments)")
        return logins

    def mcp_config_path(self) -> Path:
        return self.mcp_config if self.mcp_config is not None else Path(self.user_data) / "mcp.json"

    def is_admin(self, user: str) -> bool:
        """May `user` manage tools (MCP servers, user tool files) and turn extensions on or off? Without logins the local user may (not when
        the UI is on all interfaces: everyone there is "local"); with logins only those in --admin-users."""
        try:
            logins = self.logins()
        except SettingsError:
            return False
        if not logins:
            return user == "local" and not self.listen
        return user in self.admin_users and user in logins

    def load_options(self, loader: str) -> dict[str, Any]:
        """The loader options given on the command line / settings file (only those set)."""
        keys = registry.spec(loader).settings_keys
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if loader == "remote" and self.remote_url:
            out["base_url"] = self.remote_url
            if self.remote_api_key:
                out["api_key"] = self.remote_api_key.get_secret_value()
        return out

    def model_budget(self) -> Budget:
        """The room for loaded models: --max-loaded-models and the memory budgets."""
        return Budget(max_models=self.max_loaded_models,
                      gpu_mib=parse_size(self.gpu_memory_budget) if self.gpu_memory_budget else None,
                      cpu_mib=parse_size(self.cpu_memory_budget) if self.cpu_memory_budget else None)

    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    def cors_origins(self) -> list[str]:
        """The origins named by --cors-origin (empty: CORS stays off)."""
        return [o.strip() for o in (self.cors_origin or "").split(",") if o.strip()]

    def cpu_threads(self) -> "CpuThreads":
        cores = os.cpu_count() or 1
        return CpuThreads(generate=self.threads or (cores if cores <= 2 else cores - 1),
                          prompt=self.threads_batch or cores, tune=self.threads is None)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values with secrets masked: safe to log or show."""
        out = self.model_dump(mode="json")
        for key, value in out.items():
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                out[key] = "**********"
        return out


MAX_SETTINGS_BYTES = 1_000_000


class SettingsError(ValueError):
    """A setting that failed validation; the message names the key and where it came from."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choices(annotation: Any) -> tuple[str, ...] | None:
    literal = next((a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal), None)
    return tuple(get_args(literal)) if literal is not None else None


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or set(get_args(annotation)) == {bool, type(None)}


def _key_text(text: str) -> tuple[str, str]:
    """`key=value` from the command line, the value kept as text (model names such as `1.5`)."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _key_value(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as a YAML scalar (true, 3, 0.5, text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, load_yaml(value) if value else ""
    except yaml.YAMLError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from `Settings`; only flags given on it end up in the namespace."""
    parser = argparse.ArgumentParser(
        prog="server.py", description="Parlour: a browser chat UI and OpenAI-compatible API for local models.",
        argument_default=argparse.SUPPRESS)
    for name, field in Settings.model_fields.items():
        help_text = field.description or ""
        if field.default_factory is None and field.default not in (None, False, True):
            help_text += f" (default: {field.default})"
        if get_origin(field.annotation) is dict:
            # the flag may be repeated (--model-alias a=x --model-alias b=y) or take several pairs
            text_only = get_args(field.annotation)[1] is str
            parser.add_argument(_flag(name), nargs="+", action="extend", metavar="KEY=VALUE",
                                type=_key_text if text_only else _key_value, help=help_text)
        elif get_origin(field.annotation) is list:
            parser.add_argument(_flag(name), nargs="+", metavar="NAME", help=help_text)
        elif _is_bool(field.annotation):
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, help=help_text)
        elif _choices(field.annotation):
            parser.add_argument(_flag(name), choices=_choices(field.annotation), help=help_text)
        else:
            parser.add_argument(_flag(name), metavar=name.upper(), help=help_text)
    return parser


def flags_markdown() -> str:
    """The flags table for the README (a test keeps the README in step with `Settings`)."""
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = _flag(name)
        if _is_bool(field.annotation):
            flag = f"{flag} / --no-{name.replace('_', '-')}"
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, [], {}) else f"`{default}`"
        choices = _choices(field.annotation)
        more = f" (one of {', '.join(choices)})" if choices else ""
        rows.append(f"| `{flag}` | {shown} | {field.description}{more} |")
    return "\n".join(rows)


def _format(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{key}: {item['msg']}")
    return f"invalid setting in {source}: " + "; ".join(parts)


def read_yaml_settings(path: Path) -> dict[str, Any]:
    """The mapping in a settings file ({} if the file does not exist)."""
    try:
        return read_yaml_mapping(path, MAX_SETTINGS_BYTES)
    except YamlFileError as exc:
        raise SettingsError(f"invalid settings file {path}: {exc}") from exc


def load_settings(argv: list[str] | None = None) -> Settings:
    """Parse the command line, merge it over the settings file over the defaults, and validate."""
    cli = vars(build_parser().parse_args(argv))
    for name, field in Settings.model_fields.items():
        if name in cli and get_origin(field.annotation) is dict:
            cli[name] = dict(cli[name])
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
    if "extension_params" in cli:  # per key: the command line beats the file
        file_params = Settings.model_validate(file_values).extension_params
        merged["extension_params"] = {**file_params, **cli_only.extension_params}
        merged = {k: v for k, v in merged.items() if k not in file_params}
    return Settings.model_validate(merged)
