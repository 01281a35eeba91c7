"""/v1/internal/*: text-generation-webui's helper routes, with its request and response shapes.

encode, decode, token-count, logits, chat-prompt, model/info, model/list, model/load, model/unload,
stop-generation (only the caller's own requests) and health. Model list/load/unload need the admin
key when one is set (checked in security.ApiGuard, with the other keys).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from modules.api.errors import APIError
from modules.api.openai import build_preset, caller_of, chat_plan, current_backend
from modules.api.runner import CallerRequests
from modules.api.schemas import ChatCompletionRequest, PresetFields
from modules.loaders import registry
from modules.models import ModelError

MAX_TOP_LOGITS = 1000


class TextBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class TokensBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[int] = Field(..., max_length=1_000_000)


class LogitsBody(PresetFields):  # type: ignore[misc, valid-type]
    prompt: str
    use_samplers: bool = False
    top_logits: int = Field(50, ge=1, le=MAX_TOP_LOGITS)
    preset: str | None = None
    model: str | None = None


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field(..., min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)


def build_internal_router(app: Any, callers: CallerRequests) -> APIRouter:
    router = APIRouter(prefix="/internal")

    @router.post("/encode")
    def encode(body: TextBody) -> dict[str, Any]:
        tokens = current_backend(app, None).tokenize(body.text)
        return {"tokens": tokens, "length": len(tokens)}

    @router.post("/decode")
    def decode(body: TokensBody) -> dict[str, Any]:
        backend = current_backend(app, None)
        vocab = backend.vocab_size
        bad = next((i for i, t in enumerate(body.tokens) if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            raise APIError(400, f"token id {body.tokens[bad]} is outside the vocabulary (0..{(vocab or 1) - 1})",
                           param=f"tokens.{bad}", code="invalid_value")
        return {"text": backend.detokenize(body.tokens)}

    @router.post("/token-count")
    def token_count(body: TextBody) -> dict[str, int]:
        return {"length": len(current_backend(app, None).tokenize(body.text))}

    @router.post("/logits")
    def logits(body: LogitsBody) -> dict[str, Any]:
        backend = current_backend(app, body.model)
        if not registry.capabilities(backend).logits:
            raise APIError(400, f"the {backend.loader} loader cannot report logits", code="unsupported")
        preset, _ = build_preset(app, body, None)
        pairs = backend.next_token_probabilities(body.prompt, body.top_logits, preset if body.use_samplers else None)
        out: dict[str, float] = {}
        for token, prob in pairs:  # two ids can decode to the same text: keep the likelier (first)
            out.setdefault(token, prob)
        return {"logits": out}

    @router.post("/chat-prompt")
    def chat_prompt(body: ChatCompletionRequest) -> dict[str, str]:
        plan = chat_plan(app, body)
        backend = current_backend(app, body.model)
        return {"prompt": app.pipeline.build_prompt(backend, plan.jobs[0].request)}

    @router.get("/model/info")
    def model_info() -> dict[str, Any]:
        info = app.models.info() or {}
        return {"model_name": info.get("name"), "lora_names": info.get("loras", []), "loader": info.get("loader"),
                "info": info, "loading": app.models.loading}

    @router.get("/model/list")
    def model_list() -> dict[str, list[str]]:
        return {"model_names": app.models.list()}

    @router.post("/model/load")
    async def model_load(body: LoadBody) -> str:
        if body.model_name not in app.models.list():
            raise APIError(404, f"the model {body.model_name!r} is not in {app.settings.models_dir}",
                           param="model_name", code="model_not_found")
        if body.settings:
            raise APIError(400, "settings are not supported: send loader options in args "
                           f"(got {', '.join(sorted(body.settings))})", param=f"settings.{sorted(body.settings)[0]}",
                           code="unsupported")
        args = dict(body.args or {})
        loader = args.pop("loader", None)
        # Loader options are validated by the same pydantic models as the Model tab (so no
        # trust_remote_code, which only the command line sets). A remote engine's URL is the
        # operator's to choose (--remote-url or the Model tab), never an API client's.
        if "base_url" in args:
            raise APIError(400, "base_url cannot be set through the API; start Parlour with --remote-url",
                           param="args.base_url", code="unsupported")
        try:
            await run_in_threadpool(app.models.load, body.model_name, loader, args)
        except ModelError as exc:
            raise APIError(400, str(exc), param="model_name", code="model_load_failed") from exc
        return "OK"

    @router.post("/model/unload")
    async def model_unload() -> str:
        try:
            await run_in_threadpool(app.models.unload)
        except ModelError as exc:  # a training job owns the model
            raise APIError(409, str(exc), code="model_busy") from exc
        return "OK"

    @router.post("/stop-generation")
    def stop_generation(http: Request) -> str:
        callers.stop(caller_of(http))
        return "OK"

    @router.get("/health")
    def health() -> dict[str, Any]:
        backend = app.models.current()
        engine = getattr(backend, "engine", None)
        return {"status": "ok", "model": backend.name if backend else None, "loading": app.models.loading,
                "largest_batch": engine.largest_batch if engine is not None else 1,
                "generate_threads": engine.generate_threads() if engine is not None else None,
                "queue_waiting": app.queue.waiting(), **app.pipeline.stats.snapshot(), **callers.snapshot()}

    return router
