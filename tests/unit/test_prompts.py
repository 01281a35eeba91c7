"""The Notebook's saved prompts (user_data/prompts/*.txt) and per-user autosave (modules/prompts.py)."""

from __future__ import annotations

import pytest

from modules.prompts import NotebookDrafts, PromptError, PromptLibrary


def test_prompts_are_text_files_by_name(tmp_path):
    library = PromptLibrary(tmp_path / "prompts")
    assert library.names() == []
    assert library.save(" Story start ", "Once upon a time") == "Story start"
    (tmp_path / "prompts" / "from-tgw.txt").write_text("Q: hi\nA:")  # a text-generation-webui prompt file
    assert library.names() == ["from-tgw", "Story start"]
    assert library.load("Story start") == "Once upon a time" and library.load("from-tgw") == "Q: hi\nA:"
    library.save("Story start", "Replaced")
    assert library.load("Story start") == "Replaced"
    library.delete("Story start")
    assert library.names() == ["from-tgw"]
    with pytest.raises(PromptError, match="not found"):
        library.load("Story start")


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/b", ".hidden", "", "x\x00y"])
def test_prompt_names_never_leave_the_folder(tmp_path, name):
    library = PromptLibrary(tmp_path / "prompts")
    for call in (lambda: library.save(name, "text"), lambda: library.load(name), lambda: library.delete(name)):
        with pytest.raises(PromptError):
            call()
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["prompts"])


def test_each_user_has_their_own_autosaved_text(tmp_path):
    drafts = NotebookDrafts(tmp_path / "notebook")
    assert drafts.load("ann") == ""
    drafts.save("ann", "ann's draft")
    drafts.save("../bob", "a login that is no file name")
    assert drafts.load("ann") == "ann's draft" and drafts.load("../bob") == "a login that is no file name"
    assert drafts.load("carol") == ""
    names = sorted(p.name for p in (tmp_path / "notebook").iterdir())
    assert "ann.txt" in names and all("/" not in n and ".." not in n for n in names)
    assert not (tmp_path / "bob.txt").exists()
