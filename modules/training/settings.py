"""TrainingSettings: every knob of a LoRA run, with its range, default and tooltip in one place.

The Training tab's controls, the CLI's flags and the run file (`run.json`, read back by Resume) are all
generated from this model, so they accept exactly the same values.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.paths import UnsafeName, check_name

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt"]
DataFormat = Literal["auto", "openai", "sharegpt", "alpaca", "text"]
#: the Training tab's sections, in order; each field names its own
GROUPS = {"adapter": "Adapter", "optimizer": "Optimizer", "data": "Data", "machine": "Machine and queue"}


def _f(group: str, default: Any, description: str, **limits: Any) -> Any:
    """A TrainingSettings field; `group` places its control in the Training tab."""
    return Field(default, description=description, json_schema_extra={"group": group}, **limits)


class TrainingSettings(BaseModel):
    """One LoRA run. Field descriptions are the UI tooltips and the CLI's --help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output: str = Field("my-lora", description="adapter name: the result goes to loras/NAME/")

    lora_rank: int = _f("adapter", 8, "LoRA rank r: the size of the update matrices (higher learns more, "
                        "costs more)", ge=1, le=1024)
    lora_alpha: int = _f("adapter", 16, "LoRA alpha: the update is scaled by alpha / rank (often 2 x rank)",
                         ge=1, le=4096)
    lora_dropout: float = _f("adapter", 0.05, "dropout on the LoRA path while training", ge=0.0, le=0.9)
    target_modules: str = _f("adapter", "auto", "layers that get an adapter: auto (the usual ones for the "
                             "architecture), all-linear, or comma-separated module names")

    learning_rate: float = _f("optimizer", 2e-4, "peak learning rate (AdamW)", gt=0.0, le=1.0)
    lr_scheduler: Scheduler = _f("optimizer", "linear", "how the learning rate changes over the run")
    warmup_steps: int = _f("optimizer", 0, "steps of linear warm-up from 0 to the peak rate", ge=0, le=100_000)
    epochs: float = _f("optimizer", 3.0, "passes over the data (ignored when max_steps > 0)", gt=0.0, le=1000.0)
    max_steps: int = _f("optimizer", 0, "optimizer steps in all (0: set by epochs)", ge=0, le=10_000_000)
    micro_batch: int = _f("optimizer", 4, "samples per forward pass", ge=1, le=1024)
    grad_accum: int = _f("optimizer", 1, "forward passes per optimizer step (effective batch = micro_batch x "
                         "grad_accum)", ge=1, le=1024)
    seed: int = _f("optimizer", 42, "seed for the adapter's start, shuffling and dropout", ge=0, le=2**31 - 1)

    data_format: DataFormat = _f("data", "auto", "how to read the file: auto (from its content), OpenAI messages, "
                                 "ShareGPT conversations, Alpaca, or plain text")
    cutoff: int = _f("data", 256, "longest sample in tokens", ge=8, le=1_000_000)
    over_cutoff: Literal["truncate", "drop"] = _f("data", "truncate", "samples longer than the cutoff: cut to "
                                                  "it, or leave them out")
    assistant_only: bool = _f("data", True, "loss on the assistant's turns only (off: train on every token, "
                              "prompts and system text included)")
    text_stride: int = _f("data", 0, "plain text: tokens between window starts (0: the cutoff, no overlap)",
                          ge=0, le=1_000_000)
    eval_split: float = _f("data", 0.0, "share of samples held out for eval loss and perplexity (0: none)",
                           ge=0.0, le=0.5)
    eval_steps: int = _f("data", 0, "evaluate every N steps (0: about ten times per run)", ge=0, le=10_000_000)

    gradient_checkpointing: bool = _f("machine", False, "recompute activations in the backward pass: much less "
                                      "memory, slower steps")
    qlora: bool = _f("machine", False, "QLoRA: base weights in 4-bit (bitsandbytes nf4) while training; needs a "
                     "CUDA GPU (the model is reloaded in 4-bit)")
    save_steps: int = _f("machine", 50, "save a checkpoint every N steps (Stop saves one too)", ge=1,
                         le=10_000_000)
    threads: int = _f("machine", 0, "CPU threads while training (0: --threads-batch; on a busy or small machine "
                      "fewer can be much faster)", ge=0, le=1024)
    on_busy: Literal["wait", "refuse"] = _f("machine", "wait", "chat and API requests while training: wait in "
                                            "the queue, or get 503 with Retry-After")

    @field_validator("output")
    @classmethod
    def _safe_output(cls, value: str) -> str:
        try:
            return check_name(value)
        except UnsafeName as exc:
            raise ValueError(f"bad adapter name: {exc}") from exc

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",")]
        if not all(re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", n) for n in names) or len(names) > 64:
            raise ValueError("target_modules: auto, all-linear, or comma-separated module names like q_proj,v_proj")
        return ",".join(names)

    def steps_per_epoch(self, samples: int) -> int:
        """Optimizer steps one pass over `samples` takes (what Trainer counts too)."""
        return max(1, math.ceil(math.ceil(samples / self.micro_batch) / self.grad_accum))

    def total_steps(self, samples: int) -> int:
        return self.max_steps or max(1, math.ceil(self.epochs * self.steps_per_epoch(samples)))


def settings_markdown() -> str:
    """The settings table of docs/training.md (a test keeps it in step with this model)."""
    rows = ["| setting (CLI flag) | default | what it does |", "|---|---|---|"]
    for name, field in TrainingSettings.model_fields.items():
        rows.append(f"| `{name}` (`--{name.replace('_', '-')}`) | `{field.default}` | {field.description} |")
    return "\n".join(rows)
