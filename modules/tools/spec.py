"""The tools a request offers and its `tool_choice`, in OpenAI's shapes, checked before anything is generated.

    tools = read_tools([{"type": "function", "function": {"name": "add", "parameters": {...}}}])
    choice = read_choice("required", tools)          # or "auto", "none", {"type": "function", ...}

A `ToolError` names the request field (`tools[1].function.parameters`) and the tool, so the API answers
400 with both.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

#: OpenAI's rule for function names
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 4096
EMPTY_OBJECT = {"type": "object", "properties": {}}


class ToolError(ValueError):
    """A tool definition, tool choice or tool message that cannot be used; `param` is the request field."""

    def __init__(self, message: str, param: str = "tools") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    """One function tool: its name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: Any = None  # a JSON schema (an object schema); None: no arguments
    strict: bool = False

    @property
    def schema(self) -> dict[str, Any]:
        return self.parameters if isinstance(self.parameters, dict) else dict(EMPTY_OBJECT)

    def openai(self) -> dict[str, Any]:
        """The OpenAI (and Hugging Face chat template) shape: {"type": "function", "function": {...}}."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.schema
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


def read_tools(items: Any) -> tuple[Tool, ...]:
    """OpenAI `tools` as Tools; ToolError naming the field and the tool for anything invalid."""
    from modules.constraints import ConstraintError, check_schema

    if items is None:
        return ()
    if not isinstance(items, list):
        raise ToolError("tools must be a list of function tools")
    if len(items) > MAX_TOOLS:
        raise ToolError(f"at most {MAX_TOOLS} tools, not {len(items)}")
    tools: list[Tool] = []
    for i, item in enumerate(items):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise ToolError(f"{where}: only tools of type 'function' are supported", where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise ToolError(f"{where}.function must be an object with a name", f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolError(f"{where}.function.name must be 1-64 letters, digits, _ or -, not {name!r}",
                            f"{where}.function.name")
        if any(t.name == name for t in tools):
            raise ToolError(f"{where}: two tools are named {name!r}", f"{where}.function.name")
        description = function.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise ToolError(f"tool {name!r}: description must be text of at most {MAX_DESCRIPTION_CHARS} characters",
                            f"{where}.function.description")
        parameters = function.get("parameters")
        param = f"{where}.function.parameters"
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise ToolError(f"tool {name!r}: parameters must be a JSON schema object", param)
            if parameters.get("type", "object") != "object":
                raise ToolError(f"tool {name!r}: parameters must describe an object (type 'object')", param)
            try:
                check_schema(parameters, param)
            except ConstraintError as exc:
                raise ToolError(f"tool {name!r}: {exc.reason}", param) from exc
        strict = function.get("strict") or False
        if not isinstance(strict, bool):
            raise ToolError(f"tool {name!r}: strict must be true or false", f"{where}.function.strict")
        tools.append(Tool(name, description, parameters, strict))
    return tuple(tools)


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (the model decides), `none` (no calls), `required` (at least one call) or `function` (that one)."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str = ""

    @property
    def forced(self) -> bool:
        """The reply must be a call: it is generated under the calls' grammar (formats.call_grammar)."""
        return self.mode in ("required", "function")


AUTO = ToolChoice()


def read_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    """OpenAI `tool_choice` (None: "auto" when there are tools) as a ToolChoice; ToolError for a bad one."""
    if value is None:
        return AUTO if tools else ToolChoice("none")
    if value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise ToolError("tool_choice 'required' needs tools", "tool_choice")
        return ToolChoice(value)
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise ToolError("tool_choice.function.name is required", "tool_choice.function.name")
        if not any(t.name == name for t in tools):
            known = ", ".join(t.name for t in tools) or "none"
            raise ToolError(f"tool_choice names the function {name!r}, which is not in tools (tools: {known})",
                            "tool_choice.function.name")
        return ToolChoice("function", name)
    raise ToolError("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                    "\"function\": {\"name\": ...}}", "tool_choice")


@dataclass(frozen=True)
class ToolUse:
    """What a request says about tools: those offered, which the model may call, several at once or not."""

    tools: tuple[Tool, ...] = ()
    choice: ToolChoice = ToolChoice("none")
    parallel: bool = True

    @property
    def active(self) -> bool:
        """The model is shown the tools and its answer is read for calls."""
        return bool(self.tools) and self.choice.mode != "none"

    def offered(self) -> list[dict[str, Any]]:
        """The tools as a chat template's `tools` variable (OpenAI's shapes)."""
        return [t.openai() for t in self.tools]


def tool_use(tools: Any, choice: Any = None, parallel: bool = True) -> ToolUse:
    """A request's `tools`, `tool_choice` and `parallel_tool_calls`, checked (ToolError naming the field)."""
    read = read_tools(list(tools) if isinstance(tools, tuple) else tools)
    return ToolUse(read, read_choice(choice, read), bool(parallel))


def new_call_id(length: int = 24) -> str:
    """A fresh call id ("call_" and random letters and digits, as OpenAI's look)."""
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(length))


def arguments_value(arguments: str) -> Any:
    """A call's arguments text as a value for a chat template (Hugging Face templates expect a mapping);
    text that is not a JSON object stays text."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments
    return value if isinstance(value, dict) else arguments
