"""MCP servers written with the official SDK (tests/mcp_server.py), over stdio (from mcp.json) and over
Streamable HTTP on 127.0.0.1 (added by URL with a header): their tools join the registry, the chat service
calls them, a server that dies mid-call gives a clear error (and takes nothing else down), one that cannot
start is shown with its error. The model's side is scripted (tests/scripted.py); the servers are real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modules.app import App
from modules.chat import PromptOptions
from modules.conversation import ChatView, Setup
from modules.presets import Preset
from modules.settings import Settings
from modules.tools.loop import ToolPlan
from modules.tools.mcp_client import McpConfigError
from modules.turns import ToolResultPart
from tests.conftest import free_port
from tests.scripted import run, script

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "mcp_server.py"
#: generous: on a loaded 2-core machine importing the SDK and starting a server can take many seconds
START_SECONDS = 120


def build_app(tmp_path, servers: dict, timeout: float = 60) -> App:
    user_data = tmp_path / "user_data"
    user_data.mkdir(parents=True, exist_ok=True)
    (user_data / "mcp.json").write_text(json.dumps({"mcpServers": servers}))
    app = App.build(Settings(models_dir=tmp_path / "models", user_data=user_data, presets_dir=ROOT / "presets",
                             settings=tmp_path / "settings.yaml", tool_timeout=timeout))
    app.start_tools()
    assert app.tools.mcp.wait(START_SECONDS)
    return app


def setup(*names) -> Setup:
    return Setup(PromptOptions(mode="instruct"), Preset(max_new_tokens=8), tools=ToolPlan(tuple(names), "auto",
                                                                                          always=tuple(names)))


@pytest.fixture()
def stdio_app(tmp_path):
    app = build_app(tmp_path, {"test": {"command": sys.executable, "args": [str(SERVER), "stdio"],
                                        "env": {"PARLOUR_TEST": "1"}},
                               "broken": {"command": str(tmp_path / "no-such-program")}})
    yield app
    app.tools.close()


def test_stdio_server_tools_are_listed_and_called_from_the_chat(stdio_app):
    app = stdio_app
    rows = {r["name"]: r for r in app.tools.mcp.rows()}
    assert rows["test"]["status"] == "ready" and {"add", "shout", "crash"} <= set(rows["test"]["tools"])
    assert rows["broken"]["status"] == "error" and "no-such-program" in rows["broken"]["error"]
    tools = app.tools.tools()
    assert tools["add"].source == "mcp" and tools["add"].confirm and tools["add"].label == "test.add"
    # the MCP server's own calculator clashes with the built-in: the built-in keeps the name
    assert tools["calculator"].source == "builtin" and tools["test__calculator"].origin == "test"
    assert tools["add"].parameters["properties"].keys() == {"a", "b"}
    script(app, [("add", '{"a": 2, "b": 40}'), ("test__calculator", '{"expression": "1"}'), ("boom", "{}"),
                 ("add", '{"a": "two"}')], "It is 42.")
    step = run(app.chats.send("ann", ChatView(), "add 2 and 40", setup("add", "test__calculator", "boom")))
    first, second, boom, bad = step.turns[-1].of_type(ToolResultPart)
    assert (first.content, first.error) == ("42", False) and second.content == "the MCP calculator"
    # a tool that raises and arguments the server refuses: error results, the server keeps running
    assert boom.error and "Error executing tool boom" in boom.content  # the SDK keeps the message to itself
    assert bad.error and bad.content.startswith("error:")
    assert next(r for r in app.tools.mcp.rows() if r["name"] == "test")["status"] == "ready"
    assert step.turns[-1].text == "It is 42."
    # approval: without "always" an MCP tool waits for the user
    script(app, [("shout", '{"text": "hi"}')], "Done.")
    plan = Setup(PromptOptions(mode="instruct"), Preset(max_new_tokens=8), tools=ToolPlan(("shout",)))
    view = run(app.chats.send("ann", ChatView(), "shout", plan)).view
    assert [c.name for c in app.chats.awaiting("ann", view)] == ["shout"]
    assert run(app.chats.answer_calls("ann", view, plan, "approve")).turns[-1].of_type(ToolResultPart)[0].content == "HI!"


def test_a_server_that_dies_mid_call_gives_a_clear_error(stdio_app):
    app = stdio_app
    script(app, [("crash", "{}")], "The tool failed.", [("add", '{"a": 1, "b": 1}')], "Still here.")
    step = run(app.chats.send("ann", ChatView(), "crash it", setup("crash", "add")))
    result = step.turns[-1].of_type(ToolResultPart)[0]
    assert result.error and "MCP server 'test' failed during the call" in result.content
    row = next(r for r in app.tools.mcp.rows() if r["name"] == "test")
    assert row["status"] == "error" and "lost during a call to crash" in row["error"]
    # its tools leave the list; a later call is an error result, and the chat goes on
    assert "add" not in app.tools.names() and "calculator" in app.tools.names()
    step = run(app.chats.send("ann", step.view, "again", setup("crash", "add")))
    assert "no tool named 'add'" in step.turns[-1].of_type(ToolResultPart)[0].content
    assert step.turns[-1].text == "Still here."
    # the operator reconnects it (the Session tab's button)
    app.tools.mcp.reconnect("test")
    assert app.tools.mcp.wait(START_SECONDS) and "add" in app.tools.names()


def wait_for_port(port: int, proc: subprocess.Popen) -> None:
    """Poll until the server accepts connections (its state, not a sleep)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the MCP test server exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("the MCP test server never listened")


