"""How model families write tool calls, read back from the answer (after reasoning was split off).

| format | what the model writes | whose |
|---|---|---|
| `hermes` | `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`, one block per call | Hermes 2 Pro, Qwen 2.5 / 3, and other ChatML tool templates |
| `llama3` | `{"name": "f", "parameters": {...}}` (optionally after `<\\|python_tag\\|>`), `;` between calls | Llama 3.1 / 3.2 / 3.3 |
| `mistral` | `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` | Mistral 7B v0.3, Nemo, Small (v3 tokenizers) |
| `mistral-args` | `[TOOL_CALLS]f[ARGS]{...}`, once per call | Mistral Small 3.2, Magistral, Devstral (v11+ templates) |
| `generic` | the `hermes` markup, which the generic tool prompt (modules/tools/prompt.py) asks for | templates that are not tool-aware |

Which one: `detect(template_source)` reads the markers the model's own template writes. Every format also
accepts, as a fallback, an answer that is nothing but a JSON call object (or a list of them): weak models
drop the markers. A call must name one of the request's tools and carry JSON-object arguments; anything
else means the answer is not a call, and the whole text stays content (never an error).

Arguments are kept as the JSON text the model wrote (OpenAI's `arguments` is text), so the streamed
fragments (modules/tools/stream.py) add up to exactly what a non-streamed reply returns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from modules.tools.spec import Tool, ToolChoice

Style = Literal["blocks", "bare", "array", "name-args"]
ARGUMENT_KEYS = ("arguments", "parameters")
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


@dataclass(frozen=True)
class CallFormat:
    name: str
    #: the text that opens a call (blocks, name-args) or the calls (array); "" for bare JSON
    start: str
    #: the text that closes each call (blocks); "" where nothing does
    end: str = ""
    style: Style = "blocks"
    #: the key the family's prompt names for the arguments (both keys are read back)
    args_key: str = "arguments"
    #: text the model may write before bare calls (Llama's `<|python_tag|>`)
    prefix: str = ""
    between: str = "\n"  # what separates two calls in a reply written by Parlour (history, forced calls)


HERMES = CallFormat("hermes", "<tool_call>", "</tool_call>")
GENERIC = CallFormat("generic", "<tool_call>", "</tool_call>")
LLAMA3 = CallFormat("llama3", "", style="bare", args_key="parameters", prefix="<|python_tag|>", between="; ")
MISTRAL = CallFormat("mistral", "[TOOL_CALLS]", style="array")
MISTRAL_ARGS = CallFormat("mistral-args", "[TOOL_CALLS]", style="name-args", between="")
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC)}
#: every marker a call format reads: a model whose tokenizer makes one of them a special token (Mistral's
#: `[TOOL_CALLS]`, `[ARGS]`) must still have it decoded into the reply, or the parser cannot see the call
MARKERS = tuple(dict.fromkeys(m for f in FORMATS.values() for m in (f.start, f.end, f.prefix) if m)) + ("[ARGS]",)


def detect(template_source: str | None) -> CallFormat:
    """The call format a chat template teaches its model (GENERIC when it shows none)."""
    source = template_source or ""
    if "[TOOL_CALLS]" in source:
        return MISTRAL_ARGS if "[ARGS]" in source else MISTRAL
    if "<tool_call>" in source:
        return HERMES
    if "<|python_tag|>" in source or ("<|start_header_id|>" in source and '"parameters"' in source):
        return LLAMA3
    return GENERIC


# -- reading calls --------------------------------------------------------------------------------------
class Malformed(ValueError):
    """The text starts a call but is not one."""


@dataclass
class RawCall:
    """A call as read so far: its name once that string is whole, its arguments' JSON text so far."""

    name: str | None = None
    arguments: str = ""
    #: the arguments' text is final (its JSON value ended)
    arguments_done: bool = False
    #: the whole call is read (its JSON and the format's closing text)
    complete: bool = False


