"""Batched generation for the Transformers backend: concurrent requests share each forward pass.

One scheduler thread per loaded model runs a decode loop over a batch of rows (one row per request).
A request that arrives while a batch is running joins it at the next step: the batch is rebuilt by
re-encoding every live row's tokens so far (left-padded, with its own positions) — one prefill of a
few short sequences, much cheaper than making the newcomer wait for the whole batch. Finished rows are
dropped at the next rebuild.

Each row keeps its own sampling: its own LogitsProcessorList (from its Preset) on its own slice of the
logits, and its own `torch.Generator` seeded from the request, so a seeded reply does not depend on
what else is in the batch. Each row has its own cancel Event, checked every step: a cancelled row
stops within one token without disturbing the others.

On the CPU a prefill runs on `threads.prompt` threads and each decode step on `threads.generate`
(see `CpuThreads`), or on what `ThreadTuner` chose: torch's thread count is process-wide, so the
engine sets it before each forward pass that needs another count.

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
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from modules.presets import Preset
from modules.settings import CpuThreads
from modules.sampling import ChainContext, build_processors
from modules.loaders.base import END

log = logging.getLogger(__name__)


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


class BatchEngine:
    """Generates for up to `max_batch` requests at once on one causal LM."""

    def __init__(self, model: Any, eos_token_ids: Sequence[int], pad_token_id: int, max_batch: int,
                 device: str = "cpu", threads: CpuThreads | None = None) -> None:
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
        self._cond = threading.Condition()
        self._pending: collections.deque[_Row] = collections.deque()
        self._closed = False
        self.largest_batch = 0  # most rows ever generated together (tests and /health read it)
        self._thread = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], preset: Preset, max_new: int, cancel: threading.Event,
               context: ChainContext | None = None) -> queue.SimpleQueue:
        """Queue one generation; its token ids arrive on the returned queue, then `END`."""
        seed = preset.seed if preset.seed >= 0 else random.randrange(2**31)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        # the row's stochastic samplers (XTC) draw from the row's generator too, not torch's global one
        context = replace(context or ChainContext(), generator=generator)
        row = _Row(ids=list(ids), preset=preset, max_new=max_new, cancel=cancel, out=queue.SimpleQueue(),
                   processors=build_processors(preset, self.eos_token_ids, device=self.device, context=context),
                   generator=generator)
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
        rows: list[_Row] = []
        cache = None
        mask = None
        while True:
            with self._cond:
                while not self._closed and not self._pending and not rows:
                    self._cond.wait()
                if self._closed:
                    for row in rows + list(self._pending):
                        row.out.put(RuntimeError("the model was unloaded"))
                        row.out.put(END)
                    return
                joining = []
                while self._pending and len(rows) + len(joining) < self.max_batch:
                    joining.append(self._pending.popleft())
            try:
                if joining or (rows and sum(r.done for r in rows) * 2 >= len(rows)):
                    rows = [r for r in rows if not r.done] + joining
                    self.largest_batch = max(self.largest_batch, len(rows))
                    if not rows:
                        continue
                    self._last_step = None  # a prefill between two steps is not a step's time
                    logits, cache, mask = self._prefill(rows)
                    self._sample(rows, logits)
                else:
                    cache, mask = self._decode(rows, cache, mask)
                if all(r.done for r in rows):
                    rows, cache, mask, self._last_step = [], None, None, None
            except BaseException as exc:  # handed to every reader in the batch; the engine carries on
                for row in rows:
                    if not row.done:
                        row.out.put(exc)
                        row.out.put(END)
                rows, cache, mask, self._last_step = [], None, None, None

    def _use_threads(self, count: int) -> None:
        if count != self._torch_threads:
            torch.set_num_threads(count)
            self._torch_threads = count

    def _prefill(self, rows: list[_Row]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        if self.threads is not None:
            self._use_threads(self.threads.prompt)
        return self._encode(rows)

    def _decode(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """One token for every row. For the tuner, a step lasts from its start to the next one's: the
        whole loop, GIL waits included, is what a thread count costs or saves."""
        if self.tuner is not None:
            now = time.perf_counter()
            if self._last_step is not None:
                start, threads, batch = self._last_step
                self.tuner.record(threads, batch, now - start)
            self._last_step = (now, self.tuner.threads(), len(rows))
            self._use_threads(self._last_step[1])
        elif self.threads is not None:
            self._use_threads(self.threads.generate)
        logits, cache, mask = self._step(rows, cache, mask)
        self._sample(rows, logits)
        return cache, mask

    def generate_threads(self) -> int | None:
        """The CPU threads decode steps use (None on a GPU, or while the tuner is still measuring)."""
        if self.threads is None:
            return None
        return self.tuner.chosen if self.tuner else self.threads.generate

    @torch.inference_mode()
    def _encode(self, rows: list[_Row]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        longest = max(len(r.ids) for r in rows)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, longest - len(row.ids):] = torch.tensor(row.ids)
            mask[i, longest - len(row.ids):] = 1
            row.position = len(row.ids) - 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True)
        return out.logits[:, -1, :].float(), out.cache, mask

    @torch.inference_mode()
    def _step(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
        last = torch.tensor([[r.ids[-1]] for r in rows], dtype=torch.long)
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long)
        out = self.model(input_ids=last.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), cache=cache, use_cache=True)
        return out.logits[:, -1, :].float(), out.cache, mask

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            if row.done:
                row.ids.append(self.pad_token_id)  # keeps the batch rectangular until the next rebuild
                row.position += 1
                continue
            if row.cancel.is_set():
                self._finish(row)
                row.ids.append(self.pad_token_id)
                row.position += 1
                continue
            scores = row.processors(torch.tensor([row.ids], device=self.device), logits[i:i + 1])
            if row.preset.greedy:
                token = int(scores.argmax(dim=-1))
            else:
                probs = torch.softmax(scores, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=row.generator))
            row.ids.append(token)
            row.position += 1
            row.generated += 1
            row.out.put([token])
            if token in self.eos_token_ids or row.generated >= row.max_new:
                self._finish(row)

    @staticmethod
    def _finish(row: _Row) -> None:
        row.done = True
        row.out.put(END)
