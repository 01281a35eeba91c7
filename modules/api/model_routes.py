"""GET /v1/models (every model Parlour can serve, with its state), and how a request's `model` becomes
a loaded backend: aliases, the default model, loading just in time.

States in the list: `loaded` (answers at once), `loading`, `available` (the first request loads it,
with its saved per-model settings, unloading the least recently used idle model if the budget says
so). `--list-loaded-only` lists only the loaded ones, as before. Aliases (`--model-alias A=B`) are
listed too, each with `alias_of`. Unknown names are a 404.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from modules.api.errors import RETRY_AFTER_SECONDS, APIError, error_body
from modules.generation import NoModel
from modules.loaders.base import Backend
from modules.models import ModelClaimed, ModelError, ModelNotFound, ModelTooLarge

log = logging.getLogger(__name__)


def model_error(exc: ModelError) -> APIError:
    """The HTTP answer for a model that cannot serve a request."""
    if isinstance(exc, ModelNotFound):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ModelTooLarge):
        return APIError(400, str(exc), param="model", code="model_too_large")
    if isinstance(exc, ModelClaimed):  # a training job holds that model, or the room this one needs
        return APIError(503, str(exc), param="model", code="model_busy", headers={"Retry-After": str(exc.retry_after)})
    return APIError(400, str(exc), param="model", code="model_load_failed")


def request_backend(app: Any, requested: str | None) -> Backend:
    """The backend for a request's `model` (a name, an alias, or None for the default model), loaded just
    in time if it is not loaded. Blocks while it loads: call it off the event loop."""
    try:
        name = app.models.canonical(requested)
        app.models.check_fits(name)  # a model that can never fit is refused before anything is unloaded
        return app.models.backend_for(name)
    except NoModel as exc:
        raise APIError(503, "no model is loaded: name one in `model`, or load one with POST "
                       "/v1/internal/model/load", code="model_not_loaded",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
    except ModelError as exc:
        raise model_error(exc) from exc


def stream_after_load(app: Any, requested: str | None,
                      start: Callable[[], Awaitable[Response]]) -> EventSourceResponse:
    """A streaming reply for a model that must load first: the SSE stream starts at once with a comment,
    EventSourceResponse's pings keep the connection alive while the model loads, then `start()` (the
    route again, now with the model loaded) streams as usual. Errors after that first byte (the load's
    one-line reason among them) arrive as an `error` event, as every mid-stream error does."""

    async def events() -> AsyncIterator[bytes]:
        yield f": loading model {requested or 'default'}\n\n".encode()
        try:
            await run_in_threadpool(request_backend, app, requested)
            response = await start()
        except APIError as exc:
            yield _error_event(exc)
            return
        body = getattr(response, "body_iterator", None)
        if body is None:  # not a stream after all (cannot happen for stream: true): pass the body on
            yield b"data: " + bytes(getattr(response, "body", b"")) + b"\n\n"
            return
        try:
            async for chunk in body:
                yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
        finally:
            await body.aclose()

    return EventSourceResponse(events(), ping=15, sep="\n")


def _error_event(exc: APIError) -> bytes:
    data = error_body(exc.status, exc.message, exc.param, exc.code)
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def model_cards(app: Any) -> list[dict[str, Any]]:
    """/v1/models entries: OpenAI's fields plus `state`, `context_length` (and vLLM's `max_model_len`,
    which a remote Parlour reads)."""
    cards = []
    for entry in app.models.catalog(loaded_only=app.settings.list_loaded_only):
        card = {"id": entry["name"], "object": "model", "created": 0, "owned_by": "parlour", "state": entry["state"]}
        if entry.get("context_length"):
            card["context_length"] = card["max_model_len"] = entry["context_length"]
        if entry.get("alias_of"):
            card["alias_of"] = entry["alias_of"]
        cards.append(card)
    return cards


def build_models_router(app: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": model_cards(app)}

    @router.get("/models/{name:path}")  # a path: remote engines' model ids may hold a slash (org/model)
    def get_model(name: str) -> dict[str, Any]:
        if not name:  # /v1/models/ is the list
            return list_models()
        card = next((c for c in model_cards(app) if c["id"] == name), None)
        if card is None:
            raise APIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
        return card

    return router
