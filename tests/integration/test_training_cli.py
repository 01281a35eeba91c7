"""`python -m modules.training`: a run with a tqdm bar, bad input refused with exit status 2 (both through
its `main`), and a real process killed with SIGKILL leaves a checkpoint that a resumed run continues from."""

from __future__ import annotations

import subprocess
import sys
import time

from modules.models import ModelManager
from modules.settings import CpuThreads
from modules.training.__main__ import main
from modules.training.job import TrainingManager
from modules.training.plan import latest_checkpoint
from tests.conftest import ROOT
from tests.training_data import chat_lines, write_jsonl


def cli(models_dir, tmp_path, *args: str) -> list[str]:
    return ["--model", "parlour-micro", "--models-dir", str(models_dir), "--loras-dir", str(tmp_path / "loras"),
            "--user-data", str(tmp_path / "user_data"), "--threads", "1", *args]


def test_cli_trains_with_a_progress_bar(models_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", chat_lines(8))
    status = main(cli(models_dir, tmp_path, "--dataset", str(data), "--output", "cli-lora", "--max-steps", "6",
                      "--learning-rate", "0.01", "--eval-split", "0.25"))
    err = capsys.readouterr().err
    assert status == 0, err[-2000:]
    assert "6/6" in err and "loss=" in err and "tok_s=" in err  # the tqdm bar
    assert "8 samples" in err and "2 held out for evaluation" in err
    assert "saved loras/cli-lora after 6 steps" in err
    assert (tmp_path / "loras" / "cli-lora" / "adapter_model.safetensors").is_file()


def test_cli_refuses_bad_input_before_training(models_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n')
    assert main(cli(models_dir, tmp_path, "--dataset", str(bad), "--output", "x")) == 2
    assert "error: bad.jsonl line 2: missing 'output'" in capsys.readouterr().err
    assert main(cli(models_dir, tmp_path, "--dataset", str(bad), "--output", "x", "--lora-rank", "0")) == 2
    assert "error: --lora-rank: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(cli(models_dir, tmp_path, "--resume", "nothing-here")) == 2
    assert "error: run 'nothing-here' cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "loras").exists()


def test_a_killed_run_resumes_from_its_last_checkpoint(models_dir, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", chat_lines(8))
    run_dir = tmp_path / "user_data" / "training-runs" / "killed"
    args = cli(models_dir, tmp_path, "--dataset", str(data), "--output", "killed", "--max-steps", "100000",
               "--save-steps", "3")
    proc = subprocess.Popen([sys.executable, "-m", "modules.training", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(run_dir) is None:  # wait for a state: the first complete checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no chance to clean up, maybe in the middle of writing the next checkpoint
        proc.wait()
    saved = int(latest_checkpoint(run_dir).name.split("-")[1])
    assert not (tmp_path / "loras" / "killed").exists()

    models = ModelManager(models_dir, tmp_path / "loras", tmp_path / "offload", CpuThreads(1, 1))
    models.load("parlour-micro")
    job = TrainingManager(models, tmp_path / "loras", run_dir.parent)
    assert job.resumable() == ["killed"]
    seen: list[int] = []

    def two_more(progress):
        seen.append(progress.step)
        if progress.step == saved + 2:
            job.stop()

    final = job.run(job.plan_resume("killed"), (two_more,))
    assert final.state == "stopped", final.message
    assert seen[0] == saved + 1  # continued from the checkpoint the kill left, not from the start
    assert latest_checkpoint(run_dir).name == f"checkpoint-{saved + 2}"
