"""Every hostile name through every entry point that takes a name: the API routes, the Gradio event API,
and the Python services the UI handlers call. Each must answer with a clear 4xx or its own error type,
the server must stay up, and nothing outside (or inside) the folders may be created, read or changed:
the whole tree, including the targets the names aim at, is snapshotted before and after each name.

The tree has a symlink named `evil-link` in every folder, pointing at a file outside whose content is
valid (a preset, a character, a model, a LoRA, an extension whose import would write a marker file), so
following a link would show up as a success or as a changed snapshot, not as a quiet pass.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from modules.characters import Character, CharacterError, CharacterStore, blank_png, png_with_text
from modules.chat import TemplateLibrary, resolve_options
from modules.extensions import Extensions
from modules.limits import MAX_TITLE_CHARS, LimitError
from modules.settings import CpuThreads
from modules.models import ModelError, ModelManager
from modules.presets import Preset, PresetError, PresetStore
from modules.store import ChatStore
from modules.templates import TemplateError
from tests.conftest import ROOT, ServerProcess
from tests.reliability.conftest import snapshot

HOSTILE = {
    "dotdot": "../../etc/passwd",
    "dotdot-outside": "../outside/secret",
    "backslash": "..\\..\\win.ini",
    "absolute": "/etc/passwd",
    "absolute-outside": "<OUTSIDE>/secret",  # replaced by the tree's real outside folder
    "windows-absolute": "C:\\Windows\\win.ini",
    "url-encoded": "%2e%2e%2f%2e%2e%2fsecret",
    "nul": "secret\x00.yaml",
    "division-slash": "..\u2215outside\u2215secret",
    "fullwidth-slash": "..\uff0foutside\uff0fsecret",
    "long": "a" * 300,
    "CON": "CON",
    "nul-device": "nul",
    "dot": ".",
    "dotdot-alone": "..",
    "empty": "",
    "symlink": "evil-link",
}
DB_FILES = ("chats.sqlite", "chats.sqlite-wal", "chats.sqlite-shm")
MARKER = "extension-was-imported"


def build_tree(root: Path, micro_path: Path) -> dict[str, Path]:
    """Parlour's folders with one good item each, an `outside` folder with valid targets, and an
    `evil-link` symlink in every folder pointing out."""
    dirs = {k: root / k for k in ("presets", "characters", "templates", "models", "loras", "user_data", "outside")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    (dirs["presets"] / "Good.yaml").write_text("temperature: 0.5\n")
    (dirs["characters"] / "Ann.yaml").write_text("name: Ann\ngreeting: hi\n")
    shutil.copy(ROOT / "instruction-templates" / "ChatML.yaml", dirs["templates"] / "ChatML.yaml")
    shutil.copytree(micro_path, dirs["models"] / "parlour-micro")
    outside = dirs["outside"]
    (outside / "secret.yaml").write_text("temperature: 0.123\nname: Secret\ninstruction_template: '{{ 1 }}'\n")
    (outside / "secret").write_text("temperature: 0.123\n")
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text("{}")
    (outside / "lora").mkdir()
    (outside / "lora" / "adapter_config.json").write_text("{}")
    (outside / "ext").mkdir()
    (outside / "ext" / "script.py").write_text(
        f"from pathlib import Path\nPath(__file__).with_name('{MARKER}').write_text('x')\n")
    (dirs["user_data"] / "extensions").mkdir()
    for link, target in ((dirs["presets"] / "evil-link.yaml", outside / "secret.yaml"),
                         (dirs["characters"] / "evil-link.yaml", outside / "secret.yaml"),
                         (dirs["templates"] / "evil-link.yaml", outside / "secret.yaml"),
                         (dirs["models"] / "evil-link", outside / "model"),
                         (dirs["loras"] / "evil-link", outside / "lora"),
                         (dirs["user_data"] / "extensions" / "evil-link", outside / "ext")):
        link.symlink_to(target)
    return dirs


def hostile(key: str, dirs: dict[str, Path]) -> str:
    return HOSTILE[key].replace("<OUTSIDE>", str(dirs["outside"]))


def card_named(name: str) -> bytes:
    data = {"spec": "chara_card_v2", "data": {"name": name, "first_mes": "hi"}}
    import base64

    return png_with_text(blank_png(), "chara", base64.b64encode(json.dumps(data).encode()))


class _AdapterProbe:
    """Stands in for a loaded Transformers model: records any adapter path it is asked to apply."""

    name, loader = "probe", "transformers"

    def __init__(self) -> None:
        self.applied: list[Path] = []
        self.loras: tuple[str, ...] = ()

    def set_loras(self, paths: list[Path]) -> None:
        self.applied.extend(paths)

    def unload(self) -> None:
        pass


def service_calls(dirs: dict[str, Path]) -> dict[str, tuple[Callable[[str], Any], tuple[type, ...]]]:
    """Every Python-level entry point the UI handlers call with a user-chosen name, and the error type
    that is its clear answer."""
    presets = PresetStore(dirs["presets"], dirs["user_data"] / "model_presets.yaml")
    characters = CharacterStore(dirs["characters"])
    templates = TemplateLibrary(dirs["templates"])
    models = ModelManager(dirs["models"], dirs["loras"], dirs["user_data"] / "offload", threads=CpuThreads(1, 1))
    probe = _AdapterProbe()

    def loras(name: str) -> None:
        models.adopt(probe)
        try:
            models.set_loras([name])
        finally:
            models.unload()
            assert probe.applied == [], "an adapter outside loras/ reached the model"

    def extension(name: str) -> None:
        ext = Extensions(builtin_dir=ROOT / "extensions", user_dir=dirs["user_data"] / "extensions",
                         settings_params={}, timeout=1.0, entry_points=False)
        errors = ext.enable([name])
        if name not in errors:
            raise AssertionError(f"extension {name!r} was enabled")
        raise _Refused(errors[name])

    class _App:  # what resolve_options reads: the stores and a profile
        pass

    app = _App()
    app.characters, app.templates, app.store = characters, templates, ChatStore(dirs["user_data"] / "chats.sqlite")
    return {
        "preset load": (presets.load, (PresetError,)),
        "preset save": (lambda n: presets.save(n, Preset(temperature=0.7)), (PresetError,)),
        "preset delete": (presets.delete, (PresetError,)),
        "preset per model": (lambda n: presets.set_model_default("parlour-micro", n), (PresetError,)),
        "character load": (characters.load, (CharacterError,)),
        "character save": (lambda n: characters.save(Character(name=n, greeting="x"), picture=blank_png()),
                           (CharacterError,)),
        "character import": (lambda n: characters.import_card(card_named(n)), (CharacterError,)),
        "character picture": (characters.picture, (CharacterError,)),
        "character export": (characters.export_card, (CharacterError,)),
        "template load": (templates.load, (TemplateError,)),
        "chat options (character)": (lambda n: resolve_options(app, "local", character=n), (CharacterError,)),
        "chat options (template)": (lambda n: resolve_options(app, "local", mode="instruct", instruction_template=n),
                                    (TemplateError,)),
        "model select": (models.path_of, (ModelError,)),
        "model load": (models.load, (ModelError,)),
        "model save settings": (lambda n: models.save_settings(n, "transformers", {}), (ModelError,)),
        "lora apply": (loras, (ModelError,)),
        "extension enable": (extension, (_Refused,)),
    }


class _Refused(Exception):
    """Extensions.enable reports failures in its result; the sweep turns that into an exception."""


SERVICE_NAMES = ["preset load", "preset save", "preset delete", "preset per model", "character load",
                 "character save", "character import", "character picture", "character export", "template load",
                 "chat options (character)", "chat options (template)", "model select", "model load",
                 "model save settings", "lora apply", "extension enable"]


@pytest.mark.parametrize("key", list(HOSTILE))
def test_services_refuse_every_hostile_name(tmp_path, micro_path, key):
    dirs = build_tree(tmp_path / "tree", micro_path)
    calls = service_calls(dirs)
    assert sorted(calls) == sorted(SERVICE_NAMES), "a new name-taking service needs a place in the sweep"
    name = hostile(key, dirs)
    before = snapshot(tmp_path, ignore=DB_FILES)
    for label, (call, errors) in calls.items():
        if key == "empty" and label.startswith("chat options"):
            call(name)  # no character / the model's own template: nothing is read
            continue
        if label == "character picture" and key == "symlink":
            assert call(name) is None  # evil-link.png does not exist: "no picture", nothing read
            continue
        with pytest.raises(errors) as caught:
            call(name)
            pytest.fail(f"{label} accepted {name!r}")
        assert str(caught.value), label  # a message, not an empty error
    assert snapshot(tmp_path, ignore=DB_FILES) == before, "a hostile name created, changed or deleted a file"
    assert not (dirs["outside"] / "ext" / MARKER).exists()


def test_chat_titles_are_text_not_paths(tmp_path, micro_path):
    """Chat titles never become file names: each hostile title is stored verbatim and nothing on disk
    but the database changes (exports are named by chat id)."""
    dirs = build_tree(tmp_path / "tree", micro_path)
    store = ChatStore(dirs["user_data"] / "chats.sqlite")
    before = snapshot(tmp_path, ignore=DB_FILES)
    for key in HOSTILE:
        title = hostile(key, dirs)
        if len(title) + 1 > MAX_TITLE_CHARS:  # over the title limit: refused, with nothing written
            with pytest.raises(LimitError, match="title"):
                store.create_chat("local", title=title + "!")
            continue
        chat_id = store.create_chat("local", title=title)
        store.rename_chat("local", chat_id, title + "!")
        assert store.chat("local", chat_id).title == (title + "!").strip()
        assert store.export_chat("local", chat_id)["title"] == (title + "!").strip()
    assert snapshot(tmp_path, ignore=DB_FILES) == before


# -- a real server: the API and the Gradio event API --------------------------------------------------
@pytest.fixture(scope="module")
def tree_server(tmp_path_factory, micro_path):
    root = tmp_path_factory.mktemp("hostile")
    dirs = build_tree(root / "tree", micro_path)
    server = ServerProcess(["--models-dir", str(dirs["models"]), "--loras-dir", str(dirs["loras"]),
                            "--presets-dir", str(dirs["presets"]), "--characters-dir", str(dirs["characters"]),
                            "--instruction-templates-dir", str(dirs["templates"]), "--user-data", str(dirs["user_data"]),
                            "--settings", str(root / "settings.yaml"), "--model", "parlour-micro"],
                           cwd=ROOT, log=root / "server.log")
    try:
        server.wait_until(lambda h: h["model"] is not None, timeout=120)
        yield server, dirs, root
    finally:
        server.stop()


def api_calls(url: str, name: str) -> dict[str, Callable[[], httpx.Response]]:
    chat = {"model": "parlour-micro", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return {
        "model/load model_name": lambda: httpx.post(f"{url}/v1/internal/model/load", json={"model_name": name}, timeout=30),
        "completions preset": lambda: httpx.post(f"{url}/v1/completions", timeout=30,
                                                 json={"model": "parlour-micro", "prompt": "x", "max_tokens": 2,
                                                       "preset": name}),
        "chat preset": lambda: httpx.post(f"{url}/v1/chat/completions", json={**chat, "preset": name}, timeout=30),
        "chat character": lambda: httpx.post(f"{url}/v1/chat/completions", json={**chat, "character": name}, timeout=30),
        "chat instruction_template": lambda: httpx.post(f"{url}/v1/chat/completions", timeout=30,
                                                        json={**chat, "instruction_template": name}),
        "chat model": lambda: httpx.post(f"{url}/v1/chat/completions", json={**chat, "model": name}, timeout=30),
        "logits preset": lambda: httpx.post(f"{url}/v1/internal/logits", json={"prompt": "x", "preset": name},
                                            timeout=30),
        "models/{name}": lambda: httpx.get(f"{url}/v1/models/{urllib.parse.quote(name, safe='')}", timeout=30,
                                            follow_redirects=True),
    }


@pytest.mark.parametrize("key", list(HOSTILE))
def test_api_refuses_every_hostile_name(tree_server, key):
    server, dirs, root = tree_server
    name = hostile(key, dirs)
    before = snapshot(dirs["outside"].parent, ignore=DB_FILES)
    for label, call in api_calls(server.url, name).items():
        response = call()
        if key == "empty" and label == "chat model":
            assert response.status_code == 200  # an empty "model" means the loaded one, as in OpenAI clients
            continue
        if key == "empty" and label in ("completions preset", "chat preset", "logits preset"):
            assert response.status_code == 200  # an empty preset name means "no preset"
            continue
        if key in ("empty", "dot") and label == "models/{name}":
            # the client itself turns /v1/models/. and /v1/models/ into the list route: nothing named is read
            assert response.json()["object"] == "list", response.text
            continue
        assert 400 <= response.status_code < 500, (label, response.status_code, response.text)
        body = response.json()
        # (/v1/models/.. is normalised by the client to /v1/, outside the API's routes: the app's plain 404)
        assert (body.get("error") or {}).get("message") or body.get("detail"), (label, body)
    assert snapshot(dirs["outside"].parent, ignore=DB_FILES) == before
    assert server.health()["status"] == "ok"


@pytest.fixture(scope="module")
def gradio_client(tree_server):
    from gradio_client import Client

    return Client(tree_server[0].url, verbose=False)


def refusal(call: Callable[[], Any], status_of: Callable[[Any], str]) -> str:
    """The event's refusal: Gradio's own (a dropdown value not among its choices comes back as an error
    naming the value) or the handler's warning status. Anything else fails the test."""
    from gradio_client.exceptions import AppError

    try:
        result = call()
    except AppError as exc:
        assert "not in the list of choices" in str(exc), str(exc)
        return str(exc)
    status = status_of(result)
    assert status.startswith(("⚠️", "❌")) or "❌" in status, status
    return status


