"""Build the logits-processor chain for a `Preset` on the Transformers backend.

Transformers' own processors are used where they exist; generate() is given a neutral
GenerationConfig so it adds none of its own and the chain here is the whole story.
"""

from __future__ import annotations

from typing import Sequence

from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from modules.presets import Preset


def build_processors(preset: Preset, eos_token_ids: Sequence[int], device: str = "cpu") -> LogitsProcessorList:
    """The processors for `preset`, in a fixed order: penalties, bans, temperature, cutoffs."""
    chain = LogitsProcessorList()
    if preset.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(preset.repetition_penalty))
    if preset.ban_eos_token and eos_token_ids:
        chain.append(SuppressTokensLogitsProcessor(list(eos_token_ids), device=device))
    if preset.greedy:
        return chain  # greedy picks the argmax; warpers would not change it
    if preset.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(preset.temperature))
    if preset.top_k > 0:
        chain.append(TopKLogitsWarper(preset.top_k))
    if preset.top_p < 1.0:
        chain.append(TopPLogitsWarper(preset.top_p))
    if preset.min_p > 0.0:
        chain.append(MinPLogitsWarper(preset.min_p))
    return chain
