"""text-generation-webui's module names for its extensions (modules/tgw_compat), on the micro Llama, with
extensions written in that program's style (tests/fixtures/extensions): what they import works and is
bound to their own App, Parlour's own modules are untouched, Gradio 3/4 idioms build, what Parlour
lacks disables the extension naming it, and an extension turned off and on keeps working controls."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from modules import chat as chatlib
from modules.generation import GenerationRequest
from modules.presets import Preset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "extensions"
GREEDY = Preset(temperature=0.0, max_new_tokens=8, ban_eos_token=True)


@pytest.fixture()
def tgw_app(make_app, tmp_path):
    def _make(*names: str, load_model: bool = True, **settings):
        for name in names:
            target = tmp_path / "user_data" / "extensions" / name
            if not target.exists():
                shutil.copytree(FIXTURES / name, target)
        app = make_app(extensions=list(names), **settings)
        if load_model:
            app.models.load("parlour-micro")
        return app

    return _make


def module_of(app, name):
    return app.extensions.loaded[name].module


def test_the_surface_is_bound_to_the_app(tgw_app):
    app = tgw_app("tgw_surface", port=7999)
    assert "tgw_surface" in app.extensions.loaded, app.extensions.load_errors
    shared = module_of(app, "tgw_surface").shared
    backend = app.models.current()
    assert shared.model_name == "parlour-micro" and shared.tokenizer is backend.tokenizer
    assert shared.model is backend.model
    assert shared.args.listen_port == 7999 and shared.args.listen is False and shared.args.api_key is None
    assert shared.args.extensions == ["tgw_surface"]
    assert shared.settings["temperature"] == app.start_preset().temperature
    assert shared.user_data_dir / "characters" == Path(app.settings.characters_dir)
    text_generation = app.extensions.compat.module("text_generation")
    ids = text_generation.encode("hello world")
    assert ids.shape[0] == 1 and text_generation.decode(ids[0]) == "hello world"
    assert text_generation.get_encoded_length("hello world") == ids.shape[1]
    app.models.unload()
    assert shared.model is None and shared.model_name == "None"


def test_parlour_modules_are_untouched(tgw_app):
    import modules.chat
    import modules.extensions
    import modules.ui

    tgw_app("tgw_surface", load_model=False)
    assert not hasattr(modules.chat, "generate_chat_prompt") and not hasattr(modules.ui, "create_refresh_button")
    assert "modules.shared" not in sys.modules and "modules.text_generation" not in sys.modules
    assert modules.extensions.Extensions  # Parlour's own, still
    helpers = sys.modules["parlour_extension_tgw_surface.helpers"]
    assert helpers.SHARED is sys.modules["parlour_extension_tgw_surface"].shared  # the helper file sees the surface


def test_two_apps_have_their_own_shared(tgw_app, make_app, tmp_path):
    first = tgw_app("tgw_surface")
    second = make_app(extensions=["tgw_surface"], user_data=tmp_path / "user_data")
    assert module_of(first, "tgw_surface").shared is not module_of(second, "tgw_surface").shared
    assert module_of(first, "tgw_surface").shared.model_name == "parlour-micro"
    assert module_of(second, "tgw_surface").shared.model_name == "None"  # no model loaded in that one


def test_generate_chat_prompt_is_parlours_own_prompt(tgw_app):
    app = tgw_app("tgw_surface")
    params = module_of(app, "tgw_surface").params
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    backend = app.models.current()
    plain = app.pipeline.build_prompt(backend, GenerationRequest(preset=GREEDY, messages=messages))
    assert app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=messages)).prompt == plain
    assert ("prompt", plain) in params["seen"]
    # the Chat tab's prompt (character, mode, template) is the one the extension gets and may extend
    options = chatlib.resolve_options(app, "local", mode="chat", character="Example")
    history = [{"role": "user", "content": "Who are you?"}]
    without = chatlib.next_prompt(app, history, options, GREEDY).text
    params["mark_prompt"] = True
    assert chatlib.next_prompt(app, history, options, GREEDY).text == without + " [surface]"
    state = [s for s in params["seen"] if s[0] == "state"][-1]
    assert state[1:] == ("chat", options.name1, "Example")


def test_the_extensions_tokenizer_and_processor_work_in_generation(tgw_app):
    app = tgw_app("tgw_surface")
    params = module_of(app, "tgw_surface").params
    request = dict(preset=Preset(temperature=0.0, max_new_tokens=30), prompt="a\nb\nc\nd\n")
    free = list(app.pipeline.stream(GenerationRequest(**request)))[-1].text
    params["ban_newline"] = True
    banned = list(app.pipeline.stream(GenerationRequest(**request)))[-1].text
    assert "\n" in free and "\n" not in banned
    output = [s for s in params["seen"] if s[0] == "output"][-1]
    assert output[1] == banned and output[3] == banned.upper()


def test_gradio_3_idioms_build_and_events_are_private(tgw_app):
    from modules import ui

    app = tgw_app("tgw_surface", load_model=False)
    blocks = ui.build(app)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert {"tgw-surface-note", "tgw-surface-pick", "tgw-surface-status"} <= set(by_id)
    assert ("ui", True, True) in module_of(app, "tgw_surface").params["seen"]
    assert "tgw_surface" not in app.extensions.failures
    pick, note = by_id["tgw-surface-pick"], by_id["tgw-surface-note"]
    character = by_id["character"]
    ext_deps = [d for d in blocks.fns.values() if any(t[0] in (pick._id, note._id) for t in d.targets)]
    assert ext_deps and all(d.api_visibility == "private" for d in ext_deps)
    to_character = next(d for d in ext_deps if [o._id for o in d.outputs] == [character._id])
    assert to_character.fn() == "Example" and to_character.js == "() => {}"   # _js -> js
    label = next(d for d in ext_deps if d.targets[0][0] == note._id)
    assert label.fn("abc") == {"__type__": "update", "label": "Note (3 chars)"}   # gr.Textbox.update(...)


def test_what_parlour_lacks_disables_the_extension_naming_it(tgw_app):
    from modules import ui

    app = tgw_app("tgw_needs_history", "tgw_needs_save")
    update = list(app.pipeline.stream(GenerationRequest(preset=GREEDY, prompt="x")))[-1]
    assert update.text.endswith(" [history ext]") and "[never]" not in update.text  # the chat goes on
    assert "tgw_needs_save" not in app.extensions.loaded
    assert "needs modules.chat.save_history" in app.extensions.load_errors["tgw_needs_save"]
    ui.build(app)
    assert "tgw_needs_history" not in app.extensions.loaded
    assert "shared.gradio['history']" in app.extensions.load_errors["tgw_needs_history"]
    status = app.extensions.status_markdown()
    assert "disabled" in status and "modules.chat.save_history" in status


def test_reenabled_extension_keeps_its_controls_wired(tgw_app):
    """Session tab: off, then on again, without a restart. The page's controls were built by the module's
    ui(); the hooks that run again must be that same module's, reading what the controls set."""
    from modules import ui
    from modules.ui.session import apply_extensions

    app = tgw_app("tgw_surface")
    module = module_of(app, "tgw_surface")
    blocks = ui.build(app)
    setups = [s for s in module.params["seen"] if s[0] == "setup"]
    apply_extensions(app, [], "local")  # the local user: an admin without --auth
    assert "tgw_surface" not in app.extensions.loaded
    apply_extensions(app, ["tgw_surface"], "local")
    assert module_of(app, "tgw_surface") is module                     # the same module, so the same params
    assert [s for s in module.params["seen"] if s[0] == "setup"] == setups  # setup() ran once, as in TGW
    note = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "tgw-surface-note")
    assert any(t[0] == note._id for d in blocks.fns.values() for t in d.targets)
    module.params["mark_prompt"] = True  # what a control's handler does: write the module's params
    options = chatlib.resolve_options(app, "local", mode="instruct")
    assert chatlib.next_prompt(app, [{"role": "user", "content": "hi"}], options, GREEDY).text.endswith(" [surface]")


