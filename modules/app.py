"""App: the one object that owns settings, presets, the model manager and the pipeline.

`server.py` builds one and hands it to the UI builders and API routers; nothing else is global, so
tests can build two Apps side by side.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from modules.characters import CharacterStore
from modules.chat import TemplateLibrary
from modules.extensions import Extensions
from modules.download import Downloads
from modules.generation import Pipeline
from modules.models import ModelManager
from modules.presets import Preset, PresetError, PresetStore
from modules.settings import Settings
from modules.store import ChatStore

if TYPE_CHECKING:
    from modules.conversation import ChatService
    from modules.tools.registry import ToolRegistry

BUILTIN_EXTENSIONS = Path(__file__).resolve().parents[1] / "extensions"


@dataclass
class App:
    settings: Settings
    presets: PresetStore
    models: ModelManager
    pipeline: Pipeline
    extensions: Extensions
    store: ChatStore
    characters: CharacterStore
    templates: TemplateLibrary
    downloads: Downloads
    stopping: threading.Event = field(default_factory=threading.Event)

    @cached_property
    def tools(self) -> "ToolRegistry":
        """The tools chats may use: built-ins, user_data/tools/*.py, and the MCP servers' (connected by
        `start_tools`, in the background)."""
        from modules.tools.registry import ToolRegistry

        return ToolRegistry.from_settings(self.settings, self.extensions)

    def start_tools(self) -> None:
        """Read the user tool files and connect the MCP servers of mcp.json (each in the background; a
        server that fails shows its error in the Session tab and takes nothing else down)."""
        self.tools.mcp.start()

    @classmethod
    def build(cls, settings: Settings) -> "App":
        # torch is not imported here: it loads with the model, after the page is up (the Transformers
        # backend sets torch's thread count then)
        threads = settings.cpu_threads()
        # Each loaded model has its own queue: as many of its requests run at once as its backend batches.
        models = ModelManager(settings.models_dir, settings.loras_dir, settings.user_data / "offload",
                              threads=threads, trust_remote_code=settings.trust_remote_code,
                              batch_size=settings.batch_size, budget=settings.model_budget(),
                              max_waiting=settings.max_queue, aliases=settings.model_alias,
                              remote_options=settings.load_options("remote") if settings.remote_url else None)
        extensions = Extensions.from_settings(settings, BUILTIN_EXTENSIONS, enable=False)
        presets = PresetStore(settings.presets_dir, settings.user_data / "model_presets.yaml")
        app = cls(settings=settings, presets=presets, models=models, pipeline=Pipeline(models, extensions),
                  extensions=extensions, store=ChatStore(settings.user_data / "chats.sqlite"),
                  characters=CharacterStore(settings.characters_dir),
                  templates=TemplateLibrary(settings.instruction_templates_dir),
                  downloads=Downloads(settings.models_dir, settings.loras_dir))
        extensions.start(app)  # after the App exists: text-generation-webui extensions read it as they load
        return app

    @cached_property
    def chats(self) -> "ChatService":
        """Every action on a chat (send, regenerate, edit, branch, ...): the Chat tab's logic, Gradio-free."""
        from modules.conversation import ChatService

        return ChatService(self)

    def unreadable_files(self) -> dict[str, str]:
        """{"preset NAME" / "character NAME" / "template NAME": why} for files in the user's folders that
        cannot be used. Each reports its own error when chosen; this lists them all in one place (the
        log at start, the Session tab) so a hand-broken file is noticed without hunting for it."""
        found: dict[str, str] = {}
        for kind, source in (("preset", self.presets), ("character", self.characters), ("template", self.templates)):
            for name, why in source.problems().items():
                found[f"{kind} {name}"] = why
        return found

    def load_at_start(self, after: threading.Event | None = None) -> str | None:
        """Start loading the model named by the settings (or the default one) in the background (once
        `after` is set, when given)."""
        name = self.settings.model or self.models.default_model()
        if name is None:
            return None
        # a bad name gets no loader here; the load itself reports it, in the log and the Model tab
        loader = self.settings.loader or self.models.default_loader(name)
        options = self.settings.load_options(loader) if loader else {}
        self.models.load_in_background(name, loader, options, after=after)
        return name

    def start_idle_watch(self) -> threading.Thread:
        """Unload each model after --idle-unload-minutes without use; its next request reloads it."""
        idle = (self.settings.idle_unload_minutes or 0) * 60

        def watch() -> None:
            while not self.stopping.wait(min(30.0, idle / 4)):
                self.models.unload_if_idle(idle)

        thread = threading.Thread(target=watch, name="idle-unload", daemon=True)
        thread.start()
        return thread

    def start_preset_name(self) -> str:
        """The preset remembered for the model loaded at start, else the one the settings name."""
        model = self.settings.model or self.models.default_model()
        return (self.presets.model_default(model) if model else None) or self.settings.preset

    def start_preset(self) -> Preset:
        """The start preset (see `start_preset_name`), or neutral values if it cannot be read."""
        try:
            return self.presets.load(self.start_preset_name())
        except PresetError:
            return Preset()
