"""Meta-tests: the README stays in step with the code."""

from modules.settings import Settings, flags_markdown
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_flags_table_is_current():
    assert flags_markdown() in README, "README flags table is stale: run .venv/bin/python scripts/update_readme.py"


def test_every_flag_is_documented():
    for name in Settings.model_fields:
        assert f"`--{name.replace('_', '-')}" in README


def test_readme_shows_the_two_commands():
    assert "./start.sh" in README and "./test.sh" in README
    assert "./test.sh" in (ROOT / ".ci" / "run").read_text()
