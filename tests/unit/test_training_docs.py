"""docs/training.md stays in step with TrainingSettings, and its worked example's data file is valid."""

from modules.training.data import read_file
from modules.training.settings import TrainingSettings, settings_markdown
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "training.md").read_text()


def test_the_settings_table_is_current():
    assert settings_markdown() in DOC, ("docs/training.md settings table is stale: paste the output of "
                                        ".venv/bin/python -c 'from modules.training.settings import *; "
                                        "print(settings_markdown())'")


def test_every_setting_is_a_cli_flag_in_the_docs():
    for name in TrainingSettings.model_fields:
        assert f"`--{name.replace('_', '-')}`" in DOC


def test_the_worked_example_reads():
    records = read_file(ROOT / "docs" / "examples" / "greetings.jsonl")
    assert len(records) == 24 and all(r.messages[-1]["role"] == "assistant" for r in records)
    assert "docs/examples/greetings.jsonl" in DOC


def test_the_readme_points_here():
    readme = (ROOT / "README.md").read_text()
    assert "docs/training.md" in readme and "python -m modules.training" in readme