def test_dataset_select_gets_the_whole_row_the_script_built(tgw_app):
    import gradio as gr

    from modules import ui

    app = tgw_app("tgw_surface", load_model=False)
    blocks = ui.build(app)
    cards = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "tgw-surface-cards")
    select = next(d for d in blocks.fns.values() if d.targets[0][0] == cards._id)
    # what Gradio 6 hands the handler: one value per component of the Dataset
    event = gr.SelectData(cards, {"index": 0, "value": cards.samples[0]})
    assert len(cards.samples[0]) == 1 and select.fn(event) == "Example"


def test_html_from_output_modifier_is_shown_sanitized_and_the_history_keeps_the_words(tgw_app):
    from modules.conversation import ChatView, Setup
    from modules.ui.chat_view import bubbles

    app = tgw_app("tgw_surface")
    module_of(app, "tgw_surface").params["colour_reply"] = True
    options = chatlib.resolve_options(app, "local", mode="instruct")
    *_, step = app.chats.send("local", ChatView(), "hi", Setup(options, GREEDY))
    view = step.view
    saved = app.store.path("local", view.chat_id)[-1]
    assert "<span" not in saved.content and saved.content  # the next prompt reads the model's own words
    bubble = bubbles(app.chats.turns("local", view), {})[-1]["content"]
    assert '<span style="color: #ff0000">' in bubble and 'src="data:image/png;base64,iVBORw0KGgo="' in bubble
    app.store.update_message("local", view.chat_id, saved.id, content="edited")  # an edit shows the edit
    assert bubbles(app.chats.turns("local", view), {})[-1]["content"].strip() == "<p>edited</p>"


def test_thumbnails_are_served_where_the_img_src_points(tgw_app, tmp_path):
    import io
    from urllib.parse import urljoin

    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image

    from modules import ui

    app = tgw_app("tgw_surface", load_model=False)
    picture = tmp_path / "pic.png"
    Image.new("RGB", (400, 600), (10, 20, 30)).save(picture)
    src = "file/" + app.extensions.compat.module("html_generator").get_image_cache(picture)
    api = FastAPI()
    gr.mount_gradio_app(api, ui.build(app), path="", footer_links=[])
    url = urljoin("http://host/", src)  # how the browser resolves the relative src from the page at /
    assert url.startswith("http://host/gradio_api/file=")
    response = TestClient(api).get(url)
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (350, 470)
