"""Parlour's entry point: settings -> App -> FastAPI app with the Gradio UI mounted -> uvicorn.

    python server.py --help

The page answers as soon as the server is up; the model finishes loading in a background thread.
"""

from __future__ import annotations

import logging
import sys

from modules.settings import Settings, SettingsError, load_settings

log = logging.getLogger("parlour")


def check_exposure(settings: Settings) -> str | None:
    """Why this configuration must not start, or None. Binding all interfaces needs a key."""
    if settings.listen and settings.api_key is None and not settings.insecure_listen:
        return ("refusing to --listen on all interfaces without --api-key: anyone on the network could use "
                "the model. Add --api-key, or --insecure-listen if this network is trusted.")
    return None


def create_app(settings: Settings):
    """The FastAPI application with the UI mounted at / (and the App, for tests)."""
    import gradio as gr
    from fastapi import FastAPI

    from modules import ui
    from modules.app import App

    app = App.build(settings)
    api = FastAPI(title="Parlour", docs_url=None, redoc_url=None)

    @api.get("/health")
    def health() -> dict:
        backend = app.models.current()
        return {"status": "ok", "model": backend.name if backend else None, "loading": app.models.loading,
                "queue_waiting": app.queue.waiting(), **app.pipeline.stats.snapshot()}

    blocks = ui.build(app)
    blocks.queue(default_concurrency_limit=1)
    gr.mount_gradio_app(api, blocks, path="", footer_links=[], show_error=True, **ui.launch_kwargs())
    return api, app


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = check_exposure(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    api, app = create_app(settings)
    if app.load_at_start() is None:
        log.warning("no model to load: put one in %s or pass --model", settings.models_dir)
    if settings.idle_unload_minutes:
        app.start_idle_watch()
    import uvicorn

    host = settings.bind_host()
    log.info("Parlour on http://%s:%d", "127.0.0.1" if host == "127.0.0.1" else host, settings.port)
    uvicorn.run(api, host=host, port=settings.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
