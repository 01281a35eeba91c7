"""The Model tab's "Download from Hugging Face" box: downloads run as background jobs (modules/download.py),
so chats and API requests go on meanwhile; a progress bar per job, Cancel, and a finished model shows
up in the dropdowns without a restart.

A timer polls the jobs only while one is running (an idle page costs nothing).
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from modules.app import App
from modules.download import DownloadError
from modules.render import literal

POLL_SECONDS = 0.5
_ICONS = {"running": "⏳", "done": "✅", "failed": "⚠️", "cancelled": "⏹️"}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def jobs_html(jobs: list[dict[str, Any]]) -> str:
    """One line per job: a progress bar, bytes and files so far, and how it ended."""
    rows = []
    for job in jobs:
        done, total = job["bytes_done"], job["bytes_total"]
        size = f"{_mib(done)} of {_mib(total)}" if total else _mib(done)
        files = f" · {job['files_done']}/{job['files_total']} files" if job["files_total"] else ""
        end = f" — {html.escape(job['message'])}" if job["state"] != "running" and job["message"] else ""
        rows.append(f'<div class="download-job" data-state="{job["state"]}">{_ICONS.get(job["state"], "")} '
                    f'<b>{html.escape(job["spec"])}</b> <progress max="1" value="{job["fraction"]:.4f}"></progress> '
                    f'{job["fraction"] * 100:.0f}% · {size}{files}{end}</div>')
    return "".join(rows)


def render(app: App) -> gr.Markdown:
    """Build the box. Returns its status line: it changes when a download ends (the lists of models and
    LoRAs may have grown), so the caller refreshes its dropdowns on its `change`."""
    with gr.Accordion("Download from Hugging Face", open=False):
        with gr.Row():
            repo = gr.Textbox(label="USER/REPO[:BRANCH]", placeholder="Qwen/Qwen2.5-0.5B-Instruct", scale=4,
                              elem_id="download-repo")
            specific = gr.Textbox(label="Specific file / GGUF quant (optional)", placeholder="Q4_K_M", scale=2,
                                  elem_id="download-file")
            fetch = gr.Button("Download", elem_id="download-run", scale=1)
            cancel = gr.Button("Cancel", elem_id="download-cancel", scale=1)
        progress = gr.HTML(elem_id="download-progress")
        status = gr.Markdown(elem_id="download-status")
    timer = gr.Timer(POLL_SECONDS, active=app.downloads.running())

    def on_start(spec: str, choice: str):
        try:
            job = app.downloads.start(spec, choice)
        except DownloadError as exc:
            return gr.skip(), f"⚠️ {literal(exc)}", gr.skip()
        return (jobs_html(app.downloads.jobs()), f"Downloading {literal(job.spec)} in the background…",
                gr.Timer(active=True))

    def on_cancel() -> str:
        return "Cancelling…" if app.downloads.cancel() else "No download is running."

    def on_tick():
        jobs = app.downloads.jobs()
        if app.downloads.running():
            return jobs_html(jobs), gr.skip(), gr.skip()
        last = jobs[0] if jobs else None
        line = (_ICONS.get(last["state"], "") + " " + literal(f"{last['spec']}: {last['message']}") if last else "")
        return jobs_html(jobs), line, gr.Timer(active=False)

    fetch.click(on_start, [repo, specific], [progress, status, timer], api_name="model_download")
    cancel.click(on_cancel, None, status, api_name="model_download_cancel")
    timer.tick(on_tick, None, [progress, status, timer], api_visibility="private", show_progress="hidden")

    return status
