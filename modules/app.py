"""App: the one object that owns settings, presets, the model manager and the pipeline.

`server.py` builds one and hands it to the UI builders and API routers; nothing else is global, so
tests can build two Apps side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.characters import CharacterStore
from modules.chat import TemplateLibrary
from modules.generation import FairQueue, Pipeline
from modules.loaders.base import LoadOptions
from modules.models import ModelManager
from modules.presets import Preset, PresetError, PresetStore
from modules.settings import Settings
from modules.store import ChatStore


@dataclass
class App:
    settings: Settings
    presets: PresetStore
    models: ModelManager
    queue: FairQueue
    pipeline: Pipeline
    store: ChatStore
    characters: CharacterStore
    templates: TemplateLibrary

    @classmethod
    def build(cls, settings: Settings) -> "App":
        import torch

        torch.set_num_threads(settings.torch_threads())
        models = ModelManager(settings.models_dir, LoadOptions(dtype=settings.dtype, device_map=settings.device_map,
                                                               threads=settings.threads))
        queue = FairQueue(settings.max_queue)
        return cls(settings=settings, presets=PresetStore(settings.presets_dir), models=models, queue=queue,
                   pipeline=Pipeline(models, queue), store=ChatStore(settings.user_data / "chats.sqlite"),
                   characters=CharacterStore(settings.characters_dir),
                   templates=TemplateLibrary(settings.instruction_templates_dir))

    def start_preset(self) -> Preset:
        """The preset named by the settings, or neutral values if it cannot be read."""
        try:
            return self.presets.load(self.settings.preset)
        except PresetError:
            return Preset()
