"""Remote backend: any OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama, another Parlour).

This is how Parlour serves users who outgrow one machine: the engine (say vLLM with tensor
parallelism across GPUs) does the heavy lifting, Parlour keeps the UI, chats, presets and API.
The base URL comes only from the operator (command line or Model tab), never from chat content.

Which endpoint a turn uses (the rule lives in `modules.chat.engine_messages`):

- **/chat/completions with messages** whenever messages say exactly what the turn means, so the
  engine applies the model's own template:
  - instruct (model's template): the system message (or the character's context), then the turns;
  - chat-instruct (model's template): the optional system message, then ONE user message holding the
    chat-instruct command with the whole transcript, as the local prompt has it;
  - chat: the character's context (and the user's bio) as the system message, then the turns, each
    with its speaker in the OpenAI `name` field.
- **/completions with the prompt text** Parlour renders when the turn needs raw text: continue (the
  reply's start is given), impersonate (the model writes the user's line), "start reply with", a
  chosen instruction template (rendered here), the notebook, and an extension's
  custom_generate_chat_prompt. In chat mode that text is the `Name: text` transcript. In instruct
  and chat-instruct modes with the model's own template there is no text to render (the template
  lives on the engine), so those turns fail with a clear message asking for an instruction template.
- On the messages path Parlour does not truncate: the engine knows its context and says so.

Non-neutral preset fields are passed through as extra body fields, which vLLM, llama.cpp server and
Parlour accept (top_k, min_p, repetition_penalty, ...).

A constraint goes in the fields engines read (`constraint_fields`): a JSON schema as OpenAI's
`response_format` (vLLM, llama.cpp server, Ollama, LM Studio, Parlour); a grammar or regex under llama.cpp
server's / Parlour's names (`grammar`, `regex`) and vLLM's `structured_outputs`. The engine applies it and
answers with its own error for what it cannot; Parlour checks the constraint compiles before sending it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Iterator

import httpx

from modules import reasoning
from modules.constraints import constraint_of
from modules.loaders.base import Delta, LoadError
from modules.loaders.options import RemoteOptions
from modules.presets import CONSTRAINT_KEYS, Preset

log = logging.getLogger(__name__)


def _client(options: RemoteOptions) -> httpx.Client:
    headers = {"Authorization": f"Bearer {options.api_key.get_secret_value()}"} if options.api_key else {}
    return httpx.Client(base_url=options.base_url.rstrip("/") + "/", headers=headers, timeout=options.timeout)


def list_remote_models(values: dict[str, Any]) -> list[str]:
    """Model ids the server's /models lists (LoadError when it cannot say)."""
    try:
        options = RemoteOptions.model_validate(values)
        with _client(options) as client:
            response = client.get("models", timeout=10)
            response.raise_for_status()
            return [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise LoadError(f"could not list the remote server's models: {exc}") from exc


def constraint_fields(preset: Preset) -> dict[str, Any]:
    """The preset's constraint as request fields an engine reads (none without one)."""
    constraint = constraint_of(preset)
    if constraint is None:
        return {}
    if constraint.kind == "json_schema":
        schema = constraint.schema
        if schema == {"type": "object"}:  # JSON mode: the older and wider-spread form
            return {"response_format": {"type": "json_object"}}
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "reply", "schema": schema if isinstance(schema, dict) else {}, "strict": True}}}
    name = "regex" if constraint.kind == "regex" else "grammar"
    return {name: constraint.text, "structured_outputs": {name: constraint.text}}


def request_body(preset: Preset) -> dict[str, Any]:
    """OpenAI fields plus the preset's non-neutral samplers as extra fields, and its constraint."""
    body: dict[str, Any] = {"max_tokens": preset.max_new_tokens, "temperature": preset.temperature,
                            **constraint_fields(preset)}
    for key, value in preset.changed().items():
        if key in ("max_new_tokens", "temperature", *CONSTRAINT_KEYS):
            continue
        if key == "seed":
            body["seed"] = value
        elif key == "ban_eos_token":
            body["ignore_eos"] = value  # vLLM's name; Parlour accepts both
            body["ban_eos_token"] = value
        else:
            body[key] = value
    return body


