"""The one training job of a process: a Plan (plan.py) run by Transformers' `Trainer` in a background
thread on the loaded model, with progress, Stop, Resume and the result.

Why `Trainer` and not trl's `SFTTrainer`: the samples arrive here already tokenized with their labels
(formatting.py does the chat template and the assistant-only mask for every template, which trl's
`assistant_only_loss` cannot without `{% generation %}` markers), so what SFTTrainer adds — template
application, packing, its own collators — would go unused; `Trainer` brings the loop, gradient
accumulation, schedulers, evaluation and checkpoints that resume with optimizer, scheduler and RNG
state, and needs only transformers + accelerate + peft (no trl or datasets on a GPU machine).

Checkpoints go to the run's folder (plan.py); the finished adapter is written to `loras/.NAME.partial-*`
and renamed to `loras/NAME` at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from modules.fileio import atomic_write_text
from modules.models import ModelError, ModelManager
from modules.training import TrainingError
from modules.training.formatting import IGNORE, Sample, preview_html
from modules.training.lora import check_trainable, lora_on, mixed_precision, quantization
from modules.training.plan import RUN_FILE, Plan, Planner, latest_checkpoint
from modules.training.results import write_card
from modules.training.settings import TrainingSettings

log = logging.getLogger(__name__)
#: the Transformers loader's options for QLoRA: nf4 with double quantization, bf16 compute
QLORA_OPTIONS = {"load_in_8bit": False, "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                 "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}


@dataclass
class Progress:
    """What the tab and the CLI show; a copy is handed out, never the live object."""

    state: str = "idle"  # idle | waiting | training | stopped | done | failed
    name: str = ""
    model: str = ""
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    tokens_per_second: float = 0.0
    eta_seconds: float | None = None
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss); perplexity = exp
    message: str = ""
    adapter: str | None = None  # the finished adapter's name in loras/

    @property
    def running(self) -> bool:
        return self.state in ("waiting", "training")


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Collate:
    """Pads a batch on the right: pad id in the inputs, IGNORE in the labels, 0 in the attention mask."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _rows(samples: list[Sample]) -> list[dict[str, list[int]]]:
    return [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]


