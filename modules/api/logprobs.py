"""OpenAI's `logprobs` / `top_logprobs` for /v1/completions and /v1/chat/completions.

The values are the model's own log-probabilities (before temperature and the sampler chain, as vLLM
reports by default) for each token of the text the client receives. They are computed by scoring that
text, not captured while sampling: what a client gets has passed stop strings and extensions' output
modifiers, and scoring it is what keeps tokens and text lined up in every case. The backend's
TokenScorer keeps its key/value cache between calls, so a streamed reply costs one extra forward pass
over the reply in all, chunk by chunk.

While streaming, the last token of the text so far may still merge with text still to come, so a
chunk reports only the tokens before it; the final chunk reports the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules.loaders import registry
from modules.presets import Preset

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float | None  # None: the first token of a text, which has no context
    top: tuple[tuple[str, float], ...]
    offset: int  # character offset of the token in the response text


def supports_logprobs(backend: Any) -> bool:
    return registry.capabilities(backend).logprobs


class ReplyLogprobs:
    """The log-probabilities of one reply, fed its text as it arrives."""

    def __init__(self, backend: Any, prompt: str, preset: Preset, top: int, echo: bool = False) -> None:
        self.backend = backend
        self.top = top
        self.prompt = prompt
        self.prompt_ids = backend.prompt_ids(prompt, preset)
        self.plain_prompt_ids = backend.tokenize(prompt)
        self.offset = 0
        self.echo: list[TokenLogprob] = []
        if echo:  # the prompt's own tokens come first (the first one without a value)
            self.scorer = backend.token_scorer([])
            scored = self.scorer.score(self.prompt_ids, top)
            # a BOS token the model reads is not part of the echoed text: report from the text's tokens
            n = len(self.plain_prompt_ids)
            skip = len(self.prompt_ids) - n if n and self.prompt_ids[-n:] == self.plain_prompt_ids else 0
            self.echo = self._entries(self.prompt_ids[skip:], scored[skip:])
        else:
            self.scorer = backend.token_scorer(self.prompt_ids)
        self.text = ""
        self.done: list[int] = []

    def _entries(self, ids: list[int], scored: list[tuple[float | None, list[tuple[int, float]]]]) -> list[TokenLogprob]:
        entries = []
        for token_id, (logprob, top) in zip(ids, scored):
            text = self.backend.token_text(token_id)
            entries.append(TokenLogprob(text, logprob, tuple((self.backend.token_text(i), v) for i, v in top),
                                        self.offset))
            self.offset += len(text)
        return entries

    def _reply_ids(self) -> list[int]:
        # Tokenized after the prompt, as the model read it; a reply whose first token merged with the
        # prompt's last one (rare) is tokenized on its own instead.
        full = self.backend.tokenize(self.prompt + self.text)
        n = len(self.plain_prompt_ids)
        return full[n:] if full[:n] == self.plain_prompt_ids else self.backend.tokenize(self.text)

    def add(self, delta: str, final: bool = False) -> list[TokenLogprob]:
        """Entries for the tokens of the reply that are settled once `delta` is appended."""
        self.text += delta
        ids = self._reply_ids()
        settled = ids if final else ids[:-1]
        if settled[:len(self.done)] != self.done:
            # More text changed how earlier text tokenizes: continue from the new tokenization
            # without repeating what was already reported.
            keep = min(len(self.done), len(settled))
            self.scorer = self.backend.token_scorer(self.prompt_ids + settled[:keep])
            self.done = settled[:keep]
        new = settled[len(self.done):]
        self.done += new
        return self._entries(new, self.scorer.score(new, self.top))


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """Chat completions' shape: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    return {"content": [{"token": e.token, "logprob": e.logprob if e.logprob is not None else 0.0,
                         "bytes": _token_bytes(e.token),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": _token_bytes(t)} for t, v in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """Legacy completions' shape: parallel lists of tokens, their log-probabilities, top alternatives
    ({token: logprob}) and character offsets."""
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) if e.logprob is not None else None for e in entries],
            "text_offset": [e.offset for e in entries]}
