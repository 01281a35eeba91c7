"""A full disk or a read-only folder while saving: the previous file (or database row) is intact, no
temp file is left behind, the user is told why in one line, and the same save works once the fault is
gone (which is also what proves the fault, not something else, made it fail).

How the faults are made is explained in tests/reliability/conftest.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from modules.characters import Character, CharacterError, CharacterStore, blank_png, png_with_text
from modules.models import ModelError, ModelManager
from modules.settings import CpuThreads
from modules.presets import Preset, PresetError, PresetStore
from modules.store import ChatStore, StoreError
from tests.reliability.conftest import disk_full, read_only, snapshot

REASONS = ("disk is full", "read-only", "refused")
DB_FILES = ("chats.sqlite", "chats.sqlite-wal", "chats.sqlite-shm")  # checked through the store instead
BIG = "lorem ipsum " * 2000  # 24 KB: needs new database pages, so a full disk cannot absorb it in free space


def card(name: str) -> bytes:
    data = {"spec": "chara_card_v2", "data": {"name": name, "description": "d", "first_mes": "hi"}}
    return png_with_text(blank_png(), "chara", base64.b64encode(json.dumps(data).encode()))


def make_world(root: Path) -> dict[str, Any]:
    """Folders with something already saved in each, as a user's installation would have."""
    presets = PresetStore(root / "presets", root / "user_data" / "model_presets.yaml")
    presets.save("mine", Preset(temperature=0.5))
    presets.set_model_default("fake-model", "mine")
    characters = CharacterStore(root / "characters")
    characters.import_card(card("Ann"))
    (root / "models" / "fake-model").mkdir(parents=True)
    (root / "models" / "fake-model" / "config.json").write_text("{}")  # enough to be listed and resolved
    (root / "loras").mkdir()
    models = ModelManager(root / "models", root / "loras", root / "user_data" / "offload", threads=CpuThreads(1, 1))
    models.save_settings("fake-model", "transformers", {"dtype": "float32"})
    return {"presets": presets, "characters": characters, "models": models}


def file_saves(world: dict[str, Any]) -> dict[str, Any]:
    """Every save of a user file the UI offers, each with new content."""
    return {
        "preset save": lambda: world["presets"].save("mine", Preset(temperature=1.5, top_k=7)),
        "preset new": lambda: world["presets"].save("other", Preset(temperature=0.9)),
        "preset per model": lambda: world["presets"].set_model_default("fake-model", "other-name"),
        "character save": lambda: world["characters"].save(Character("Ann", greeting="changed"), picture=blank_png()),
        "character import": lambda: world["characters"].import_card(card("Bob")),
        "character overwrite": lambda: world["characters"].import_card(card("Ann"), overwrite=True),
        "model settings": lambda: world["models"].save_settings("fake-model", "transformers", {"dtype": "bfloat16"}),
    }


ERRORS = (PresetError, CharacterError, ModelError)


@pytest.mark.parametrize("fault", ["disk full at write", "disk full at fsync", "read-only folders"])
def test_file_saves_keep_the_old_file_and_say_why(tmp_path, monkeypatch, fault):
    world = make_world(tmp_path)
    before = snapshot(tmp_path)
    saves = file_saves(world)
    with monkeypatch.context() as patch:
        if fault == "read-only folders":
            folders = [tmp_path / "presets", tmp_path / "characters", tmp_path / "models", tmp_path / "user_data"]
            context = read_only(folders, patch)
        else:
            disk_full(patch, "write" if "write" in fault else "fsync")
            context = read_only([], patch)
        with context:
            for label, save in saves.items():
                with pytest.raises(ERRORS) as caught:
                    save()
                message = str(caught.value)
                assert "not saved" in message or "could not" in message, (label, message)
                assert any(reason in message for reason in REASONS), (label, message)
                assert "Traceback" not in message and "[Errno" not in message, (label, message)
            after = snapshot(tmp_path)
    assert after == before, "a failed save changed or left files behind"
    # The fault is gone: the very same saves now work (so the fault was what stopped them).
    for label, save in saves.items():
        save()
    assert world["presets"].load("mine").temperature == 1.5
    assert world["characters"].load("Ann").greeting in ("changed", "hi")
    assert world["models"].saved.get("fake-model").options == {"dtype": "bfloat16"}


def test_old_preset_still_loads_after_a_failed_save(tmp_path, monkeypatch):
    world = make_world(tmp_path)
    with monkeypatch.context() as patch:
        disk_full(patch)
        with pytest.raises(PresetError, match="disk is full"):
            world["presets"].save("mine", Preset(temperature=1.9))
    assert world["presets"].load("mine").temperature == 0.5
    assert sorted(p.name for p in (tmp_path / "presets").iterdir()) == ["mine.yaml"]  # no .tmp left


def make_chats(path: Path) -> tuple[ChatStore, int]:
    store = ChatStore(path)
    chat_id = store.create_chat("local", title="Kept")
    store.add_message("local", chat_id, "user", "hello")
    store.add_message("local", chat_id, "assistant", "hi there")
    store.set_profile("local", "Me", "bio")
    return store, chat_id


def chat_state(store: ChatStore, chat_id: int) -> tuple:
    return ([(m.role, m.content, m.complete) for m in store.path("local", chat_id)],
            [(c.id, c.title) for c in store.list_chats("local")], store.profile("local"))


