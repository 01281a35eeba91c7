"""Sampling presets: the `Preset` model and the YAML files in `presets/`.

`Preset` is the one source of truth for sampling: its fields' ranges, defaults and descriptions feed
the Parameters tab sliders, YAML validation, the API's accepted fields and the docs table
(`docs/presets.md`, written by `docs_table()`). A preset file stores only the keys that differ from
neutral (the field defaults), using text-generation-webui's key names, so its preset files load as
they are: list-valued keys also accept that project's string forms (`'"\\n", ":"'` for quoted lists,
one name per line for `sampler_priority`, `"1, 2"` for token ids).
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from modules.fileio import FileTooLarge, atomic_write_text, load_yaml, os_reason, read_text_limited, unusable_files
from modules.paths import UnsafeName, safe_child

log = logging.getLogger(__name__)

MAX_PRESET_BYTES = 256 * 1024

#: The chain stages `sampler_priority` orders, in the default order: penalties first (on raw logits),
#: then the curve, then the cutoffs, XTC last so it only ever removes from what the cutoffs kept.
DEFAULT_PRIORITY: tuple[str, ...] = (
    "repetition_penalty", "presence_penalty", "frequency_penalty", "dry", "encoder_repetition_penalty",
    "no_repeat_ngram", "top_n_sigma", "temperature", "dynamic_temperature", "quadratic_sampling", "top_k",
    "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "mirostat", "xtc",
)

#: text-generation-webui preset keys for features Parlour does not have (beam search, contrastive
#: search, its token-rate limit). They are dropped with a log line so those files still load.
IGNORED_KEYS = frozenset({"penalty_alpha", "num_beams", "length_penalty", "early_stopping", "static_cache",
                          "prompt_lookup_num_tokens", "max_tokens_second", "auto_max_new_tokens",
                          "dry_range"})


#: The keys that constrain a reply's form (modules/constraints.py); at most one is set in a preset.
CONSTRAINT_KEYS = ("grammar_string", "json_schema", "regex")
#: Longest grammar, schema or regex a preset holds (compiling is bounded in time as well).
MAX_CONSTRAINT_CHARS = 100_000


def schema_text(value: Any) -> Any:
    """A JSON schema given as an object (the API's `json_schema`, a YAML mapping) -> its JSON text; text
    must be JSON. Annotated on the field, so the API's request field (copied from it) accepts both too."""
    if isinstance(value, (dict, bool)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        if not isinstance(parsed, (dict, bool)):
            raise ValueError(f"a JSON schema is an object (or true/false), not {type(parsed).__name__}")
    return value


def _f(default: Any, group: str, description: str, text: str | None = None, **limits: Any) -> Any:
    """A Preset field: `group` places its control in the Parameters tab; `text` names the text form
    a list-valued field takes in a textbox (see `field_text`)."""
    extra: dict[str, Any] = {"group": group}
    if text:
        extra["text"] = text
    return Field(default, description=description, json_schema_extra=extra, **limits)


def _literal(value: Any) -> Any:
    """A list or dict written as a literal (`["a", "b"]`, `{3: -5}`) -> the value; anything else as is.

    Gradio textboxes hand over `str(value)` when an API client sends a list or dict for a text-form
    field, so those strings read back as the value they came from. `ast.literal_eval` evaluates
    literals only, never code.
    """
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _quoted_list(value: Any, key: str) -> Any:
    """text-generation-webui's quoted list `'"\\n", ":"'` (JSON strings, comma separated) -> list."""
    value = _literal(value)
    if not isinstance(value, str):
        return value
    if not value.strip():
        return []
    try:
        items = json.loads("[" + value + "]")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{key} must be quoted strings separated by commas, like \"\\n\", \":\" ({exc.msg})") from exc
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{key} must hold only quoted strings")
    return items


class Preset(BaseModel):
    """Sampling and length settings for one generation. Defaults are neutral (change nothing).

    >>> Preset(temperature=0.7, min_p=0.05).changed()
    {'temperature': 0.7, 'min_p': 0.05}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- curve shape ---------------------------------------------------------------------------------
    temperature: float = _f(1.0, "curve", "divides the logits: below 1 sharpens, above 1 flattens; 0 means "
                            "greedy (always the most likely token)", ge=0.0, le=5.0)
    temperature_last: bool = _f(False, "curve", "apply temperature (and dynamic temperature) after every other "
                                "sampler, whatever sampler_priority says")
    dynamic_temperature: bool = _f(False, "curve", "use a temperature between dynatemp_low and dynatemp_high "
                                   "chosen by how uncertain the model is (replaces temperature)")
    dynatemp_low: float = _f(1.0, "curve", "dynamic temperature used when the model is certain", ge=0.0, le=5.0)
    dynatemp_high: float = _f(1.0, "curve", "dynamic temperature used when the model is most uncertain",
                              ge=0.0, le=5.0)
    dynatemp_exponent: float = _f(1.0, "curve", "shape of the entropy-to-temperature curve (1 = linear)",
                                  ge=0.01, le=5.0)
    smoothing_factor: float = _f(0.0, "curve", "quadratic sampling: bends the logits around the top one; "
                                 "small values flatten the head, large ones sharpen (0 = off)", ge=0.0, le=10.0)
    smoothing_curve: float = _f(1.0, "curve", "smoothing shape: 1 = quadratic, up to 3 = cubic "
                                "(steeper tail)", ge=1.0, le=3.0)
    mirostat_mode: int = _f(0, "curve", "0 = off, 2 = Mirostat v2: keeps the surprise of each token near "
                            "mirostat_tau (mode 1 is not supported)", ge=0, le=2)
    mirostat_tau: float = _f(5.0, "curve", "Mirostat target surprise in bits (lower = more focused)",
                             ge=0.0, le=10.0)
    mirostat_eta: float = _f(0.1, "curve", "Mirostat learning rate", ge=0.0, le=1.0)
    # -- cutoffs -------------------------------------------------------------------------------------
    top_k: int = _f(0, "cutoffs", "keep only the k most likely tokens (0 = off)", ge=0, le=200_000)
    top_p: float = _f(1.0, "cutoffs", "keep the most likely tokens whose probabilities add up to top_p "
                      "(1 = off)", ge=0.0, le=1.0)
    min_p: float = _f(0.0, "cutoffs", "drop tokens less likely than min_p times the most likely one (0 = off)",
                      ge=0.0, le=1.0)
    top_n_sigma: float = _f(0.0, "cutoffs", "keep tokens whose logit is within n standard deviations of the "
                            "top logit (0 = off)", ge=0.0, le=10.0)
    typical_p: float = _f(1.0, "cutoffs", "locally typical sampling: keep tokens whose surprise is closest to "
                          "the average, up to this mass (1 = off)", ge=0.0, le=1.0)
    tfs: float = _f(1.0, "cutoffs", "tail-free sampling: cut the flat tail where the sorted probabilities' "
                    "curvature has added up to tfs (1 = off)", ge=0.0, le=1.0)
    top_a: float = _f(0.0, "cutoffs", "drop tokens less likely than top_a times the top probability squared "
                      "(0 = off)", ge=0.0, le=1.0)
    epsilon_cutoff: float = _f(0.0, "cutoffs", "drop tokens less likely than this, in units of 1e-4 (0 = off)",
                               ge=0.0, le=9.0)
    eta_cutoff: float = _f(0.0, "cutoffs", "eta sampling: an entropy-dependent epsilon cutoff, in units of "
                           "1e-4 (0 = off)", ge=0.0, le=20.0)
    xtc_threshold: float = _f(0.1, "cutoffs", "XTC: tokens at least this likely count as 'top choices'",
                              ge=0.0, le=0.5)
    xtc_probability: float = _f(0.0, "cutoffs", "XTC: chance per token of removing every top choice but the "
                                "least likely one (0 = off)", ge=0.0, le=1.0)
    # -- repetition ----------------------------------------------------------------------------------
    repetition_penalty: float = _f(1.0, "repetition", "divide the logits of tokens already in the recent "
                                   "context (1 = off)", ge=1.0, le=5.0)
    repetition_penalty_range: int = _f(1024, "repetition", "how many recent tokens the repetition, frequency "
                                       "and presence penalties look at (0 = the whole context)", ge=0, le=1_000_000)
    frequency_penalty: float = _f(0.0, "repetition", "subtract this times each token's count in the recent "
                                  "context (0 = off)", ge=-2.0, le=2.0)
    presence_penalty: float = _f(0.0, "repetition", "subtract this from every token already in the recent "
                                 "context (0 = off)", ge=-2.0, le=2.0)
    encoder_repetition_penalty: float = _f(1.0, "repetition", "above 1 favours tokens from the prompt, below 1 "
                                           "avoids them (1 = off)", ge=0.8, le=1.5)
    no_repeat_ngram_size: int = _f(0, "repetition", "never repeat an n-gram of this many tokens (0 = off)",
                                   ge=0, le=20)
    dry_multiplier: float = _f(0.0, "repetition", "DRY: strength of the penalty on tokens that would extend a "
                               "repeated sequence (0 = off)", ge=0.0, le=5.0)
    dry_base: float = _f(1.75, "repetition", "DRY: how fast the penalty grows with the repeat's length",
                         ge=1.0, le=4.0)
    dry_allowed_length: int = _f(2, "repetition", "DRY: repeats up to this long are not penalised",
                                 ge=1, le=20)
    dry_sequence_breakers: list[str] = _f(["\n", ":", "\"", "*"], "repetition", "DRY: strings that end a "
                                          "repeated sequence, e.g. \"\\n\", \":\"", text="quoted")
    # -- other ---------------------------------------------------------------------------------------
    max_new_tokens: int = _f(512, "other", "most tokens to generate", ge=1, le=32768)
    truncation_length: int = _f(0, "other", "cut the prompt from the left so prompt + reply fit in this many "
                                "tokens (0 = the model's context length)", ge=0, le=1_048_576)
    seed: int = _f(-1, "other", "random seed (-1 = a new one each time)", ge=-1, le=2**63 - 1)
    do_sample: bool = _f(True, "other", "sample from the distribution; off = greedy decoding")
    guidance_scale: float = _f(1.0, "other", "classifier-free guidance: above 1 steers away from "
                               "negative_prompt (1 = off; costs a second forward pass)", ge=-5.0, le=5.0)
    negative_prompt: str = _f("", "other", "the text guidance_scale steers away from (empty = the bare "
                              "last token)", max_length=20_000)
    ban_eos_token: bool = _f(False, "other", "never end the reply with the end-of-sequence token")
    add_bos_token: bool = _f(True, "other", "start the prompt with the BOS token when the model's tokenizer "
                             "adds one; off removes a leading BOS")
    skip_special_tokens: bool = _f(True, "other", "leave special tokens out of the reply's text")
    custom_token_bans: list[int] = _f([], "other", "token ids never to generate, e.g. 13, 198", text="ids")
    banned_strings: list[str] = _f([], "other", "strings never to generate (their usual tokenisation is "
                                   "banned), e.g. \"As an AI\"", text="quoted")
    logit_bias: dict[int, float] = _f({}, "other", "token id -> bias added to its logit (-100 bans, 100 "
                                      "forces), as JSON: {\"13\": -5}", text="json")
    custom_stopping_strings: list[str] = _f([], "other", "extra strings that end the reply, e.g. "
                                            "\"\\nUser:\"", text="quoted")
    sampler_priority: list[str] = _f(list(DEFAULT_PRIORITY), "other", "the order the chain applies the "
                                     "samplers, one name per line (names left out follow in the default order)",
                                     text="lines")
    # -- constrained output (modules/constraints.py; docs/api.md "Constrained output") -----------------
    grammar_string: str = _f("", "constraint", "a GBNF (llama.cpp) or Lark grammar the reply must follow "
                             "(empty = none); text-generation-webui's .gbnf files work as they are",
                             max_length=MAX_CONSTRAINT_CHARS)
    json_schema: Annotated[str, BeforeValidator(schema_text)] = _f(
        "", "constraint", "a JSON schema the reply must match, as JSON (empty = none); "
        "{\"type\": \"object\"} = any JSON object", max_length=MAX_CONSTRAINT_CHARS)
    regex: str = _f("", "constraint", "a regular expression the whole reply must match (empty = none)",
                    max_length=MAX_CONSTRAINT_CHARS)

    # -- validation of the text forms ----------------------------------------------------------------
    @field_validator("dry_sequence_breakers", "banned_strings", "custom_stopping_strings", mode="before")
    @classmethod
    def _quoted(cls, value: Any, info: Any) -> Any:
        return _quoted_list(value, info.field_name)

    @field_validator("custom_token_bans", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        value = _literal(value)
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise ValueError("custom_token_bans must be token ids (whole numbers) separated by commas")
            return [int(p) for p in parts]
        return value

    @field_validator("custom_token_bans")
    @classmethod
    def _ids_positive(cls, value: list[int]) -> list[int]:
        if any(i < 0 for i in value):
            raise ValueError("token ids are 0 or more")
        return value

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _bias_text(cls, value: Any) -> Any:
        value = _literal(value)
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"logit_bias must be a JSON object like {{\"13\": -5}} ({exc.msg})") from exc
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float]) -> dict[int, float]:
        for token, bias in value.items():
            if token < 0 or not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias {token}: {bias}: ids are 0 or more and biases lie in [-100, 100]")
        return value

    @field_validator("sampler_priority", mode="before")
    @classmethod
    def _priority_text(cls, value: Any) -> Any:
        value = _literal(value)
        if isinstance(value, str):
            return [p.strip() for p in value.replace(",", "\n").splitlines() if p.strip()]
        return value

    @field_validator("sampler_priority")
    @classmethod
    def _priority_names(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in DEFAULT_PRIORITY]
        if unknown:
            raise ValueError(f"unknown sampler {unknown[0]!r}; known: {', '.join(DEFAULT_PRIORITY)}")
        if len(set(value)) != len(value):
            raise ValueError("a sampler is listed twice")
        return list(value) + [name for name in DEFAULT_PRIORITY if name not in value]

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        if self.mirostat_mode == 1:
            raise ValueError("mirostat_mode 1 is not supported: use 2 (Mirostat v2) or 0 (off)")
        if self.dynatemp_low > self.dynatemp_high:
            raise ValueError(f"dynatemp_low ({self.dynatemp_low}) is above dynatemp_high ({self.dynatemp_high})")
        given = [key for key in CONSTRAINT_KEYS if getattr(self, key)]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are both set: a reply follows one constraint at a time")
        return self

    # -- helpers -------------------------------------------------------------------------------------
    def changed(self) -> dict[str, Any]:
        """Only the keys that differ from neutral: what a preset file stores."""
        neutral = Preset()
        return {k: v for k, v in self.model_dump().items() if v != getattr(neutral, k)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or not self.do_sample


def field_group(name: str) -> str:
    extra = Preset.model_fields[name].json_schema_extra
    return str(extra.get("group", "other")) if isinstance(extra, dict) else "other"


def field_text_kind(name: str) -> str | None:
    """How a list- or dict-valued field is written in a textbox ("quoted", "ids", "json", "lines")."""
    extra = Preset.model_fields[name].json_schema_extra
    return extra.get("text") if isinstance(extra, dict) else None  # type: ignore[return-value]


def field_text(name: str, value: Any) -> Any:
    """A field's value in the form its textbox shows (the validators read that form back)."""
    kind = field_text_kind(name)
    if kind == "quoted":
        return ", ".join(json.dumps(item, ensure_ascii=False) for item in value)
    if kind == "ids":
        return ", ".join(str(i) for i in value)
    if kind == "json":
        return json.dumps({str(k): v for k, v in value.items()}) if value else ""
    if kind == "lines":
        return "\n".join(value)
    return value


def neutral_samplers(preset: Preset) -> Preset:
    """`preset` with every sampler back at neutral; length, seed and token options are kept."""
    keep = {"max_new_tokens", "truncation_length", "seed", "add_bos_token", "skip_special_tokens",
            "custom_stopping_strings", "ban_eos_token", "custom_token_bans", "banned_strings", *CONSTRAINT_KEYS}
    return Preset(**{k: getattr(preset, k) for k in keep})


def docs_table() -> str:
    """The Markdown page `docs/presets.md`, generated from `Preset` (a meta-test keeps it current)."""
    lines = ["# Preset keys", "",
             "Generated from `modules/presets.py` by `python -m modules.presets --docs > docs/presets.md`; "
             "do not edit by hand.", "",
             "A preset file (`presets/NAME.yaml`) stores only the keys that differ from the default. "
             "Key names are text-generation-webui's, so its preset files load as they are.", "",
             "| key | group | type | default | range | description |", "|---|---|---|---|---|---|"]
    for name, field in Preset.model_fields.items():
        lo = hi = None
        for meta in field.metadata:
            lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
            hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
        span = f"{lo} … {hi}" if lo is not None and hi is not None else ""
        annotation = field.annotation
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        default = json.dumps(field.default, ensure_ascii=False)
        desc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {field_group(name)} | {kind} | `{default}` | {span} | {desc} |")
    lines += ["", "`sampler_priority` names: " + ", ".join(f"`{n}`" for n in DEFAULT_PRIORITY) + ".", "",
              "The `constraint` keys (" + ", ".join(f"`{k}`" for k in CONSTRAINT_KEYS) + ") make the reply follow "
              "a grammar, a JSON schema or a regex exactly; at most one is set, a preset file may hold it (a "
              "text-generation-webui preset's `grammar_string` applies), and its rules and errors are in "
              "[api.md](api.md#constrained-output).", ""]
    return "\n".join(lines)


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
    ignored = sorted(k for k in data if k in IGNORED_KEYS)
    if ignored:
        log.info("preset %r: ignoring text-generation-webui keys Parlour has no use for: %s", name, ", ".join(ignored))
    try:
        return Preset.model_validate({k: v for k, v in data.items() if k not in IGNORED_KEYS})
    except ValidationError as exc:
        raise PresetError(_describe(exc, name)) from exc


class PresetStore:
    """The YAML presets in one folder, addressed by name (the file name without `.yaml`).

    `model_defaults` (a small YAML file in user_data) remembers which preset each model starts with.
    """

    def __init__(self, folder: Path, model_defaults: Path | None = None) -> None:
        self.folder = folder
        self.model_defaults_file = model_defaults

    def _model_defaults(self) -> dict[str, str]:
        path = self.model_defaults_file
        if path is None or not path.is_file():
            return {}
        try:
            data = load_yaml(read_text_limited(path, MAX_PRESET_BYTES))
        except (yaml.YAMLError, FileTooLarge, UnicodeDecodeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}

    def model_default(self, model: str) -> str | None:
        """The preset remembered for `model`, if it still exists."""
        name = self._model_defaults().get(model)
        return name if name in self.names() else None

    def set_model_default(self, model: str, preset: str) -> None:
        if self.model_defaults_file is None:
            raise PresetError("this app has no user_data folder to remember per-model presets in")
        self._path(preset)  # the name must be a valid preset name
        data = {**self._model_defaults(), model: preset}
        try:
            atomic_write_text(self.model_defaults_file, yaml.safe_dump(data, sort_keys=True, allow_unicode=True))
        except OSError as exc:
            raise PresetError(f"could not remember the preset for {model!r}: {exc}") from exc

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.yaml") if p.is_file() and not p.is_symlink())

    def problems(self) -> dict[str, str]:
        """{name: why} for every preset file that cannot be used; the others load as usual."""
        return unusable_files(self.names(), self.load, PresetError)

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
        try:
            atomic_write_text(path, yaml.safe_dump(preset.changed(), sort_keys=False) if preset.changed() else "{}\n")
        except OSError as exc:  # disk full, read-only folder: the old file is intact (atomic write)
            raise PresetError(f"preset {name!r} was not saved: {exc}") from exc
        return path

    def delete(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise PresetError(f"preset {name!r} does not exist")
        try:
            path.unlink()
        except OSError as exc:
            raise PresetError(f"preset {name!r} was not deleted: {os_reason(exc)}") from exc


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--docs"]:
        sys.exit("usage: python -m modules.presets --docs > docs/presets.md")
    sys.stdout.write(docs_table())