@dataclass
class Scan:
    calls: list[RawCall] = field(default_factory=list)
    #: where the text after the calls starts (None while the calls may go on)
    rest: int | None = None


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _read_object(text: str, pos: int) -> tuple[RawCall, int | None]:
    """A call object `{"name": ..., "arguments": ...}` at `pos`: (the call, where it ends or None if the text
    ends first). Raises Malformed for what cannot become one."""
    call = RawCall()
    pos += 1  # the "{"
    while True:
        pos = _skip(text, pos)
        if pos >= len(text):
            return call, None
        if text[pos] == "}":
            call.complete = True
            if not call.arguments_done:
                call.arguments, call.arguments_done = "{}", True
            return call, pos + 1
        if text[pos] != '"':
            raise Malformed(f"expected a key at {pos}")
        try:
            key, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return call, None  # a key still being written
        pos = _skip(text, pos)
        if pos >= len(text):
            return call, None
        if text[pos] != ":":
            raise Malformed(f"expected ':' at {pos}")
        pos = _skip(text, pos + 1)
        if pos >= len(text):
            return call, None
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            if key in ARGUMENT_KEYS and text[pos] == "{":
                call.arguments = text[pos:]  # an object still being written: its text so far
            return call, None
        if key == "name":
            if not isinstance(value, str):
                raise Malformed("a call's name is text")
            call.name = value
        elif key in ARGUMENT_KEYS and not call.arguments_done:
            if isinstance(value, str):  # arguments sent as JSON text (some models do)
                try:
                    inner = json.loads(value) if value.strip() else {}
                except json.JSONDecodeError as exc:
                    raise Malformed("arguments are not JSON") from exc
                if not isinstance(inner, dict):
                    raise Malformed("arguments are not an object")
                call.arguments = value.strip() or "{}"
            elif isinstance(value, dict):
                call.arguments = text[pos:end]
            else:
                raise Malformed("arguments are not an object")
            call.arguments_done = True
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] != "}":
            raise Malformed(f"expected ',' or '}}' at {pos}")


def _next_call(scan: Scan, text: str, pos: int) -> int | None:
    """Read the call object at `pos` into `scan`: where it ends, or None when the text ends first."""
    if text[pos] != "{":
        raise Malformed("a call is a JSON object")
    call, end = _read_object(text, pos)
    scan.calls.append(call)
    return end


def _is_prefix(text: str, pos: int, marker: str) -> bool:
    """The text from `pos` on is the beginning of `marker` (it may still become it)."""
    tail = text[pos:]
    return len(tail) < len(marker) and marker.startswith(tail)


def _scan_blocks(fmt: CallFormat, text: str, pos: int) -> Scan:
    scan = Scan()
    while True:
        pos = _skip(text, pos)
        if not text.startswith(fmt.start, pos):
            if pos >= len(text) or _is_prefix(text, pos, fmt.start):
                return scan  # another call may follow
            scan.rest = pos
            return scan
        pos = _skip(text, pos + len(fmt.start))
        if pos >= len(text):
            scan.calls.append(RawCall())
            return scan
        end = _next_call(scan, text, pos)
        if end is None:
            return scan
        pos = _skip(text, end)
        if text.startswith(fmt.end, pos):
            pos += len(fmt.end)
        elif pos >= len(text) or _is_prefix(text, pos, fmt.end):
            scan.calls[-1].complete = False  # the closing marker is to come (a reply ending here reads as closed)
            return scan
        else:
            raise Malformed("a call block is not closed")


def _scan_bare(fmt: CallFormat, text: str, pos: int) -> Scan:
    scan = Scan()
    if fmt.prefix and text.startswith(fmt.prefix, pos):
        pos += len(fmt.prefix)
    first = True
    while True:
        pos = _skip(text, pos)
        if not first and pos < len(text) and text[pos] == ";":
            pos = _skip(text, pos + 1)
        if pos >= len(text):
            if first:
                scan.calls.append(RawCall())
            return scan
        if text[pos] != "{" and not first:
            scan.rest = pos
            return scan
        end = _next_call(scan, text, pos)
        if end is None:
            return scan
        pos, first = end, False


def _scan_array(fmt: CallFormat, text: str, pos: int) -> Scan:
    scan = Scan()
    pos = _skip(text, pos + len(fmt.start))
    if pos >= len(text):
        scan.calls.append(RawCall())
        return scan
    if text[pos] == "{":  # a single call without the list
        scan.rest = _next_call(scan, text, pos)
        return scan
    if text[pos] != "[":
        raise Malformed("[TOOL_CALLS] is followed by a list of calls")
    pos += 1
    while True:
        pos = _skip(text, pos)
        if pos >= len(text):
            if not scan.calls:
                scan.calls.append(RawCall())
            else:
                scan.calls[-1].complete = False  # the list may go on
            return scan
        if text[pos] == "]" and scan.calls:
            scan.rest = pos + 1
            return scan
        if scan.calls:
            if text[pos] != ",":
                raise Malformed("calls in the list are separated by ','")
            pos = _skip(text, pos + 1)
            if pos >= len(text):
                scan.calls[-1].complete = False
                return scan
        end = _next_call(scan, text, pos)
        if end is None:
            return scan
        pos = end


_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]*")


