"""The Chat tab's "Character cards and chat files" panel: character cards and chat files in and out.
Layout and wiring; the store and the character library do the work. (The user's name and bio are in
the Character tab, modules/ui/character_panel.py.)"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from modules.app import App
from modules.characters import CharacterError
from modules.fileio import os_reason
from modules.store import ChatNotFound
from modules.ui.chat_view import guarded, new_session, redraw, user_of

MAX_IMPORT_BYTES = 50 * 1024 * 1024


@dataclass
class FilesPanel:
    #: wire(outputs) -> the card import event (so other character lists can follow it)
    wire: Callable[[list], Any]


def render(app: App, session: gr.State, character: gr.Dropdown) -> FilesPanel:
    with gr.Accordion("Character cards and chat files", open=False, elem_id="files-panel"):
        with gr.Row():
            card_in = gr.File(label="Import character card (PNG or JSON)", file_types=[".png", ".json"],
                              type="binary", elem_id="card-import")
            chat_in = gr.File(label="Import chat (JSON)", file_types=[".json"], type="binary",
                              elem_id="chat-import")
            download = gr.File(label="Download", interactive=False, elem_id="download")
        with gr.Row():
            export_chat = gr.Button("Export chat (JSON)", size="sm", elem_id="export-chat")
            export_card = gr.Button("Export character card (PNG)", size="sm", elem_id="export-card")

    @guarded
    def on_import_chat(request: gr.Request, data: bytes | None, sess: dict, character_v: str):
        user = user_of(request)
        if not data:
            return
        if len(data) > MAX_IMPORT_BYTES:
            raise ValueError(f"the chat file is larger than {MAX_IMPORT_BYTES:,} bytes")
        try:
            parsed = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"the chat file is not JSON: {exc}") from exc
        chat_id = app.store.import_chat(user, parsed)
        app.store.update_chat(user, chat_id, character=character_v or "")
        return redraw(app, user, {**new_session(previous=sess), "chat_id": chat_id}, character_v,
                      status="Imported the chat.")

    def on_import_card(data: bytes | None):
        if not data:
            return gr.skip(), gr.skip()
        try:
            card = app.characters.import_card(data)
        except CharacterError as exc:
            gr.Warning(str(exc))
            return gr.skip(), f"⚠️ {exc}"
        return gr.Dropdown(choices=app.characters.names(), value=card.name), f"Imported character **{card.name}**."

    def write_download(name: str, data: bytes) -> str | None:
        try:
            folder = Path(tempfile.mkdtemp(prefix="parlour-export-"))
            path = folder / name
            path.write_bytes(data)
        except OSError as exc:  # the temp folder's disk is full: say so instead of a failed event
            gr.Warning(f"could not write the export: {os_reason(exc)}")
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
            gr.Warning(str(exc))
            return gr.skip()
        return write_download(f"chat-{sess['chat_id']}.json", json.dumps(data, indent=2).encode())

    def on_export_card(character_v: str):
        try:
            return write_download(f"{character_v}.png", app.characters.export_card(character_v))
        except CharacterError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    def wire(outputs: list) -> Any:
        """Wired once the tab's standard outputs exist (the status line is the 5th of them)."""
        private = dict(api_visibility="private")
        status = outputs[4]
        # each upload is read once, then the box is emptied for the next file
        imported = card_in.upload(on_import_card, card_in, [character, status], **private)
        imported.then(lambda: None, None, card_in, **private)
        chat_in.upload(on_import_chat, [chat_in, session, character], outputs, **private).then(
            lambda: None, None, chat_in, **private)
        export_chat.click(on_export_chat, session, download, **private)
        export_card.click(on_export_card, character, download, **private)
        return imported

    return FilesPanel(wire)
