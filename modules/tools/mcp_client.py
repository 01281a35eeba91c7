"""MCP servers as tool sources, through the official `mcp` SDK (its high-level `mcp.Client`).

The operator lists servers in `user_data/mcp.json` (`--mcp-config`), in the Claude Desktop format:

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                  "env": {"DEBUG": "0"}},
        "search": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ..."}}}}

`command` entries are stdio servers (a subprocess), `url` entries Streamable HTTP servers. Admins may
add URL servers in the Session tab; those are kept in `mcp_http.json` beside mcp.json. Parlour never
writes mcp.json, and no command is ever taken from the browser or the API.

Each server is held open by one task on a private asyncio loop (one daemon thread for all servers):
the SDK's connection is an async context that must be entered and left in the same task. Chat threads
call tools through `asyncio.run_coroutine_threadsafe` with a timeout. A server that fails to start,
or dies, is marked with its error; its tools leave the list and calls to it are error results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.tools.registry import Tool, ToolFailed

log = logging.getLogger(__name__)
MAX_CONFIG_BYTES = 1_000_000
MAX_TOOLS_PER_SERVER = 500


class McpConfigError(ValueError):
    """mcp.json (or an entry of it) that cannot be used; the message names the file or the server."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    #: "stdio" (a command) or "http" (Streamable HTTP)
    kind: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    #: "mcp.json" or "session" (added by an admin in the Session tab)
    added_by: str = "mcp.json"

    def describe(self) -> str:
        """For people: the command line or the URL (header values are never shown)."""
        if self.kind == "stdio":
            return " ".join([self.command, *self.args])
        return self.url + (f" (headers: {', '.join(self.headers)})" if self.headers else "")


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise McpConfigError(f"{what} must be an object of text values")
    return dict(value)


def parse_entry(name: str, entry: Any, added_by: str = "mcp.json") -> ServerSpec:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        raise McpConfigError(f"server names are 1-40 letters, digits, _ or - (got {str(name)[:40]!r})")
    if not isinstance(entry, dict):
        raise McpConfigError(f"server {name!r}: its entry must be an object")
    if "command" in entry:
        command, args = entry["command"], entry.get("args") or []
        if not isinstance(command, str) or not command.strip():
            raise McpConfigError(f"server {name!r}: 'command' must be text")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise McpConfigError(f"server {name!r}: 'args' must be a list of text")
        return ServerSpec(name, "stdio", command=command, args=tuple(args),
                          env=_strings(entry.get("env"), f"server {name!r}: 'env'"), added_by=added_by)
    url = entry.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return ServerSpec(name, "http", url=url, headers=_strings(entry.get("headers"), f"server {name!r}: 'headers'"),
                          added_by=added_by)
    raise McpConfigError(f"server {name!r}: give a 'command' (stdio) or an http(s) 'url' (Streamable HTTP)")


def read_config(path: Path, added_by: str = "mcp.json") -> tuple[list[ServerSpec], dict[str, str]]:
    """(servers, {name or file: why it was skipped}); a missing file is no servers."""
    if not path.is_file():
        return [], {}
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise McpConfigError(f"{path.name} is larger than {MAX_CONFIG_BYTES:,} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        servers = data.get("mcpServers") if isinstance(data, dict) else None
        if not isinstance(servers, dict):
            raise McpConfigError(f'{path.name} must hold {{"mcpServers": {{name: {{...}}}}}}')
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, McpConfigError) as exc:
        return [], {path.name: str(exc)}
    specs, errors = [], {}
    for name, entry in servers.items():
        try:
            specs.append(parse_entry(name, entry, added_by))
        except McpConfigError as exc:
            errors[str(name)[:64]] = str(exc)
    return specs, errors


@dataclass
class ServerState:
    spec: ServerSpec
    #: "starting", "ready", "error" or "stopped"
    status: str = "starting"
    error: str = ""
    tools: list[Tool] = field(default_factory=list)
    client: Any = None
    stop: asyncio.Event | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    #: the task holding the connection (done once it is closed)
    held: Any = None


