"""Parameters tab: preset dropdown and one control per `Preset` field, generated from the model.

The controls are created before the tabs (render=False) so the Chat and Notebook tabs can read them;
`render()` places them in this tab. A generation reads the controls' current values, so a change
applies to the next generation without any save step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic.fields import FieldInfo

from modules.app import App
from modules.presets import Preset, PresetError

GROUPS = {"curve": "Curve shape", "cutoffs": "Cutoffs", "repetition": "Repetition", "other": "Other"}
# Validation allows more than a slider can usefully show; these are the slider ends.
UI_MAX = {"max_new_tokens": 4096, "top_k": 200, "temperature": 2.0, "repetition_penalty": 2.0}


def _bounds(field: FieldInfo) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", lo) if getattr(meta, "ge", None) is not None else lo
        hi = getattr(meta, "le", hi) if getattr(meta, "le", None) is not None else hi
    return lo, hi


def _control(name: str, field: FieldInfo, value: Any) -> gr.components.Component:
    label = name
    info = field.description
    if field.annotation is bool:
        return gr.Checkbox(value=value, label=label, info=info, render=False, elem_id=f"param-{name}")
    lo, hi = _bounds(field)
    if name == "seed" or hi is None or lo is None:
        return gr.Number(value=value, label=label, info=info, precision=0, render=False, elem_id=f"param-{name}")
    hi = UI_MAX.get(name, hi)
    step = 1 if field.annotation is int else 0.01
    return gr.Slider(minimum=lo, maximum=hi, value=value, step=step, label=label, info=info, render=False,
                     elem_id=f"param-{name}")


@dataclass
class ParameterControls:
    dropdown: gr.Dropdown
    controls: dict[str, gr.components.Component]
    status: gr.Markdown

    @property
    def inputs(self) -> list[gr.components.Component]:
        return list(self.controls.values())

    def preset_from(self, values: list[Any] | tuple[Any, ...]) -> Preset:
        """The Preset for the controls' current values (raises pydantic's ValidationError if out of range)."""
        data = dict(zip(self.controls, values))
        for name, field in Preset.model_fields.items():
            if field.annotation is int and data.get(name) is not None:
                data[name] = int(data[name])
        return Preset.model_validate(data)


def create_controls(app: App) -> ParameterControls:
    start = app.start_preset()
    names = app.presets.names()
    dropdown = gr.Dropdown(choices=names, value=app.settings.preset if app.settings.preset in names else None,
                           label="Preset", elem_id="preset-dropdown", render=False, interactive=True)
    controls = {name: _control(name, field, getattr(start, name)) for name, field in Preset.model_fields.items()}
    return ParameterControls(dropdown, controls, gr.Markdown(render=False, elem_id="preset-status"))


def render(app: App, params: ParameterControls) -> None:
    with gr.Row():
        params.dropdown.render()
        refresh = gr.Button("🔄", scale=0, min_width=50, elem_id="preset-refresh")
    params.status.render()
    groups: dict[str, list[str]] = {}
    for name, field in Preset.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        groups.setdefault(str(extra.get("group", "other")), []).append(name)
    with gr.Row():
        for group, title in GROUPS.items():
            if group not in groups:
                continue
            with gr.Column(elem_classes=["param-group"]):
                gr.Markdown(f"### {title}")
                for name in groups[group]:
                    params.controls[name].render()

    def load_preset(name: str | None) -> list[Any]:
        if not name:
            return [gr.skip()] * (len(params.controls) + 1)
        try:
            preset = app.presets.load(name)
        except PresetError as exc:
            return [gr.skip()] * len(params.controls) + [f"⚠️ {exc}"]
        return [getattr(preset, key) for key in params.controls] + [f"Loaded preset **{name}**."]

    params.dropdown.change(load_preset, params.dropdown, [*params.inputs, params.status], api_name="load_preset")
    refresh.click(lambda: gr.Dropdown(choices=app.presets.names()), None, params.dropdown, api_visibility="private")
