"""Session tab: the MCP servers and user tool files. Everyone sees which servers run and their errors;
only admins (--admin-users; without --auth the local user) see their commands and URLs and may
reconnect them, reload the tool files, and add or remove Streamable HTTP servers by URL. Commands are
never set here: stdio servers come from mcp.json, which only the operator edits.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from modules.app import App
from modules.tools.mcp_client import McpConfigError
from modules.ui.chat_view import user_of

NOTE = ("MCP servers come from `mcp.json` (`--mcp-config`; stdio commands and Streamable HTTP URLs, Claude "
        "Desktop's format) and, for admins, the form below (URLs only). Their tools join the Tools list of the "
        "Chat tab; a server that fails shows its error here and nothing else stops.")


def servers_markdown(app: App, admin: bool) -> str:
    mcp = app.tools.mcp
    lines = []
    if mcp is not None and mcp.servers:
        lines += ["| server | kind | status | tools |" + (" where |" if admin else ""),
                  "|---|---|---|---|" + ("---|" if admin else "")]
        for row in mcp.rows():
            status = row["status"] + (f": {row['error']}" if row["error"] else "")
            cells = [row["name"], row["kind"], status, ", ".join(row["tools"]) or "—"]
            if admin:
                cells.append(f"{row['where']} ({row['added_by']})")
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    else:
        lines.append("No MCP servers.")
    problems = {**(mcp.config_errors if mcp is not None else {}), **app.tools.file_errors}
    if problems:
        lines += ["", "**Not used:**"] + [f"- {name}: {why}" for name, why in sorted(problems.items())]
    return "\n".join(lines)


def render(app: App) -> None:
    gr.Markdown("### Tools and MCP servers\n" + NOTE)
    table = gr.Markdown(elem_id="session-mcp-servers")
    with gr.Accordion("Manage (admins)", open=False, elem_id="session-mcp-admin"):
        with gr.Row():
            server = gr.Dropdown([], label="Server", elem_id="session-mcp-server", allow_custom_value=True, scale=2)
            reconnect = gr.Button("Reconnect", size="sm", elem_id="session-mcp-reconnect", scale=0)
            remove = gr.Button("Remove", size="sm", variant="stop", elem_id="session-mcp-remove", scale=0)
            reload_files = gr.Button("Reload tool files", size="sm", elem_id="session-tools-reload", scale=0)
        with gr.Row():
            name = gr.Textbox(label="Name", elem_id="session-mcp-name", scale=1)
            url = gr.Textbox(label="Streamable HTTP URL", placeholder="https://host/mcp", elem_id="session-mcp-url",
                             scale=3)
            headers = gr.Textbox(label='Headers (JSON, e.g. {"Authorization": "Bearer …"})',
                                 elem_id="session-mcp-headers", scale=2)
            add = gr.Button("Add", size="sm", variant="primary", elem_id="session-mcp-add", scale=0)
    result = gr.Markdown(elem_id="session-mcp-result")
    private = dict(api_visibility="private")

    def show(request: gr.Request):
        admin = app.settings.is_admin(user_of(request))
        names = list(app.tools.mcp.servers) if app.tools.mcp is not None else []
        return servers_markdown(app, admin), gr.Dropdown(choices=names)

    def admin_only(act):
        def handler(request: gr.Request, *values: Any):
            if not app.settings.is_admin(user_of(request)):
                return "⚠️ Only admins (--admin-users) manage MCP servers and tool files."
            try:
                return act(*values)
            except (McpConfigError, ValueError) as exc:
                return f"⚠️ {exc}"
        return handler

    def on_add(name_v: str, url_v: str, headers_v: str) -> str:
        try:
            parsed = json.loads(headers_v) if (headers_v or "").strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"headers must be a JSON object ({exc.msg})") from None
        app.tools.mcp.add_http(name_v or "", url_v or "", parsed)
        return f"Connecting {name_v}…"

    def on_reconnect(server_v: str) -> str:
        app.tools.mcp.reconnect(server_v or "")
        return f"Reconnecting {server_v}…"

    def on_remove(server_v: str) -> str:
        app.tools.mcp.remove_http(server_v or "")
        return f"Removed {server_v}."

    def on_reload() -> str:
        errors = app.tools.refresh_files()
        return f"Reloaded the tool files ({len(errors)} could not be used)." if errors else "Reloaded the tool files."

    outputs = [table, server]
    for button, act, inputs in ((add, on_add, [name, url, headers]), (reconnect, on_reconnect, [server]),
                                (remove, on_remove, [server]), (reload_files, on_reload, [])):
        button.click(admin_only(act), inputs, result, **private).then(show, None, outputs, **private)
    # servers start and fail in the background: keep the table current without a click
    gr.Timer(3.0).tick(show, None, outputs, show_progress="hidden", **private)
