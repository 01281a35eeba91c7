"""A hand-broken file or a damaged database row: that one item reports a clear error, everything else
loads (lists keep the good items, the app starts, other chats open)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from modules.characters import CharacterError, CharacterStore
from modules.chat import TemplateLibrary
from modules.models import ModelError, ModelManager
from modules.settings import CpuThreads
from modules.presets import PresetError, PresetStore
from modules.store import ChatStore, StoreError
from modules.templates import TemplateError

ROOT = Path(__file__).resolve().parents[2]

# What people do to YAML files by hand: a missing bracket, a wrong type, a list at the top, tabs,
# an alias, bytes that are not UTF-8, a file truncated mid-string.
BROKEN_YAML = {
    "bracket": b"temperature: [1.0,\n",
    "list": b"- temperature\n- 1.0\n",
    "tabs": b"temperature:\n\t- 1\n",
    "alias": b"a: &x 1\nb: *x\n",
    "binary": b"\xff\xfe\x00garbage\x81",
    "truncated": b'greeting: "hello\n',
}


def write_folder(folder: Path, good: dict[str, str], suffix: str = ".yaml") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in good.items():
        (folder / f"{name}{suffix}").write_text(text)
    for name, data in BROKEN_YAML.items():
        (folder / f"broken-{name}{suffix}").write_bytes(data)


def test_broken_presets_report_and_the_rest_load(tmp_path):
    write_folder(tmp_path, {"good": "temperature: 0.5\n", "empty": "", "wrong-type": "temperature: hot\n"})
    store = PresetStore(tmp_path)
    assert "good" in store.names() and "broken-bracket" in store.names()  # listed: the user can see it
    assert store.load("good").temperature == 0.5 and store.load("empty").temperature == 1.0
    problems = store.problems()
    assert set(problems) == {f"broken-{n}" for n in BROKEN_YAML} | {"wrong-type"}
    for name, why in problems.items():
        assert name in why, why  # every message names the preset
        with pytest.raises(PresetError):
            store.load(name)
    assert "temperature" in problems["wrong-type"]  # and the key, when one key is wrong


def test_broken_characters_report_and_the_rest_load(tmp_path):
    write_folder(tmp_path, {"Ann": "name: Ann\ngreeting: hi\n", "Bad-greeting": "name: X\ngreeting: [1, 2]\n"})
    store = CharacterStore(tmp_path)
    assert store.load("Ann").greeting == "hi"
    problems = store.problems()
    assert set(problems) == {f"broken-{n}" for n in BROKEN_YAML} | {"Bad-greeting"}
    assert all(name in why for name, why in problems.items())
    with pytest.raises(CharacterError, match="greeting"):
        store.load("Bad-greeting")


def test_broken_templates_report_and_the_rest_load(tmp_path):
    good = (ROOT / "instruction-templates" / "ChatML.yaml").read_text()
    write_folder(tmp_path, {"ChatML": good, "no-key": "other: 1\n",
                            "bad-jinja": "instruction_template: '{% for x in %}'\n"})
    library = TemplateLibrary(tmp_path)
    assert "<|im_start|>" in library.load("ChatML")
    problems = library.problems()
    assert set(problems) == {f"broken-{n}" for n in BROKEN_YAML} | {"no-key", "bad-jinja"}
    with pytest.raises(TemplateError, match="does not compile"):
        library.load("bad-jinja")


def test_app_lists_every_unreadable_file_in_one_place(make_app, tmp_path):
    presets, characters, templates = tmp_path / "p", tmp_path / "c", tmp_path / "t"
    shutil.copytree(ROOT / "presets", presets)
    shutil.copytree(ROOT / "characters", characters)
    shutil.copytree(ROOT / "instruction-templates", templates)
    (presets / "hand-edited.yaml").write_bytes(BROKEN_YAML["bracket"])
    (characters / "hand-edited.yaml").write_bytes(BROKEN_YAML["truncated"])
    (templates / "hand-edited.yaml").write_bytes(BROKEN_YAML["binary"])
    app = make_app(presets_dir=presets, characters_dir=characters, instruction_templates_dir=templates)
    assert set(app.unreadable_files()) == {"preset hand-edited", "character hand-edited", "template hand-edited"}
    from modules.ui.session import unreadable_markdown

    text = unreadable_markdown(app)
    assert "preset hand-edited" in text and "template hand-edited" in text
    assert app.presets.load("Default") is not None and app.characters.load("Example").name


# -- the chats database ------------------------------------------------------------------------------
def damage(db: Path, sql: str, *args) -> None:
    """Change the database behind Parlour's back, as a hand edit or a bad disk sector would."""
    with sqlite3.connect(db) as raw:
        raw.execute(sql, args)
    raw.close()


