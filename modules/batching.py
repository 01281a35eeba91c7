"""Batched generation for the Transformers backend: concurrent requests share each forward pass.

One scheduler thread per loaded model runs a decode loop over a batch of rows (one row per request).
A request that arrives while a batch is running is read on its own: from the keys/values of its
longest beginning the prefix cache kept (modules/prefix_cache.py), the rest in chunks of
`PROMPT_CHUNK` tokens between the others' decode steps, so a long prompt does not stall the replies
already streaming. Then its first token is sampled and its key/value cache is merged into the batch's
(each row right-aligned, left padding masked out, its own position ids): the rows already generating
are never read again. A finished row leaves at once; its keys/values go to the prefix cache, and
columns only padding filled are cut off.

Each row keeps its own sampling: its own LogitsProcessorList (from its Preset) on its own slice of the
logits, and its own `torch.Generator` seeded from the request, so a seeded reply does not depend on
what else is in the batch. A constrained row's list holds its own constraint stage (modules/constraints.py),
which follows that row's tokens alone, so rows with and without constraints share a batch; a row whose
chain fails (its reply left its constraint) ends with the error while the others go on. Each row has its
own cancel Event, checked every step: a cancelled row stops within one token without disturbing the others.

On the CPU a prompt is read on `threads.prompt` threads and each decode step runs on
`threads.generate` (see `CpuThreads`), or on what `ThreadTuner` chose: torch's thread count is
process-wide, so the engine sets it before each forward pass that needs another count.

The key/value caches are Transformers' own `DynamicCache` of plain `DynamicLayer`s (keys and values
[rows, heads, tokens, head_dim] per layer); the engine stacks, selects and trims their tensors. Models
whose caches hold something else (linear-attention states) are not batched: see
`supports_plain_cache`.

Output protocol (the same as the generate() path's streamer): lists of new token ids, then `END`, or
an exception, on the row's SimpleQueue.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from modules.loaders.base import END
from modules.prefix_cache import KV, PrefixCache
from modules.presets import Preset
from modules.sampling import build_processors
from modules.settings import CpuThreads

log = logging.getLogger(__name__)

#: Most prompt tokens read in one forward pass while other rows are generating (llama.cpp's default
#: batch is 512 too): their next token waits for at most one such chunk.
PROMPT_CHUNK = 512


def supports_plain_cache(model: Any) -> bool:
    """Whether the model's attention keeps plain keys/values in every layer (full or sliding-window
    attention), so a cache of `DynamicLayer`s serves it: the engine and the prefix cache need that.

    A sliding-window layer gets a full-length layer here; the model's own mask still limits each token to
    its window, so the results are the same (only the memory is that of full attention)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # an architecture whose cache cannot be built from its config
        return False
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def cache_layers(cache: Any) -> KV:
    """The (keys, values) of every layer of a DynamicCache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from(kv: KV | None) -> DynamicCache:
    """A DynamicCache of plain layers holding `kv` (empty for None)."""
    return DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()


class ThreadTuner:
    """Chooses between `fewer` and `more` threads for decode steps, from the engine's own steps.

    Steps alternate in blocks between the two counts; once one batch size has `ROUNDS` blocks of
    each, the fewer threads are kept unless the median step with more is `MARGIN` times faster.
    Steps are compared only with steps of the same batch size (a step of 4 rows is slower than one
    of 1 whatever the threads). Wall time is what counts: a thread count that makes the model fight
    the server for a core shows up as slower steps.
    """

    BLOCK = 8
    ROUNDS = 3
    MARGIN = 1.05

    def __init__(self, fewer: int, more: int) -> None:
        self.fewer, self.more = fewer, more
        self.chosen: int | None = None
        self._steps = 0
        self._seconds: dict[int, dict[int, list[float]]] = {}  # rows -> threads -> step seconds

    def threads(self) -> int:
        """The count for the next step."""
        if self.chosen is not None:
            return self.chosen
        return self.fewer if (self._steps // self.BLOCK) % 2 == 0 else self.more

    def record(self, threads: int, rows: int, seconds: float) -> None:
        if self.chosen is not None:
            return
        self._steps += 1
        samples = self._seconds.setdefault(rows, {self.fewer: [], self.more: []})
        samples[threads].append(seconds)
        if all(len(times) >= self.BLOCK * self.ROUNDS for times in samples.values()):
            fewer, more = statistics.median(samples[self.fewer]), statistics.median(samples[self.more])
            self.chosen = self.more if fewer > more * self.MARGIN else self.fewer
            log.info("generating on %d CPU threads (a step on %d: %.2f ms, on %d: %.2f ms)", self.chosen,
                     self.fewer, fewer * 1000, self.more, more * 1000)


@dataclass
class _Row:
    ids: list[int]  # prompt + generated so far
    preset: Preset
    max_new: int
    cancel: threading.Event
    out: queue.SimpleQueue
    processors: Any
    generator: torch.Generator
    generated: int = 0
    done: bool = False
    position: int = 0  # position id of the last token in `ids`
    extra: dict[str, Any] = field(default_factory=dict)
    scope: str = ""  # whose prefix-cache partition (modules/prefix_cache.py)
    #: `ids` as a tensor for the processors, filled in as tokens come (None when the chain is empty)
    history: torch.Tensor | None = None
    cache: Any = None  # its own keys/values while its prompt is read, until it joins the batch
    read: int = 0  # prompt tokens in `cache`
    reused: int = 0  # prompt tokens whose keys/values came from the prefix cache


class BatchEngine:
    """Generates for up to `max_batch` requests at once on one causal LM.

    The batch (`_rows`, `_cache`, `_mask`) and the row being read (`_reading`) belong to the scheduler
    thread; other threads only queue rows (`submit`) and close the engine."""

    def __init__(self, model: Any, eos_token_ids: Sequence[int], pad_token_id: int, max_batch: int,
                 device: str = "cpu", threads: CpuThreads | None = None,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.model = model
        # thread counts only matter (and are only switched) when the model runs on the CPU
        self.threads = threads if device == "cpu" else None
        self.tuner = (ThreadTuner(threads.generate - 1, threads.generate)
                      if self.threads and threads.tune and threads.generate > 1 else None)
        self._torch_threads = 0  # what this engine last set
        self._last_step: tuple[float, int, int] | None = None  # (start, threads, rows) of the last decode step
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.max_batch = max_batch
        self.device = device
        self.prefix_cache = prefix_cache
        self._cond = threading.Condition()
        self._pending: collections.deque[_Row] = collections.deque()
        self._closed = False
        self._rows: list[_Row] = []  # generating, in the order of the batch cache's rows
        self._cache: Any = None  # their keys/values, right-aligned
        self._mask: torch.Tensor | None = None  # [rows, columns]: 1 where a row has a token, 0 on its padding
        self._reading: _Row | None = None
        self.largest_batch = 0  # most rows ever generated together (tests and /health read it)
        self.prompt_tokens_read = 0  # prompt tokens run through the model (the rest came from the prefix cache)
        self._thread = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], preset: Preset, max_new: int, cancel: threading.Event,
               context: Any = None, *, scope: str = "") -> queue.SimpleQueue:
        """Queue one generation; its token ids arrive on the returned queue, then `END`. `scope`: whose
        prefix-cache partition the prompt may reuse and fill."""
        seed = preset.seed if preset.seed >= 0 else random.randrange(2**31)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        processors = build_processors(preset, self.eos_token_ids, device=self.device, context=context)
        row = _Row(ids=list(ids), preset=preset, max_new=max_new, cancel=cancel, out=queue.SimpleQueue(),
                   processors=processors, generator=generator, position=len(ids) - 1, scope=scope)
        if len(processors):  # one buffer for the whole reply: no tensor of the whole sequence per step
            row.history = torch.empty((1, len(ids) + max_new), dtype=torch.long, device=self.device)
            row.history[0, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._pending.append(row)
            self._cond.notify()
        return row.out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    # -- the scheduler thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._rows and self._reading is None:
                    self._cond.wait()
                if self._closed:
                    for row in [*self._rows, *filter(None, [self._reading]), *self._pending]:
                        self._fail(row, RuntimeError("the model was unloaded"))
                    return
                if self._reading is None and self._pending and len(self._rows) < self.max_batch:
                    self._reading = self._pending.popleft()
            if self._reading is not None:
                row = self._reading
                try:
                    self._read_prompt(row)
                except BaseException as exc:  # this request fails; the batch carries on
                    self._reading = None
                    self._forget_on_oom(exc)
                    self._fail(row, exc)
            if self._rows:
                try:
                    self._decode()
                except BaseException as exc:  # handed to every reader in the batch; the engine carries on
                    self._forget_on_oom(exc)
                    for row in self._rows:
                        self._fail(row, exc)
                    self._rows, self._cache, self._mask, self._last_step = [], None, None, None

    def _use_threads(self, count: int) -> None:
        if count != self._torch_threads:
            torch.set_num_threads(count)
            self._torch_threads = count

    def _read_prompt(self, row: _Row) -> None:
        """Read the next part of `row`'s prompt (all of it when nothing else is generating); once read,
        sample its first token and put it in the batch."""
        if row.cache is None:  # its first part: start from what the prefix cache kept
            prefix = self.prefix_cache.match(row.scope, row.ids) if self.prefix_cache is not None else None
            row.cache = cache_from(prefix.kv if prefix else None)
            row.read = row.reused = prefix.length if prefix else 0
        if row.cancel.is_set():
            self._reading = None
            self._finish(row)
            return
        end = min(len(row.ids), row.read + PROMPT_CHUNK) if self._rows else len(row.ids)
        self._last_step = None  # reading a prompt between two steps is not a step's time
        if self.threads is not None:
            self._use_threads(self.threads.prompt)
        logits = self._encode(row, end)
        self.prompt_tokens_read += end - row.read
        row.read = end
        if end < len(row.ids):
            return
        self._reading = None
        if self.prefix_cache is not None:
            self.prefix_cache.store(row.scope, row.ids, cache_layers(row.cache))
        self._sample([row], logits)
        if not row.done:
            self._join(row)

    @torch.inference_mode()
    def _encode(self, row: _Row, end: int) -> torch.Tensor:
        """Run ids[row.read:end] through the model on top of `row.cache`; the last position's logits."""
        start = row.read
        input_ids = torch.tensor([row.ids[start:end]], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, dtype=torch.long, device=self.device)[None]
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=row.cache,
                         use_cache=True)
        row.cache = out.cache
        return out.logits[:, -1, :].float()

    def _join(self, row: _Row) -> None:
        """Put a row whose prompt was read into the batch: its keys/values are stacked under the batch's,
        both right-aligned to the longer of the two (the batch's rows are not read again)."""
        cache, row.cache = row.cache, None
        mask = torch.ones((1, len(row.ids) - 1), dtype=torch.long, device=self.device)  # the tokens it read
        if not self._rows:
            self._rows, self._cache, self._mask = [row], cache, mask
        else:
            width = max(self._mask.shape[1], mask.shape[1])
            # all of it built before any of it is used: running out of memory halfway fails only the newcomer
            merged = [(_right_aligned([mine.keys, theirs.keys], width, dim=-2),
                       _right_aligned([mine.values, theirs.values], width, dim=-2))
                      for mine, theirs in zip(self._cache.layers, cache.layers)]
            self._mask = _right_aligned([self._mask, mask], width, dim=-1)
            for layer, (keys, values) in zip(self._cache.layers, merged):
                layer.keys, layer.values = keys, values
            self._rows.append(row)
        self._last_step = None
        self.largest_batch = max(self.largest_batch, len(self._rows))

    def _decode(self) -> None:
        """One token for every row. For the tuner, a step lasts from its start to the next one's: the
        whole loop, GIL waits included, is what a thread count costs or saves."""
        if self.tuner is not None:
            now = time.perf_counter()
            if self._last_step is not None:
                start, threads, batch = self._last_step
                self.tuner.record(threads, batch, now - start)
            self._last_step = (now, self.tuner.threads(), len(self._rows))
            self._use_threads(self._last_step[1])
        elif self.threads is not None:
            self._use_threads(self.threads.generate)
        logits = self._step()
        self._sample(self._rows, logits)
        self._drop_finished()

    def generate_threads(self) -> int | None:
        """The CPU threads decode steps use (None on a GPU, or while the tuner is still measuring)."""
        if self.threads is None:
            return None
        return self.tuner.chosen if self.tuner else self.threads.generate

    @torch.inference_mode()
    def _step(self) -> torch.Tensor:
        rows = self._rows
        last = torch.tensor([[r.ids[-1]] for r in rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=self.device)
        out = self.model(input_ids=last, attention_mask=self._mask, position_ids=positions, cache=self._cache,
                         use_cache=True)
        self._cache = out.cache
        return out.logits[:, -1, :].float()

    def _drop_finished(self) -> None:
        """Take finished rows out of the batch (their keys/values go to the prefix cache) and cut the
        leading columns no remaining row needs."""
        if not any(row.done for row in self._rows):
            return
        width = self._mask.shape[1]
        keep = []
        for i, row in enumerate(self._rows):
            if not row.done:
                keep.append(i)
            elif self.prefix_cache is not None:
                # what the model read of it: all but the last token sampled, or all when it was cancelled
                read = int(self._mask[i].sum())
                self.prefix_cache.store(row.scope, row.ids[:read], [(k[i:i + 1, :, width - read:], v[i:i + 1, :, width - read:])
                                                                    for k, v in cache_layers(self._cache)])
        self._last_step = None
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask[index]
        first = int(self._mask.any(dim=0).int().argmax())  # columns before this are padding in every row
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        # rows with nothing to apply share one argmax (one device sync for all of them)
        plain = logits.argmax(dim=-1).tolist() if any(r.preset.greedy and not r.processors for r in rows) else None
        for i, row in enumerate(rows):
            if row.cancel.is_set():
                self._finish(row)
                continue
            if plain is not None and row.preset.greedy and not row.processors:
                token = plain[i]
            else:
                scores = logits[i:i + 1]
                if row.processors:
                    try:  # the row's own chain: its constraint stage (if any) follows this row's reply alone
                        scores = row.processors(row.history[:, :len(row.ids)], scores)
                    except Exception as exc:  # e.g. the reply left its constraint: this row ends, the batch goes on
                        self._fail(row, exc)
                        continue
                if row.preset.greedy:
                    token = int(scores.argmax(dim=-1))
                else:
                    probs = torch.softmax(scores, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=row.generator))
            row.ids.append(token)
            if row.history is not None:
                row.history[0, len(row.ids) - 1] = token
            row.position += 1
            row.generated += 1
            row.out.put([token])
            if token in self.eos_token_ids or row.generated >= row.max_new:
                self._finish(row)

    @staticmethod
    def _finish(row: _Row) -> None:
        row.done = True
        row.out.put(END)

    @staticmethod
    def _fail(row: _Row, exc: BaseException) -> None:
        if not row.done:
            row.done = True
            row.out.put(exc)
            row.out.put(END)

    def _forget_on_oom(self, exc: BaseException) -> None:
        """Out of memory: give the prefix cache's memory back (the next request may fit then)."""
        if isinstance(exc, torch.OutOfMemoryError) and self.prefix_cache is not None:
            self.prefix_cache.clear()


def _right_aligned(parts: list[torch.Tensor], width: int, dim: int) -> torch.Tensor:
    """`parts` stacked along dimension 0, each placed at the end of `width` along `dim` (zeros before)."""
    shape = list(parts[0].shape)
    shape[0] = sum(p.shape[0] for p in parts)
    shape[dim] = width
    out = parts[0].new_zeros(shape)
    row = 0
    for part in parts:
        out[row:row + part.shape[0]].narrow(dim, width - part.shape[dim], part.shape[dim]).copy_(part)
        row += part.shape[0]
    return out
