"""A local HTTP server that speaks the Hugging Face Hub's API (there is no internet here).

Serves repos {repo_id: {path: bytes or Generated}} with the endpoints huggingface_hub uses.
`hold(name)` makes the download of one file stop halfway until `release()`: tests then see a download
in progress for as long as they need, without timing anything. `Generated` is a large file made up as
it is sent, at a set pace (bench/download_stream.py: a download as fast as a good connection).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHA = "0123456789abcdef0123456789abcdef01234567"
PIECE = 1 << 20


@dataclass(frozen=True)
class Generated:
    """A file of `size` bytes that is never held in memory, sent at about `bytes_per_second`."""

    size: int
    bytes_per_second: float

    def etag(self) -> str:
        return hashlib.sha1(f"generated-{self.size}".encode()).hexdigest()


def _size(data) -> int:
    return data.size if isinstance(data, Generated) else len(data)


def _etag(data) -> str:
    return data.etag() if isinstance(data, Generated) else hashlib.sha1(data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.auth_headers: list[str | None] = []
        self.held_file: str | None = None
        self.halfway = threading.Event()  # set when the held file's first half has gone out
        self._go_on = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                self.send_response(status)
                for key, value in {"Content-Length": str(_size(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if head:
                    return
                if isinstance(body, Generated):
                    return self._send_generated(body)
                if hub.held_file is not None and self.path.endswith("/" + hub.held_file):
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    hub.halfway.set()
                    hub._go_on.wait()
                    body = body[half:]
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a cancelled download)
                    pass

            def _send_generated(self, file: Generated) -> None:
                piece, start, sent = b"g" * PIECE, time.monotonic(), 0
                try:
                    while sent < file.size:
                        n = min(PIECE, file.size - sent)
                        self.wfile.write(piece[:n])
                        sent += n
                        ahead = sent / file.bytes_per_second - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)  # the pace of the connection this file stands for
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _route(self, head=False):
                hub.auth_headers.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                for repo_id, files in hub.repos.items():
                    if path.startswith(f"/api/models/{repo_id}/revision/"):
                        body = {"id": repo_id, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
                        return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                    if path.startswith(f"/api/models/{repo_id}/tree/"):
                        body = [{"type": "file", "path": f, "size": _size(data), "oid": _etag(data)}
                                for f, data in files.items()]
                        return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                    prefix = f"/{repo_id}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[1]
                        if name not in files:
                            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                        data = files[name]
                        return self._send(200, data, {"X-Repo-Commit": SHA, "ETag": f'"{_etag(data)}"'}, head=head)
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, name: str) -> None:
        """Stop the next download of file `name` halfway, until `release()`."""
        self.held_file = name
        self.halfway.clear()
        self._go_on.clear()

    def release(self) -> None:
        self._go_on.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def model_repo(model_dir, extra_mib: int = 0) -> dict[str, bytes]:
    """A repo holding a model folder's files, plus (for progress to show mid-way) a large extra file.
    huggingface_hub reports progress per 10 MiB chunk, so the extra file must be larger than that."""
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    if extra_mib:
        files["notes.txt"] = b"n" * (extra_mib * 2**20)
    return files
