"""A real, unmodified SillyTavern for tests, installed from the npm registry and run as its own process.

`install()` runs `npm install sillytavern@VERSION` once into a cache folder ($PARLOUR_SILLYTAVERN_CACHE,
else ~/.cache/parlour/sillytavern/VERSION); nothing of SillyTavern is kept in this repository. `SillyTavern`
starts its `server.js` with a config of our own (a free port, 127.0.0.1 only, whitelist 127.0.0.1/::1, no
browser launch, no auto-updates or downloads) and a data folder under the test's tmp_path, and stops it
by PID. Its first start compiles SillyTavern's front-end libraries (webpack, a minute or more, cached in
the installed package afterwards), so `install()` starts it once to warm that cache.

    package = install()
    with SillyTavern(tmp_path, package) as st:
        page.goto(st.url)

Reused by the tests that drive SillyTavern against Parlour (connectors, character cards).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

VERSION = "1.19.0"
#: first start compiles the front end; on a busy 2-core machine that has taken minutes
READY_SECONDS = 900


def cache_dir() -> Path:
    env = os.environ.get("PARLOUR_SILLYTAVERN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "parlour" / "sillytavern"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: scripts/setup.sh --dev installs Node.js (apt-get install nodejs npm)")
    return path


def install(version: str = VERSION) -> Path:
    """The installed package folder (…/node_modules/sillytavern), installing it first if needed."""
    root = cache_dir() / version
    package = root / "node_modules" / "sillytavern"
    if (root / ".ready").is_file():
        return package
    if not (package / "server.js").is_file():
        scratch = cache_dir() / f".{version}.{uuid.uuid4().hex}"
        scratch.mkdir(parents=True)
        try:
            subprocess.run([_tool("npm"), "install", f"sillytavern@{version}", "--no-audit", "--no-fund",
                            "--loglevel=error", "--prefix", str(scratch)], check=True, timeout=3600,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if root.exists():  # another process installed it meanwhile
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                scratch.rename(root)  # atomic: a half-done install is never used
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    warm = root.parent / f".warm-{uuid.uuid4().hex}"
    with SillyTavern(warm, package):  # compiles and caches the front end inside the package
        pass
    shutil.rmtree(warm, ignore_errors=True)
    (root / ".ready").write_text(version)
    return package


def config(port: int, data_root: Path) -> dict[str, Any]:
    """SillyTavern's config.yaml for a test: loopback only, nothing fetched from the internet."""
    return {
        "dataRoot": str(data_root), "listen": False, "port": port,
        "protocol": {"ipv4": True, "ipv6": False},
        "browserLaunch": {"enabled": False},  # (older versions: autorun)
        "autorun": False,
        "whitelistMode": True, "enableForwardedWhitelist": False, "whitelist": ["127.0.0.1", "::1"],
        "extensions": {"enabled": True, "autoUpdate": False, "models": {"autoDownload": False}},
        "enableExtensionsAutoUpdate": False, "enableDownloadableTokenizers": False,
        "enableServerPlugins": False, "enableServerPluginsAutoUpdate": False,
        "skipContentCheck": False, "logging": {"enableAccessLog": False, "minLogLevel": 1},
        "backups": {"chat": {"enabled": False}},
    }


class SillyTavern:
    """`node server.js` on a free 127.0.0.1 port, its data in `workdir`; `url` once `start()` returned."""

    def __init__(self, workdir: Path, package: Path | None = None) -> None:
        from tests.conftest import free_port

        self.package = package or install()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = workdir / "data"
        self.log = workdir / "sillytavern.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SillyTavern":
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config(self.port, self.data), sort_keys=False))
        env = {**os.environ, "NODE_ENV": "production", "NO_UPDATE_NOTIFIER": "1"}
        self.proc = subprocess.Popen([_tool("node"), "server.js", "--configPath", str(path)], cwd=self.package,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:  # readiness poll of its own page, not a sleep standing in for it
            if self.proc.poll() is not None:
                raise RuntimeError(f"SillyTavern exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"SillyTavern did not answer in {READY_SECONDS} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> "SillyTavern":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