def test_damaged_rows_are_reported_and_the_rest_opens(tmp_path, caplog):
    db = tmp_path / "chats.sqlite"
    store = ChatStore(db)
    good = store.create_chat("local", title="Good")
    store.add_message("local", good, "user", "question")
    reply = store.add_message("local", good, "assistant", "answer", meta={"model": "m"})
    bad_meta = store.create_chat("local", title="Bad metadata")
    store.add_message("local", bad_meta, "user", "q2")
    broken_reply = store.add_message("local", bad_meta, "assistant", "a2", meta={"model": "m"})
    bad_chat = store.create_chat("local", title="Bad row")
    bad_message_chat = store.create_chat("local", title="Bad message")
    first = store.add_message("local", bad_message_chat, "user", "kept")
    store.add_message("local", bad_message_chat, "assistant", "damaged", parent_id=first)
    damaged = store.add_message("local", bad_message_chat, "user", "after", parent_id=first)

    damage(db, "UPDATE messages SET meta = ? WHERE id = ?", "{not json", broken_reply)
    damage(db, "UPDATE chats SET created = ? WHERE id = ?", "yesterday", bad_chat)
    damage(db, "UPDATE messages SET content = ? WHERE id = ?", b"\xff\xfe not utf-8", first)
    damage(db, "UPDATE messages SET created = ? WHERE id = ?", "noon", damaged)

    with caplog.at_level(logging.WARNING, logger="modules.store"):
        listed = [c.title for c in store.list_chats("local")]
    assert set(listed) == {"Good", "Bad metadata", "Bad message"}  # the damaged chat row is left out...
    assert f"chat {bad_chat} is damaged" in caplog.text  # ...and reported
    with pytest.raises(StoreError, match=f"chat {bad_chat} is damaged"):
        store.chat("local", bad_chat)

    path = store.path("local", bad_meta)  # bad JSON in one message's metadata: the chat opens
    assert [m.content for m in path] == ["q2", "a2"] and path[1].meta == {"error": "unreadable metadata"}
    assert [m.content for m in store.path("local", good)] == ["question", "answer"]
    assert store.message("local", good, reply).meta == {"model": "m"}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modules.store"):
        store.set_leaf("local", bad_message_chat, first)
        shown = store.path("local", bad_message_chat)
    assert shown[0].content.endswith("not utf-8")  # undecodable bytes shown with replacement characters
    assert f"message {damaged} of chat {bad_message_chat} is damaged" in caplog.text
    # Writing still works next to the damage.
    store.add_message("local", good, "user", "more")
    assert len(store.path("local", good)) == 3


def test_unreadable_model_settings_file_does_not_block_loading(tmp_path, micro_path, caplog):
    models = tmp_path / "models"
    shutil.copytree(micro_path, models / "parlour-micro")
    manager = ModelManager(models, tmp_path / "loras", tmp_path / "offload", threads=CpuThreads(1, 1))
    (models / "config-user.yaml").write_bytes(BROKEN_YAML["bracket"])
    with caplog.at_level(logging.WARNING, logger="modules.models"):
        chosen, options = manager.resolve("parlour-micro", None, None)
    assert chosen == "transformers" and "config-user.yaml cannot be read" in caplog.text
    # One bad entry is that model's error only.
    (models / "config-user.yaml").write_text("parlour-micro:\n  loader: transformers\n  options: {dtype: int3}\n"
                                             "other:\n  loader: transformers\n  options: {dtype: float32}\n")
    with pytest.raises(ModelError, match="dtype"):
        manager.resolve("parlour-micro", None, None)
    assert manager.saved.get("other").options == {"dtype": "float32"}


def test_server_starts_with_broken_files_and_reports_them(start_server, models_dir, tmp_path):
    presets = tmp_path / "presets"
    shutil.copytree(ROOT / "presets", presets)
    (presets / "hand-edited.yaml").write_bytes(BROKEN_YAML["tabs"])
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--presets-dir", str(presets))
    body = {"model": "parlour-micro", "prompt": "x", "max_tokens": 2}
    bad = httpx.post(server.url + "/v1/completions", json={**body, "preset": "hand-edited"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "preset", bad.text
    assert "hand-edited" in bad.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/completions", json={**body, "preset": "Min-P"}, timeout=30).status_code == 200
    log = server.log.read_text()
    assert "cannot use preset hand-edited" in log
    assert "ERROR" not in log and "Traceback" not in log
