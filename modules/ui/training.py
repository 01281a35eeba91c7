"""Training tab: pick or upload a dataset (or saved chats), preview it as the model will see it, train a
LoRA on the loaded model with a live loss plot, then apply, compare or merge the adapter.

The controls come from TrainingSettings (modules/training/settings.py); the job, its checks and the
results live in modules/training/. Progress is polled once a second while a job runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import gradio as gr
import pandas as pd
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from modules.app import App
from modules.models import ModelError
from modules.perplexity import PerplexityLog
from modules.training import TrainingError
from modules.training.data import dataset_path, list_datasets, save_upload
from modules.training.job import Plan, Progress, TrainingManager
from modules.training.results import compare_perplexity, held_out_text, merge_adapter
from modules.training.settings import GROUPS, TrainingSettings
from modules.ui.chat_view import user_of
from modules.ui.icons import icon

FILE_TYPES = [".jsonl", ".json", ".txt", ".md"]


def _cuda_present() -> bool:
    """Whether this machine has an NVIDIA driver, asked without importing torch (the page is built before
    torch loads: tests/integration/test_startup.py). It only greys the QLoRA box; the plan's own check
    (torch.cuda) refuses QLoRA without a usable GPU."""
    return Path("/proc/driver/nvidia/version").exists()


def _control(name: str, field: FieldInfo, **extra: Any) -> gr.components.Component:
    common = {"label": name, "info": field.description, "elem_id": f"train-{name.replace('_', '-')}",
              "min_width": 200, **extra}
    if field.annotation is bool:
        return gr.Checkbox(value=field.default, **common)
    if get_origin(field.annotation) is Literal:
        return gr.Dropdown(choices=list(get_args(field.annotation)), value=field.default, **common)
    if field.annotation in (int, float):
        limits = {k: getattr(m, k) for m in field.metadata for k in ("ge", "le", "gt") if hasattr(m, k)}
        return gr.Number(value=field.default, minimum=limits.get("ge", limits.get("gt")), maximum=limits.get("le"),
                         precision=0 if field.annotation is int else None, **common)
    return gr.Textbox(value=field.default, **common)


def settings_from(names: list[str], values: tuple[Any, ...]) -> TrainingSettings:
    """The controls' values as TrainingSettings (TrainingError naming the first bad field)."""
    data = {n: v for n, v in zip(names, values) if v is not None}
    try:
        return TrainingSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TrainingError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def status_markdown(progress: Progress) -> str:
    if progress.state == "idle":
        return "No training job yet."
    line = f"**{progress.name}** on {progress.model}: {progress.state}"
    if progress.step or progress.state == "training":
        done = progress.step / max(1, progress.max_steps)
        line += f" `{'█' * round(20 * done)}{'░' * (20 - round(20 * done))}` {100 * done:.0f}%"
        line += f" — step {progress.step}/{progress.max_steps}, epoch {progress.epoch:.2f}"
        line += f", {progress.tokens_per_second:,.0f} tokens/s"
        if progress.eta_seconds is not None and progress.running:
            line += f", ETA {progress.eta_seconds:.0f} s"
    if progress.losses:
        line += f"<br>training loss {progress.losses[-1][1]:.4f}"
    if progress.evals:
        line += f", eval loss {progress.evals[-1][1]:.4f} (perplexity {math.exp(progress.evals[-1][1]):.2f})"
    return line + (f"<br>{progress.message}" if progress.message else "")


