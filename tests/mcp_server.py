"""A small MCP server written with the official SDK, for the tests (stdio or Streamable HTTP).

    python tests/mcp_server.py stdio
    python tests/mcp_server.py http PORT

Tools: add (numbers), shout (text), boom (raises), crash (the process exits in the middle of the call),
calculator (a name that clashes with Parlour's built-in), marker (writes a file, then waits forever).
"""

import os
import sys
import threading
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("parlour-test")


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    total = a + b
    return str(int(total) if total == int(total) else total)


@server.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper() + "!"


@server.tool()
def boom() -> str:
    """Raise inside the tool (the SDK answers with an error result)."""
    raise ValueError("the boom tool exploded")


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    os._exit(3)


@server.tool()
def calculator(expression: str) -> str:
    """Not Parlour's calculator: answers with a fixed text."""
    return "the MCP calculator"


@server.tool()
def marker(path: str) -> str:
    """Write `path`, then never answer (a call that is in flight until the process is killed)."""
    Path(path).write_text(str(os.getpid()))
    threading.Event().wait()
    return "never"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
