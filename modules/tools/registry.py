"""The tools a chat can use: one registry per App, holding built-ins, user tool files and MCP tools.

    registry = ToolRegistry.from_settings(settings, extensions)
    registry.schemas(["calculator"])            # OpenAI function tools, for GenerationRequest.tools
    result = registry.call("calculator", '{"expression": "2+2"}')
    result.content, result.error, result.seconds  # "4", False, 0.0001

A `Tool` is an OpenAI function schema (name, description, JSON-schema parameters) and how it runs.
Whatever a tool does — raise, hang, answer 100 MB, get arguments that are not JSON — `call` returns
a `ToolResult` (an error one when it failed), never an exception: the result goes back to the model,
which may try again, and the chat goes on.

Only the operator adds tools (files in `user_data/tools/`, servers in `user_data/mcp.json`, the
Session tab for admins); users pick which of them a chat may use.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

#: the most text a tool's result may send back to the model (the rest is cut, and the model told)
MAX_RESULT_CHARS = 10 * 1024 * 1024
#: room for the note a cut result ends with
NOTE_ROOM = 200
#: the most text of arguments a call may carry
MAX_ARGUMENT_CHARS = 1024 * 1024


class ToolFailed(Exception):
    """A tool failed in a way worth telling the model in one line (bad arguments, a limit)."""


@dataclass(frozen=True)
class ToolResult:
    content: str
    error: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Tool:
    """One tool: its OpenAI function schema and how it runs.

    `run(arguments) -> str` gets the parsed arguments (a dict) and returns the text for the model;
    it may raise (the message becomes an error result). `timeout` is enforced by `run` itself where
    the tool runs outside this process (user files, MCP); built-ins are bounded by construction.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], str] = field(compare=False)
    #: "builtin", "file" (user_data/tools) or "mcp" (an MCP server)
    source: str = "builtin"
    #: where it comes from, for people: the file, or the MCP server's name
    origin: str = ""
    #: ask the user before each call unless they said "always" (on for code the operator added)
    confirm: bool = False
    #: how people see it (an MCP tool: `server.tool`); the model sees `name`
    title: str = ""

    @property
    def label(self) -> str:
        return self.title or self.name

    def schema(self) -> dict[str, Any]:
        """The tool as OpenAI's `tools` list holds it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def parse_arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """The call's arguments as a dict; ToolFailed with a line the model can act on otherwise."""
    if isinstance(arguments, dict):
        return arguments
    text = (arguments or "").strip()
    if not text:
        return {}
    if len(text) > MAX_ARGUMENT_CHARS:
        raise ToolFailed(f"the arguments are {len(text):,} characters; the limit is {MAX_ARGUMENT_CHARS:,}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolFailed(f"the arguments are not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise ToolFailed(f"the arguments must be a JSON object, not {type(value).__name__}")
    return value


def truncate(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """`text`, cut to `limit` characters with a note saying so (the model must know it lacks the rest).
    A text at most a note longer than the limit passes: it was cut already (a tool file's subprocess
    cuts its own result before sending it)."""
    if len(text) <= limit + NOTE_ROOM:
        return text
    return text[:limit] + f"\n[truncated: the result was {len(text):,} characters; only the first {limit:,} are shown]"


class ToolRegistry:
    """Every tool of one App, by name. Built-ins are added once; `refresh()` rereads the user tool files
    and the MCP servers' tool lists. On a name clash the local tool (built-in, then file) keeps the name
    and an MCP tool is shown as `server.tool`."""

    def __init__(self, tools_dir: Path | None = None, timeout: float = 30.0, mcp: Any = None) -> None:
        self.tools_dir = tools_dir
        self.timeout = timeout
        #: the MCP servers (modules/tools/mcp_client.py), or None when none are configured
        self.mcp = mcp
        self._builtin: dict[str, Tool] = {}
        self._files: dict[str, Tool] = {}
        #: user tool files that could not be read: file name -> why
        self.file_errors: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, extensions: Any = None) -> "ToolRegistry":
        from modules.tools import builtin
        from modules.tools.mcp_client import McpServers

        registry = cls(Path(settings.user_data) / "tools", timeout=settings.tool_timeout,
                       mcp=McpServers(settings.mcp_config_path(), timeout=settings.tool_timeout))
        for tool in builtin.tools(extensions):
            registry.add(tool)
        registry.refresh_files()
        return registry

    def add(self, tool: Tool) -> None:
        """A built-in tool (or one a test or an extension provides)."""
        with self._lock:
            self._builtin[tool.name] = tool

    def refresh_files(self) -> dict[str, str]:
        """Reread `user_data/tools/*.py` (their schemas only: no code of theirs runs in this process)."""
        from modules.tools.runner import file_tools

        if self.tools_dir is None:
            return {}
        found, errors = file_tools(self.tools_dir, self.timeout)
        with self._lock:
            self._files, self.file_errors = found, errors
        return errors

    def tools(self) -> dict[str, Tool]:
        """Every tool by the name the model sees, local ones first."""
        with self._lock:
            out: dict[str, Tool] = dict(self._builtin)
            for name, tool in self._files.items():
                out.setdefault(name, tool)
        for tool in (self.mcp.tools() if self.mcp is not None else []):
            name = function_name(tool.name)
            if name in out:  # the local tool keeps the name; the model sees this one as server__tool
                name = function_name(f"{tool.origin}__{tool.name}")
            if name not in out:
                out[name] = tool if name == tool.name else replace(tool, name=name)
        return out

    def names(self) -> list[str]:
        return list(self.tools())

    def get(self, name: str) -> Tool | None:
        return self.tools().get(name)

    def schemas(self, names: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
        """OpenAI function tools for the named tools that exist (a tool gone since a chat ticked it is
        left out, not an error)."""
        from modules.tools.spec import ToolError, read_tools

        tools = self.tools()
        out = []
        for name in (n for n in names if n in tools):
            schema = tools[name].schema()
            try:
                read_tools([schema])  # one tool with a schema the model side cannot use must not stop the chat
            except ToolError as exc:
                log.warning("tool %s left out: %s", name, exc)
                continue
            out.append(schema)
        return out

    def call(self, name: str, arguments: str | dict[str, Any] | None) -> ToolResult:
        """Run one call. Never raises: unknown tools, bad arguments, failures and timeouts are error results."""
        start = time.monotonic()
        tool = self.get(name)
        if tool is None:
            return ToolResult(f"error: there is no tool named {name!r}", True, 0.0)
        try:
            content, error = tool.run(parse_arguments(arguments)), False
        except ToolFailed as exc:
            content, error = f"error: {exc}", True
        except Exception as exc:  # a tool's own bug goes back to the model as its result
            log.warning("tool %s failed: %s: %s", name, type(exc).__name__, exc)
            content, error = f"error: {type(exc).__name__}: {exc}", True
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False, default=str)
        return ToolResult(truncate(content), error, round(time.monotonic() - start, 3))

    def close(self) -> None:
        if self.mcp is not None:
            self.mcp.close()


def function_name(name: str) -> str:
    """`name` as an OpenAI function name may be (1-64 of letters, digits, _ and -): other characters
    (an MCP tool's dots or spaces) become _."""
    return (re.sub(r"[^A-Za-z0-9_-]", "_", name) or "tool")[:64]