def chat_writes(store: ChatStore, chat_id: int) -> dict[str, Any]:
    """Every kind of write the Chat tab makes; each grows the database (see BIG)."""
    leaf = store.chat("local", chat_id).leaf_id
    return {
        "send": lambda: store.add_message("local", chat_id, "user", BIG),
        "stream flush": lambda: store.update_message("local", chat_id, leaf, content=BIG),
        "rename": lambda: store.rename_chat("local", chat_id, BIG),
        "new chat": lambda: store.create_chat("local", title=BIG),
        "profile": lambda: store.set_profile("local", "Me", BIG),
        "import": lambda: store.import_chat("local", {"internal": [[BIG, BIG]]}),
        "branch": lambda: store.branch("local", chat_id, leaf, title=BIG),
    }


@pytest.mark.parametrize("fault", ["disk full", "read-only database"])
def test_chat_writes_roll_back_and_say_why(tmp_path, monkeypatch, fault):
    db = tmp_path / "user_data" / "chats.sqlite"
    store, chat_id = make_chats(db)
    before = chat_state(store, chat_id)
    writes = chat_writes(store, chat_id)
    if fault == "read-only database":
        writes["delete"] = lambda: store.delete_chat("local", chat_id)
    with monkeypatch.context() as patch:
        if fault == "disk full":
            disk_full(patch)
            context = read_only([], patch)
        else:
            context = read_only([db], patch)
        with context:
            for label, write in writes.items():
                with pytest.raises(StoreError) as caught:
                    write()
                message = str(caught.value)
                assert message.startswith("not saved") and any(r in message for r in REASONS), (label, message)
            assert chat_state(store, chat_id) == before  # reads still work while writes fail
    assert chat_state(store, chat_id) == before
    for label, write in writes.items():  # the fault is gone: the same writes work
        if label != "delete":
            write()
    assert store.chat("local", chat_id).title == BIG.strip()


# -- what the user sees: the UI handlers themselves ---------------------------------------------------
def handlers(blocks) -> dict[str, Any]:
    """The Gradio event functions by their Python name (the first one of each), with their inputs."""
    found: dict[str, Any] = {}
    for block_fn in blocks.fns.values():
        name = getattr(block_fn.fn, "__name__", "")
        found.setdefault(name, block_fn)
    return found


def defaults(block_fn, skip: int) -> list[Any]:
    """The current values of an event's input components after the first `skip` (as the page sends them)."""
    return [component.value for component in block_fn.inputs[skip:]]


def run(result) -> list[Any]:
    """A handler's outputs: generators (the guarded chat handlers) are drained, the last output returned."""
    if hasattr(result, "__next__"):
        outputs = list(result)
        return list(outputs[-1]) if outputs else []
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_ui_handlers_show_the_error_and_keep_working(tmp_path, monkeypatch, fault):
    """Parameters, Model and Chat tab handlers called the way Gradio calls them: each answers with a
    "⚠️ ... not saved ..." status instead of raising (which Gradio would show as a bare "Error" and log as a
    traceback), and the app keeps serving reads afterwards."""
    from modules import ui
    from modules.app import App
    from modules.settings import Settings
    from modules.ui.chat import new_session

    world_root = tmp_path / "world"
    make_world(world_root)
    # No model is needed: every fault here happens before generation would start.
    app = App.build(Settings(presets_dir=world_root / "presets", characters_dir=world_root / "characters",
                             models_dir=world_root / "models", loras_dir=world_root / "loras",
                             user_data=world_root / "user_data", settings=tmp_path / "settings.yaml"))
    user_chat = app.store.create_chat("local", title="Kept")
    app.store.add_message("local", user_chat, "user", "hello")
    blocks = ui.build(app)
    fns = handlers(blocks)
    session = {**new_session(), "chat_id": user_chat}
    before = snapshot(world_root, ignore=DB_FILES)

    with monkeypatch.context() as patch:
        if fault == "disk full":
            disk_full(patch)
            context = read_only([], patch)
        else:
            context = read_only([world_root / "presets", world_root / "characters", world_root / "models",
                                 world_root / "user_data" / "chats.sqlite"], patch)
        with context:
            save_preset = fns["save_preset"]
            _, status = run(save_preset.fn("mine", *defaults(save_preset, 1)))
            assert status.startswith("⚠️") and "not saved" in status, status
            status = run(fns["on_save"].fn("fake-model", "transformers", *defaults(fns["on_save"], 2)))[0]
            assert status.startswith("⚠️") and "not saved" in status, status
            _, status, *_ = run(fns["on_import_card"].fn(card("Cleo")))  # (character, status, pending, row, button)
            assert status.startswith("⚠️") and "not saved" in status, status
            assert run(fns["on_profile_save"].fn(None, "Me", BIG))[0].startswith("⚠️")
            outputs = run(fns["on_rename"].fn(None, session, "", BIG))
            assert outputs[4].startswith("⚠️") and "not saved" in outputs[4], outputs[4]
            send = fns["on_send"]
            outputs = run(send.fn(None, BIG, session, *defaults(send, 2)))
            assert outputs[4].startswith("⚠️") and "not saved" in outputs[4], outputs[4]
            assert fault == "disk full" or snapshot(world_root, ignore=DB_FILES) == before
    assert snapshot(world_root, ignore=DB_FILES) == before
    assert [m.content for m in app.store.path("local", user_chat)] == ["hello"]
    # The same app, fault gone: reads and writes work again.
    outputs = run(fns["on_rename"].fn(None, session, "", "Renamed"))
    assert outputs[4] == "Renamed." and app.store.chat("local", user_chat).title == "Renamed"
    _, status = run(save_preset.fn("mine", *defaults(save_preset, 1)))
    assert status.startswith("Saved"), status