def _scan_name_args(fmt: CallFormat, text: str, pos: int) -> Scan:
    scan = Scan()
    while True:
        pos = _skip(text, pos) if scan.calls else pos
        if not text.startswith(fmt.start, pos):
            if pos >= len(text) or _is_prefix(text, pos, fmt.start):
                return scan
            scan.rest = pos
            return scan
        pos += len(fmt.start)
        name = _FUNCTION_NAME.match(text, pos).group(0)
        after = pos + len(name)
        call = RawCall()
        scan.calls.append(call)
        if not text.startswith("[ARGS]", after):
            if after >= len(text) or _is_prefix(text, after, "[ARGS]"):
                return scan
            raise Malformed("a call's name is followed by [ARGS]")
        call.name = name
        pos = _skip(text, after + len("[ARGS]"))
        if pos >= len(text):
            return scan
        if text[pos] != "{":
            raise Malformed("arguments are a JSON object")
        try:
            end = _DECODER.raw_decode(text, pos)[1]
        except json.JSONDecodeError:
            call.arguments = text[pos:]
            return scan
        call.arguments, call.arguments_done, call.complete = text[pos:end], True, True
        pos = end


_SCANNERS: dict[str, Callable[[CallFormat, str, int], Scan]] = {
    "blocks": _scan_blocks, "bare": _scan_bare, "array": _scan_array, "name-args": _scan_name_args}
_BARE_START = re.compile(r'\{\s*"name"\s*:')


def call_start(fmt: CallFormat, text: str) -> tuple[int, CallFormat] | None:
    """Where the calls begin in `text`, and in which format (the fallback reads a leading bare JSON call)."""
    if fmt.style == "bare":
        tag = text.find(fmt.prefix) if fmt.prefix else -1
        found = _BARE_START.search(text)
        hits = [i for i in (tag, found.start() if found else -1) if i >= 0]
        if hits:
            return min(hits), fmt
    elif fmt.start and (i := text.find(fmt.start)) >= 0:
        return i, fmt
    lead = _skip(text, 0)
    if lead < len(text) and text[lead] in "{[":
        return lead, FALLBACK
    return None


def may_start(fmt: CallFormat, text: str) -> int:
    """How many characters at the end of `text` could still grow into the start of a call (held back)."""
    if not text.strip():
        return len(text)  # a bare call may still come first
    markers = [m for m in (fmt.start, fmt.prefix) if m]
    keep = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), keep, -1):
            if text.endswith(marker[:n]):
                keep = n
                break
    if fmt.style == "bare":
        brace = text.rfind("{")
        if brace >= 0 and re.fullmatch(r'\{\s*("(n(a(m(e("\s*)?)?)?)?)?)?', text[brace:]):
            keep = max(keep, len(text) - brace)
    return keep


# The fallback: a whole answer that is a JSON call object or a list of them.
FALLBACK = CallFormat("json", "", style="bare")


def _scan_fallback(text: str, pos: int) -> Scan:
    if text[pos] == "{":
        return _scan_bare(FALLBACK, text, pos)
    scan = _scan_array(CallFormat("json-list", ""), text, pos)
    return scan


def scan(fmt: CallFormat, text: str, pos: int) -> Scan:
    """The calls from `pos` (where `call_start` found them) to where the text after them begins."""
    if fmt is FALLBACK:
        return _scan_fallback(text, pos)
    return _SCANNERS[fmt.style](fmt, text, pos)


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class Parsed:
    """A finished answer: the words (content) and the calls."""

    content: str
    calls: tuple[ParsedCall, ...] = ()


def join_content(before: str, after: str) -> str:
    """The content of an answer with calls: its words before the calls and any after them."""
    before, after = before.rstrip(), after.strip()
    return before + ("\n\n" if before and after else "") + after


def parse(fmt: CallFormat, text: str, tools: tuple[Tool, ...]) -> Parsed:
    """A finished answer's calls and content. Not a valid call to one of `tools`: all of it is content."""
    found = call_start(fmt, text)
    if found is None:
        return Parsed(text)
    start, used = found
    try:
        result = scan(used, text, start)
    except Malformed:
        return Parsed(text)
    names = {t.name for t in tools}
    calls = []
    for call in result.calls:
        if call.name is None or call.name not in names or not call.arguments_done:
            return Parsed(text)
        if not _is_object(call.arguments):
            return Parsed(text)
        calls.append(ParsedCall(call.name, call.arguments))
    if not calls:
        return Parsed(text)
    after = text[result.rest:] if result.rest is not None else ""
    if used is FALLBACK and after.strip():
        return Parsed(text)  # JSON followed by words is an answer that shows JSON, not a call
    return Parsed(join_content(text[:start], after), tuple(calls))


def _is_object(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except json.JSONDecodeError:
        return False


# -- writing calls (history for templates that are not tool-aware, forced calls) --------------------------
def render_call(fmt: CallFormat, name: str, arguments: str) -> str:
    """One call as the format's text."""
    args = arguments.strip() or "{}"
    if fmt.style == "name-args":
        return f"{fmt.start}{name}[ARGS]{args}"
    body = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "{fmt.args_key}": {args}}}'
    if fmt.style == "blocks":
        return f"{fmt.start}\n{body}\n{fmt.end}"
    if fmt.style == "array":
        return f"{fmt.start}[{body}]"
    return body


