"""The constraint stage of the sampler chain (modules/constraints.py compiles what it follows): apart,
because it works on torch tensors and the server imports modules/constraints.py before torch loads."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from llguidance import LLMatcher
from transformers import LogitsProcessor

from modules.constraints import Compiler, Constraint, ConstraintViolation, unpack  # noqa: F401 (doctest)


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    """Index of the first `sub` in `seq` at or after `start`, or -1."""
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1


class ConstraintStage(LogitsProcessor):
    """Tokens the constraint does not allow next get -inf. Reads the tokens generated since its last call
    from `input_ids` (after the prompt's `prompt_length`), so it follows the reply in `generate()` and in
    the batch engine alike. One request, one row: a new stage per generation.

    `wait_for`: token ids after which the constrained answer starts. A reasoning model whose prompt opened
    its thinking block thinks freely first and the constraint applies from the end of the block on (as
    vLLM does with a reasoning parser); without it the model's thoughts would be forced into JSON. Until
    the answer starts the end-of-sequence tokens (`ends`) are masked: a constrained reply has an answer.

    >>> stage = Compiler.generic().stage(Constraint("regex", "ab", "regex"), prompt_length=0)
    >>> stage(torch.tensor([[]], dtype=torch.long), torch.zeros(1, 257)).isfinite().nonzero()[:, 1].tolist()
    [97]
    """

    def __init__(self, matcher: LLMatcher, prompt_length: int, wait_for: Sequence[int] = (),
                 ends: Sequence[int] = ()) -> None:
        self.matcher = matcher
        self.prompt_length = prompt_length
        self.consumed = 0
        self.wait_for = list(wait_for)
        self.waiting = bool(self.wait_for)
        self.scanned = 0  # generated tokens already searched for `wait_for`
        self.ends = list(ends)

    def allowed(self, width: int) -> torch.Tensor:
        """The tokens allowed next, as a bool tensor of `width` (logit columns past the tokenizer's are never allowed)."""
        allowed = torch.from_numpy(unpack(self.matcher.compute_bitmask())[:width].view(np.bool_))
        if allowed.shape[0] < width:
            allowed = torch.cat([allowed, torch.zeros(width - allowed.shape[0], dtype=torch.bool)])
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != 1:
            raise ValueError("a constraint stage follows one reply; build one per row")
        if self.waiting:
            generated = input_ids[0, self.prompt_length:].tolist()
            found = _find(generated, self.wait_for, max(0, self.scanned - len(self.wait_for) + 1))
            self.scanned = len(generated)
            if found < 0:  # still thinking: free, but not finished before the answer
                return scores.index_fill(-1, torch.tensor(self.ends, device=scores.device), float("-inf")) \
                    if self.ends else scores
            self.waiting = False
            self.consumed = found + len(self.wait_for)  # the answer starts after the marker
        new = input_ids[0, self.prompt_length + self.consumed:].tolist()
        if new:
            if not self.matcher.consume_tokens(new):
                raise ConstraintViolation("a token outside the constraint was chosen (a later sampler stage or an "
                                          f"extension let it through): {self.matcher.get_error()[:200]}")
            self.consumed += len(new)
        allowed = self.allowed(scores.shape[-1]).to(scores.device)
        if not bool(allowed.any()):
            raise ConstraintViolation("the constraint allows no next token here (" + self.matcher.stop_reason() + ")")
        return scores.masked_fill(~allowed, float("-inf"))
