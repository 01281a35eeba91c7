"""Constrained output: a reply that follows a JSON schema, a grammar (GBNF or Lark) or a regex, exactly.

A constraint lives in the Preset (`grammar_string`, `json_schema`, `regex`: at most one is set), so it
travels with every request through the one pipeline and can be saved with a preset. This module owns:

- reading it (`constraint_of`) and the one rule for stop strings under a constraint (`stop_strings`);
- compiling it with llguidance (a maintained Rust engine: GBNF->Lark conversion, Lark, regex and JSON
  schema, token masks in microseconds), within a size bound and a 2 s compile budget, with errors that
  say where: the schema path, the grammar's line and column, the unsupported keyword, or that the
  grammar matches nothing at all (`Compiler`, `check`);
- the per-request sampler stage (`ConstraintStage`, in constraint_stage.py: it needs torch, which this
  module does not import, so the server starts without it): one LogitsProcessor that follows the reply token by
  token and sends every token the grammar does not allow next to -inf; the end-of-sequence token is
  allowed only where the grammar may end, and is the only token once it must;
- which kinds each loader supports (`supported_kinds`, from the loader registry's capabilities).

The mask is computed from the tokenizer the model really uses (llguidance reads the Transformers fast
tokenizer itself: byte-level BPE and sentencepiece alike), so a token that spans a grammar boundary
(`"}` or `,"`) is allowed exactly when all of its bytes fit.

JSON whitespace is fixed (`", "` between items, `": "` after keys, nothing else): with llguidance's
default flexible whitespace a weak model can write spaces forever inside an object and never finish.
A schema's own `"x-guidance"` options can turn it back on.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import llguidance
import numpy as np
from llguidance import LLMatcher, LLParserLimits, LLTokenizer
from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark, is_lark_syntax

from modules.presets import CONSTRAINT_KEYS, Preset

if TYPE_CHECKING:
    from modules.constraint_stage import ConstraintStage

#: every kind a loader may declare (the registry's `Capabilities.constraints`)
KINDS = ("json_schema", "gbnf", "lark", "regex")
KIND_NAMES = {"json_schema": "JSON schema", "gbnf": "GBNF grammar", "lark": "Lark grammar", "regex": "regex"}
#: longest a grammar may take to compile before the request is refused (llguidance drops the GIL while it
#: compiles, so a slow one does not stall generation; its own fuel limits bound the work that is left)
COMPILE_SECONDS = 2.0
#: compiled constraints kept per model (the same schema in every request of a client is the usual case)
CACHE_SIZE = 32
JSON_WHITESPACE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_LIMITS = dict(verbose_errors=False)


class ConstraintError(ValueError):
    """A constraint that cannot be used; `reason` says why and where, `key` is the Preset key it came from."""

    def __init__(self, reason: str, key: str = "constraint") -> None:
        super().__init__(f"{key}: {reason}")
        self.reason = reason
        self.key = key


class UnsupportedConstraint(ConstraintError):
    """The loaded backend cannot apply this kind of constraint."""


class ConstraintViolation(RuntimeError):
    """Generation left the constraint (a later stage let a disallowed token through): the reply ends with this."""


@dataclass(frozen=True)
class Constraint:
    """What a reply must follow. `text` is the grammar, the regex, or the schema as JSON text."""

    kind: str
    text: str
    key: str  # the Preset key it came from (for messages)

    @property
    def schema(self) -> Any:
        return json.loads(self.text)


def constraint_of(preset: Preset) -> Constraint | None:
    """The preset's constraint, or None. (Preset's own validation allows at most one key to be set.)"""
    for key in CONSTRAINT_KEYS:
        text = getattr(preset, key)
        if not text:
            continue
        if key == "grammar_string":
            return Constraint("lark" if is_lark_syntax(text) else "gbnf", text, key)
        if key == "json_schema":
            return Constraint("json_schema", text, key)
        return Constraint("regex", text, key)
    return None


def stop_strings(preset: Preset, derived: Sequence[str], free_text: bool = False) -> tuple[str, ...]:
    """The stop strings a reply is cut at: the user's own (`custom_stopping_strings`, which holds a
    request's `stop`) and, unless the reply is constrained, the ones derived from the model and the
    prompt (end-of-turn texts, "\\nYou:"). A constrained reply is cut only where its user asked: a
    template's stop string inside a JSON string must not leave the JSON unfinished. `free_text`: the
    constraint leaves the text free until a tool call starts (modules/tools/forced.py), so the derived
    stop strings still end a reply that makes none."""
    own = tuple(preset.custom_stopping_strings)
    return own if constraint_of(preset) is not None and not free_text else own + tuple(derived)


def supported_kinds(backend: Any) -> frozenset[str]:
    """The constraint kinds a loaded backend applies (its loader's capabilities)."""
    from modules.loaders import registry

    return registry.capabilities(backend).constraints


def require_kind(backend: Any, constraint: Constraint) -> None:
    kinds = supported_kinds(backend)
    if constraint.kind not in kinds:
        offered = ", ".join(KIND_NAMES[k] for k in KINDS if k in kinds) or "none"
        raise UnsupportedConstraint(f"the {getattr(backend, 'loader', 'loaded')} loader does not support "
                              f"{KIND_NAMES[constraint.kind]} constraints (it supports: {offered})", constraint.key)


def check(backend: Any, preset: Preset) -> Constraint | None:
    """Everything that can be wrong with the preset's constraint on this backend, found before generating:
    raises ConstraintError. A backend with its own `check_constraint` (it compiles for its tokenizer or
    engine) decides; otherwise (a remote engine, no model) the constraint is compiled model-free."""
    constraint = constraint_of(preset)
    if constraint is None:
        return None
    if backend is not None:
        require_kind(backend, constraint)
    own = getattr(backend, "check_constraint", None)
    if own is not None:
        own(constraint)
    else:
        Compiler.generic().matcher(constraint)
    return constraint


LABELS = {"grammar_string": "the grammar", "json_schema": "the JSON schema", "regex": "the regex"}


def check_setting(backend: Any, key: str, text: str, in_use: dict[str, str]) -> Constraint | None:
    """The Parameters tab's check of one constraint box before it takes effect: its text as `key`, with
    `in_use` the constraint keys' current values. Raises ConstraintError saying why not (then the box's
    last good value stays); None means the box was cleared."""
    if not text.strip():
        return None
    busy = [k for k in CONSTRAINT_KEYS if k != key and in_use.get(k)]
    if busy:
        raise ConstraintError(f"{LABELS[busy[0]]} is in use: clear it first (a reply follows one constraint "
                              "at a time)", key)
    from pydantic import ValidationError

    try:
        preset = Preset(**{key: text})
    except ValidationError as exc:
        raise ConstraintError(str(exc.errors()[0]["msg"]).removeprefix("Value error, "), key) from exc
    return check(backend, preset)


# -- grammar text ------------------------------------------------------------------------------------
def grammar_of(constraint: Constraint) -> str:
    """llguidance's grammar for the constraint, after the checks that give the clearest messages."""
    if constraint.kind == "json_schema":
        schema = constraint.schema
        if schema is False:
            raise ConstraintError("the JSON schema false matches nothing: no text can satisfy it", constraint.key)
        check_schema(schema, constraint.key)
        return LLMatcher.grammar_from_json_schema({} if schema is True else schema, defaults=JSON_WHITESPACE)
    if constraint.kind == "regex":
        return LLMatcher.grammar_from_regex(constraint.text)
    if constraint.kind == "gbnf":
        return LLMatcher.grammar_from_lark(gbnf_as_lark(constraint.text, constraint.key))
    return LLMatcher.grammar_from_lark(constraint.text)


def gbnf_as_lark(text: str, key: str = "grammar_string") -> str:
    """A GBNF grammar as Lark (llguidance's converter); a syntax error names its line and column."""
    try:
        return gbnf_to_lark(_literal_unicode(text))
    except GbnfToLarkError:
        try:  # locate the error in the text as the user wrote it
            gbnf_to_lark(text)
        except GbnfToLarkError as exc:
            line, column = line_column(text, exc.pos.pos)
            message = str(exc).split(" at line ")[0]
            raise ConstraintError(f"line {line}, column {column}: {message}", key) from exc
        raise
    except Exception as exc:  # the converter's own checks (undefined rule, no root rule) raise plain Exception
        raise ConstraintError(_rule_located(text, str(exc)), key) from exc


_UNICODE_ESCAPE = re.compile(r"(\\\\)|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})")


def _literal_unicode(gbnf: str) -> str:
    """GBNF's `\\uXXXX` / `\\UXXXXXXXX` escapes as the characters themselves (`\\xHH` below U+0080).
    llguidance 1.9's converter drops their leading zeros (`\\u0080` becomes `\\u80`), which its regex engine
    then refuses; llama.cpp's own JSON grammars use such ranges."""
    def replace(match: re.Match) -> str:
        if match.group(1):
            return match.group(1)  # an escaped backslash: the "u" after it is a plain letter
        code = int(match.group(2) or match.group(3), 16)
        if code < 0x80:
            return f"\\x{code:02x}"
        if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            return match.group(0)  # not a character: left for the converter to refuse
        return chr(code)
    return _UNICODE_ESCAPE.sub(replace, gbnf)


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _rule_located(gbnf: str, message: str) -> str:
    """`message`, with the line of the GBNF rule it names (llguidance names rules, not places)."""
    named = re.search(r"Rule '([^']+)'", message)
    if named:
        for number, line in enumerate(gbnf.splitlines(), 1):
            if re.search(rf"\b{re.escape(named.group(1))}\b", line):
                return f"line {number}: {message}"
    return message


_NAMED_SCHEMAS = {"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"}
_VALUES = {"enum", "const", "default", "examples"}


def check_schema(schema: Any, key: str = "json_schema") -> None:
    """A JSON schema that is not one (by its own draft's meta-schema) is refused naming the path."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ConstraintError(f"a JSON schema is an object (or true/false), not {type(schema).__name__}", key)
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import best_match

    cls = validators.validator_for(schema, default=Draft202012Validator)
    error = best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise ConstraintError(f"invalid JSON schema at {pointer(error.absolute_path)}: {error.message}", key)


def pointer(parts: Iterable[Any]) -> str:
    """A JSON pointer ("/properties/a~1b/type") for a path."""
    text = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return text or "/"


def schema_nodes(schema: Any, path: tuple = ()) -> Iterable[tuple[tuple, dict[str, Any]]]:
    """Every subschema (a dict in schema position: not a property name, not a value in enum/const) with its path."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from schema_nodes(item, (*path, i))
        return
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, value in schema.items():
        if name in _VALUES:
            continue
        if name in _NAMED_SCHEMAS and isinstance(value, dict):
            for child, sub in value.items():
                yield from schema_nodes(sub, (*path, name, child))
        else:
            yield from schema_nodes(value, (*path, name))


def keyword_path(schema: Any, keyword: str) -> str | None:
    """Where `keyword` is used as a keyword in the schema (not as a property name), as a JSON pointer."""
    return next((pointer(path) for path, node in schema_nodes(schema) if keyword in node), None)


# -- llguidance's messages -----------------------------------------------------------------------------
def describe(constraint: Constraint, error: str) -> str:
    """llguidance's (multi-line) error as one line saying where, in the user's own text."""
    unimplemented = re.search(r"Unimplemented keys: \[(.*?)\]", error)
    if unimplemented and constraint.kind == "json_schema":
        names = re.findall(r'"([^"]+)"', unimplemented.group(1))
        where = keyword_path(constraint.schema, names[0]) if names else None
        listed = ", ".join(repr(n) for n in names)
        return (f"unsupported JSON schema keyword {listed}" + (f" at {where}" if where else "")
                + " (constrained decoding cannot enforce it; remove it or describe the value in the prompt)")
    regex = re.search(r"regex parse error:\n(?P<src>[^\n]*)\n(?P<caret>[^\n]*\^)[^\n]*\nerror: (?P<why>[^\n]*)", error)
    if regex:
        column = len(regex.group("caret")) - (len(regex.group("src")) - len(regex.group("src").lstrip()))
        snippet = regex.group("src").strip()
        if constraint.kind == "regex":
            return f"invalid regex at column {column}: {regex.group('why')}"
        return f"{_lark_place(constraint, error)}invalid regex /{snippet}/: {regex.group('why')} (at its column {column})"
    first = error.strip().splitlines()[0] if error.strip() else "invalid constraint"
    place = re.match(r"at (\d+)\((\d+)\): (.*)", first)
    return _lark_place(constraint, error) + place.group(3) if place else first


def _lark_place(constraint: Constraint, error: str) -> str:
    """Where a Lark-level error sits in the user's grammar, as a prefix: its line and column for Lark, the rule
    and its line for GBNF (which was converted to Lark first, so only the rule name carries over)."""
    place = re.search(r"at (\d+)\((\d+)\)", error)
    if place is None or constraint.kind not in ("lark", "gbnf"):
        return ""
    line, column = int(place.group(1)), int(place.group(2))
    if constraint.kind == "lark":
        return f"line {line}, column {column}: "
    lark_lines = gbnf_as_lark(constraint.text, constraint.key).splitlines()
    rule = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*:", lark_lines[line - 1]) if line <= len(lark_lines) else None
    if rule is None:
        return ""
    wanted = rule.group(1).lower().replace("_", "")
    wanted = "root" if wanted == "start" else wanted
    for number, text in enumerate(constraint.text.splitlines(), 1):
        head = re.match(r"\s*([A-Za-z0-9_-]+)\s*::=", text)
        if head and head.group(1).lower().replace("-", "").replace("_", "") == wanted:
            return f"in rule {head.group(1)} (line {number}): "
    return ""


# -- compiling -------------------------------------------------------------------------------------------
def unpack(mask: bytes) -> np.ndarray:
    """llguidance's bitmask (bit i of the little-endian words = token i allowed) as one 0/1 byte per token."""
    return np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")


class _Bytes:
    """A tokenizer of single bytes (plus an end token), for checking a grammar without a model."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]
    special_token_ids = [256]

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode("utf-8"))


class _Vocabulary:
    """A model's vocabulary for llguidance.TokenizerWrapper: each token's bytes, which are special."""

    bos_token_id = None

    def __init__(self, tokenizer: LLTokenizer, special: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token
        self.tokens = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
        self.special_token_ids = list(special)

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.tokenize_bytes(text)


def _as_text_tokens(tokenizer: LLTokenizer, hf_tokenizer: Any) -> LLTokenizer:
    """`tokenizer` with the added tokens the model's tokenizer marks not special (Qwen3's and the demo
    model's "<think>") as the text they spell. llguidance takes every added token for a special one,
    yet its masks let such a token write the same text: a grammar whose text holds "<think>" (a JSON
    string the model fills) allowed that token and then refused it, and the reply failed. Unchanged
    (and not rebuilt: that reads the whole vocabulary) when there is no such token."""
    plain = {i for i, added in getattr(hf_tokenizer, "added_tokens_decoder", {}).items()
             if not added.special and i < tokenizer.vocab_size and tokenizer.is_special_token(i)}
    if not plain:
        return tokenizer
    special = [i for i in range(tokenizer.vocab_size) if i not in plain and tokenizer.is_special_token(i)]
    return LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer, special)), n_vocab=tokenizer.vocab_size,
                       eos_token=list(tokenizer.eos_tokens))


class Compiler:
    """Compiles constraints for one tokenizer and keeps the last CACHE_SIZE compiled ones.

    A compiled constraint is kept as an LLMatcher that has read nothing; each request gets a deep copy
    (microseconds), so the same schema in many requests compiles once.
    """

    def __init__(self, tokenizer: LLTokenizer, cache_size: int = CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[tuple[str, str], LLMatcher] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, hf_tokenizer: Any, eos_token_ids: Sequence[int], vocab_size: int | None = None) -> "Compiler":
        """The compiler for a Transformers tokenizer (the model's own: its vocabulary and byte mapping)."""
        import llguidance.hf

        try:
            n_vocab = max(vocab_size or 0, len(hf_tokenizer)) or None
            tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=n_vocab,
                                                     eos_token=list(eos_token_ids) or None)
        except ValueError as exc:
            raise ConstraintError(f"constrained output needs a fast (tokenizers) tokenizer; this model has "
                                  f"{type(hf_tokenizer).__name__}") from exc
        return cls(_as_text_tokens(tokenizer, hf_tokenizer))

    @classmethod
    def generic(cls) -> "Compiler":
        """A model-free compiler (single bytes): every check but the model's own vocabulary."""
        return cls(LLTokenizer(llguidance.TokenizerWrapper(_Bytes())), cache_size=0)

    def matcher(self, constraint: Constraint) -> LLMatcher:
        """A fresh matcher for `constraint` (compiled now, or copied from the cache)."""
        key = (constraint.kind, constraint.text)
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                return template.deep_copy()
        template = self._compile(constraint)
        if self.cache_size:
            with self._lock:
                self._cache[key] = template
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return template.deep_copy()

    def stage(self, constraint: Constraint, prompt_length: int, wait_for: Sequence[int] = (),
              ends: Sequence[int] = ()) -> "ConstraintStage":
        from modules.constraint_stage import ConstraintStage  # torch: imported with the first model, not at start

        return ConstraintStage(self.matcher(constraint), prompt_length, wait_for, ends)

    def _compile(self, constraint: Constraint) -> LLMatcher:
        grammar = grammar_of(constraint)
        built: dict[str, LLMatcher] = {}

        def build() -> None:
            matcher = LLMatcher(self.tokenizer, grammar, log_level=0, limits=LLParserLimits(**_LIMITS))
            # the first mask builds the lexer (part of compiling) and says whether any text can start
            built["mask"] = None if matcher.is_error() else matcher.compute_bitmask()
            built["matcher"] = matcher

        worker = threading.Thread(target=build, name="compile-constraint", daemon=True)
        worker.start()
        worker.join(COMPILE_SECONDS)
        if worker.is_alive():
            raise ConstraintError(f"the {KIND_NAMES[constraint.kind]} took longer than {COMPILE_SECONDS:g} s to "
                                  "compile; make it smaller or simpler", constraint.key)
        if "matcher" not in built:  # llguidance raised (it reports grammar errors in the matcher, not so)
            raise ConstraintError(f"the {KIND_NAMES[constraint.kind]} could not be compiled", constraint.key)
        matcher = built["matcher"]
        nothing = ConstraintError(f"the {KIND_NAMES[constraint.kind]} matches nothing: no text can satisfy it",
                                  constraint.key)
        if matcher.is_error():
            raise nothing if matcher.get_error().startswith("NoExtension") else \
                ConstraintError(describe(constraint, matcher.get_error()), constraint.key)
        bits = unpack(built["mask"])
        bits[list(self.tokenizer.eos_tokens)] = 0
        if not bits.any():
            if matcher.is_accepting():
                raise ConstraintError(f"the {KIND_NAMES[constraint.kind]} matches only an empty reply", constraint.key)
            raise nothing
        return matcher


# -- the sampler stage -------------------------------------------------------------------------------------
