"""User tool files: `user_data/tools/NAME.py`, one tool each, run in a subprocess with a timeout.

A tool file holds a `tool` dict in OpenAI's function-tool shape and an `execute(arguments)` function:

    tool = {"type": "function", "function": {"name": "shout", "description": "Upper-case a text",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}

    def execute(arguments):
        return arguments["text"].upper()

Its code never runs in the server's process: reading the schema and every call start
`modules/tools/child.py` in a fresh subprocess (its own process group, killed whole on a timeout),
so a tool that crashes, hangs, leaks memory or prints garbage cannot touch the chat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from modules.tools.registry import MAX_RESULT_CHARS, Tool, ToolFailed

CHILD = Path(__file__).with_name("child.py")
#: the most bytes read from a tool's answer: the result (cut to MAX_RESULT_CHARS by the child) as JSON
MAX_ANSWER_BYTES = 4 * MAX_RESULT_CHARS + 65536
MAX_TOOL_FILES = 200


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool's own children go too
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_child(command: str, path: Path, payload: str, timeout: float) -> dict[str, Any]:
    """Run child.py `command` on `path`; its one JSON answer. ToolFailed on a timeout, a crash, too much output."""
    env = {**os.environ, "PARLOUR_TOOL_RESULT_CHARS": str(MAX_RESULT_CHARS), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, str(CHILD), command, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(path.parent), env=env,
                            start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    too_much = threading.Event()

    def read_out() -> None:
        size = 0
        while chunk := proc.stdout.read(65536):  # type: ignore[union-attr]
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                too_much.set()
                _kill(proc)
                return
            out.append(chunk)

    def read_err() -> None:
        tail = b""
        while chunk := proc.stderr.read(65536):  # type: ignore[union-attr]
            tail = (tail + chunk)[-4096:]
        err.append(tail)

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for thread in readers:
        thread.start()
    try:
        proc.stdin.write(payload.encode("utf-8"))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except (BrokenPipeError, OSError):
        pass  # the child died at once; its exit says why
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
        raise ToolFailed(f"the tool did not finish within {timeout:g} seconds and was stopped") from None
    finally:
        for thread in readers:
            thread.join(timeout=5)
    if too_much.is_set():
        raise ToolFailed(f"the tool wrote more than {MAX_ANSWER_BYTES:,} bytes and was stopped")
    text = b"".join(out).decode("utf-8", errors="replace")
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        why = (err[0].decode("utf-8", errors="replace").strip().splitlines() or [""])[-1] if err else ""
        raise ToolFailed(f"the tool exited with code {proc.returncode} without an answer"
                        + (f": {why}" if why else "")) from None
    if not isinstance(answer, dict):
        raise ToolFailed("the tool's answer is not an object")
    return answer


def describe(path: Path, timeout: float) -> Tool:
    """The Tool in one file (its schema read by a subprocess); ToolFailed saying what is wrong."""
    answer = run_child("describe", path, "", timeout)
    if "error" in answer:
        raise ToolFailed(f"cannot load it: {answer['error']}")
    spec = answer.get("tool")
    if not answer.get("has_execute"):
        raise ToolFailed("it has no execute(arguments) function")
    function = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else spec
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
        raise ToolFailed('its `tool` must be {"type": "function", "function": {"name": ..., "parameters": {...}}}')
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ToolFailed("its parameters must be a JSON schema object")

    def run(arguments: dict[str, Any]) -> str:
        answer = run_child("run", path, json.dumps(arguments), timeout)
        if "error" in answer:
            raise ToolFailed(str(answer["error"]))
        return str(answer.get("result", ""))

    tool = Tool(function["name"].strip(), str(function.get("description") or ""), parameters, run, source="file",
                origin=path.name, confirm=True)
    from modules.tools.spec import ToolError, read_tools

    try:
        read_tools([tool.schema()])  # the same check an API request's tools get (name, JSON schema)
    except ToolError as exc:
        raise ToolFailed(str(exc)) from None
    return tool


def file_tools(folder: Path, timeout: float) -> tuple[dict[str, Tool], dict[str, str]]:
    """({name: Tool}, {file name: why it cannot be used}) for the `*.py` files in `folder`."""
    tools: dict[str, Tool] = {}
    errors: dict[str, str] = {}
    if not folder.is_dir():
        return tools, errors
    for path in sorted(folder.glob("*.py"))[:MAX_TOOL_FILES]:
        if path.name.startswith((".", "_")) or not path.is_file():
            continue
        try:
            tool = describe(path.resolve(), timeout)
        except ToolFailed as exc:
            errors[path.name] = str(exc)
            continue
        if tool.name in tools:
            errors[path.name] = f"another file already defines the tool {tool.name!r}"
            continue
        tools[tool.name] = tool
    return tools, errors
