"""Start-up: the page is served before torch and Transformers are imported (they load with the model),
and Gradio is imported without its optional MCP integration and without writing typing stubs."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from tests.conftest import ROOT, micro_server

PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import server
from modules.settings import Settings
gradio = server.import_gradio()
after_gradio = "mcp" in sys.modules
sys.path.insert(0, {data!r})
import custom_box  # a component class defined after the import: Gradio would write custom_box.pyi for it
stub = __import__("os").path.exists({data!r} + "/custom_box.pyi")
server.create_app(Settings(models_dir={models!r}, user_data={data!r}, settings={data!r} + "/s.yaml"))
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
import mcp  # still importable by Parlour's own code
print(json.dumps({{"heavy": heavy, "mcp_with_gradio": after_gradio, "gradio": gradio.__name__, "stub": stub,
                  "box": custom_box.CustomBox("x").value}}))
"""


def test_building_the_server_imports_neither_torch_nor_transformers_nor_mcp(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "custom_box.py").write_text("import gradio as gr\n\n\nclass CustomBox(gr.Textbox):\n    pass\n")
    code = PROBE.format(root=str(ROOT), models=str(tmp_path / "models"), data=str(tmp_path / "data"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heavy": [], "mcp_with_gradio": False, "gradio": "gradio", "stub": False, "box": "x"}


def test_a_plain_server_process_serves_the_page_then_a_reply(tmp_path, models_dir):
    """The other tests' servers are forked from a parent that has done the heavy imports already
    (tests/server_fork.py); this one is `python server.py` in a process of its own, as a user starts it."""
    server = micro_server(tmp_path, models_dir, plain=True)
    try:
        assert isinstance(server.proc, subprocess.Popen)
        assert httpx.get(server.url + "/", timeout=60).status_code == 200
        assert httpx.get(server.url + "/config", timeout=60).json()["title"] == "Parlour"
        assert server.health()["model"] == "parlour-micro"
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] > 0
    finally:
        server.stop()
