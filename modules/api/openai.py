"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

Each choice is one `GenerationRequest` through `app.pipeline` — the same pipeline the UI uses — run by
`runner.run_updates`, with its own cancel Event that a disconnect or /v1/internal/stop-generation sets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from modules.api.chat_options import ignored_chat_fields, prompt_options
from modules.api.constraints import check_constraint, requested_constraint
from modules.api.errors import APIError, describe_validation, error_body
from modules.api.logprobs import ReplyLogprobs, TokenLogprob, chat_logprobs, completion_logprobs, supports_logprobs
from modules.api.runner import CallerRequests, cancel_on_disconnect, run_updates
from modules.api.schemas import ChatCompletionRequest, CompletionRequest, GenerationFields
from modules.chat import ContextOverflow, request_for
from modules.generation import GenerationRequest, ModelBusy, NoModel, QueueFull, Update
from modules.loaders import registry
from modules.loaders.base import Backend
from modules.presets import Preset, PresetError
from modules.templates import TemplateError
from modules.turns import Turn

RETRY_AFTER_SECONDS = 2
IGNORED_HEADER = "X-Parlour-Ignored-Fields"
MAX_IGNORED_NAMES = 32


def caller_of(http: Request) -> str:
    """Who is asking: client address + a hash of the key it sent (see CallerRequests)."""
    auth = http.headers.get("authorization", "")
    host = http.client.host if http.client else "?"
    return f"{host}|{hashlib.sha256(auth.encode()).hexdigest()[:16]}"


