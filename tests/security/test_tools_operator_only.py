"""MCP servers and tool files are the operator's: nothing sent to the API or typed into a chat starts a
command or changes mcp.json, and the Session tab's tool handlers are not part of the event API."""

from __future__ import annotations

import json
import sys

import httpx
import pytest
from gradio_client import Client

from tests.conftest import ROOT

MCP_SERVER = ROOT / "tests" / "mcp_server.py"


@pytest.fixture()
def setup(start_server, models_dir, tmp_path):
    user_data = tmp_path / "user_data"
    user_data.mkdir()
    config = json.dumps({"mcpServers": {"test": {"command": sys.executable, "args": [str(MCP_SERVER), "stdio"]}}})
    (user_data / "mcp.json").write_text(config)
    marker = tmp_path / "pwned"
    evil = {"mcpServers": {"evil": {"command": sys.executable, "args": ["-c", f"open({str(marker)!r}, 'w')"]}}}
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro")
    return server, user_data, config, marker, evil


def test_no_request_starts_a_command_or_changes_mcp_json(setup):
    server, user_data, config, marker, evil = setup
    # the API: extra fields, tools that carry a command, and routes that do not exist
    body = {"model": "parlour-micro", "max_tokens": 4, "messages": [{"role": "user", "content": json.dumps(evil)}],
            "tools": [{"type": "function", "function": {"name": "evil", "parameters": {"type": "object"},
                                                        "command": sys.executable}}], **evil}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code in (200, 400)
    for path in ("/v1/internal/mcp", "/v1/internal/tools", "/v1/mcp", "/v1/internal/mcp/servers"):
        assert httpx.post(server.url + path, json=evil).status_code in (404, 405)
    # the event API: the chat takes the same text as a message, nothing more; no tool handler is exposed
    client = Client(server.url, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert not [name for name in endpoints if "mcp" in name or "tool" in name]
    client.predict(json.dumps(evil), api_name="/chat_send")
    assert not marker.exists()
    assert (user_data / "mcp.json").read_text() == config and not (user_data / "mcp_http.json").exists()
