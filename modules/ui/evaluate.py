"""Evaluate sub-tab: perplexity of the loaded model on pasted text or a file, with a table and a plot
of past results."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import gradio as gr
import pandas as pd

from modules.app import App
from modules.perplexity import PerplexityLog, evaluate
from modules.render import literal

COLUMNS = ["model", "loader", "quantization", "text", "tokens", "max_length", "stride", "perplexity", "seconds", "when"]


def render(app: App) -> None:
    log = PerplexityLog(app.settings.user_data / "perplexity.jsonl")
    with gr.Row():
        text = gr.Textbox(label="Text to score (or upload a file)", lines=8, elem_id="ppl-text", scale=3)
        upload = gr.File(label="Text file", file_types=[".txt", ".md"], elem_id="ppl-file", scale=1)
    with gr.Row():
        max_length = gr.Slider(16, 8192, value=512, step=16, label="max_length (window)", elem_id="ppl-max-length")
        stride = gr.Slider(1, 8192, value=256, step=1, label="stride", elem_id="ppl-stride")
        run = gr.Button("Evaluate", variant="primary", elem_id="ppl-run")
    status = gr.Markdown(elem_id="ppl-status")
    def history() -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = [asdict(r) for r in log.all()]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        # one bar per run, numbered: runs with the same model and text are not summed into one bar
        numbers = pd.Series(range(1, len(frame) + 1), index=frame.index).astype(str)
        plot_frame = frame.assign(label=numbers + ". " + frame["model"] + " · " + frame["quantization"] + " · "
                                  + frame["text"])
        return frame, plot_frame

    def on_run(pasted: str, file: str | None, window: float, step: float, progress: gr.Progress = gr.Progress()):
        backend = app.models.current()
        if backend is None:
            return ("⚠️ no model is loaded", *history())
        source = None
        content = pasted
        if file:
            path = Path(file)
            if path.stat().st_size > 20_000_000:
                return ("⚠️ the file is larger than 20 MB", *history())
            content, source = path.read_text(encoding="utf-8", errors="replace"), path.name
        if not content.strip():
            return ("⚠️ paste a text or upload a file", *history())
        try:
            with app.models.exclusive(backend.name):  # the model is busy with this, not with chats, meanwhile
                result = evaluate(backend, content, source, int(window), int(step), log,
                                  progress=lambda f: progress(f, desc="scoring"))
        except ValueError as exc:
            return (f"⚠️ {literal(exc)}", *history())
        return (f"**{literal(result.model)}**: perplexity **{result.perplexity:.3f}** over {result.tokens} tokens "
                f"in {result.seconds} s", *history())

    table = gr.Dataframe(value=lambda: history()[0], headers=COLUMNS, interactive=False, elem_id="ppl-table")
    # y from zero: bar heights compare; a single result still draws its bar (an automatic axis around one
    # value has no height to give it)
    plot = gr.BarPlot(value=lambda: history()[1], x="label", y="perplexity", title="Perplexity (lower is better)",
                      y_lim=[0, None], sort=None, elem_id="ppl-plot")
    run.click(on_run, [text, upload, max_length, stride], [status, table, plot], api_name="evaluate_perplexity")
