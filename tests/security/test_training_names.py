"""Every hostile name through the Training entry points that take one (dataset, adapter name, run to
resume, adapter to apply / compare / merge, new model folder): each refused with the training error type,
and nothing under the tree — the outside targets included — created, read into a run or changed."""

from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from modules.models import ModelError, ModelManager
from modules.perplexity import PerplexityLog
from modules.settings import CpuThreads
from modules.training import TrainingError
from modules.training.data import dataset_path, save_upload
from modules.training.job import TrainingManager
from modules.training.results import compare_perplexity, merge_adapter, read_card
from modules.training.settings import TrainingSettings
from tests.reliability.conftest import snapshot
from tests.security.test_hostile_names import HOSTILE
from tests.training_data import chat_lines, write_jsonl


@pytest.fixture(scope="module")
def tree(tmp_path_factory, micro_path):
    root = tmp_path_factory.mktemp("training-tree")
    dirs = {k: root / k for k in ("models", "loras", "runs", "training", "outside")}
    for folder in dirs.values():
        folder.mkdir()
    shutil.copytree(micro_path, dirs["models"] / "parlour-micro")
    outside = dirs["outside"]
    write_jsonl(outside / "secret.jsonl", chat_lines(2))
    (outside / "lora").mkdir()
    (outside / "lora" / "adapter_config.json").write_text("{}")
    (outside / "lora" / "parlour-training.json").write_text('{"base_model": "parlour-micro"}')
    (outside / "run").mkdir()
    (outside / "run" / "run.json").write_text("{}")
    for link, target in ((dirs["training"] / "evil-link", outside / "secret.jsonl"),
                         (dirs["loras"] / "evil-link", outside / "lora"),
                         (dirs["runs"] / "evil-link", outside / "run"),
                         (dirs["models"] / "evil-link", outside / "lora")):
        link.symlink_to(target)
    good = write_jsonl(dirs["training"] / "good.jsonl", chat_lines(2))
    models = ModelManager(dirs["models"], dirs["loras"], root / "offload", CpuThreads(1, 1))
    models.load("parlour-micro")
    job = TrainingManager(models, dirs["loras"], dirs["runs"])
    assert job.run(job.plan(TrainingSettings(output="real", max_steps=1, threads=1), dataset=good)).state == "done"
    return root, dirs, models


def calls(dirs, models):
    job = TrainingManager(models, dirs["loras"], dirs["runs"])
    good = dirs["training"] / "good.jsonl"
    log = PerplexityLog(dirs["outside"].parent / "perplexity.jsonl")
    return {
        "dataset": lambda n: dataset_path(dirs["training"], n),
        "output": lambda n: job.plan(TrainingSettings(output=n, threads=1), dataset=good),
        "resume": job.plan_resume,
        "card": lambda n: read_card(dirs["loras"], n),
        "apply": lambda n: models.set_loras([n]),
        "compare": lambda n: compare_perplexity(models, n, "some held-out text", "t", log),
        "merge-adapter": lambda n: merge_adapter(models, n, "merged"),
        "merge-into": lambda n: merge_adapter(models, "real", n),
    }


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_training_entry_points_refuse_hostile_names(tree, key):
    root, dirs, models = tree
    name = HOSTILE[key].replace("<OUTSIDE>", str(dirs["outside"]))
    before = snapshot(root, ignore=("perplexity.jsonl",))
    for what, call in calls(dirs, models).items():
        with pytest.raises((TrainingError, ModelError, ValidationError)):
            call(name)
    assert snapshot(root, ignore=("perplexity.jsonl",)) == before, "a hostile name changed the tree"
    assert models.current().loras == ()


def test_uploads_with_hostile_names_are_refused(tree, tmp_path):
    root, dirs, _ = tree
    for name in (".hidden.jsonl", "CON.jsonl", "%2e%2e.jsonl", "notes.exe"):
        source = write_jsonl(tmp_path / name, chat_lines(1))
        before = snapshot(root)
        with pytest.raises(TrainingError):
            save_upload(source, dirs["training"])
        assert snapshot(root) == before