class TrainingManager:
    """Plans and runs LoRA training on the loaded model, one job at a time (the model's claim, see
    ModelManager.claim, is what keeps every other user of the model out meanwhile)."""

    def __init__(self, models: ModelManager, loras_dir: Path, runs_dir: Path, store: Any = None) -> None:
        self.models = models
        self.loras_dir = loras_dir
        self.planner = Planner(models, loras_dir, runs_dir, store)
        self._lock = threading.Lock()
        self._progress = Progress()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock: tuple[float, int, int] = (0.0, 0, 0)  # (time, step, tokens) when this session began
        self.last_plan: Plan | None = None

    # ---- state
    def progress(self) -> Progress:
        with self._lock:
            return replace(self._progress, losses=list(self._progress.losses), evals=list(self._progress.evals))

    def _update(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self._progress, key, value)

    def running(self) -> bool:
        """A job is waiting for the model or training (in the background thread or in `run`)."""
        return self._progress.running

    def join(self, timeout: float | None = None) -> Progress:
        """Wait for the background job (tests, the CLI); returns the progress then."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress()

    def stop(self) -> bool:
        """Ask the running job to save a checkpoint and stop after the current step."""
        if not self.running():
            return False
        self._stop.set()
        return True

    def _refuse_if_running(self) -> None:
        if self.running():
            raise TrainingError(f"training {self._progress.name} is running: stop it first (one job at a time)")

    def _retry_after(self) -> int:
        eta = self._progress.eta_seconds
        return int(min(3600, max(5, eta if eta is not None else 60)))

    def resumable(self) -> list[str]:
        """Names of stopped (or interrupted) runs that have a complete checkpoint."""
        return self.planner.resumable(self._progress.name if self.running() else None)

    def plan(self, settings: TrainingSettings, dataset: Path | None = None, chats: list[int] | None = None,
             user: str = "local") -> Plan:
        """A checked run (see Planner.plan); TrainingError while a job is running."""
        self._refuse_if_running()
        return self.planner.plan(settings, dataset, chats, user)

    def plan_resume(self, name: str) -> Plan:
        """The plan that continues the stopped run `name` (see Planner.resume)."""
        self._refuse_if_running()
        return self.planner.resume(name)

    def preview(self, plan: Plan, count: int = 3) -> str:
        backend = self.models.current()
        return preview_html(plan.train + plan.eval, backend.tokenizer, count) if backend is not None else ""

    # ---- running
    def start(self, plan: Plan, listeners: tuple[Callable[[Progress], None], ...] = ()) -> None:
        """Run `plan` in a background thread (see `run`)."""
        with self._lock:
            self._refuse_if_running()
            self._begin(plan)
            self._thread = threading.Thread(target=self._run, args=(plan, listeners), name="training", daemon=True)
            self._thread.start()

    def run(self, plan: Plan, listeners: tuple[Callable[[Progress], None], ...] = ()) -> Progress:
        """Run `plan` here, blocking (the CLI); returns the final progress."""
        with self._lock:
            self._refuse_if_running()
            self._begin(plan)
        self._run(plan, listeners)
        return self.progress()

    def _begin(self, plan: Plan) -> None:
        """Fresh progress for `plan` (under the lock); a resumed run shows its earlier losses again."""
        self._stop.clear()
        self.last_plan = plan
        losses, evals = [], []
        if plan.resume_from is not None:
            history = json.loads((plan.resume_from / "trainer_state.json").read_text(encoding="utf-8"))
            losses = [(h["step"], h["loss"]) for h in history.get("log_history", []) if "loss" in h]
            evals = [(h["step"], h["eval_loss"]) for h in history.get("log_history", []) if "eval_loss" in h]
        self._progress = Progress(state="waiting", name=plan.settings.output, model=plan.model,
                                  max_steps=plan.total_steps, losses=losses, evals=evals, seconds=plan.seconds_before,
                                  message="waiting for running requests to finish")

    def _run(self, plan: Plan, listeners: tuple[Callable[[Progress], None], ...]) -> None:
        name = plan.settings.output
        try:
            if plan.settings.qlora:
                self._load_4bit()
            if plan.resume_from is None:  # a fresh run: no leftovers of an earlier one under this name
                shutil.rmtree(plan.run_dir, ignore_errors=True)
                self._write_run_file(plan, 0.0)
            with self.models.claim(f"training {name}", refuse_requests=plan.settings.on_busy == "refuse",
                                   retry_after=self._retry_after) as backend:
                self._train(plan, backend, listeners)
        except (TrainingError, ModelError) as exc:
            self._update(state="failed", message=str(exc), eta_seconds=None)
        except Exception as exc:  # noqa: BLE001 - the job reports any failure instead of dying silently
            log.exception("training %s failed", name)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            kept = " (the last checkpoint is kept: Resume continues from it)" if latest_checkpoint(plan.run_dir) else ""
            self._update(state="failed", message=f"training failed: {type(exc).__name__}: {first}{kept}",
                         eta_seconds=None)
        finally:
            if not latest_checkpoint(plan.run_dir) and self._progress.state != "done":
                shutil.rmtree(plan.run_dir, ignore_errors=True)  # nothing to resume: leave nothing behind
            for listener in listeners:  # the final state (a failing listener must not hide it)
                try:
                    listener(self.progress())
                except Exception:  # noqa: BLE001
                    log.exception("a training progress listener failed")

    def _load_4bit(self) -> None:
        """QLoRA: reload the loaded model with 4-bit nf4 weights (bf16 compute), unless it already is."""
        backend = self.models.current()
        if quantization(backend).startswith("4-bit"):
            return
        options = {**backend.options.model_dump(), **QLORA_OPTIONS}
        self._update(message=f"reloading {backend.name} in 4-bit for QLoRA")
        self.models.load(backend.name, "transformers", options)

    def _write_run_file(self, plan: Plan, seconds: float) -> None:
        atomic_write_text(plan.run_dir / RUN_FILE, json.dumps(
            {"settings": plan.settings.model_dump(mode="json"), "source": asdict(plan.source), "model": plan.model,
             "seconds": round(seconds, 1)}, indent=2))

    def _train(self, plan: Plan, backend: Any, listeners: tuple[Callable[[Progress], None], ...]) -> None:
        import torch

        settings = plan.settings
        if backend.name != plan.model:
            raise TrainingError(f"{backend.name} was loaded after the run was planned for {plan.model}: plan again")
        check_trainable(backend, settings, torch.cuda.is_available())
        if self._stop.is_set():
            self._update(state="stopped", message="stopped before the first step")
            return
        self._update(state="training", message="")
        started = time.monotonic()
        with _torch_threads(settings.threads or self.models.threads.prompt), lora_on(backend.model, settings) as model:
            trainer = self._trainer(model, backend, plan, listeners, started)
            trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
            step = trainer.state.global_step
            seconds = plan.seconds_before + time.monotonic() - started
            if self._stop.is_set() and step < plan.total_steps:
                self._write_run_file(plan, seconds)
                self._update(state="stopped", eta_seconds=None, seconds=seconds,
                             message=f"stopped at step {step} of {plan.total_steps}, checkpoint saved: "
                                     "Resume continues")
                return
            if plan.eval and self._progress.evals[-1:] and self._progress.evals[-1][0] != step:
                trainer.evaluate()  # the final eval loss (the callback records it)
            self._publish(model, backend, plan, seconds)
        self._update(state="done", adapter=settings.output, eta_seconds=None, seconds=seconds,
                     message=f"saved {self.loras_dir.name}/{settings.output} after {step} steps in {seconds:.0f} s")

    def _trainer(self, model: Any, backend: Any, plan: Plan, listeners: tuple[Callable[[Progress], None], ...],
                 started: float) -> Any:
        from transformers import PrinterCallback, Trainer, TrainingArguments

        from modules.training.callback import ProgressCallback

        settings = plan.settings
        on_gpu = str(getattr(model, "device", "cpu")).startswith("cuda")
        evaluate = bool(plan.eval)
        eval_every = settings.eval_steps or max(1, plan.total_steps // 10)
        args = TrainingArguments(
            output_dir=str(plan.run_dir), max_steps=plan.total_steps, per_device_train_batch_size=settings.micro_batch,
            per_device_eval_batch_size=settings.micro_batch, gradient_accumulation_steps=settings.grad_accum,
            learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler,
            warmup_steps=settings.warmup_steps, seed=settings.seed, data_seed=settings.seed, logging_steps=1,
            save_strategy="steps", save_steps=settings.save_steps, save_total_limit=2,
            eval_strategy="steps" if evaluate else "no", eval_steps=eval_every if evaluate else None,
            eval_on_start=evaluate and plan.resume_from is None, prediction_loss_only=True,
            activation_checkpointing=settings.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False}, use_cpu=not on_gpu, **mixed_precision(model),
            label_names=["labels"], remove_unused_columns=False, include_num_input_tokens_seen="non_padding",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0, optim="adamw_torch")
        pad = backend.tokenizer.pad_token_id
        pad = pad if pad is not None else (backend.eos_token_ids or (0,))[0]
        trainer = Trainer(model=model, args=args, train_dataset=_rows(plan.train),
                          eval_dataset=_rows(plan.eval) if evaluate else None, data_collator=_Collate(pad),
                          callbacks=[ProgressCallback(self, plan, listeners, started)])
        trainer.remove_callback(PrinterCallback)  # it prints every log line; progress goes to the tab / tqdm
        return trainer

    def _publish(self, model: Any, backend: Any, plan: Plan, seconds: float) -> Path:
        """Save the adapter and its card to loras/.NAME.partial-*, then rename it to loras/NAME."""
        final, _ = self.planner.names(plan.settings.output)
        self.loras_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.loras_dir.glob(f".{plan.settings.output}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash while saving
        tmp = self.loras_dir / f".{plan.settings.output}.partial-{uuid.uuid4().hex[:8]}"
        try:
            model.save_pretrained(str(tmp))
            progress = self.progress()
            write_card(tmp, base=backend, plan=plan, losses=progress.losses, evals=progress.evals, seconds=seconds)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        return final

    # ---- called from Trainer's callback, on the training thread
    def _began(self, step: int, tokens: int) -> None:
        self._clock = (time.monotonic(), step, tokens)

    def _stepped(self, step: int, epoch: float, tokens: int, plan: Plan, started: float) -> None:
        since, step0, tokens0 = self._clock
        elapsed = max(time.monotonic() - since, 1e-9)
        rate = (step - step0) / elapsed
        self._update(step=step, epoch=epoch, tokens_per_second=(tokens - tokens0) / elapsed,
                     eta_seconds=(plan.total_steps - step) / rate if rate > 0 else None,
                     seconds=plan.seconds_before + time.monotonic() - started)

    def _logged(self, step: int, logs: dict[str, float]) -> None:
        with self._lock:
            if "loss" in logs and math.isfinite(logs["loss"]):
                self._progress.losses.append((step, float(logs["loss"])))
            if "eval_loss" in logs:
                self._progress.evals.append((step, float(logs["eval_loss"])))
