"""The `Backend` protocol every loader implements, and the text helpers they share."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from modules.presets import Preset
from modules.reasoning import ReasoningFormat
from modules.templates import ChatTemplate


@dataclass(frozen=True)
class Delta:
    """New text from a backend: `tokens` tokens decoded into `text` (which may be "" mid-character)."""

    text: str
    tokens: int = 1
    finish_reason: str | None = None  # set on the last delta: "stop", "length" or "cancelled"
    #: reasoning an engine returns apart from the text (vLLM's and DeepSeek's `reasoning_content`)
    reasoning: str = ""
    #: on the last delta: the end-of-sequence token the model ended with (counted, not in any text)
    eos_token: int | None = None
    #: tool calls an engine returns apart from the text: OpenAI's streaming `tool_calls` entries
    tool_calls: tuple[dict[str, Any], ...] = ()


class LoadError(RuntimeError):
    """A model that could not be loaded; the message says why in one line."""


@dataclass
class GenerationHooks:
    """Per-request callbacks from extensions that a backend may honour (the Transformers backend does).

    `tokenizer(prompt, input_ids, input_embeds) -> (prompt, input_ids, input_embeds)` runs after
    tokenization; `logits_processors(processor_list, input_ids) -> processor_list` may add processors.
    """

    tokenizer: Callable[[str, Any, Any], tuple[str, Any, Any]] | None = None
    logits_processors: Callable[[list[Any], Any], list[Any]] | None = None


class Backend(Protocol):
    """A loaded model that can stream text. Implementations: one per loader in loaders/registry.py."""

    loader: str
    name: str
    chat_template: ChatTemplate | None
    #: strings that end a turn in this model's template (e.g. "<|im_end|>"), used as stop strings
    stop_strings: tuple[str, ...]
    #: the markers of its reasoning blocks (modules/reasoning.py): read from its template at load, then
    #: the per-model setting if there is one (the model manager sets it)
    reasoning_format: ReasoningFormat

    @property
    def context_length(self) -> int: ...

    #: token ids are 0..vocab_size-1 (None when the engine's tokenizer is not known here)
    vocab_size: int | None

    # What else a backend can do (logprobs, LoRA, logits, ...) is its loader's Capabilities in
    # modules/loaders/registry.py: callers ask the registry, never probe the backend.

    def template_vars(self) -> dict[str, Any]:
        """Variables its chat template expects besides the messages (bos_token, eos_token, ...)."""
        ...

    def stream(self, prompt: str, preset: Preset, cancel: threading.Event) -> Iterator[Delta]:
        """Generate a continuation of `prompt`; stop within one token once `cancel` is set."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: list[int]) -> str: ...

    def info(self) -> dict[str, Any]: ...

    def unload(self) -> None: ...


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")), 0)


class IncrementalDecoder:
    """Decode a growing list of token ids into text pieces without splitting characters.

    Byte-level tokens can end in the middle of a UTF-8 character; decoding them alone gives U+FFFD.
    We decode a short window ending at the newest token and emit text only once it no longer ends in
    an incomplete character, so the concatenated pieces always equal decoding everything at once.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: decoding from here gives stable leading text
        self._read = 0  # everything before this index has been emitted

    def add(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end stays as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text):]


Emit = Callable[[list[int]], None]
#: the last item a token queue carries (after lists of token ids, or an exception)
END = object()


def token_stream(produce: Callable[[Emit], None], cancel: threading.Event, decode: Callable[[list[int]], str],
                 eos_token_ids: tuple[int, ...], max_new: int, name: str) -> Iterator[Delta]:
    """Run `produce(emit)` in a worker thread and turn the token ids it emits into Deltas.

    The worker only appends to an unbounded queue, so it never waits for the reader (a slow browser
    cannot slow the model). `produce` must return soon after `cancel` is set; when the reader
    stops early (Stop, closed connection) `read_tokens` sets it and joins the worker.
    """
    out: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            produce(out.put)
        except BaseException as exc:  # handed to the reader, which re-raises it in its own thread
            out.put(exc)
        finally:
            out.put(END)

    worker = threading.Thread(target=work, name=f"generate-{name}", daemon=True)
    worker.start()
    return read_tokens(out, cancel, decode, eos_token_ids, max_new, worker)


def read_tokens(out: queue.SimpleQueue, cancel: threading.Event, decode: Callable[[list[int]], str],
                eos_token_ids: tuple[int, ...], max_new: int, worker: threading.Thread | None = None) -> Iterator[Delta]:
    """Deltas from a queue of token-id lists ending in END (or an exception), with the finish reason last.
    Leaving early sets `cancel`, so whoever fills the queue stops within one token."""
    decoder = IncrementalDecoder(decode)
    generated = 0
    last_token = None
    try:
        while True:
            item = out.get()
            if item is END:
                break
            if isinstance(item, BaseException):
                raise item
            if cancel.is_set():
                # Stop was pressed: what the producer queued ahead of this reader (a loaded machine reads
                # late) is dropped, so a reply ends where it was stopped however far behind the reader was
                break
            generated += len(item)
            last_token = item[-1]
            yield Delta(decoder.add(item), len(item))
        eos = None
        if cancel.is_set():
            reason = "cancelled"
        elif last_token in eos_token_ids:
            reason, eos = "stop", last_token
        else:
            reason = "length" if generated >= max_new else "stop"
        yield Delta(decoder.flush(), 0, reason, eos_token=eos)
    finally:
        cancel.set()
        if worker is not None:
            worker.join()
