"""App: the one object that owns settings, presets, the model manager and the pipeline.

`server.py` builds one and hands it to the UI builders and API routers; nothing else is global, so
tests can build two Apps side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.generation import FairQueue, Pipeline
from modules.loaders.base import LoadOptions
from modules.models import ModelManager
from modules.presets import Preset, PresetError, PresetStore
from modules.settings import Settings


@dataclass
class App:
    settings: Settings
    presets: PresetStore
    models: ModelManager
    queue: FairQueue
    pipeline: Pipeline

    @classmethod
    def build(cls, settings: Settings) -> "App":
        import torch

        torch.set_num_threads(settings.torch_threads())
        models = ModelManager(settings.models_dir, LoadOptions(dtype=settings.dtype, device_map=settings.device_map,
                                                               threads=settings.threads))
        queue = FairQueue(settings.max_queue)
        return cls(settings=settings, presets=PresetStore(settings.presets_dir,
                                                              settings.user_data / "model_presets.yaml"), models=models, queue=queue,
                   pipeline=Pipeline(models, queue))

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
