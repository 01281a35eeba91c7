"""Model tab: pick a model (or a remote engine's model), choose the loader and its options, load it
beside the others (within --max-loaded-models and the memory budgets), unload, reload, apply LoRAs,
save per-model settings, download from the hub (modules/ui/downloads.py), evaluate perplexity.

The table lists the loaded models with the memory each takes; "Load" makes the loaded model the
default: what new chats and the Notebook use (each chat keeps its own, see the Chat tab's Model).

The option controls are generated from each loader's options model in the loader registry
(modules/loaders/registry.py), so the tab, the API and models/config-user.yaml accept exactly the same
things. The tab imports no loader module: it asks the registry and the model manager.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, get_args, get_origin

import gradio as gr
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from modules.app import App
from modules.loaders.registry import LOADERS, REMOTE_PREFIX
from modules.models import ModelError, describe_backend
from modules.render import literal
from modules.ui import downloads
from modules.ui.icons import icon

log = logging.getLogger(__name__)

OPTIONS = {name: spec.options for name, spec in LOADERS.items()}
REASONING_CHOICES = ["auto", "think", "gpt-oss", "off", "custom"]


def _control(loader: str, name: str, field: FieldInfo) -> gr.components.Component:
    annotation = field.annotation
    args = set(get_args(annotation))
    label, info, key = name, field.description, f"{loader.replace('.', '')}-{name}"
    size = {"min_width": 220}  # controls wrap onto several rows instead of squeezing into one
    if annotation is bool:
        return gr.Checkbox(value=field.default, label=label, info=info, elem_id=f"opt-{key}", **size)
    literal = next((a for a in (annotation, *args) if get_origin(a) is not None and get_args(a)
                    and all(isinstance(x, str) for x in get_args(a))), None)
    if literal is not None:
        return gr.Dropdown(choices=list(get_args(literal)), value=field.default, label=label, info=info,
                           elem_id=f"opt-{key}", **size)
    if SecretStr in args or annotation is SecretStr:
        return gr.Textbox(value="", label=label, info=info, type="password", elem_id=f"opt-{key}", **size)
    if int in args or annotation is int or float in args or annotation is float:
        # Optional numbers show 0 for "not set" (every such option's valid range excludes 0).
        return gr.Number(value=field.default if field.default is not None else 0, label=label,
                         info=f"{info} (0 = default)" if field.default is None else info, elem_id=f"opt-{key}",
                         precision=0 if (int in args or annotation is int) else None, **size)
    return gr.Textbox(value=field.default or "", label=label, info=info, elem_id=f"opt-{key}", **size)


def _clean(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """UI values -> option dict: empty text and empty numbers mean "not set"."""
    out = {}
    for name, value in values.items():
        optional = model.model_fields[name].default is None
        if value in ("", None) or (optional and value == 0 and not isinstance(value, bool)):
            continue
        if isinstance(value, float) and value.is_integer() and model.model_fields[name].annotation in (int, int | None):
            value = int(value)
        out[name] = value
    return out


LOADED_COLUMNS = ["model", "state", "default", "loader", "device", "memory MiB", "running", "waiting"]


def loaded_rows(app: App) -> list[list[Any]]:
    """The loaded models table: one row each, most recently used first."""
    return [[m["name"], m["state"], "✓" if m["default"] else "", m["loader"], m["device"],
             "" if m["memory_mib"] is None else m["memory_mib"], m["running"], m["waiting"]]
            for m in app.models.loaded()] or [["(none)", "", "", "", "", "", "", ""]]


def header_line(app: App, name: str | None) -> str:
    """The page header: the model the open chat answers with (None: the default model), and its state."""
    name = name or app.models.default
    if not name:
        return "No model loaded" + (f" — loading {literal(app.models.loading)}…" if app.models.loading else "")
    backend = app.models.get(name)
    if backend is not None:
        return literal(describe_backend(backend))
    if app.models.loading == name:
        return f"Loading {literal(name)}…"
    return f"No model loaded for this chat: {literal(name)} loads with the next message"


def links_note(app: App) -> str:
    """Symbolic links in models/ that are not listed, and what to do instead (empty when there are none)."""
    refused = app.models.refused_links()
    if not refused:
        return ""
    listed = ", ".join(f"{literal(name)} (→ {literal(target)})" for name, target in refused)
    return (f"⚠️ Not listed: {listed}. Parlour does not follow symbolic links out of {literal(app.models.models_dir)} "
            "(a name must stay inside its folder): move or copy the model into it, or start with "
            "`--models-dir` set to the folder that holds it.")


def render(app: App) -> tuple[gr.Markdown, gr.Code, Callable[[], tuple[str, str]], gr.Markdown]:
    """Build the tab. Returns its status line, the info box, `describe()` (both lines' text) and the
    download status (it changes when a download ends and the list of models may have grown)."""
    current = app.models.current()
    with gr.Row():
        dropdown = gr.Dropdown(choices=app.models.list(), value=current.name if current else app.models.loading,
                               label="Model", elem_id="model-dropdown", interactive=True, scale=6,
                               allow_custom_value=False)
        loader = gr.Dropdown(choices=list(OPTIONS), value=current.loader if current else "transformers",
                             label="Loader", elem_id="model-loader", scale=2)
        refresh = gr.Button("Refresh", elem_id="model-refresh", scale=1, min_width=100, icon=icon("refresh"))
    links = gr.Markdown(links_note(app), elem_id="model-links")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="model-load")
        reload = gr.Button("Reload", elem_id="model-reload")
        unload = gr.Button("Unload", elem_id="model-unload")
        save = gr.Button("Save settings", elem_id="model-save-settings")
    status = gr.Markdown(literal(app.models.status()), elem_id="model-status")
    budget = app.models.budget
    gr.Markdown(f"Up to {budget.describe()} stay loaded; loading another unloads the least recently used idle "
                "one (--max-loaded-models, --gpu-memory-budget, --cpu-memory-budget). **Unload** unloads the "
                "model chosen above.", elem_id="model-budget")
    table = gr.Dataframe(value=lambda: loaded_rows(app), headers=LOADED_COLUMNS, interactive=False,
                         label="Loaded models", elem_id="loaded-models")

    groups: dict[str, gr.Group] = {}
    controls: dict[str, dict[str, gr.components.Component]] = {}
    for name, model in OPTIONS.items():
        with gr.Group(visible=name == (current.loader if current else "transformers")) as group:
            gr.Markdown(f"**{name} options**")
            controls[name] = {}
            fields = model.model_fields.items()
            with gr.Row():
                controls[name].update({k: _control(name, k, f) for k, f in fields if f.annotation is not bool})
            with gr.Row():
                controls[name].update({k: _control(name, k, f) for k, f in fields if f.annotation is bool})
        groups[name] = group
    with gr.Row(visible=bool(app.settings.remote_url)) as remote_row:
        remote_models = gr.Dropdown(label="Models on the remote server", choices=[], elem_id="remote-models",
                                    scale=4)
        remote_fetch = gr.Button("List remote models", elem_id="remote-fetch", scale=1)

    with gr.Accordion("Reasoning markers", open=False):
        with gr.Row():
            reasoning_kind = gr.Dropdown(REASONING_CHOICES, value="auto", label="Reasoning blocks",
                                         info="auto: read from the chat template (<think>, GPT-OSS's channels); "
                                              "custom: the markers beside. Saved with Save settings.",
                                         elem_id="reasoning-kind")
            reasoning_start = gr.Textbox(label="Start marker", placeholder="[THINK]", elem_id="reasoning-start")
            reasoning_end = gr.Textbox(label="End marker", placeholder="[/THINK]", elem_id="reasoning-end")
    reasoning_controls = [reasoning_kind, reasoning_start, reasoning_end]

    with gr.Accordion("LoRA adapters", open=False):
        with gr.Row():
            loras = gr.Dropdown(choices=app.models.list_loras(), multiselect=True, label="LoRAs (from loras/)",
                                elem_id="lora-dropdown", scale=6)
            lora_apply = gr.Button("Apply", elem_id="lora-apply", scale=1)
            lora_remove = gr.Button("Remove all", elem_id="lora-remove", scale=1)
    info = gr.Code(language="json", label="Model info", elem_id="model-info", interactive=False)
    download_status = downloads.render(app)
    all_controls = [c for name in OPTIONS for c in controls[name].values()]

    def options_from(chosen: str, values: tuple[Any, ...]) -> dict[str, Any]:
        offset = 0
        for name, group in controls.items():
            if name == chosen:
                return _clean(OPTIONS[name], dict(zip(group, values[offset:offset + len(group)])))
            offset += len(group)
        raise ModelError(f"unknown loader {chosen!r}")

    def describe() -> tuple[str, str]:
        data = app.models.info()
        return literal(app.models.status()), json.dumps(data, indent=2, default=str) if data else ""

    def on_select(name: str | None):
        """Picking a model infers its loader and restores its saved options and reasoning markers."""
        skip = [gr.skip()] * (1 + len(groups) + len(all_controls) + len(reasoning_controls))
        if not name:
            return skip
        try:
            saved = app.models.saved.get(name) if not name.startswith(REMOTE_PREFIX) else None
            chosen = app.models.default_loader(name) or "transformers"
        except ModelError as exc:
            gr.Warning(literal(exc))
            return skip
        values = []
        for loader_name, group in controls.items():
            stored = saved.options if saved is not None and loader_name == chosen else {}
            values += [stored.get(key, OPTIONS[loader_name].model_fields[key].default) for key in group]
        values = ["" if isinstance(v, SecretStr) else v for v in values]
        marks = saved.reasoning if saved is not None else None
        reasoning_values = (["custom", marks["start"], marks["end"]] if isinstance(marks, dict)
                            else [marks or "auto", "", ""])
        return [chosen] + [gr.Group(visible=n == chosen) for n in groups] + values + reasoning_values

    def on_loader(chosen: str):
        return [gr.Group(visible=n == chosen) for n in groups] + [gr.Row(visible=chosen == "remote")]

    def on_load(name: str | None, chosen: str, *values: Any, progress: gr.Progress = gr.Progress()):
        if not name:
            return "⚠️ choose a model first", gr.skip()
        start = time.perf_counter()
        progress(0.0, desc=f"Loading {name}")
        try:
            options = options_from(chosen, values)
            if chosen == "remote" and app.settings.remote_url and "base_url" not in options:
                options.update(app.settings.load_options("remote"))
            app.models.load(name, chosen, options, progress=lambda f, msg: progress(f, desc=msg))
        except Exception as exc:  # noqa: BLE001 - a loader's surprise is still one line, never a bare "Error"
            if not isinstance(exc, ModelError):
                log.exception("loading %s failed", name)
            kept = app.models.current()
            still = f" — still loaded: {kept.name}" if kept else ""
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return "⚠️ " + literal(f"could not load {name}: {reason}{still}"), gr.skip()
        line, details = describe()
        return f"{line} — loaded in {time.perf_counter() - start:.1f} s", details

    def on_reload(*values: Any, progress: gr.Progress = gr.Progress()):
        backend = app.models.current()
        if backend is None:
            return "⚠️ no model is loaded", gr.skip()
        return on_load(backend.name, backend.loader, *values, progress=progress)

    def on_unload(name: str | None) -> tuple[str, str]:
        """Unload the model chosen in the dropdown (if it is loaded), else the default one."""
        target = name if name and app.models.get(name) is not None else app.models.default
        try:
            if target is not None:
                app.models.unload(target)
        except ModelError as exc:  # a training job holds the model
            return f"⚠️ {literal(exc)}", gr.skip()
        return describe()

    def on_save(name: str | None, chosen: str, *values: Any) -> str:
        if not name:
            return "⚠️ choose a model first"
        kind, start, end = values[len(all_controls):]
        marks: Any = {"start": start or "", "end": end or ""} if kind == "custom" else (None if kind == "auto" else kind)
        try:
            options = {k: v for k, v in options_from(chosen, values[:len(all_controls)]).items() if k != "api_key"}
            app.models.save_settings(name, chosen, options, reasoning_setting=marks)
        except ModelError as exc:
            return f"⚠️ {literal(exc)}"
        return f"Saved settings for **{literal(name)}** in {literal(app.models.saved.path.name)}."

    def on_fetch_remote() -> Any:
        try:
            names = app.models.remote_models(app.settings.load_options("remote"))
        except ModelError as exc:
            gr.Warning(literal(exc))
            return gr.skip()
        return gr.Dropdown(choices=names)

    def on_loras(names: list[str] | None) -> tuple[str, str]:
        try:
            applied = app.models.set_loras(list(names or []))
        except ModelError as exc:
            return f"⚠️ {literal(exc)}", gr.skip()
        line, details = describe()
        return f"{line} — LoRAs: {literal(', '.join(applied) or 'none')}", details

    def lists():
        return gr.Dropdown(choices=app.models.list()), gr.Dropdown(choices=app.models.list_loras())

    refresh.click(lambda: (*lists(), links_note(app)), None, [dropdown, loras, links], api_name="model_refresh")
    download_status.change(lists, None, [dropdown, loras], api_visibility="private", show_progress="hidden")
    dropdown.change(on_select, dropdown, [loader, *groups.values(), *all_controls, *reasoning_controls],
                    api_visibility="private")
    remote_models.change(lambda n: (gr.Dropdown(choices=app.models.list() + [n], value=n), "remote"),
                         remote_models, [dropdown, loader], api_visibility="private")
    loader.change(on_loader, loader, [*groups.values(), remote_row], api_visibility="private")
    load.click(on_load, [dropdown, loader, *all_controls], [status, info], api_name="model_load")
    reload.click(on_reload, all_controls, [status, info], api_name="model_reload")
    unload.click(on_unload, dropdown, [status, info], api_name="model_unload")
    status.change(lambda: loaded_rows(app), None, table, api_visibility="private", show_progress="hidden")
    save.click(on_save, [dropdown, loader, *all_controls, *reasoning_controls], status, api_name="model_save_settings")
    remote_fetch.click(on_fetch_remote, None, remote_models, api_visibility="private")
    lora_apply.click(on_loras, loras, [status, info], api_name="lora_apply")
    lora_remove.click(lambda: on_loras([]), None, [status, info], api_name="lora_remove")
    return status, info, describe, download_status
