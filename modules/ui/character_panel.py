"""Character tab: make, edit, duplicate and delete characters, and say who you are.

Layout and wiring only; modules/character_editor.py does the work. The tab edits the character picked in
its own list, which follows the Chat tab's character; "Chat with this character" makes it the chat's.
Besides the persona it edits the Character's Note (text, depth, role), the tags and the creator's notes
(shown as plain text: a downloaded card's words never become HTML here). A save writes
characters/NAME.yaml (+ NAME.png) at once and the next reply reads it. Every list of characters on the
page is refreshed after a save, a duplicate, a delete or an imported card, and when the page loads
(characters added on disk since the server started are listed too).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import gradio as gr

from modules import character_editor as editor
from modules import character_note
from modules.app import App
from modules.render import literal
from modules.characters import CharacterError
from modules.store import StoreError
from modules.ui.chat_view import CHARACTER_LISTS, user_of

CONFIRM_DELETE_JS = ("(name, chat) => [(name && confirm(`Delete the character ${name}? Its chats stay.`))"
                     " ? name : null, chat]")
# The saved profile reaches the fields in the browser, and only the fields the user has not typed into: on a
# busy machine the page-load answer can arrive after the user began typing, and must not overwrite that.
FILL_PROFILE_JS = ("(saved, name, bio) => { const [n, b] = JSON.parse(saved || '[\"\", \"\"]');"
                   " return [name || n, bio || b]; }")
FIELDS = ("name", "greeting", "alternate_greetings", "context", "scenario", "example_dialogue", "note", "note_depth",
          "note_role", "tags", "creator_notes")


def _picture(app: App, name: str | None) -> Any:
    """The character's picture for the preview (a PIL image: Gradio serves it from its own cache, so no
    route to the characters folder is opened)."""
    from PIL import Image

    path = app.characters.picture(name) if name else None
    if path is None:
        return None
    try:
        with Image.open(io.BytesIO(path.read_bytes()), formats=["PNG"]) as image:
            image.thumbnail((editor.PICTURE_PIXELS, editor.PICTURE_PIXELS))
            return image.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def render(app: App, chat_character: gr.Dropdown, tabs: gr.Tabs) -> dict[str, Any]:
    names = app.characters.names()
    start = chat_character.value if chat_character.value in names else None
    editing = gr.State(start)  # the name being edited (None: a new character)
    new_picture = gr.State(None)  # a picture uploaded since, cropped (PNG bytes), until Save
    with gr.Row(elem_id="character-panel", equal_height=False):
        with gr.Column(scale=1, min_width=240):
            pick = gr.Dropdown(names, value=start, label="Character to edit", elem_id="char-pick")
            with gr.Row():
                new = gr.Button("New", size="sm", elem_id="char-new", min_width=60)
                duplicate = gr.Button("Duplicate", size="sm", elem_id="char-duplicate", min_width=60)
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="char-delete", min_width=60)
            picture = gr.Image(label="Picture (cropped to a square)", type="filepath", sources=["upload"],
                               height=240, elem_id="char-picture", buttons=[], format="png", image_mode="RGBA")
            use = gr.Button("Chat with this character", size="sm", variant="primary", elem_id="char-use")
        with gr.Column(scale=3):
            name = gr.Textbox(label="Name", elem_id="char-name")
            # a downloaded card's text: a Textbox shows it as plain text, never as HTML
            creator_notes = gr.Textbox(label="Creator's notes", lines=2, max_lines=8, elem_id="char-creator-notes",
                                       info="the card author's notes for you; never sent to the model")
            tags = gr.Textbox(label="Tags", elem_id="char-tags", info="comma-separated; never sent to the model")
            greeting = gr.Textbox(label="Greeting (the first reply of a new chat)", lines=3, elem_id="char-greeting")
            alternates = gr.Textbox(label="Alternate greetings", lines=3, elem_id="char-alt-greetings",
                                    info="the first reply's other versions, browsed with < >; separate them "
                                         "with a line holding only ---")
            context = gr.Textbox(label="Context (persona)", lines=7, elem_id="char-context",
                                 info="who the character is and how it talks; {{char}} and {{user}} become "
                                      "the names")
            scenario = gr.Textbox(label="Scenario", lines=2, elem_id="char-scenario")
            examples = gr.Textbox(label="Example dialogue", lines=4, elem_id="char-examples",
                                  placeholder="{{user}}: Hi!\n{{char}}: Hello there.")
            with gr.Row(equal_height=True):
                note = gr.Textbox(label="Character's Note", lines=2, scale=4, elem_id="char-note",
                                  info="put into the chat on every reply, this many messages from the end "
                                       "(0: after the newest), as a message of this role (SillyTavern's "
                                       "Character's Note)")
                note_depth = gr.Number(label="Depth", value=character_note.DEFAULT_DEPTH, precision=0,
                                       minimum=0, maximum=character_note.MAX_DEPTH, scale=1, min_width=80,
                                       elem_id="char-note-depth")
                note_role = gr.Dropdown(list(character_note.ROLES), value=character_note.DEFAULT_ROLE,
                                        label="Role", scale=1, min_width=110, elem_id="char-note-role")
            with gr.Row():
                save = gr.Button("Save character", variant="primary", elem_id="char-save")
            status = gr.Markdown(elem_id="char-status")
    with gr.Accordion("You", open=True, elem_id="you-panel"):
        with gr.Row():
            your_name = gr.Textbox(label="Your name", elem_id="your-name")
            your_bio = gr.Textbox(label="About you (added to the character's context)", elem_id="your-bio")
            save_profile = gr.Button("Save profile", size="sm", elem_id="save-profile", scale=0, min_width=120)
            # the page-load answer, as JSON; see FILL_PROFILE_JS
            saved_profile = gr.Textbox(visible=False, elem_id="saved-profile")
    form = [name, greeting, alternates, context, scenario, examples, note, note_depth, note_role, tags, creator_notes]

    def fields_of(character_name: str | None) -> list[Any]:
        if not character_name:
            values = editor.blank_form()
        else:
            values = editor.form_of(app.characters.load(character_name))
        return [values.name, values.greeting, editor.join_greetings(values.alternate_greetings), values.context,
                values.scenario, values.example_dialogue, values.note, values.note_depth, values.note_role,
                editor.join_tags(values.tags), values.creator_notes]

    def lists(chosen: str | None, chat_value: str | None) -> tuple[Any, Any]:
        """Both character lists, re-read; the chat keeps its character if it still exists."""
        current = app.characters.names()
        chat = chat_value if chat_value in current else ("Assistant" if "Assistant" in current else None)
        return gr.Dropdown(choices=current, value=chosen if chosen in current else None), \
            gr.Dropdown(choices=current, value=chat)

    def on_pick_character(character_name: str | None):
        try:
            values = fields_of(character_name)
        except CharacterError as exc:
            return [gr.skip()] * (len(form) + 3) + [f"⚠️ {literal(exc)}"]
        return values + [character_name, None, _picture(app, character_name), gr.skip()]

    def on_new_character():
        return fields_of(None) + [None, None, None, "A new character: fill it in and save it."]

    def on_upload_picture(path: str | None):
        if not path:
            return None, gr.skip()
        try:
            data = editor.square_picture(Path(path).read_bytes())
        except (CharacterError, OSError) as exc:
            gr.Warning(literal(exc))
            return None, None
        from PIL import Image

        return data, Image.open(io.BytesIO(data))

    def on_save_character(original: str | None, cropped: bytes | None, chat_value: str | None, *values: Any):
        form_values = dict(zip(FIELDS, values))
        form_values["alternate_greetings"] = editor.split_greetings(form_values["alternate_greetings"])
        form_values["tags"] = editor.split_tags(form_values["tags"])
        try:
            saved = editor.save(app.characters, editor.CharacterForm(**form_values), original=original,
                                picture=cropped, chats=app.store)
        except (CharacterError, StoreError) as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {literal(exc)}"
        chat_value = saved.name if chat_value == original and original else chat_value
        pick_update, chat_update = lists(saved.name, chat_value)
        renamed = f" (was {original})" if original and original != saved.name else ""
        return (pick_update, chat_update, saved.name, None,
                f"Saved **{saved.name}**{renamed}. The next reply uses it.")

    def on_duplicate_character(original: str | None, chat_value: str | None):
        if not original:
            return gr.skip(), gr.skip(), "⚠️ pick a character first"
        try:
            copy = editor.duplicate(app.characters, original)
        except CharacterError as exc:
            return gr.skip(), gr.skip(), f"⚠️ {literal(exc)}"
        return *lists(copy, chat_value), f"Made **{copy}**, a copy of {original}."

    def on_delete_character(confirmed: str | None, chat_value: str | None):
        if not confirmed:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            editor.delete(app.characters, confirmed)
        except CharacterError as exc:
            return gr.skip(), gr.skip(), f"⚠️ {literal(exc)}"
        return *lists(None, chat_value), f"Deleted **{confirmed}** (its chats are kept)."

    def on_profile_load(request: gr.Request) -> str:
        profile = app.store.profile(user_of(request))
        return json.dumps([profile["name"], profile["description"]])

    def on_profile_save(request: gr.Request, your: str, bio: str):
        try:
            app.store.set_profile(user_of(request), your, bio)
        except StoreError as exc:
            gr.Warning(literal(exc))
            return f"⚠️ {literal(exc)}"
        return "Saved your profile. The next reply uses it."

    private = dict(api_visibility="private")
    lists_kw = {**private, **CHARACTER_LISTS}  # the events that write `pick` or `chat_character`
    loaded = [*form, editing, new_picture, picture, status]
    pick.input(on_pick_character, pick, loaded, **private)
    chat_character.change(lambda n: gr.Dropdown(value=n), chat_character, pick, **lists_kw).then(
        on_pick_character, pick, loaded, **private)
    new.click(on_new_character, None, loaded, **private).then(lambda: gr.Dropdown(value=None), None, pick, **lists_kw)
    picture.upload(on_upload_picture, picture, [new_picture, picture], **private)
    save.click(on_save_character, [editing, new_picture, chat_character, *form],
               [pick, chat_character, editing, new_picture, status], **lists_kw)
    duplicate.click(on_duplicate_character, [editing, chat_character], [pick, chat_character, status], **lists_kw).then(
        on_pick_character, pick, loaded, **private)
    delete.click(on_delete_character, [pick, chat_character], [pick, chat_character, status], js=CONFIRM_DELETE_JS,
                 **lists_kw).then(on_pick_character, pick, loaded, **private)
    use.click(lambda n: (gr.Dropdown(value=n), gr.Tabs(selected="chat")) if n else (gr.skip(), gr.skip()),
              editing, [chat_character, tabs], **lists_kw)
    save_profile.click(on_profile_save, [your_name, your_bio], status, **private)

    def follow(events: list[Any]) -> None:
        """After any of `events` changed the characters (an imported card), list them here too."""
        for event in events:
            event.then(lambda chosen, chat_value: lists(chosen, chat_value)[0], [pick, chat_character], pick,
                       **lists_kw)

    def on_page_load(chat_value: str | None, picked: str | None) -> list[Any]:
        """Both lists re-read, and the editor on the character to edit, in one event (a second, chained
        one could arrive after the user had clicked New and begun typing, and wipe the form). While the
        chat's character still exists the lists get only their choices: a character picked while the page
        was still loading is kept (a value sent here would undo it)."""
        current = app.characters.names()
        if chat_value in current:
            return [gr.Dropdown(choices=current), gr.Dropdown(choices=current), *on_pick_character(picked)]
        return [*lists(None, chat_value), *on_pick_character(None)]

    def wire_load(blocks: gr.Blocks) -> None:
        """On every page load: both lists re-read, the editor on the chat's character, the user's profile."""
        blocks.load(on_page_load, [chat_character, pick], [pick, chat_character, *loaded], **lists_kw)
        blocks.load(on_profile_load, None, saved_profile, **private).then(
            None, [saved_profile, your_name, your_bio], [your_name, your_bio], js=FILL_PROFILE_JS, **private)

    return {"follow": follow, "wire_load": wire_load, "components": {"your_name": your_name, "your_bio": your_bio}}
