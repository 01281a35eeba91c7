"""The OpenAI-compatible API, served under /v1 on the UI's port.

    build_api(app) -> a FastAPI sub-application that server.py mounts at /v1

It has its own error handlers (every failure is OpenAI-shaped JSON) and middleware (API key, admin
key, body size, CORS when --cors-origin names origins), so none of it touches the Gradio UI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from modules.api.errors import install_handlers
from modules.api.internal import build_internal_router
from modules.api.model_routes import build_models_router
from modules.api.openai import build_router
from modules.api.runner import CallerRequests
from modules.api.security import ApiGuard


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_api(app: Any) -> FastAPI:
    """The /v1 application for `app` (an `modules.app.App`)."""
    settings = app.settings
    callers = CallerRequests()
    v1 = FastAPI(title="Parlour API", docs_url=None, redoc_url=None, openapi_url=None)
    v1.state.callers = callers
    install_handlers(v1)
    v1.include_router(build_models_router(app))
    v1.include_router(build_router(app, callers))
    v1.include_router(build_internal_router(app, callers))
    # Starlette runs the last-added middleware first: CORS (answers preflights) -> keys and body size.
    v1.add_middleware(ApiGuard, api_key=_secret(settings.api_key), admin_key=_secret(settings.admin_key),
                      max_body_bytes=settings.max_body_bytes)
    origins = settings.cors_origins()
    if origins:
        v1.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"],
                          allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    return v1
