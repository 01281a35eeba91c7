"""Parlour's entry point: settings -> App -> FastAPI app with the Gradio UI mounted -> uvicorn.

    python server.py --help

The page answers as soon as the server is up; the model finishes loading in a background thread.
"""

from __future__ import annotations

import logging
import os
import sys

from modules.settings import Settings, SettingsError, load_settings

log = logging.getLogger("parlour")


def check_exposure(settings: Settings) -> str | None:
    """Why this configuration must not start, or None.

    On all interfaces, both doors need a lock: the UI needs --auth (or --auth-file) and, unless the
    API is off, /v1 needs --api-key. A key for one door does not guard the other.
    """
    if not settings.listen or settings.insecure_listen:
        return None
    missing = []
    if settings.auth is None and settings.auth_file is None:
        missing.append("--auth (for the UI)")
    if settings.api and settings.api_key is None:
        missing.append("--api-key (for the API, or --no-api)")
    if missing:
        return (f"refusing to --listen on all interfaces without {' and '.join(missing)}: anyone on the network "
                "could use the model and read the chats. Add them, or --insecure-listen if this network is trusted.")
    return None


#: how long an idle HTTP connection stays open (see main)
KEEP_ALIVE_SECONDS = 65

#: how often Gradio's idle queue looks for new UI events (seconds); see calm_gradio_queue
QUEUE_POLL_SECONDS = 0.01
NEVER = 2**62  # events between two rebuilds of Gradio's monitoring summary (see calm_gradio_queue)


def calm_gradio_queue(blocks) -> None:
    """Let Gradio's event queue look for work 100 times a second instead of 1000, and not summarise
    its past events after each one.

    Gradio's queue polls with a 1 ms sleep while it is idle. Each wake-up takes the GIL from the
    model's thread; measured on 2 cores it costs the idle server ~36 ms of CPU a second and every
    generation (UI or API) a few percent. A UI event now waits at most 10 ms longer to start,
    which nobody can see. The attributes are Gradio's own (gradio/queueing.py); a test checks they exist.
    """
    queue = getattr(blocks, "_queue", None)
    if queue is None or not hasattr(queue, "sleep_when_free"):
        log.warning("this Gradio has no queue.sleep_when_free: its idle queue keeps polling 1000 times a second")
        return
    queue.sleep_when_free = QUEUE_POLL_SECONDS
    # Gradio also rebuilds a pandas summary of up to 10,000 past events after every event (its monitoring
    # dashboard, which Parlour does not enable): ~10% of the server's GIL time around a chat reply in a
    # profile. Only that dashboard reads it; rebuild it never. (Gradio's attribute, misspelt as it is.)
    if hasattr(queue, "ANAYLTICS_CACHE_FREQUENCY"):
        queue.ANAYLTICS_CACHE_FREQUENCY = NEVER
    else:
        log.warning("this Gradio has no queue.ANAYLTICS_CACHE_FREQUENCY: it summarises its events after each one")


class _NoStubWriting:
    """An import hook for `gradio.component_meta` alone: once the module has run, its
    `create_or_modify_pyi` is a no-op.

    Gradio's component metaclass calls that function for every component class it defines: it reads
    the class's source, parses it, renders a Jinja template and compares or writes a `.pyi` typing stub
    beside it in site-packages. The stubs are for editors, never read at run time, and the work is
    ~15% of a server start on 2 cores (~2 s, measured with py-spy). The name is Gradio's own
    (gradio/component_meta.py); a test checks it still exists."""

    def find_spec(self, name: str, path, target=None):
        if name != "gradio.component_meta":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def run_then_skip_stubs(module) -> None:
            run_module(module)
            if hasattr(module, "create_or_modify_pyi"):
                module.create_or_modify_pyi = lambda *args, **kwargs: None
            else:
                log.warning("this Gradio has no component_meta.create_or_modify_pyi: it may write typing stubs at start")

        spec.loader.exec_module = run_then_skip_stubs
        return spec


def import_gradio():
    """`import gradio`, without its MCP integration and without writing typing stubs.

    Gradio imports the `mcp` package (when installed) for `mcp_server=True`, which Parlour never sets,
    and that is ~15% of importing Gradio. Parlour's own imports of `mcp` are unaffected (the block lasts
    only while Gradio is imported). For the stubs, see _NoStubWriting."""
    blocked = "mcp" not in sys.modules
    if blocked:
        sys.modules["mcp"] = None  # an import of it raises ImportError, which Gradio expects
    hook = _NoStubWriting()
    sys.meta_path.insert(0, hook)
    try:
        import gradio
    finally:
        sys.meta_path.remove(hook)
        if blocked and sys.modules.get("mcp", 0) is None:
            del sys.modules["mcp"]
    return gradio


