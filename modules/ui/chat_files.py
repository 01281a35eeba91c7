"""The Chat tab's "Character cards and chat files" panel: character cards and chat files in and out.
Layout and wiring; the store and the character library do the work. (The user's name and bio are in
the Character tab, modules/ui/character_panel.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from modules import exports
from modules.app import App
from modules.characters import CharacterError, CharacterExists
from modules.fileio import os_reason
from modules.render import literal
from modules.store import ChatNotFound
from modules.ui.chat_view import CHARACTER_LISTS, guarded, new_session, redraw, session_of, user_of


@dataclass
class FilesPanel:
    #: wire(outputs) -> the events that import a card (so other character lists can follow them)
    wire: Callable[[list], list[Any]]


def render(app: App, session: gr.State, character: gr.Dropdown) -> FilesPanel:
    with gr.Accordion("Character cards and chat files", open=False, elem_id="files-panel"):
        with gr.Row():
            card_in = gr.File(label="Import character card (PNG or JSON)", file_types=[".png", ".json"],
                              type="binary", elem_id="card-import")
            chat_in = gr.File(label="Import chat (JSON)", file_types=[".json"], type="binary",
                              elem_id="chat-import")
            download = gr.File(label="Download", interactive=False, elem_id="download")
        pending_card = gr.State(None)  # a card whose name is taken, until the user chooses
        with gr.Row(visible=False, elem_id="card-conflict") as card_conflict:
            card_overwrite = gr.Button("Overwrite the existing character", size="sm", variant="stop",
                                       elem_id="card-overwrite")
            card_rename = gr.Button("Import under a new name", size="sm", elem_id="card-rename")
        with gr.Row():
            export_chat = gr.Button("Export chat (JSON)", size="sm", elem_id="export-chat")
            export_card = gr.Button("Export character card (PNG)", size="sm", elem_id="export-card")

    @guarded
    def on_import_chat(request: gr.Request, data: bytes | None, sess: dict, character_v: str):
        user = user_of(request)
        if not data:
            return
        chat_id = app.store.import_chat_file(user, data)  # ValueError (one line) for a bad file; nothing written
        if not app.store.chat(user, chat_id).character:  # a text-generation-webui history names none
            app.store.update_chat(user, chat_id, character=character_v or "")
        return redraw(app, user, session_of(app.chats.open(user, chat_id), new_session(previous=sess)), character_v,
                      status="Imported the chat.")

    def on_import_card(data: bytes | None, choice: str = "ask"):
        """(character, status, pending card, conflict row, rename button): a taken name asks first."""
        if not data:
            return gr.skip(), gr.skip(), None, gr.Row(visible=False), gr.skip()
        try:
            if choice == "rename":
                card = app.characters.import_card(data, name=app.characters.free_name(
                    app.characters.import_card_name(data)))
            else:
                card = app.characters.import_card(data, overwrite=choice == "overwrite")
        except CharacterExists as exc:
            return (gr.skip(), "⚠️ A character with this card's name already exists: overwrite it, or import "
                    "the card under a new name?", data, gr.Row(visible=True),
                    gr.Button(value=f"Import as {exc.suggestion}"))
        except CharacterError as exc:
            gr.Warning(literal(exc))
            return gr.skip(), f"⚠️ {literal(exc)}", None, gr.Row(visible=False), gr.skip()
        return (gr.Dropdown(choices=app.characters.names(), value=card.name),
                f"Imported character **{literal(card.name)}**.", None, gr.Row(visible=False), gr.skip())

    def write_download(user: str, what: str, name: str, data: bytes) -> str | None:
        try:  # in Gradio's cache, deleted with the chat and after --cache-minutes (modules/exports.py)
            path = exports.write_export(exports.cache_dir(), user, what, name, data)
        except OSError as exc:  # the temp folder's disk is full: say so instead of a failed event
            gr.Warning(literal(f"could not write the export: {os_reason(exc)}"))
            return None
        return str(path)

    def on_export_chat(request: gr.Request, sess: dict):
        user = user_of(request)
        if sess["chat_id"] is None:
            gr.Warning("open a saved chat first")
            return gr.skip()
        try:
            data = app.store.export_chat(user, sess["chat_id"])
        except ChatNotFound as exc:
            gr.Warning(literal(exc))
            return gr.skip()
        return write_download(user, str(sess["chat_id"]), f"chat-{sess['chat_id']}.json",
                              json.dumps(data, indent=2).encode())

    def on_export_card(request: gr.Request, character_v: str):
        try:
            return write_download(user_of(request), "card", f"{character_v}.png",
                                  app.characters.export_card(character_v))
        except CharacterError as exc:
            gr.Warning(literal(exc))
            return gr.skip()

    def wire(outputs: list) -> Any:
        """Wired once the tab's standard outputs exist (the status line is the 5th of them)."""
        private = dict(api_visibility="private")
        status = outputs[4]
        card_outputs = [character, status, pending_card, card_conflict, card_rename]
        # each upload is read once, then the box is emptied for the next file
        lists = {**private, **CHARACTER_LISTS}
        uploaded = card_in.upload(on_import_card, card_in, card_outputs, **lists)
        uploaded.then(lambda: None, None, card_in, **private)
        imported = [uploaded,
                    card_overwrite.click(lambda data: on_import_card(data, "overwrite"), pending_card, card_outputs,
                                         **lists),
                    card_rename.click(lambda data: on_import_card(data, "rename"), pending_card, card_outputs,
                                      **lists)]
        chat_in.upload(on_import_chat, [chat_in, session, character], outputs, **private).then(
            lambda: None, None, chat_in, **private)
        export_chat.click(on_export_chat, session, download, **private)
        export_card.click(on_export_card, character, download, **private)
        return imported

    return FilesPanel(wire)
