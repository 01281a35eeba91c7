"""ModelManager: what is in `models/`, and the one loaded model.

The loaded backend is the only process-wide thing in Parlour; this object owns it. A new model is
loaded beside the old one and swapped in only once it works, so a broken folder never leaves the
app without the model it had.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from modules.loaders.base import Backend, LoadOptions
from modules.paths import UnsafeName, safe_child

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model that cannot be listed or loaded; the message is one line for the user."""


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class ModelManager:
    def __init__(self, models_dir: Path, options: LoadOptions) -> None:
        self.models_dir = models_dir
        self.options = options
        self._backend: Backend | None = None
        self._lock = threading.Lock()  # one load or unload at a time
        self.loading: str | None = None
        self.last_error: str | None = None

    def list(self) -> list[str]:
        """Model names: folders in models/ with a config.json (half-built `.partial` folders skipped)."""
        if not self.models_dir.is_dir():
            return []
        names = []
        for path in sorted(self.models_dir.iterdir(), key=lambda p: p.name.lower()):
            if path.name.startswith(".") or path.name.endswith(".partial") or path.is_symlink():
                continue
            if is_hf_folder(path):
                names.append(path.name)
        return names

    def default_model(self) -> str | None:
        """The model to load when none was named: the only one, or the demo model among several."""
        names = self.list()
        if len(names) == 1:
            return names[0]
        return "parlour-demo" if "parlour-demo" in names else None

    def current(self) -> Backend | None:
        return self._backend

    def path_of(self, name: str) -> Path:
        try:
            path = safe_child(self.models_dir, name)
        except UnsafeName as exc:
            raise ModelError(f"bad model name: {exc}") from exc
        if not path.exists():
            raise ModelError(f"model {name!r} is not in {self.models_dir}")
        if not is_hf_folder(path):
            raise ModelError(f"{name!r} is not a model folder (no config.json)")
        return path

    def load(self, name: str, progress: Callable[[float, str], None] | None = None) -> Backend:
        """Load `name` and make it current. On failure the previous model stays loaded."""
        say = progress or (lambda fraction, message: None)
        with self._lock:
            self.loading = name
            try:
                path = self.path_of(name)
                say(0.1, f"loading {name}")
                from modules.loaders.transformers import LoadError, TransformersBackend

                try:
                    backend = TransformersBackend(path, self.options)
                except LoadError as exc:
                    raise ModelError(str(exc)) from exc
                except MemoryError as exc:
                    raise ModelError(f"{name}: out of memory while loading") from exc
                old, self._backend = self._backend, backend
                if old is not None:
                    old.unload()
                self.last_error = None
                say(1.0, f"loaded {name}")
                log.info("loaded %s in %.1f s", name, backend.load_seconds)
                return backend
            except ModelError as exc:
                self.last_error = str(exc)
                raise
            finally:
                self.loading = None

    def unload(self) -> None:
        with self._lock:
            old, self._backend = self._backend, None
            if old is not None:
                old.unload()

    def status(self) -> str:
        """One line for the UI."""
        if self.loading:
            return f"Loading {self.loading}…"
        backend = self._backend
        if backend is None:
            return "No model loaded" + (f" — last error: {self.last_error}" if self.last_error else "")
        info = backend.info()
        return (f"{info['name']} ({info['loader']}, {info['architecture']}, {info['parameters'] / 1e6:.1f}M params, "
                f"{info['dtype']}, {info['device']}, context {info['context_length']})")

    def info(self) -> dict[str, Any] | None:
        backend = self._backend
        return backend.info() if backend is not None else None

    def load_in_background(self, name: str) -> threading.Thread:
        """Start loading `name` in a thread (server start: the page answers before the model is ready)."""
        def run() -> None:
            start = time.perf_counter()
            try:
                self.load(name)
            except ModelError as exc:
                log.error("could not load %s: %s", name, exc)
            else:
                log.info("model ready %.1f s after start of load", time.perf_counter() - start)

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        self.loading = name
        thread.start()
        return thread
