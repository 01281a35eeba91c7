"""download-model.py against a local HTTP server that speaks the Hub's API (no internet here)."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modules.download import DownloadError, parse_spec, plan, selected
from tests.conftest import ROOT

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves repos {repo_id: {path: bytes}} with the endpoints huggingface_hub uses."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.auth_headers: list[str | None] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head=False):
                hub.auth_headers.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                for repo_id, files in hub.repos.items():
                    if path.startswith(f"/api/models/{repo_id}/revision/"):
                        body = {"id": repo_id, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
                        return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                    if path.startswith(f"/api/models/{repo_id}/tree/"):
                        body = [{"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                                for f, data in files.items()]
                        return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                    prefix = f"/{repo_id}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[1]
                        if name not in files:
                            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                        data = files[name]
                        return self._send(200, data, {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                                          head=head)
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def hub(micro_path):
    model_files = {p.name: p.read_bytes() for p in micro_path.iterdir() if p.is_file()}
    repos = {
        "tester/tiny": {**model_files, "pytorch_model.bin": b"pickle", "modeling_evil.py": b"import os"},
        "tester/tiny-GGUF": {"tiny.Q4_K_M.gguf": b"GGUF4", "tiny.Q8_0.gguf": b"GGUF8", "README.md": b"hi"},
        "tester/lora": {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x"},
    }
    server = FakeHub(repos)
    yield server
    server.server.shutdown()


def run_download(hub, tmp_path, *args):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret_token", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, str(ROOT / "download-model.py"), *args, "--models-dir",
                           str(tmp_path / "models"), "--loras-dir", str(tmp_path / "loras")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_transformers_repo_downloads_safetensors_without_code_and_loads(hub, tmp_path, make_app):
    out = run_download(hub, tmp_path, "tester/tiny")
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "models" / "tester_tiny"
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in names and "config.json" in names
    assert "pytorch_model.bin" not in names and "modeling_evil.py" not in names
    assert "Bearer hf_secret_token" in hub.auth_headers  # HF_TOKEN respected
    app = make_app(models_dir=tmp_path / "models")
    assert app.models.load("tester_tiny").info()["architecture"] == "llama"


def test_gguf_repo_needs_a_quant_choice(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/tiny-GGUF")
    assert out.returncode == 2 and "tiny.Q4_K_M.gguf" in out.stderr and "--gguf-quant" in out.stderr
    out = run_download(hub, tmp_path, "tester/tiny-GGUF", "--gguf-quant", "q8_0")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "models" / "tiny.Q8_0.gguf").read_bytes() == b"GGUF8"
    assert not (tmp_path / "models" / "tiny.Q4_K_M.gguf").exists()


def test_lora_repo_goes_to_loras(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/lora:main")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "loras" / "tester_lora" / "adapter_config.json").exists()


def test_missing_repo_is_a_clear_error(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/nothing")
    assert out.returncode == 2 and "tester/nothing" in out.stderr


@pytest.mark.parametrize("spec", ["../../etc", "user/../repo", "a/b:../../x", "/abs/path", "user"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(DownloadError):
        parse_spec(spec)


def test_allow_code_and_split_gguf_plans(tmp_path):
    files = ["config.json", "model.safetensors", "modeling.py"]
    assert "modeling.py" in selected(files, plan("a/b", "main", files, tmp_path, tmp_path, allow_code=True))
    split = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf", "other.Q2_K.gguf"]
    chosen = plan("a/b", "main", split, tmp_path, tmp_path, gguf_quant="m-0")
    assert selected(split, chosen) == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
