"""The Character tab in a real browser: make a character (greetings, context, scenario, examples, a
picture cropped to a square), chat with it, change it and see the next prompt change, duplicate and
delete it; every character list follows, and a page load re-reads them (a character added on disk, or
imported, is listed after a reload)."""

from __future__ import annotations

import shutil

import httpx
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, serving
from tests.e2e.test_chat_browser import IDLE, act, again, bots, wait_version

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("characters-home")


@pytest.fixture(scope="module")
def server(home, models_dir):
    shutil.copytree(ROOT / "characters", home / "characters")
    with serving(home, "--models-dir", str(models_dir), "--model", "parlour-micro",
                 "--characters-dir", str(home / "characters")) as process:
        yield process


def open_page(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    return page


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def choices(page, selector: str) -> list[str]:
    """The options of a dropdown, on its own tab (#character: Chat, #char-pick: Character)."""
    tab(page, "Chat" if selector == "#character" else "Character")
    page.locator(f"{selector} input").click()
    names = page.locator("ul[role=listbox] li").all_inner_texts()
    page.keyboard.press("Escape")
    return [n.replace("✓", "").strip() for n in names]  # the chosen one is marked with a tick


def status(page) -> str:
    return page.inner_text("#char-status")


def picture(path, width: int, height: int) -> None:
    image = Image.new("RGB", (width, height), (250, 200, 0))
    image.paste((0, 90, 200), (0, 0, width // 3, height))
    image.save(path)


def save_profile_name(page, name: str) -> None:
    """Your name saved from the Character tab."""
    field = "#your-name textarea, #your-name input"
    page.fill(field, name)
    page.click("#save-profile")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Saved your profile')")
    assert page.input_value(field) == name


def show_prompt(page, expected: str) -> str:
    """The prompt preview once it shows `expected`: a preview shown before stays on the page (with its
    status) until the new one replaces it, so only the text it must now hold says the new one is here."""
    accordion = page.get_by_text("Prompt settings")
    if not page.locator("#show-prompt").is_visible():
        accordion.click()

    # A press that reaches the server before an event the test just caused has been handled shows the
    # prompt as it was: press again (a wrong prompt never passes).
    def attempt() -> str:
        page.click("#show-prompt")
        page.wait_for_function("(text) => document.querySelector('#prompt-preview').innerText.includes(text)",
                               arg=expected, timeout=30_000)
        return page.locator("#prompt-preview").inner_text()

    return again(attempt, lambda: f"the preview never showed {expected!r}: "
                                  f"{page.locator('#prompt-preview').inner_text()!r}")


def test_make_a_character_chat_with_it_change_it_duplicate_and_delete_it(browser, server, home, tmp_path):
    page = open_page(browser, server.url)
    tab(page, "Character")
    page.click("#char-new")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('new character')")
    page.fill("#char-name textarea, #char-name input", "Mira")
    page.fill("#char-greeting textarea", "Ahoy, {{user}}!")
    page.fill("#char-alt-greetings textarea", "Avast, {{user}}.\n---\nYo ho ho!")
    page.fill("#char-context textarea", "{{char}} is a pirate who says arr.")
    page.fill("#char-scenario textarea", "A ship at dawn.")
    page.fill("#char-examples textarea", "{{user}}: Hello\n{{char}}: Arr!")
    picture(tmp_path / "wide.png", 600, 300)
    page.set_input_files("#char-picture input[type=file]", str(tmp_path / "wide.png"))
    page.wait_for_function("() => { const img = document.querySelector('#char-picture img');"
                           " return img && img.complete && img.naturalWidth > 0"
                           " && img.naturalWidth === img.naturalHeight; }")
    page.click("#char-save")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Saved Mira')")
    saved = yaml.safe_load((home / "characters" / "Mira.yaml").read_text())
    assert saved["greeting"] == "Ahoy, {{user}}!" and saved["alternate_greetings"] == ["Avast, {{user}}.", "Yo ho ho!"]
    assert saved["context"] == "{{char}} is a pirate who says arr.\n\nScenario: A ship at dawn.\n\n" \
                               "{{user}}: Hello\n{{char}}: Arr!"
    with Image.open(home / "characters" / "Mira.png") as stored:
        assert stored.size == (300, 300)  # the centre square of the 600x300 upload
    # the Chat tab lists it at once (no reload), and the editor's button opens a chat with it
    assert "Mira" in choices(page, "#character")
    tab(page, "Character")
    page.click("#char-use")
    page.wait_for_selector("#chat-input textarea", state="visible")
    page.wait_for_function("() => document.querySelector('#character input').value === 'Mira'")
    # Mira's first chat (saved at once: she greets), then New: another greeting too. The list growing tells
    # New's chat from the first (an arrow used before it is drawn acts on the first and is drawn over)
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 1")
    page.wait_for_function(IDLE)
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 2")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 1")
    page.wait_for_function(IDLE)
    assert bots(page)[0].strip() == "Ahoy, You!"
    wait_version(page, 0, "1/3")  # the alternate greetings are the first reply's other versions
    act(page, 0, "next")
    wait_version(page, 0, "2/3")
    assert bots(page)[0].strip() == "Avast, You."
    page.wait_for_selector("#chatbot .avatar-container img")  # the picture is the avatar
    assert "Mira is a pirate who says arr" in show_prompt(page, "Mira is a pirate")

    # a change applies to the next reply: the prompt the model reads now has the new words
    tab(page, "Character")
    page.fill("#char-context textarea", "{{char}} is a retired pirate who grows roses.")
    page.click("#char-save")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('The next reply')")
    tab(page, "Chat")
    prompt = show_prompt(page, "a retired pirate who grows roses")
    assert "says arr" not in prompt

    # duplicate, then delete the copy: both lists follow
    tab(page, "Character")
    page.click("#char-duplicate")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Mira (2)')")
    page.wait_for_function("() => document.querySelector('#char-name textarea, #char-name input').value === 'Mira (2)'")
    assert "Mira (2)" in choices(page, "#char-pick") and "Mira (2)" in choices(page, "#character")
    assert (home / "characters" / "Mira (2).png").is_file()
    tab(page, "Character")
    page.once("dialog", lambda d: d.accept())
    page.click("#char-delete")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Deleted Mira (2)')")
    assert "Mira (2)" not in choices(page, "#char-pick") and "Mira (2)" not in choices(page, "#character")
    assert not (home / "characters" / "Mira (2).yaml").exists()
    assert (home / "characters" / "Mira.yaml").exists()
    page.close()


def test_a_page_load_lists_characters_added_since_and_the_profile_is_here(browser, server, home):
    page = open_page(browser, server.url)
    # written after the server built the page: only a page load that reads the folder again lists it
    (home / "characters" / "Dropped In.yaml").write_text("name: Dropped In\ngreeting: ''\ncontext: New.\n")
    page.reload()
    # the page-load event keeps the lists it answers for disabled until it has (modules/ui/progress.py)
    page.wait_for_selector("#chat-input textarea:not([disabled])")
    page.wait_for_selector("#character input:not([disabled])")
    page.wait_for_function(IDLE)
    assert "Dropped In" in choices(page, "#character")
    assert "Dropped In" in choices(page, "#char-pick")
    # who you are: the name and bio the prompt uses
    page.fill("#your-name textarea, #your-name input", "Captain Ann")
    page.fill("#your-bio textarea, #your-bio input", "Ann sails a small boat.")
    page.click("#save-profile")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Saved your profile')")
    tab(page, "Chat")
    page.locator("#chat-mode label", has_text="chat").first.click()
    assert "Ann sails a small boat." in show_prompt(page, "Ann sails")
    page.close()


def test_a_name_typed_before_the_page_load_answers_is_kept(browser, server):
    """On a busy machine the page-load event that brings the saved profile can answer after the user has
    begun typing: what was typed stays, and only the untouched field gets the saved text. The page's
    request for that event is held back until the name has been typed, so the late answer is certain."""
    page = open_page(browser, server.url)
    tab(page, "Character")
    page.fill("#your-bio textarea, #your-bio input", "Ann sails a small boat.")
    save_profile_name(page, "Captain Ann")
    page.close()

    config = httpx.get(server.url + "/config", timeout=30).json()
    hidden = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "saved-profile")
    profile_load = next(d["id"] for d in config["dependencies"] if d["outputs"] == [hidden])
    held = []

    def hold_the_profile_load(route) -> None:
        body = route.request.post_data_json or {}
        if body.get("fn_index") == profile_load:
            held.append(route)
        else:
            route.continue_()

    page = browser.new_page()
    page.route("**/gradio_api/queue/join*", hold_the_profile_load)
    with page.expect_request(lambda r: r.url.split("?")[0].endswith("/queue/join") and
                             (r.post_data_json or {}).get("fn_index") == profile_load):
        page.goto(server.url)
    tab(page, "Character")
    page.fill("#your-name textarea, #your-name input", "Ann")
    assert held, "the page never asked for the saved profile"
    held[0].continue_()
    page.wait_for_function("() => document.querySelector('#your-bio textarea, #your-bio input').value"
                           " === 'Ann sails a small boat.'")  # the answer has come: the untouched field has it
    assert page.input_value("#your-name textarea, #your-name input") == "Ann"
    page.close()


def test_a_cards_creator_notes_tags_and_characters_note_are_shown_edited_and_the_note_reaches_the_prompt(
        browser, server, home, tmp_path):
    import json

    card = json.loads((ROOT / "tests" / "fixtures" / "cards" / "captain-v2.json").read_text())
    data = card["data"]
    for key in ("character_book", "post_history_instructions"):
        del data[key]  # this test reads the note's place in the prompt: nothing else after the chat
    data.update(name="Quill", first_mes="Ink's dry.", tags=["ink", "letters"],
                creator_notes="Best with <img src=x onerror=alert('notes')> slow replies.")
    data["extensions"]["depth_prompt"] = {"prompt": "[{{char}} hides a letter.]", "depth": 4, "role": "system"}
    path = tmp_path / "quill.json"
    path.write_text(json.dumps(card))
    page = open_page(browser, server.url)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    tab(page, "Character")
    save_profile_name(page, "Ann")
    tab(page, "Chat")
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#card-import input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#character input').value === 'Quill'")
    # the Character tab follows the chat's character: what the card brings is there to read and change
    tab(page, "Character")
    page.wait_for_function("() => document.querySelector('#char-name textarea, #char-name input').value === 'Quill'")
    notes = "#char-creator-notes textarea"
    assert page.input_value(notes) == data["creator_notes"]  # the card's text as text, never as HTML
    assert page.locator("#char-creator-notes img").count() == 0 and dialogs == []
    assert page.input_value("#char-tags textarea, #char-tags input") == "ink, letters"
    assert page.input_value("#char-note textarea") == "[{{char}} hides a letter.]"
    assert page.input_value("#char-note-depth input") == "4"
    assert page.input_value("#char-note-role input") == "system"
    page.fill(notes, "Mind the ink.")
    page.fill("#char-tags textarea, #char-tags input", "ink, letters, secrets")
    page.fill("#char-note textarea", "[{{char}} hides a letter from {{user}}.]")
    page.fill("#char-note-depth input", "1")
    page.locator("#char-note-role input").click()
    page.locator("ul[role=listbox] li", has_text="user").click()
    page.wait_for_function("() => document.querySelector('#char-note-role input').value === 'user'")
    page.click("#char-save")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Saved Quill')")
    saved = yaml.safe_load((home / "characters" / "Quill.yaml").read_text())
    assert saved["creator_notes"] == "Mind the ink." and saved["tags"] == ["ink", "letters", "secrets"]
    assert saved["extensions"]["depth_prompt"] == {"prompt": "[{{char}} hides a letter from {{user}}.]",
                                                   "depth": 1, "role": "user"}
    # the model gets the note, as a message of Ann's one message from the end; never the notes or tags
    tab(page, "Chat")
    page.locator("#chat-mode label", has_text="chat").first.click()
    page.fill("#chat-input textarea", "Where to?")
    prompt = show_prompt(page, "hides a letter from Ann")
    assert "Quill: Ink's dry.\nAnn: [Quill hides a letter from Ann.]\nAnn: Where to?\nQuill:" in prompt
    assert "Mind the ink" not in prompt and "secrets" not in prompt
    page.close()
