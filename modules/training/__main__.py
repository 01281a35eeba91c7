"""Train a LoRA from the command line, with a tqdm bar: the Training tab's job without the browser.

    .venv/bin/python -m modules.training --model parlour-demo --dataset user_data/training/chats.jsonl \\
        --output my-lora [--max-steps 60 --learning-rate 3e-3 ...]
    .venv/bin/python -m modules.training --model parlour-demo --resume my-lora    # after Ctrl-C or a crash

Every TrainingSettings field is a flag (`--lora-rank`, `--eval-split`, ...; see --help). Ctrl-C saves a
checkpoint and stops; `--resume NAME` continues it. Exit status: 0 done, 3 stopped, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from modules.training.settings import TrainingSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modules.training", description=__doc__.splitlines()[0],
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--model", required=True, help="model folder in --models-dir to train")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="JSONL / JSON / .txt file to train on")
    source.add_argument("--chats", help="saved chat ids to train on, comma-separated (see --user)")
    source.add_argument("--resume", metavar="NAME", help="continue the stopped run NAME from its checkpoint")
    parser.add_argument("--user", default="local", help="whose saved chats (--chats)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--loras-dir", type=Path, default=Path("loras"))
    parser.add_argument("--user-data", type=Path, default=Path("user_data"))
    for name, field in TrainingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = f"{field.description} (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, choices=get_args(field.annotation), help=text)
        else:
            parser.add_argument(flag, type=field.annotation, metavar=name.upper(), help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    from pydantic import ValidationError
    from tqdm import tqdm

    from modules.models import ModelError, ModelManager
    from modules.settings import Settings
    from modules.store import ChatStore
    from modules.training import TrainingError
    from modules.training.job import QLORA_OPTIONS, Progress, TrainingManager

    settings_values = {k: v for k, v in args.items() if k in TrainingSettings.model_fields}
    try:
        settings = TrainingSettings(**settings_values)
        server = Settings(models_dir=args["models_dir"], loras_dir=args["loras_dir"], user_data=args["user_data"])
        models = ModelManager(server.models_dir, server.loras_dir, server.user_data / "offload", server.cpu_threads())
        models.load(args["model"], "transformers", QLORA_OPTIONS if settings.qlora else None)
        job = TrainingManager(models, server.loras_dir, server.user_data / "training-runs",
                              ChatStore(server.user_data / "chats.sqlite"))
        if "resume" in args:
            plan = job.plan_resume(args["resume"])
        elif "dataset" in args:
            plan = job.plan(settings, dataset=args["dataset"])
        else:
            ids = [int(i) for i in args["chats"].split(",") if i.strip()]
            plan = job.plan(settings, chats=ids, user=args["user"])
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: --{'-'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}", file=sys.stderr)
        return 2
    except (TrainingError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{plan.model}: {plan.report}; {plan.total_steps} steps", file=sys.stderr)
    bar = tqdm(total=plan.total_steps, unit="step", desc=plan.settings.output, dynamic_ncols=True)

    def show(progress: Progress) -> None:
        bar.n = progress.step
        loss: dict[str, Any] = {"loss": f"{progress.losses[-1][1]:.4f}"} if progress.losses else {}
        if progress.evals:
            loss["eval"] = f"{progress.evals[-1][1]:.4f}"
        bar.set_postfix(epoch=f"{progress.epoch:.2f}", tok_s=f"{progress.tokens_per_second:.0f}", **loss)

    job.start(plan, listeners=(show,))
    try:
        while job.join(0.5).running:
            pass
    except KeyboardInterrupt:  # Ctrl-C: save a checkpoint at the end of this step, then stop
        job.stop()
        bar.write("stopping: saving a checkpoint…")
        while job.join(0.5).running:
            pass
    bar.close()
    final = job.progress()
    print(final.message, file=sys.stderr)
    if final.state == "stopped":
        print(f"resume with: python -m modules.training --model {plan.model} --resume {plan.settings.output}",
              file=sys.stderr)
        return 3
    return 0 if final.state == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
