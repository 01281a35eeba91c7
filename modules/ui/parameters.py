"""Parameters tab: presets (load, save, delete, restore, neutralize) and one control per `Preset` field.

Every control is generated from the `Preset` model: its kind from the field's type, its range from
the field's bounds, its tooltip from the description, its column from the field's group. The
controls are created before the tabs (render=False) so the Chat and Notebook tabs can read them;
`render()` places them in this tab. A generation reads the controls' current values, so a change
applies to the next generation without any save step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from modules.loaders import registry
from modules.app import App
from modules.presets import Preset, PresetError, field_group, field_text, field_text_kind, neutral_samplers
from modules.render import literal
from modules.ui import constraints
from modules.ui.icons import icon

GROUPS = {"curve": "Curve shape", "cutoffs": "Cutoffs", "repetition": "Repetition", "other": "Other"}
# Validation allows more than a slider can usefully show; these are the slider ends (a preset with
# a larger value widens its slider when it loads). Temperatures go as far as a preset may (5), as in
# text-generation-webui: the high end is what people reach for with min-p or dynamic temperature.
UI_MAX = {"max_new_tokens": 4096, "top_k": 200, "repetition_penalty": 2.0, "smoothing_factor": 5.0}
# Integers whose useful range is too wide for a slider.
NUMBER_FIELDS = {"seed", "truncation_length", "repetition_penalty_range"}
# A confirm() in the browser before Delete; a cancelled dialog sends no name and nothing happens.
CONFIRM_DELETE_JS = "(name) => (name && confirm(`Delete preset ${name}?`)) ? name : null"


def _bounds(field: FieldInfo) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", lo) if getattr(meta, "ge", None) is not None else lo
        hi = getattr(meta, "le", hi) if getattr(meta, "le", None) is not None else hi
    return lo, hi


def _slider_max(name: str, field: FieldInfo, value: Any) -> float:
    hi = _bounds(field)[1]
    return max(UI_MAX.get(name, hi), value)


def _control(name: str, field: FieldInfo, value: Any, note: str = "") -> gr.components.Component:
    label = name + note
    common = dict(label=label, info=field.description, render=False, elem_id=f"param-{name}",
                  interactive=not note)
    if field_group(name) == "constraint":  # hidden: the "Constrain output" editors set it (modules/ui/constraints.py)
        return gr.Textbox(value=value, visible=False, **common)
    if field.annotation is bool:
        return gr.Checkbox(value=value, **common)
    kind = field_text_kind(name)
    if kind is not None or field.annotation is str:
        lines = 8 if kind == "lines" else 1
        return gr.Textbox(value=field_text(name, value), lines=lines, max_lines=max(lines, 4), **common)
    lo, hi = _bounds(field)
    if name in NUMBER_FIELDS or hi is None or lo is None:
        return gr.Number(value=value, precision=0 if field.annotation is int else None, **common)
    step = 1 if field.annotation is int else 0.01
    return gr.Slider(minimum=lo, maximum=_slider_max(name, field, value), value=value, step=step, **common)


def control_value(name: str, value: Any) -> Any:
    """The update that shows `value` in the control for `name` (sliders widen for large values)."""
    field = Preset.model_fields[name]
    if field_text_kind(name) is not None:
        return field_text(name, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in NUMBER_FIELDS:
        lo, hi = _bounds(field)
        if lo is not None and hi is not None:
            return gr.Slider(value=value, maximum=_slider_max(name, field, value))
    return value


def unsupported_keys(app: App) -> set[str]:
    """Preset keys the loaded backend ignores (none for Transformers; none when no model is loaded)."""
    backend = app.models.current()
    supported = registry.supported_samplers(backend) if backend is not None else None
    if supported is None:
        return set()
    return set(Preset.model_fields) - set(supported)


def model_default_choice(app: App) -> str | None:
    """The preset remembered for the loaded model, if any (selected when that model loads)."""
    backend = app.models.current()
    return app.presets.model_default(backend.name) if backend is not None else None


@dataclass
class ParameterControls:
    dropdown: gr.Dropdown
    controls: dict[str, gr.components.Component]
    status: gr.Markdown

    @property
    def inputs(self) -> list[gr.components.Component]:
        return list(self.controls.values())

    def preset_from(self, values: list[Any] | tuple[Any, ...]) -> Preset:
        """The Preset for the controls' current values (raises pydantic's ValidationError if invalid)."""
        data = dict(zip(self.controls, values))
        for name, field in Preset.model_fields.items():
            if data.get(name) is None:
                data.pop(name, None)
            elif field.annotation is int:
                data[name] = int(data[name])
        return Preset.model_validate(data)

    def values_of(self, preset: Preset) -> list[Any]:
        return [control_value(name, getattr(preset, name)) for name in self.controls]


def create_controls(app: App) -> ParameterControls:
    start = app.start_preset()
    names = app.presets.names()
    chosen = app.start_preset_name()
    dropdown = gr.Dropdown(choices=names, value=chosen if chosen in names else None,
                           label="Preset", elem_id="preset-dropdown", render=False, interactive=True)
    backend = app.models.current()
    off = unsupported_keys(app)
    note = f" (not supported by {backend.loader if backend is not None else 'this backend'})"
    controls = {name: _control(name, field, getattr(start, name), note if name in off else "")
                for name, field in Preset.model_fields.items()}
    return ParameterControls(dropdown, controls, gr.Markdown(render=False, elem_id="preset-status"))


def _error_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "preset"
    return f"⚠️ {key}: {first['msg']}"


def render(app: App, params: ParameterControls) -> None:
    with gr.Row():
        params.dropdown.render()
        refresh = gr.Button("Refresh", scale=0, min_width=100, elem_id="preset-refresh", icon=icon("refresh"))
        restore = gr.Button("Restore", scale=0, min_width=90, elem_id="preset-restore")
        neutralize = gr.Button("Neutralize samplers", scale=0, min_width=160, elem_id="preset-neutralize")
        delete = gr.Button("Delete", variant="stop", scale=0, min_width=90, elem_id="preset-delete")
    with gr.Row():
        save_name = gr.Textbox(label="Save as", placeholder="preset name", elem_id="preset-save-name", scale=3)
        save = gr.Button("Save", variant="primary", scale=0, min_width=90, elem_id="preset-save")
        model_default = gr.Button("Default for this model", scale=0, min_width=170, elem_id="preset-model-default")
    params.status.render()
    groups: dict[str, list[str]] = {}
    for name in Preset.model_fields:
        groups.setdefault(field_group(name), []).append(name)
    with gr.Row():
        for group, title in GROUPS.items():
            if group not in groups:
                continue
            with gr.Column(elem_classes=["param-group"]):
                gr.Markdown(f"### {title}")
                for name in groups[group]:
                    params.controls[name].render()
    follow_constraints = constraints.render(app, params)
    outputs = [*params.inputs, params.status]

    def load_preset(name: str | None, *values: Any) -> list[Any]:
        """The preset's values in the controls. When they are what the controls show already (the preset
        just saved under this name, selected by the save), the status line keeps saying "Saved"."""
        if not name:
            return [gr.skip()] * (len(params.controls) + 1)
        try:
            preset = app.presets.load(name)
        except PresetError as exc:
            return [gr.skip()] * len(params.controls) + [f"⚠️ {literal(exc)}"]
        try:
            unchanged = bool(values) and params.preset_from(values) == preset
        except ValidationError:
            unchanged = False
        return params.values_of(preset) + [gr.skip() if unchanged else f"Loaded preset **{literal(name)}**."]

    def save_preset(name: str, *values: Any):
        name = (name or "").strip()
        if not name:
            return gr.skip(), "⚠️ type a name for the preset first"
        try:
            preset = params.preset_from(values)
            app.presets.save(name, preset)
        except ValidationError as exc:
            return gr.skip(), _error_line(exc)
        except PresetError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"
        return gr.Dropdown(choices=app.presets.names(), value=name), f"Saved preset **{literal(name)}**."

    def delete_preset(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        try:
            app.presets.delete(name)
        except PresetError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}"
        return gr.Dropdown(choices=app.presets.names(), value=None), f"Deleted preset **{literal(name)}**."

    def neutral(*values: Any) -> list[Any]:
        try:
            preset = params.preset_from(values)
        except ValidationError:
            preset = Preset()
        return params.values_of(neutral_samplers(preset)) + ["Samplers set to neutral (not saved)."]

    def remember_for_model(name: str | None) -> str:
        backend = app.models.current()
        if backend is None:
            return "⚠️ no model is loaded"
        if not name:
            return "⚠️ pick a preset first"
        try:
            app.presets.set_model_default(backend.name, name)
        except PresetError as exc:
            return f"⚠️ {literal(exc)}"
        return f"**{literal(name)}** will be selected when **{literal(backend.name)}** loads."

    def refresh_all():
        """Reload the preset list, select the loaded model's default preset, mark unsupported samplers."""
        names = app.presets.names()
        backend = app.models.current()
        remembered = model_default_choice(app)
        off = unsupported_keys(app)
        loader = backend.loader if backend is not None else ""
        marks = [gr.update(label=name + (f" (not supported by {loader})" if name in off else ""),
                           interactive=name not in off) for name in params.controls]
        chosen = gr.Dropdown(choices=names, value=remembered) if remembered in names else gr.Dropdown(choices=names)
        return [chosen, *marks]

    follow_constraints(params.dropdown.change(load_preset, [params.dropdown, *params.inputs], outputs,
                                              api_name="load_preset"))
    follow_constraints(restore.click(load_preset, params.dropdown, outputs, api_visibility="private"))
    save.click(save_preset, [save_name, *params.inputs], [params.dropdown, params.status], api_name="save_preset")
    delete.click(delete_preset, params.dropdown, [params.dropdown, params.status], js=CONFIRM_DELETE_JS,
                 api_visibility="private")
    follow_constraints(neutralize.click(neutral, params.inputs, outputs, api_visibility="private"))
    model_default.click(remember_for_model, params.dropdown, params.status, api_visibility="private")
    refresh.click(refresh_all, None, [params.dropdown, *params.inputs], api_visibility="private")
    # On every page load too: the page is built once at start, but presets saved since must be listed.
    gr.on(None, refresh_all, None, [params.dropdown, *params.inputs], api_visibility="private",
          show_progress="hidden")


def follow_model(app: App, params: ParameterControls, model_status: gr.components.Component) -> None:
    """Select the loaded model's remembered preset whenever the model status changes (a load)."""
    def pick():
        name = model_default_choice(app)
        return gr.Dropdown(value=name) if name else gr.skip()

    model_status.change(pick, None, params.dropdown, api_visibility="private", show_progress="hidden")