@pytest.fixture()
def http_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_streamable_http_server_by_url_with_headers_and_killed_mid_call(tmp_path, http_server):
    url, proc = http_server
    app = build_app(tmp_path, {})
    try:
        app.tools.mcp.add_http("web", url, {"X-Api-Key": "secret"})
        assert app.tools.mcp.wait(START_SECONDS)
        row = app.tools.mcp.rows()[0]
        assert row["status"] == "ready" and row["kind"] == "http" and "secret" not in row["where"]
        assert json.loads((tmp_path / "user_data" / "mcp_http.json").read_text())["mcpServers"]["web"]["url"] == url
        assert json.loads((tmp_path / "user_data" / "mcp.json").read_text()) == {"mcpServers": {}}  # never written
        script(app, [("shout", '{"text": "over http"}')], "ok")
        step = run(app.chats.send("ann", ChatView(), "shout", setup("shout")))
        assert step.turns[-1].of_type(ToolResultPart)[0].content == "OVER HTTP!"
        # a call in flight when the server is killed: the marker file says the call has started
        marker = tmp_path / "in-flight"
        script(app, [("marker", json.dumps({"path": str(marker)}))], "after")
        done: dict = {}
        worker = threading.Thread(target=lambda: done.update(step=run(app.chats.send("ann", step.view, "hang",
                                                                                       setup("marker")))))
        worker.start()
        deadline = time.monotonic() + START_SECONDS
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        os.killpg(proc.pid, signal.SIGKILL)
        worker.join(START_SECONDS)
        result = done["step"].turns[-1].of_type(ToolResultPart)[0]
        assert result.error and "MCP server 'web'" in result.content and done["step"].turns[-1].text == "after"
        # servers added here can be removed here; those of mcp.json cannot be changed from the UI
        app.tools.mcp.remove_http("web")
        assert app.tools.mcp.rows() == []
    finally:
        app.tools.close()


def test_mcp_json_is_read_never_written_and_bad_entries_are_reported(tmp_path):
    user_data = tmp_path / "user_data"
    user_data.mkdir()
    text = json.dumps({"mcpServers": {"ok": {"command": sys.executable, "args": [str(SERVER), "stdio"]},
                                      "bad name": {"command": "x"}, "neither": {"args": []},
                                      "args": {"command": "x", "args": "not a list"}}})
    (user_data / "mcp.json").write_text(text)
    app = App.build(Settings(models_dir=tmp_path / "models", user_data=user_data, presets_dir=ROOT / "presets",
                             settings=tmp_path / "settings.yaml"))
    try:
        app.start_tools()
        assert app.tools.mcp.wait(START_SECONDS)
        errors = app.tools.mcp.config_errors
        assert set(errors) == {"bad name", "neither", "args"} and "command" in errors["neither"]
        with pytest.raises(McpConfigError, match="from mcp.json: change it there"):
            app.tools.mcp.add_http("ok", "http://127.0.0.1:1/mcp")
        with pytest.raises(McpConfigError, match="only servers added in the Session tab"):
            app.tools.mcp.remove_http("ok")
        with pytest.raises(McpConfigError, match="http"):
            app.tools.mcp.add_http("cmd", "file:///bin/sh")
        assert (user_data / "mcp.json").read_text() == text
    finally:
        app.tools.close()


def test_a_call_that_never_answers_times_out_and_the_server_stays(tmp_path):
    app = build_app(tmp_path, {"test": {"command": sys.executable, "args": [str(SERVER), "stdio"]}}, timeout=3)
    try:
        script(app, [("marker", json.dumps({"path": str(tmp_path / "started")}))], "Gave up.")
        step = run(app.chats.send("ann", ChatView(), "hang", setup("marker")))
        result = step.turns[-1].of_type(ToolResultPart)[0]
        assert result.error and "MCP server 'test'" in result.content and (tmp_path / "started").exists()
        assert step.turns[-1].text == "Gave up."
        assert app.tools.call("add", {"a": 1, "b": 2}).content == "3"  # a slow call does not end the server
    finally:
        app.tools.close()