@pytest.mark.parametrize("key", ["dotdot-outside", "absolute-outside", "nul", "fullwidth-slash", "symlink", "dot"])
def test_gradio_event_api_refuses_hostile_names(tree_server, gradio_client, key):
    """The UI's own event API (what the page calls) with hostile names: refused by Gradio's choice check
    (dropdowns) or with a warning status (text boxes), never a crash, nothing changed."""
    server, dirs, root = tree_server
    name = hostile(key, dirs)
    before = snapshot(dirs["outside"].parent, ignore=DB_FILES)
    client = gradio_client
    refusal(lambda: client.predict(name, api_name="/load_preset"), lambda r: r[-1])
    refusal(lambda: client.predict(name, api_name="/save_preset"), lambda r: r[-1])
    refusal(lambda: client.predict(name, api_name="/model_load"), lambda r: r[0])
    refusal(lambda: client.predict([name], api_name="/lora_apply"), lambda r: r[0])
    refusal(lambda: client.predict([name], api_name="/extensions_apply"), lambda r: r[1])
    assert snapshot(dirs["outside"].parent, ignore=DB_FILES) == before
    assert server.health()["model"] == "parlour-micro"  # the loaded model was not swapped out


def test_server_log_has_no_tracebacks(tree_server):
    """Runs after the sweeps above (file order): every refusal was handled, none crashed a request. The
    only tracebacks allowed are Gradio's own log of its dropdown choice check refusing a value."""
    server, _, _ = tree_server
    blocks = server.log.read_text().split("Traceback (most recent call last)")[1:]
    for block in blocks:
        assert "is not in the list of choices" in block.split("\n\n")[0], block[:3000]
