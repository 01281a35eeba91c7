"""Trainer's callback for the training job (job.py), apart so that importing the job (the Training tab
does, at start) imports no Transformers: the page is served before torch loads."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from transformers.trainer_callback import TrainerCallback

if TYPE_CHECKING:
    from modules.training.job import Progress, TrainingManager
    from modules.training.plan import Plan


class ProgressCallback(TrainerCallback):
    """Trainer -> TrainingManager: progress after every step and log line; Stop = save and stop."""

    def __init__(self, job: TrainingManager, plan: Plan, listeners: tuple[Callable[[Progress], None], ...],
                 started: float) -> None:
        self.job, self.plan, self.listeners, self.started = job, plan, listeners, started

    def _tell(self) -> None:
        snapshot = self.job.progress()
        for listener in self.listeners:
            listener(snapshot)

    def on_train_begin(self, args, state, control, **kwargs):
        self.job._began(state.global_step, state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        self.job._stepped(state.global_step, float(state.epoch or 0.0), state.num_input_tokens_seen, self.plan,
                          self.started)
        self._tell()  # a listener may ask to stop at this step (tests, Ctrl-C in the CLI)
        if self.job._stop.is_set():
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.job._logged(state.global_step, logs or {})
        self._tell()

    def on_save(self, args, state, control, **kwargs):
        self.job._write_run_file(self.plan, self.plan.seconds_before + time.monotonic() - self.started)