def to_api_error(exc: BaseException) -> APIError:
    """The HTTP answer for a failure raised by the pipeline before any text was sent."""
    if isinstance(exc, ModelBusy):  # a training job owns the model
        return APIError(503, str(exc), code="model_busy", headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QueueFull):
        return APIError(503, f"the server is busy: {exc}", code="queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, NoModel):
        return APIError(503, str(exc), code="model_not_loaded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, (TemplateError, ValueError)):
        return APIError(400, str(exc), code="invalid_prompt")
    raise exc


def current_backend(app: Any, requested: str | None) -> Backend:
    """The loaded model, checked against the `model` the client asked for."""
    backend = app.models.current() or (app.models.ensure_loaded() if app.models.idle_unloaded else None)
    loading = app.models.loading
    if requested and (backend is None or requested != backend.name):
        if requested == loading:
            raise APIError(503, f"model {requested!r} is still loading", code="model_loading",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if requested in app.models.list():
            loaded = backend.name if backend else "none"
            raise APIError(400, f"model {requested!r} is not loaded (loaded: {loaded}); load it with "
                           "POST /v1/internal/model/load", param="model", code="model_not_loaded")
        raise APIError(404, f"the model {requested!r} does not exist", param="model", code="model_not_found")
    if backend is None:
        raise APIError(503, f"model {loading!r} is still loading" if loading else
                       "no model is loaded: load one with POST /v1/internal/model/load", code="model_not_loaded",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return backend


def build_preset(app: Any, body: GenerationFields, max_tokens: int | None) -> tuple[Preset, list[str]]:
    """The request's sampling: the named preset (or neutral values) overridden by the fields it gave.
    Returns the Preset and the names of given fields this build cannot apply."""
    try:
        base = app.presets.load(body.preset) if body.preset else Preset()
    except PresetError as exc:
        raise APIError(404 if "does not exist" in str(exc) else 400, str(exc), param="preset",
                       code="preset_not_found") from exc
    given = {name: getattr(body, name) for name in Preset.model_fields
             if name in body.model_fields_set and getattr(body, name) is not None}
    if max_tokens is not None:
        given["max_new_tokens"] = max_tokens
    given.update(requested_constraint(body))  # response_format, grammar, regex, vLLM's fields -> Preset keys
    not_applied = [name for name in ("presence_penalty", "frequency_penalty")
                   if name not in Preset.model_fields and getattr(body, name) not in (None, 0, 0.0)]
    try:
        return Preset.model_validate({**base.model_dump(), **given}), not_applied
    except ValidationError as exc:  # cross-field checks of Preset (single fields were checked on parsing)
        message, param, _ = describe_validation(list(exc.errors()))
        raise APIError(400, message, param=param, code="invalid_value") from exc


def logprobs_wanted(body: GenerationFields, backend: Backend) -> int | None:
    """How many top alternatives to report per token (0: only the chosen token), or None for no logprobs."""
    if isinstance(body, ChatCompletionRequest):
        top = (body.top_logprobs or 0) if body.logprobs else None
    else:
        top = getattr(body, "logprobs", None)
    if top is not None and not supports_logprobs(backend):
        raise APIError(400, f"logprobs are not supported by the {backend.loader} loader", param="logprobs",
                       code="unsupported")
    return top


def check_logit_bias(body: GenerationFields, backend: Backend) -> None:
    """Token ids in logit_bias must exist in this model's vocabulary (ranges are Preset's to check)."""
    if not body.logit_bias:
        return
    vocab = backend.vocab_size
    if not registry.capabilities(backend).logit_bias or vocab is None:
        raise APIError(400, f"logit_bias is not supported by the {backend.loader} loader", param="logit_bias",
                       code="unsupported")
    bad = sorted(t for t in body.logit_bias if not 0 <= int(t) < vocab)
    if bad:
        raise APIError(400, f"logit_bias token id {bad[0]} is not in this model's vocabulary (0..{vocab - 1})",
                       param="logit_bias", code="invalid_value")


def refuse_unsupported(body: GenerationFields) -> None:
    """400 for OpenAI features this server does not implement, instead of a reply that ignores them."""
    if body.tools:
        raise APIError(400, "tools (function calling) are not supported", param="tools", code="unsupported")
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    if getattr(body, "suffix", None):
        raise APIError(400, "suffix (insertion) is not supported", param="suffix", code="unsupported")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true", param="stream_options", code="invalid_value")


@dataclass
class Job:
    """One choice to generate: the pipeline request and what the response needs to say about it."""

    request: GenerationRequest
    index: int
    prompt_index: int
    echo: str = ""
    truncated_tokens: int = 0
    truncated_turns: int = 0  # Chat-tab-style builds drop whole turns (see fit_built_chat)
    prompt: str = ""  # the prompt text as the model reads it (logprobs score the reply after it)


@dataclass
class Plan:
    """Everything decided before generating: the jobs and the response's fixed parts."""

    jobs: list[Job]
    model: str
    ignored: list[str] = field(default_factory=list)
    backend: Backend | None = None
    logprobs: int | None = None  # top alternatives per token; None: no logprobs

    def scorer(self, job: Job) -> ReplyLogprobs | None:
        """A fresh scorer for the job's reply (runs the model: call it off the event loop)."""
        if self.logprobs is None or self.backend is None:
            return None
        return ReplyLogprobs(self.backend, job.prompt, job.request.preset, self.logprobs, echo=bool(job.echo))

    def headers(self) -> dict[str, str]:
        if not self.ignored:
            return {}
        names = self.ignored[:MAX_IGNORED_NAMES] + (["..."] if len(self.ignored) > MAX_IGNORED_NAMES else [])
        return {IGNORED_HEADER: ",".join(names)}

    def truncated(self) -> int:
        seen: dict[int, int] = {}
        for job in self.jobs:
            seen[job.prompt_index] = job.truncated_tokens
        return sum(seen.values())


def choice_seed(preset: Preset, index: int) -> Preset:
    """Choice i of a seeded request uses seed + i: reproducible, and the choices differ."""
    if index == 0 or preset.seed < 0:
        return preset
    return preset.model_copy(update={"seed": (preset.seed + index) % (2**63)})


def fit_completion_prompt(backend: Backend, prompt: str, preset: Preset, truncate: bool, param: str) -> tuple[str, int]:
    """The prompt, or its tail when it is longer than the context and the client asked to truncate."""
    ids = backend.tokenize(prompt)
    ctx = backend.context_length
    if len(ids) < ctx:
        return prompt, 0
    if not truncate:
        raise APIError(400, f"the prompt is {len(ids)} tokens; the model's context is {ctx} tokens (send "
                       "truncate_prompt: true to drop its beginning)", param=param, code="context_length_exceeded")
    keep = max(1, ctx - min(preset.max_new_tokens, ctx // 2))
    return backend.detokenize(ids[-keep:]), len(ids) - keep


def completion_plan(app: Any, body: CompletionRequest) -> Plan:
    refuse_unsupported(body)
    backend = current_backend(app, body.model)
    check_logit_bias(body, backend)
    preset, not_applied = build_preset(app, body, body.max_tokens)
    check_constraint(backend, preset, body)
    jobs = []
    for p, prompt in enumerate(body.prompts()):
        text = backend.detokenize(prompt) if isinstance(prompt, list) else prompt
        text, dropped = fit_completion_prompt(backend, text, preset, body.truncate_prompt, "prompt")
        for i in range(body.n):
            request = GenerationRequest(preset=choice_seed(preset, i), prompt=text, stop=body.stop_strings(),
                                        user=body.user or "api")
            jobs.append(Job(request, index=p * body.n + i, prompt_index=p, echo=text if body.echo else "",
                            truncated_tokens=dropped, prompt=text))
    return Plan(jobs, backend.name, body.ignored_fields() + not_applied, backend, logprobs_wanted(body, backend))


def chat_history(body: ChatCompletionRequest) -> list[Turn]:
    """The request's messages as turns (`developer` is `system`; an assistant message's
    `reasoning_content`, as DeepSeek's and vLLM's clients send it back, is kept as its reasoning)."""
    turns = []
    for m in body.messages:
        reasoning = (m.model_extra or {}).get("reasoning_content")
        turns.append(Turn.of("system" if m.role == "developer" else m.role, m.text(),
                             reasoning if isinstance(reasoning, str) else ""))
    return turns


def chat_plan(app: Any, body: ChatCompletionRequest) -> Plan:
    """Every chat request — plain OpenAI or with text-generation-webui's fields — is one chat turn built
    as the Chat tab builds it (modules/chat.py), and its extension hooks run once (Pipeline.begin)."""
    refuse_unsupported(body)
    backend = current_backend(app, body.model)
    check_logit_bias(body, backend)
    top_logprobs = logprobs_wanted(body, backend)
    preset, not_applied = build_preset(app, body, body.max_completion_tokens or body.max_tokens)
    check_constraint(backend, preset, body)
    ignored = body.ignored_fields() + not_applied + ignored_chat_fields(body)
    history = chat_history(body)
    continue_last = (body.continue_final_message or body.continue_) and history[-1].role == "assistant"
    user = body.user or "api"
    options = prompt_options(app, body, user, continue_last)
    turn = app.pipeline.begin(request_for(history, options, preset, user=user, stop=body.stop_strings(),
                                          template_vars=body.template_vars()))
    jobs = []
    for i in range(body.n):
        begun = replace(turn.begun, preset=choice_seed(turn.begun.preset, i))
        jobs.append(Job(replace(turn, preset=choice_seed(preset, i), cancel=threading.Event(), begun=begun),
                        index=i, prompt_index=0))
    template_param = ("instruction_template_str" if body.instruction_template_str else
                      "instruction_template" if body.instruction_template else "messages")
    dropped = fit_built_chat(app, backend, jobs[0].request, body.truncate_prompt, template_param)
    for job in jobs:
        job.truncated_turns, job.truncated_tokens = dropped
    return with_prompts(app, Plan(jobs, backend.name, ignored, backend, top_logprobs))


def with_prompts(app: Any, plan: Plan) -> Plan:
    """Chat jobs' prompt texts, needed only to score logprobs."""
    if plan.logprobs is not None and plan.backend is not None:
        for job in plan.jobs:
            job.prompt = app.pipeline.build_prompt(plan.backend, job.request)
    return plan


def fit_built_chat(app: Any, backend: Backend, request: GenerationRequest, truncate: bool,
                   template_param: str) -> tuple[int, int]:
    """A chat prompt drops its oldest turns itself to fit the context; through the API that happens
    only when the client asked for truncation. Returns (turns, tokens) dropped."""
    if registry.capabilities(backend).engine_templates:
        return 0, 0  # a remote engine gets the messages and fits them itself
    try:
        prompt = app.pipeline.chat_prompt(backend, request)
    except ContextOverflow as exc:
        raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from exc
    except TemplateError as exc:  # e.g. the sandbox refused the client's template
        raise APIError(400, str(exc), param=template_param, code="invalid_prompt") from exc
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_prompt") from exc
    if prompt.turns_dropped and not truncate:
        raise APIError(400, f"the conversation does not fit the model's context of {prompt.context_length} "
                       "tokens (send truncate_prompt: true to drop the oldest messages)", param="messages",
                       code="context_length_exceeded")
    return prompt.turns_dropped, prompt.tokens_dropped


def finish_reason(update: Update) -> str:
    return "length" if update.finish_reason == "length" else "stop"


def usage(plan: Plan, finals: dict[int, Update]) -> dict[str, int]:
    prompt_tokens: dict[int, int] = {}
    for job in plan.jobs:
        if job.index in finals:
            prompt_tokens[job.prompt_index] = finals[job.index].prompt_tokens
    completion = sum(u.tokens for u in finals.values())
    prompt = sum(prompt_tokens.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class Responder:
    """Runs a Plan for one HTTP request, as one JSON body or as an SSE stream."""

    def __init__(self, app: Any, callers: CallerRequests, http: Request, plan: Plan, chat: bool) -> None:
        self.app = app
        self.callers = callers
        self.http = http
        self.plan = plan
        self.chat = chat
        self.caller = caller_of(http)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.plan.model}

    async def _run(self, job: Job, final_only: bool = False) -> AsyncIterator[Update]:
        with self.callers.track(self.caller, job.request.cancel):
            interval = 0.0 if final_only else self.app.settings.stream_interval_ms / 1000
            async for update in run_updates(self.app.pipeline, job.request, final_only, interval):
                yield update

    async def _final(self, job: Job) -> Update | None:
        final = None
        async for update in self._run(job, final_only=True):
            final = update
        return final

    # -- one JSON body --------------------------------------------------------------------------
    async def json(self) -> JSONResponse:
        """All choices run at once: they queue one after another, and a batching backend generates them
        together."""
        cancels = [job.request.cancel for job in self.plan.jobs]
        watcher = asyncio.create_task(cancel_on_disconnect(self.http, *cancels))
        try:
            results = await asyncio.gather(*(self._final(job) for job in self.plan.jobs))
        except Exception as exc:
            for cancel in cancels:  # one failed (queue full, model gone): the others stop too
                cancel.set()
            raise to_api_error(exc) from exc
        finally:
            watcher.cancel()
        if any(final is None or final.finish_reason is None for final in results):
            raise APIError(503, "the generation was cancelled", code="cancelled")
        finals = {job.index: final for job, final in zip(self.plan.jobs, results)}
        choices = []
        for job in self.plan.jobs:
            final = finals[job.index]
            logprobs = (await run_in_threadpool(self._score_whole, job, final.text)
                        if self.plan.logprobs is not None else None)
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": final.text}
                if final.reasoning:  # vLLM's and DeepSeek's field (text-generation-webui's too)
                    message["reasoning_content"] = final.reasoning
                choices.append({"index": job.index, "message": message,
                                "logprobs": logprobs, "finish_reason": finish_reason(final)})
            else:
                choices.append({"index": job.index, "text": job.echo + final.text, "logprobs": logprobs,
                                "finish_reason": finish_reason(final)})
        body = {**self._base(self.object), "choices": choices, "usage": usage(self.plan, finals)}
        if any(job.truncated_tokens for job in self.plan.jobs):
            body["truncated_prompt_tokens"] = self.plan.truncated()
        if self.plan.jobs[0].truncated_turns:
            body["truncated_prompt_turns"] = self.plan.jobs[0].truncated_turns
        return JSONResponse(body, headers=self.plan.headers())

    def _score_whole(self, job: Job, text: str) -> dict[str, Any] | None:
        scorer = self.plan.scorer(job)
        if scorer is None:
            return None
        return self._logprobs(scorer.echo + scorer.add(text, final=True))

    def _logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        return chat_logprobs(entries) if self.chat else completion_logprobs(entries)

    # -- SSE ------------------------------------------------------------------------------------
    async def stream(self, include_usage: bool) -> EventSourceResponse:
        first_job = self.plan.jobs[0]
        updates = self._run(first_job)
        try:
            first = await anext(updates)  # errors before the first byte become proper HTTP errors
        except StopAsyncIteration:
            raise APIError(503, "the generation was cancelled", code="cancelled")
        except Exception as exc:
            raise to_api_error(exc) from exc
        return EventSourceResponse(self._events(updates, first, include_usage), ping=15, sep="\n",
                                   headers=self.plan.headers())

    def _chunk(self, index: int, text: str | None, finish: str | None, role: bool = False,
               include_usage: bool = False, logprobs: list[TokenLogprob] | None = None,
               reasoning: str = "") -> bytes:
        scored = self._logprobs(logprobs) if logprobs is not None else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": scored, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": scored, "finish_reason": finish}
        data = {**self._base("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return b"data: " + dumps(data) + b"\n\n"

    async def _events(self, first_updates: AsyncIterator[Update], first: Update,
                      include_usage: bool) -> AsyncIterator[bytes]:
        finals: dict[int, Update] = {}
        chunk: Callable[..., bytes] = lambda *a, **k: self._chunk(*a, include_usage=include_usage, **k)
        try:
            for n, job in enumerate(self.plan.jobs):
                updates = first_updates if n == 0 else self._run(job)
                pending = [first] if n == 0 else []
                scorer = await run_in_threadpool(self.plan.scorer, job) if self.plan.logprobs is not None else None
                if self.chat:
                    yield chunk(job.index, None, None, role=True)
                if job.echo:
                    yield chunk(job.index, job.echo, None, logprobs=scorer.echo if scorer else None)
                try:
                    async for update in _prepend(pending, updates):
                        if update.queue_position:
                            yield f": queue position {update.queue_position}\n\n".encode()
                        if update.reasoning_delta and self.chat:  # before the content it precedes
                            yield chunk(job.index, None, None, reasoning=update.reasoning_delta)
                        if update.delta:
                            scored = await run_in_threadpool(scorer.add, update.delta) if scorer else None
                            yield chunk(job.index, update.delta, None, logprobs=scored)
                        if update.finish_reason is not None:
                            finals[job.index] = update
                            rest = await run_in_threadpool(scorer.add, "", True) if scorer else None
                            yield chunk(job.index, None, finish_reason(update), logprobs=rest)
                except Exception as exc:  # after the headers: the error goes into the stream
                    try:
                        error = to_api_error(exc)
                    except Exception:
                        error = APIError(500, f"generation failed: {exc.__class__.__name__}: {exc}")
                    yield b"data: " + dumps(error_body(error.status, error.message, error.param, error.code)) + b"\n\n"
                    return
            if include_usage:
                yield b"data: " + dumps({**self._base("chat.completion.chunk" if self.chat else "text_completion"),
                                         "choices": [], "usage": usage(self.plan, finals)}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            self.callers.count_disconnect()  # the client hung up; run_updates' cleanup cancelled the model
            raise


async def _prepend(items: list[Update], rest: AsyncIterator[Update]) -> AsyncIterator[Update]:
    for item in items:
        yield item
    async for item in rest:
        yield item


def build_router(app: Any, callers: CallerRequests) -> APIRouter:
    router = APIRouter()

    def model_card(name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": 0, "owned_by": "parlour"}
        backend = app.models.current()
        if backend is not None and backend.name == name:
            card["max_model_len"] = backend.context_length  # vLLM's field: remote Parlours read it
        return card

    @router.get("/models")
    def list_models() -> dict[str, Any]:
        backend = app.models.current()
        return {"object": "list", "data": [model_card(backend.name)] if backend else []}

    @router.get("/models/{name}")
    def get_model(name: str) -> dict[str, Any]:
        backend = app.models.current()
        if backend is None or backend.name != name:
            raise APIError(404, f"the model {name!r} is not loaded", param="model", code="model_not_found")
        return model_card(name)

    @router.post("/completions")
    async def completions(body: CompletionRequest, http: Request) -> Any:
        plan = await run_in_threadpool(completion_plan, app, body)  # tokenizing a long prompt must not block the loop
        responder = Responder(app, callers, http, plan, chat=False)
        if body.stream:
            return await responder.stream(bool(body.stream_options and body.stream_options.include_usage))
        return await responder.json()

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> Any:
        plan = await run_in_threadpool(chat_plan, app, body)
        responder = Responder(app, callers, http, plan, chat=True)
        if body.stream:
            return await responder.stream(bool(body.stream_options and body.stream_options.include_usage))
        return await responder.json()

    return router
