"""A careless command line does not start an open server: empty or whitespace keys, an unset variable in
`--api-key "$KEY"`, logins without a password, an auth file with no login, `*` as a CORS origin. Each is
refused at start with a message naming the flag, before anything listens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port


def start(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    port = free_port()
    command = [sys.executable, str(ROOT / "server.py"), "--port", str(port), "--models-dir", str(tmp_path),
               "--user-data", str(tmp_path / "user_data"), "--settings", str(tmp_path / "settings.yaml"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["--api-key", ""], "--api-key is empty"),
    (["--api-key", "   "], "--api-key is empty"),
    (["--api-key", "\t\n"], "--api-key is empty"),
    (["--api-key", " key-with-spaces "], "whitespace"),
    (["--admin-key", ""], "--admin-key is empty"),
    (["--remote-api-key", " "], "--remote-api-key is empty"),
    (["--listen", "--auth", "ann:pw", "--api-key", ""], "--api-key is empty"),
    (["--auth", ""], "--auth is empty"),
    (["--auth", "ann:"], "password"),
    (["--auth", "ann:   "], "password"),
    (["--auth", "ann:pw,bob"], "password"),
    (["--auth", "ann:pw,:pw2"], "user:password"),
    (["--auth", "api:pw"], "reserved"),
    (["--cors-origin", "*"], "'*'"),
    (["--cors-origin", "null"], "null"),
    (["--cors-origin", "http://ok.example,http://x.example/path"], "no path"),
])
def test_refused_at_start(tmp_path, args, message):
    result = start(tmp_path, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_unset_variable_as_key(tmp_path):
    """`--api-key "$PARLOUR_KEY"` with the variable unset: the shell passes an empty string."""
    env = {k: v for k, v in os.environ.items() if k != "PARLOUR_KEY"}
    result = subprocess.run(f'"{sys.executable}" server.py --listen --auth ann:pw --api-key "$PARLOUR_KEY" '
                            f'--port {free_port()} --user-data "{tmp_path}/ud" --settings "{tmp_path}/s.yaml"',
                            shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and "--api-key is empty" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n", "ann:\n", "  :pw\n", "bob\n"])
def test_auth_file_without_a_login(tmp_path, content):
    path = tmp_path / "logins.txt"
    path.write_text(content)
    result = start(tmp_path, "--listen", "--auth-file", str(path), "--api-key", "k")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "login" in result.stderr and "Traceback" not in result.stderr


def test_empty_key_in_the_settings_file(tmp_path):
    (tmp_path / "settings.yaml").write_text("api_key: ''\nlisten: true\nauth: 'ann:pw'\n")
    result = start(tmp_path)
    assert result.returncode == 2 and "--api-key is empty" in result.stderr, result.stderr[-2000:]
    assert "settings.yaml" in result.stderr