class RemoteBackend:
    loader = "remote"
    chat_template = None  # the engine applies the model's own template
    stop_strings: tuple[str, ...] = ()
    vocab_size = None  # the engine's tokenizer is not ours to know
    #: engines with a reasoning parser (vLLM --reasoning-parser, DeepSeek) send `reasoning_content` apart;
    #: others send `<think>` blocks inside the text, which the pipeline splits as for a local model
    reasoning_format = reasoning.THINK

    def __init__(self, model_id: str, options: RemoteOptions) -> None:
        self.name = f"remote:{model_id}"
        self.model_id = model_id
        self.options = options
        self.load_seconds = 0.0
        self._client = _client(options)
        try:
            response = self._client.get("models", timeout=10)
            response.raise_for_status()
            models = {m["id"]: m for m in response.json()["data"]}
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise LoadError(f"{options.base_url} is not answering as an OpenAI-compatible server: {exc}") from exc
        if model_id not in models:
            raise LoadError(f"{options.base_url} has no model {model_id!r}; it has: {', '.join(models) or 'none'}")
        entry = models[model_id]
        # vLLM reports max_model_len; others may not, so fall back to a common size.
        self._ctx = int(entry.get("max_model_len") or entry.get("context_length") or 4096)

    @property
    def context_length(self) -> int:
        return self._ctx

    def tokenize(self, text: str) -> list[int]:
        """Token ids from the engine when it offers a tokenizer endpoint (vLLM, Parlour), else an estimate."""
        for path, body, key in (("../tokenize", {"model": self.model_id, "prompt": text}, "tokens"),
                                ("internal/encode", {"text": text}, "tokens")):
            try:
                response = self._client.post(path, json=body, timeout=10)
                if response.status_code == 200:
                    return list(response.json()[key])
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        return [0] * max(1, len(text.encode("utf-8")) // 4)  # ~4 bytes a token: only counts, never decoded

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError("the remote backend works in text")

    def template_vars(self) -> dict[str, Any]:
        return {}

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        body = {"model": self.model_id, "prompt": prompt, "stream": True, **request_body(preset)}
        yield from self._stream("completions", body, cancel, lambda choice: (choice.get("text") or "", ""))

    def stream_chat(self, messages: list[dict[str, Any]], preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        body = {"model": self.model_id, "messages": messages, "stream": True, **request_body(preset)}

        def text_of(choice: dict[str, Any]) -> tuple[str, str]:
            delta = choice.get("delta") or {}
            # vLLM and DeepSeek call it reasoning_content; some engines (and newer vLLM) `reasoning`
            return delta.get("content") or "", delta.get("reasoning_content") or delta.get("reasoning") or ""

        yield from self._stream("chat/completions", body, cancel, text_of)

    def _stream(self, path: str, body: dict[str, Any], cancel: threading.Event, text_of) -> Iterator[Delta]:
        reason = None
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    raise RuntimeError(f"remote server answered {response.status_code}: {detail}")
                for line in response.iter_lines():
                    if cancel.is_set():
                        reason = "cancelled"
                        break  # leaving the block closes the connection; the engine aborts the request
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    for choice in chunk.get("choices", []):
                        reason = choice.get("finish_reason") or reason
                        text, thought = text_of(choice)
                        if text or thought:
                            yield Delta(text, 1, reasoning=thought)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"remote server failed: {exc}") from exc
        yield Delta("", 0, "cancelled" if cancel.is_set() else reason or "stop")

    def info(self) -> dict[str, Any]:
        return {"loader": self.loader, "name": self.name, "base_url": self.options.base_url,
                "context_length": self._ctx, "architecture": "remote", "dtype": "n/a", "device": "remote"}

    def unload(self) -> None:
        self._client.close()