def plot_frames(progress: Progress) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(loss frame: training and eval loss by step, perplexity frame: eval perplexity by step)."""
    rows = [(s, v, "training loss") for s, v in progress.losses] + [(s, v, "eval loss") for s, v in progress.evals]
    ppl = [(s, math.exp(min(v, 50.0)), "eval perplexity") for s, v in progress.evals]
    return (pd.DataFrame(rows, columns=["step", "value", "series"]),
            pd.DataFrame(ppl, columns=["step", "value", "series"]))


def render(app: App) -> None:
    user_data = app.settings.user_data
    datasets_dir = user_data / "training"
    job = TrainingManager(app.models, app.settings.loras_dir, user_data / "training-runs", app.store)
    gr.Markdown("Fine-tune a LoRA adapter on the **loaded model** with your own data. Chats are formatted with "
                "the model's chat template; the loss covers the assistant's turns (greyed text in the preview is "
                "not trained on). Data files live in `user_data/training/`. Walk-through: docs/training.md.")
    with gr.Row():
        dataset = gr.Dropdown(choices=list_datasets(datasets_dir), value=None, label="Dataset (user_data/training/)",
                              elem_id="train-dataset", scale=4)
        refresh = gr.Button("", elem_id="train-refresh", scale=0, min_width=50, icon=icon("refresh"))
        upload = gr.File(label="Upload JSONL / JSON / text", file_types=FILE_TYPES, type="filepath",
                         elem_id="train-upload", scale=3)
    with gr.Row():
        use_chats = gr.Checkbox(label="Train on my saved chats instead", value=False, elem_id="train-use-chats")
        chats = gr.Dropdown(choices=[], multiselect=True, label="Saved chats", visible=False, elem_id="train-chats",
                            scale=4)
    cuda = _cuda_present()
    names = list(TrainingSettings.model_fields)
    controls = {"output": _control("output", TrainingSettings.model_fields["output"])}
    with gr.Accordion("Settings", open=False, elem_id="train-settings"):
        for group, title in GROUPS.items():
            gr.Markdown(f"**{title}**")
            with gr.Row():
                for name, field in TrainingSettings.model_fields.items():
                    if (field.json_schema_extra or {}).get("group") == group:
                        # QLoRA is bitsandbytes' CUDA path: off and greyed on a machine without a GPU
                        controls[name] = _control(name, field, interactive=cuda or name != "qlora")
    inputs = [controls[n] for n in names]
    with gr.Row():
        preview_button = gr.Button("Preview", elem_id="train-preview-button")
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        runs = gr.Dropdown(choices=job.resumable(), label="Stopped runs", elem_id="train-runs", scale=2)
        resume = gr.Button("Resume", elem_id="train-resume")
    status = gr.Markdown(status_markdown(job.progress()), elem_id="train-status")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss", y_title="loss",
                                elem_id="train-loss-plot", scale=2)
        ppl_plot = gr.LinePlot(x="step", y="value", color="series", title="Eval perplexity", y_title="perplexity",
                               elem_id="train-ppl-plot", scale=1, visible=False)
    preview = gr.HTML(elem_id="train-preview")
    with gr.Accordion("Use the adapter", open=False, elem_id="train-use"):
        with gr.Row():
            adapter = gr.Dropdown(choices=app.models.list_loras(), label="Adapter (loras/)", elem_id="train-adapter",
                                  scale=3)
            apply = gr.Button("Apply to the loaded model", elem_id="train-apply")
        with gr.Row():
            held_out = gr.Textbox(label="Held-out text for perplexity (empty: the run's eval split)", lines=3,
                                  elem_id="train-held-out", scale=3)
            compare = gr.Button("Compare perplexity before/after", elem_id="train-compare")
        with gr.Row():
            merged_name = gr.Textbox(label="New model folder in models/", elem_id="train-merge-name", scale=3)
            merge = gr.Button("Merge into a new model", elem_id="train-merge")
        result = gr.Markdown(elem_id="train-result")
    timer = gr.Timer(1.0, active=job.running())

    def source_of(name: str | None, chosen: bool, ids: list[int] | None) -> dict[str, Any]:
        if chosen:
            return {"chats": [int(i) for i in ids or []]}
        if not name:
            raise TrainingError("choose a dataset file (or upload one), or tick saved chats")
        return {"dataset": dataset_path(datasets_dir, name)}

    def make_plan(name, chosen, ids, values, request) -> Plan:
        return job.plan(settings_from(names, values), **source_of(name, chosen, ids), user=user_of(request))

    def on_upload(file: str | None):
        if not file:
            return gr.skip(), gr.skip()
        try:
            saved = save_upload(Path(file), datasets_dir)
        except TrainingError as exc:
            return gr.skip(), f"⚠️ {exc}"
        return gr.Dropdown(choices=list_datasets(datasets_dir), value=saved), f"Saved `{saved}` in user_data/training/."

    def on_use_chats(chosen: bool, request: gr.Request):
        listed = [(f"{c.title or 'untitled'} (#{c.id})", c.id) for c in app.store.list_chats(user_of(request))]
        return gr.Dropdown(choices=listed, visible=chosen)

    def on_preview(request: gr.Request, name, chosen, ids, *values):
        try:
            plan = make_plan(name, chosen, ids, values, request)
        except TrainingError as exc:
            return f"⚠️ {exc}", ""
        return f"{plan.report}; {plan.total_steps} steps", job.preview(plan)

    def on_start(request: gr.Request, name, chosen, ids, *values):
        try:
            plan = make_plan(name, chosen, ids, values, request)
            job.start(plan)
        except TrainingError as exc:
            return f"⚠️ {exc}", gr.skip(), gr.Timer(active=False)
        return status_markdown(job.progress()), job.preview(plan), gr.Timer(active=True)

    def on_resume(run: str | None):
        if not run:
            return "⚠️ choose a stopped run", gr.Timer(active=False)
        try:
            job.start(job.plan_resume(run))
        except TrainingError as exc:
            return f"⚠️ {exc}", gr.Timer(active=False)
        return status_markdown(job.progress()), gr.Timer(active=True)

    def on_tick():
        progress = job.progress()
        losses, ppl = plot_frames(progress)
        done = not progress.running
        return (status_markdown(progress), losses, gr.LinePlot(value=ppl, visible=bool(progress.evals)),
                gr.Timer(active=not done), gr.Dropdown(choices=job.resumable()) if done else gr.skip(),
                gr.Dropdown(choices=app.models.list_loras(), value=progress.adapter) if done else gr.skip())

    def on_apply(name: str | None) -> str:
        try:
            applied = app.models.set_loras([name] if name else [])
        except ModelError as exc:
            return f"⚠️ {exc}"
        return f"Applied: {', '.join(applied) or 'none'}."

    def on_compare(name: str | None, text: str, progress: gr.Progress = gr.Progress()) -> str:
        backend = app.models.current()
        source = "held-out text" if text.strip() else "eval split"
        text = text if text.strip() else held_out_text(job.last_plan, getattr(backend, "tokenizer", None))
        try:
            if not name:
                raise TrainingError("choose an adapter")
            progress(0.1, desc="scoring without and with the adapter")
            before, after = compare_perplexity(app.models, name, text, source,
                                               PerplexityLog(user_data / "perplexity.jsonl"))
        except (TrainingError, ModelError) as exc:
            return f"⚠️ {exc}"
        return (f"Perplexity on the {source}: **{before.perplexity:.3f}** without {name}, **{after.perplexity:.3f}** "
                "with it (both rows are in Model → Evaluate).")

    def on_merge(name: str | None, new: str, progress: gr.Progress = gr.Progress()) -> str:
        try:
            if not name or not new.strip():
                raise TrainingError("choose an adapter and a name for the new model")
            progress(0.1, desc=f"merging {name}")
            dest = merge_adapter(app.models, name, new.strip())
        except (TrainingError, ModelError) as exc:
            return f"⚠️ {exc}"
        return f"Merged into `{app.settings.models_dir.name}/{dest.name}`: pick it in the Model tab (Refresh)."

    source_inputs = [dataset, use_chats, chats]
    upload.upload(on_upload, upload, [dataset, status], api_visibility="private")
    refresh.click(lambda: (gr.Dropdown(choices=list_datasets(datasets_dir)), gr.Dropdown(choices=job.resumable()),
                           gr.Dropdown(choices=app.models.list_loras())), None, [dataset, runs, adapter],
                  api_name="training_refresh")
    use_chats.change(on_use_chats, use_chats, chats, api_visibility="private")
    preview_button.click(on_preview, source_inputs + inputs, [status, preview], api_name="training_preview")
    start.click(on_start, source_inputs + inputs, [status, preview, timer], api_name="training_start")
    stop.click(lambda: "Stopping after this step (a checkpoint is saved)…" if job.stop() else "Nothing is running.",
               None, status, api_name="training_stop")
    resume.click(on_resume, runs, [status, timer], api_name="training_resume")
    polled = [status, loss_plot, ppl_plot, timer, runs, adapter]
    timer.tick(on_tick, None, polled, api_visibility="private", show_progress="hidden")
    # on page load: the current (or last) job's state, and polling if one is running
    gr.on(None, on_tick, None, polled, api_visibility="private", show_progress="hidden")
    apply.click(on_apply, adapter, result, api_name="training_apply")
    compare.click(on_compare, [adapter, held_out], result, api_name="training_compare")
    merge.click(on_merge, [adapter, merged_name], result, api_name="training_merge")