def render_calls(fmt: CallFormat, calls: list[tuple[str, str]]) -> str:
    if fmt.style == "array" and calls:
        bodies = [render_call(fmt, n, a)[len(fmt.start) + 1:-1] for n, a in calls]
        return f"{fmt.start}[{', '.join(bodies)}]"
    return fmt.between.join(render_call(fmt, n, a) for n, a in calls)


#: what a JSON value inside a forced call may look like (llguidance's options, as modules/constraints.py)
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


SAFE_INTEGER = 2**53 - 1


def closed(schema: Any, bound_integers: bool = True) -> Any:
    """The schema with every object that lists its properties closed to others and every integer bounded
    (where the schema does not say): a forced call writes the arguments the tool names, not keys or digits
    of its own forever. What it writes still validates against the tool's own schema. (llama.cpp's schema
    converter takes no integer bounds: `bound_integers=False`.)"""
    if isinstance(schema, list):
        return [closed(s, bound_integers) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v, bound_integers) if k not in ("enum", "const", "default", "examples", "properties") else v)
           for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):  # names there are property names, not keywords
        out["properties"] = {name: closed(sub, bound_integers) for name, sub in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    if bound_integers and out.get("type") == "integer":  # digits end: JSON's safe integers (most clients read them exactly)
        out.setdefault("minimum", -SAFE_INTEGER)
        out.setdefault("maximum", SAFE_INTEGER)
    return out


def _call_schema(fmt: CallFormat, tool: Tool) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": tool.name}, fmt.args_key: closed(tool.schema)},
            "required": ["name", fmt.args_key], "additionalProperties": False, "x-guidance": _JSON_STYLE}


def call_grammar(fmt: CallFormat, tools: tuple[Tool, ...], choice: ToolChoice, literal: Callable[[str], str],
                 think: str = "", lazy: bool = False, parallel: bool = True) -> str:
    """A Lark grammar (llguidance's dialect) for calls written the way `fmt`'s parser reads them, whose
    arguments follow the tools' schemas.

    Forced (`lazy=False`): the reply is exactly one call, to the chosen tool (any of `tools` for `required`).
    Lazy (`auto`): the reply is free text, or free text up to the format's start marker and then calls
    (several when `parallel`) and nothing after them: the call is constrained once the model starts one,
    as llama.cpp's lazy grammars do. Needs a start marker (not the bare-JSON Llama format).

    `literal(text)` gives a marker as a grammar item (a quoted string, or the model's own single token for
    it); `think` is an item that lets the model finish a reasoning block its prompt opened, before anything."""
    chosen = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    rules, names = [], []
    for i, tool in enumerate(chosen):
        names.append(f"call_{i}")
        if fmt.style == "name-args":  # the start marker belongs to each call: it is the head below
            args = {**closed(tool.schema), "x-guidance": _JSON_STYLE}
            rules.append(f"call_{i}: {json.dumps(tool.name)} {literal('[ARGS]')} %json {json.dumps(args)}")
        else:
            rules.append(f"call_{i}: %json {json.dumps(_call_schema(fmt, tool))}")
    call = "(" + " | ".join(names) + ")"
    if fmt.style == "blocks":
        body = f'"\\n" {call} "\\n" {literal(fmt.end)}'
    elif fmt.style == "array":
        body = f'"[" {call} ' + (f'(", " {call})* ' if lazy and parallel else "") + '"]"'
    elif fmt.style == "name-args":
        body = call
    else:
        body = call  # bare JSON: no marker
    head = literal(fmt.start) if fmt.start else ""
    prefix = f"{think} " if think else ""
    if not lazy:
        rules.insert(0, f"start: {prefix}{head} {body}".replace("  ", " "))
        return "\n".join(rules) + "\n"
    if not head:
        raise ValueError(f"the {fmt.name} format has no start marker to trigger on")
    more = f'(/\\n{{0,2}}/ {head} {body})*' if parallel and fmt.style != "array" else ""
    calls = f"{body} {more} /\\n?/"
    if head.startswith("<["):  # the marker is a token of its own: free text cannot hold it
        rules[:0] = [f"start: {prefix}TEXT ({head} {calls})?", "TEXT: /(?s:.*)/"]
    else:
        rules[:0] = [f"start: {prefix}(FREE | before {calls})",
                     f"FREE: /(?s:.*)/ & ~/(?s:.*{_regex(fmt.start)}.*)/",
                     f"before[stop={json.dumps(fmt.start)}]: /(?s:.*)/"]
    return "\n".join(rules) + "\n"


def _regex(text: str) -> str:
    """`text` as a literal inside a Lark /regex/."""
    return re.sub(r"([\\^$.|?*+()\[\]{}/])", r"\\\1", text)