def _reason(exc: BaseException) -> str:
    """One line for an error from the SDK, unwrapping task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text_of(result: Any) -> tuple[str, bool]:
    """An MCP CallToolResult as (text for the model, is error)."""
    pieces = []
    for block in result.content or []:
        text = getattr(block, "text", None)
        if text is not None:
            pieces.append(text)
        else:  # images, audio, resources: named, not inlined
            pieces.append(f"[{getattr(block, 'type', 'content')} content]")
    if not pieces and result.structured_content is not None:
        pieces.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(pieces), bool(result.is_error)


class McpServers:
    """The MCP servers of one App: started in the background, each with its tools and its state."""

    def __init__(self, config: Path, timeout: float = 30.0, start_timeout: float = 60.0) -> None:
        self.config = Path(config)
        self.added = self.config.with_name("mcp_http.json")
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.servers: dict[str, ServerState] = {}
        self.config_errors: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mcp", daemon=True).start()
                self._loop = loop
            return self._loop

    def start(self) -> None:
        """Read the config files and connect every server (in the background; `wait` waits for them)."""
        specs, errors = read_config(self.config)
        added, added_errors = read_config(self.added, added_by="session")
        self.config_errors = {**errors, **added_errors}
        for spec in specs + [s for s in added if s.name not in {x.name for x in specs}]:
            self.connect(spec)

    def connect(self, spec: ServerSpec) -> ServerState:
        """(Re)connect one server."""
        old = self.servers.get(spec.name)
        if old is not None:
            self.disconnect(spec.name)
        state = ServerState(spec, stop=asyncio.Event())  # made here: a disconnect may come before the task runs
        self.servers[spec.name] = state
        state.held = asyncio.run_coroutine_threadsafe(self._hold(state), self._ensure_loop())
        return state

    def disconnect(self, name: str) -> None:
        state = self.servers.get(name)
        if state is None or self._loop is None:
            return
        if state.stop is not None:
            self._loop.call_soon_threadsafe(state.stop.set)
        state.status, state.tools = "stopped", []

    def reconnect(self, name: str) -> ServerState:
        if name not in self.servers:
            raise McpConfigError(f"no MCP server named {name!r}")
        return self.connect(self.servers[name].spec)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every server is ready or has failed (tests, start-up logs); True if all settled."""
        return all(s.ready.wait(timeout) for s in list(self.servers.values()))

    def close(self, wait: float = 5.0) -> None:
        """Disconnect every server, waiting up to `wait` seconds for them to stop (a stdio server's process
        is ended by the SDK as its connection closes; the loop's thread would not outlive the process)."""
        for name in list(self.servers):
            self.disconnect(name)
        for state in list(self.servers.values()):
            if state.held is not None:
                with contextlib.suppress(Exception):
                    state.held.result(timeout=wait)

    # -- the Session tab's list ----------------------------------------------------------------------
    def add_http(self, name: str, url: str, headers: dict[str, str] | None = None) -> ServerState:
        """An admin's Streamable HTTP server, kept in mcp_http.json (never in mcp.json)."""
        spec = parse_entry(name.strip(), {"url": url.strip(), "headers": headers or {}}, added_by="session")
        if spec.name in self.servers and self.servers[spec.name].spec.added_by != "session":
            raise McpConfigError(f"{spec.name!r} is a server from {self.config.name}: change it there")
        self._save_added({**self._added_entries(), spec.name: {"url": spec.url, "headers": spec.headers}})
        return self.connect(spec)

    def remove_http(self, name: str) -> None:
        state = self.servers.get(name)
        if state is None or state.spec.added_by != "session":
            raise McpConfigError(f"only servers added in the Session tab can be removed here; "
                                 f"{self.config.name} is edited by hand")
        self.disconnect(name)
        del self.servers[name]
        self._save_added({k: v for k, v in self._added_entries().items() if k != name})

    def _added_entries(self) -> dict[str, Any]:
        return {s.name: {"url": s.spec.url, "headers": s.spec.headers}
                for s in (self.servers.get(n) for n in list(self.servers)) if s and s.spec.added_by == "session"}

    def _save_added(self, entries: dict[str, Any]) -> None:
        from modules.fileio import atomic_write_text

        self.added.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.added, json.dumps({"mcpServers": entries}, indent=2))

    def tools(self) -> list[Tool]:
        out: list[Tool] = []
        for state in list(self.servers.values()):
            if state.status == "ready":
                out.extend(state.tools)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per server for the Session tab: name, kind, where, status, error, tool names."""
        return [{"name": s.spec.name, "kind": s.spec.kind, "where": s.spec.describe(), "added_by": s.spec.added_by,
                 "status": s.status, "error": s.error, "tools": [t.name for t in s.tools]}
                for s in self.servers.values()]

    # -- talking to a server -------------------------------------------------------------------------
    def _transport(self, spec: ServerSpec) -> Any:
        if spec.kind == "stdio":
            from mcp.client.stdio import StdioServerParameters

            return StdioServerParameters(command=spec.command, args=list(spec.args), env=spec.env or None)
        if not spec.headers:
            return spec.url
        return _http_with_headers(spec.url, spec.headers)

    async def _hold(self, state: ServerState) -> None:
        """Connect, list the tools, then keep the connection until told to stop (or it breaks). A server
        still not ready after `start_timeout` is cancelled (the SDK's context unwinds in this task)."""
        from mcp import Client

        task = asyncio.current_task()
        watchdog = asyncio.get_running_loop().call_later(
            self.start_timeout, lambda: None if state.ready.is_set() else task.cancel())  # type: ignore[union-attr]
        try:
            async with Client(self._transport(state.spec), read_timeout_seconds=self.timeout) as client:
                listed = await self._list(client)
                state.client, state.tools = client, [self._tool(state, t) for t in listed]
                state.status, state.error = "ready", ""
                state.ready.set()
                watchdog.cancel()
                await state.stop.wait()  # type: ignore[union-attr]
        except asyncio.CancelledError:
            if not state.ready.is_set():
                state.status, state.error = "error", f"did not start within {self.start_timeout:g} seconds"
                log.warning("MCP server %s: %s", state.spec.name, state.error)
        except Exception as exc:  # a server that cannot start (or dies) is shown with its error, nothing more
            if state.status != "stopped":
                state.status, state.error, state.tools = "error", _reason(exc), []
                log.warning("MCP server %s: %s", state.spec.name, state.error)
        finally:
            watchdog.cancel()
            state.client = None
            state.ready.set()

    async def _list(self, client: Any) -> list[Any]:
        tools, cursor = [], None
        for _ in range(50):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None or len(tools) >= MAX_TOOLS_PER_SERVER:
                break
        return tools[:MAX_TOOLS_PER_SERVER]

    def _tool(self, state: ServerState, listed: Any) -> Tool:
        name = listed.name

        def run(arguments: dict[str, Any]) -> str:
            return self.call(state.spec.name, name, arguments)

        return Tool(name, listed.description or "", dict(listed.input_schema or {"type": "object"}), run,
                    source="mcp", origin=state.spec.name, confirm=True, title=f"{state.spec.name}.{name}")

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """Call `tool` on `server`; ToolFailed when the server is down, the call fails or times out."""
        state = self.servers.get(server)
        if state is None or state.status != "ready" or state.client is None or self._loop is None:
            why = f": {state.error}" if state is not None and state.error else ""
            raise ToolFailed(f"the MCP server {server!r} is not running{why}")
        future = asyncio.run_coroutine_threadsafe(state.client.call_tool(tool, arguments), self._loop)
        try:
            result = future.result(timeout=self.timeout + 5)  # the SDK's own read timeout comes first
        except TimeoutError:
            future.cancel()
            raise ToolFailed(f"the MCP server {server!r} did not answer within {self.timeout:g} seconds") from None
        except Exception as exc:
            why = _reason(exc)
            if not _is_timeout(exc):  # the connection broke (the server died): show it on the server
                state.status, state.error, state.tools = "error", f"lost during a call to {tool}: {why}", []
                self._loop.call_soon_threadsafe(state.stop.set) if state.stop is not None else None
            raise ToolFailed(f"the MCP server {server!r} failed during the call: {why}") from None
        text, is_error = _text_of(result)
        if is_error:
            raise ToolFailed(text or "the tool reported an error")
        return text


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, TimeoutError) or "timed out" in text or "timeout" in text


@contextlib.asynccontextmanager
async def _http_with_headers(url: str, headers: dict[str, str]):
    """A Streamable HTTP transport whose requests carry `headers` (an API key, say)."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams
