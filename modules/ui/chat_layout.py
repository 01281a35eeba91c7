"""The Chat tab's layout: every component, built in page order; modules/ui/chat.py wires them."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from modules import chat as chatlib
from modules.app import App
from modules.chat import MODEL_TEMPLATE, MODES
from modules.render import LATEX_DELIMITERS
from modules.ui import chat_files
from modules.ui.chat_view import new_session


def build(app: App) -> SimpleNamespace:
    """The components, by name (the same names the handlers use)."""
    session = gr.State(new_session())
    characters = app.characters.names()
    start_character = "Assistant" if "Assistant" in characters else (characters[0] if characters else None)
    with gr.Row(elem_id="chat-layout"):
        with gr.Column(scale=1, min_width=220, elem_id="chat-sidebar"):
            with gr.Row():
                new = gr.Button("New chat", elem_id="new-chat", size="sm", variant="primary")
                incognito = gr.Checkbox(label="Incognito (never saved)", value=False, elem_id="incognito")
            search = gr.Textbox(placeholder="Search chats", show_label=False, elem_id="chat-search")
            chat_list = gr.Radio(choices=[], label="Chats (newest first)", elem_id="chat-list")
            title = gr.Textbox(placeholder="New title", show_label=False, elem_id="rename-title")
            with gr.Row():
                rename = gr.Button("Rename", size="sm", elem_id="rename-chat")
                branch_chat = gr.Button("Branch", size="sm", elem_id="branch-chat")
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chat")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Really delete", size="sm", variant="stop", elem_id="confirm-delete")
                cancel_delete = gr.Button("Keep it", size="sm", elem_id="cancel-delete")
        with gr.Column(scale=4):
            with gr.Row():
                # instruct by default: most models are instruction-tuned and carry their own template
                mode = gr.Radio(list(MODES), value="instruct", label="Mode", elem_id="chat-mode")
                character = gr.Dropdown(characters, value=start_character, label="Character", elem_id="character")
                refresh_characters = gr.Button("↻", elem_id="refresh-characters", size="sm", scale=0, min_width=40)
                template = gr.Dropdown([MODEL_TEMPLATE, *app.templates.names()], value=MODEL_TEMPLATE,
                                       label="Instruction template", elem_id="instruction-template")
                chat_model = gr.Dropdown(app.models.choices(), value=app.models.default, label="Model",
                                         elem_id="chat-model", info="this chat's model (it loads when needed)")
                thinking = gr.Checkbox(value=True, label="Thinking", visible=False, elem_id="chat-thinking",
                                       info="the model reasons before it answers (its template's enable_thinking)")
                effort = gr.Dropdown(["low", "medium", "high"], value="medium", label="Reasoning effort",
                                     visible=False, elem_id="chat-reasoning-effort")
            # Bubbles hold HTML already rendered and sanitized by modules/render.py; Gradio's own
            # sanitizer stays on as a second layer. Its bundled KaTeX then typesets the math spans
            # render.py wrote (only render.py's canonical delimiters; see its docstring).
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height="58vh", layout="bubble",
                                 placeholder="Say hello to start a chat.", render_markdown=False, sanitize_html=True,
                                 latex_delimiters=LATEX_DELIMITERS)
            status = gr.Markdown(elem_id="chat-status")
            with gr.Row(elem_id="chat-input-row"):
                text = gr.Textbox(elem_id="chat-input", show_label=False, placeholder="Send a message (Enter)",
                                  lines=1, max_lines=12, scale=10, autofocus=True)
                with gr.Column(scale=1, min_width=110):
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Row(elem_id="chat-actions"):
                regenerate = gr.Button("Regenerate", elem_id="regenerate", size="sm")
                cont = gr.Button("Continue", elem_id="continue", size="sm")
                remove = gr.Button("Remove last", elem_id="remove-last", size="sm")
                impersonate = gr.Button("Impersonate", elem_id="impersonate", size="sm")
                dummy_message = gr.Button("Send dummy message", elem_id="dummy-message", size="sm")
                dummy_reply = gr.Button("Send dummy reply", elem_id="dummy-reply", size="sm")
                reproduce = gr.Button("Reproduce", elem_id="reproduce", size="sm")
            with gr.Row():
                start_with = gr.Textbox(label="Start reply with", elem_id="start-reply-with", lines=1, scale=4)
                images = gr.Checkbox(label="Load remote images in replies", value=False, elem_id="remote-images")
            with gr.Accordion("Selected message (click a bubble)", open=True, elem_id="message-panel"):
                with gr.Row():
                    prev_version = gr.Button("<", size="sm", elem_id="prev-version", min_width=40, scale=0)
                    selected_info = gr.Markdown(elem_id="selected-info")
                    next_version = gr.Button(">", size="sm", elem_id="next-version", min_width=40, scale=0)
                edit_text = gr.Textbox(label="Text", lines=3, max_lines=20, elem_id="edit-text")
                with gr.Row():
                    save_edit = gr.Button("Save edit", size="sm", elem_id="save-edit")
                    branch_here = gr.Button("Branch here", size="sm", elem_id="branch-here")
                    copy = gr.Button("Copy", size="sm", elem_id="copy-message")
            with gr.Accordion("Prompt settings", open=False):
                template_src = gr.Code(label="Instruction template (Jinja; empty: the chosen one)", language="jinja2",
                                       elem_id="template-source", interactive=True)
                system_message = gr.Textbox(label="System message (instruct modes; empty: character context)",
                                            lines=2, elem_id="system-message")
                command = gr.Textbox(chatlib.DEFAULT_COMMAND, label="Chat-instruct command (<|character|>, <|prompt|>)",
                                     lines=3, elem_id="chat-instruct-command")
                stops = gr.Textbox(label="Custom stop strings (one per line)", lines=2, elem_id="custom-stops")
                keep_thinking = gr.Checkbox(value=False, label="Keep thinking in history", elem_id="keep-thinking",
                                            info="send earlier replies' reasoning back to the model (off: as most "
                                                 "reasoning models are trained)")
                with gr.Row():
                    preview = gr.Button("Show prompt", size="sm", elem_id="show-prompt")
                    to_notebook = gr.Button("Send to notebook", size="sm", elem_id="send-to-notebook")
                prompt_view = gr.Code(label="Prompt for the next reply", interactive=False, elem_id="prompt-preview")
            files = chat_files.render(app, session, character)

    return SimpleNamespace(
        session=session, new=new, incognito=incognito, search=search, chat_list=chat_list, title=title, rename=rename,
        branch_chat=branch_chat, delete=delete, confirm_row=confirm_row, confirm=confirm, cancel_delete=cancel_delete,
        mode=mode, character=character, refresh_characters=refresh_characters, template=template, thinking=thinking,
        effort=effort, chat_model=chat_model, chatbot=chatbot,
        status=status, text=text, send=send, stop=stop, regenerate=regenerate, cont=cont, remove=remove,
        impersonate=impersonate, dummy_message=dummy_message, dummy_reply=dummy_reply, reproduce=reproduce,
        start_with=start_with, images=images, prev_version=prev_version, selected_info=selected_info,
        next_version=next_version, edit_text=edit_text, save_edit=save_edit, branch_here=branch_here, copy=copy,
        template_src=template_src, system_message=system_message, command=command, stops=stops,
        keep_thinking=keep_thinking, preview=preview, to_notebook=to_notebook, prompt_view=prompt_view, files=files)