def create_app(settings: Settings):
    """The FastAPI application with the UI mounted at / (and the App, for tests).

    Start-up order: only what the first page needs is imported before serving (Gradio, the UI, the
    stores); the model starts loading once the server is up (`lifespan`), so torch and Transformers
    import while the page is already answering. The Model tab shows the model loading."""
    import contextlib
    import threading

    gr = import_gradio()
    from fastapi import FastAPI

    from modules import ui
    from modules.app import App

    # Gradio's cache (uploads, downloads) inside this instance's user_data: cleaned by this instance only
    os.environ.setdefault("GRADIO_TEMP_DIR", str((settings.user_data / "cache" / "gradio").resolve()))
    app = App.build(settings)
    serving = threading.Event()
    # The Model tab shows the model's name as loading from the start; the work waits for `serving`.
    if app.load_at_start(after=serving) is None:
        links = "; ".join(f"{name} -> {target}" for name, target in app.models.refused_links())
        log.warning("no model to load: put one in %s or pass --model%s", settings.models_dir,
                    f" (symbolic links there are not followed: {links})" if links else "")
    for item, why in app.unreadable_files().items():  # the rest loads; these report errors when chosen
        log.warning("cannot use %s: %s", item, why)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        serving.set()
        # MCP servers start once the page is up (a slow or broken one never delays it)
        threading.Thread(target=app.start_tools, name="tools-start", daemon=True).start()
        yield
        app.tools.close()

    api = FastAPI(title="Parlour", docs_url=None, redoc_url=None, lifespan=lifespan)

    @api.get("/health")
    def health() -> dict:
        from modules.loaders.base import rss_bytes

        backend = app.models.current()
        # threads and rss_bytes let load tests check for leaks from outside the process
        return {"status": "ok", "model": backend.name if backend else None, "default_model": app.models.default,
                "loading": app.models.loading,
                "queue_waiting": app.models.waiting(), "threads": threading.active_count(),
                "rss_bytes": rss_bytes(), "downloads_running": app.downloads.running(),
                **app.models.totals(), **app.pipeline.stats.snapshot()}

    if settings.api:
        from modules.api import build_api

        api.mount("/v1", build_api(app))  # before the UI, which is mounted at the root and would shadow it
    blocks = ui.build(app)
    blocks.queue(default_concurrency_limit=1)
    calm_gradio_queue(blocks)
    gr.mount_gradio_app(api, blocks, path="", footer_links=[], show_error=True, auth=ui.auth_check(settings),
                        max_file_size=ui.max_upload_bytes(settings), **ui.launch_kwargs(app))
    guard(api, settings)
    return api, app


def guard(api, settings: Settings) -> None:
    """The guards every request passes, outermost first: Host (on a 127.0.0.1 bind), origin, body size,
    Gradio sessions (see modules/api/security.py); then the page's early script (modules/ui/early_script.py).
    Starlette runs the last-added middleware first."""
    from modules import ui
    from modules.api.security import BodyLimit, GradioSessions, LocalHostOnly, SameOriginOnly
    from modules.ui.early_script import EarlyScript

    api.add_middleware(EarlyScript)  # innermost: the page's HTML as Gradio wrote it
    api.add_middleware(GradioSessions, login_of=ui.login_reader(api) if settings.logins() else None,
                       max_body_bytes=settings.max_body_bytes)
    api.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=ui.max_upload_bytes(settings))
    api.add_middleware(SameOriginOnly, allowed=settings.cors_origins())
    if not settings.listen:
        api.add_middleware(LocalHostOnly)  # DNS rebinding: a 127.0.0.1 bind answers only loopback Host names


def main(argv: list[str] | None = None) -> int:
    from modules.logs import configure

    configure()
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        settings.logins()  # a malformed --auth / --auth-file stops here, with its message
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = check_exposure(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from modules.store import StoreError

    try:
        api, app = create_app(settings)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.idle_unload_minutes:
        app.start_idle_watch()
    import uvicorn

    host = settings.bind_host()
    log.info("Parlour on http://%s:%d", "127.0.0.1" if host == "127.0.0.1" else host, settings.port)
    # Keep-alive longer than clients keep idle connections (httpx, and so the openai client: 5 s; uvicorn's
    # default is also 5 s): otherwise a client can reuse a connection just as the server closes it, and the
    # request fails with a reset (seen once in the load test among ~1,800 requests).
    try:
        uvicorn.run(api, host=host, port=settings.port, log_level="warning", timeout_graceful_shutdown=2,
                    timeout_keep_alive=KEEP_ALIVE_SECONDS)
    finally:
        app.downloads.close()  # a transfer is a child process; it ends with the server (see modules/download.py)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
