"""The Parameters tab's "Constrain output" group: a grammar box (with a dropdown of grammar files), a
JSON-schema box and a regex box; what they set applies to Chat and Notebook, and is saved with a preset.

Each box is an editor. What generation reads is the Preset control behind it (`grammar_string`,
`json_schema`, `regex`: hidden textboxes among the Parameters controls), and an editor's text reaches
it when the user leaves the box, and only once it checks out (`constraints.check_setting`: it compiles for the loaded model, the loader
supports it, no other constraint is in use). Otherwise the reason shows under the box and the last
good setting stays in use. Loading a preset (or Neutral) fills the editors from the controls: only
those events, chained by the Parameters tab through the function `render` returns. (Following every
change of a control instead would also follow the editor's own applied text and a picked grammar file,
and that echo could arrive after the user had typed on and put the old text back over the edit.)
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from modules.app import App
from modules.constraints import KIND_NAMES, ConstraintError, check_setting
from modules.grammars import GrammarError, GrammarLibrary
from modules.presets import CONSTRAINT_KEYS
from modules.ui.icons import icon

EDITORS = {"grammar_string": ("Grammar (GBNF or Lark)", 8, 'root ::= "yes" | "no"'),
           "json_schema": ("JSON schema", 8, '{"type": "object", "properties": {"name": {"type": "string"}}}'),
           "regex": ("Regex (the whole reply)", 1, "[0-9]{3}-[0-9]{4}")}


def status_line(constraint: Any) -> str:
    if constraint is None:
        return ""
    return f"✓ in use: the reply follows this {KIND_NAMES[constraint.kind]} (Chat and Notebook)"


def apply_text(app: App, key: str, text: str, in_use: dict[str, str]) -> tuple[Any, str]:
    """(the control's new value or a skip, the line under the box) for an editor's text."""
    text = text or ""
    try:
        constraint = check_setting(app.models.current(), key, text, in_use)
    except ConstraintError as exc:
        kept = " — the last good setting stays in use" if in_use.get(key) else ""
        return gr.skip(), f"⚠️ {exc.reason}{kept}"
    return ("" if constraint is None else text), status_line(constraint)


def render(app: App, params: Any) -> Callable[[Any], None]:
    """Lay out the group and wire it to the hidden Preset controls in `params.controls`; returns
    `follow(event)`, for the events that set those controls from a preset: the editors then show them."""
    library = GrammarLibrary.for_user_data(app.settings.user_data)
    hidden = [params.controls[key] for key in CONSTRAINT_KEYS]
    editors: dict[str, gr.Textbox] = {}
    notes: dict[str, gr.Markdown] = {}
    with gr.Accordion("Constrain output", open=True, elem_id="constrain-output"):
        gr.Markdown("The reply follows a grammar, a JSON schema or a regex exactly (one at a time). Grammar "
                    "files: `user_data/grammars/` and the ones Parlour ships; text-generation-webui's `.gbnf` "
                    "files work as they are.")
        with gr.Row():
            files = gr.Dropdown(choices=library.names(), value=None, label="Grammar file", elem_id="grammar-file",
                                interactive=True, scale=3)
            refresh = gr.Button("", scale=0, min_width=50, elem_id="grammar-file-refresh", icon=icon("refresh"))
        for key, (label, lines, example) in EDITORS.items():
            editors[key] = gr.Textbox(label=label, lines=lines, max_lines=max(lines, 20), placeholder=example,
                                      value=params.controls[key].value, elem_id=f"constraint-{key}")
            notes[key] = gr.Markdown(elem_id=f"constraint-{key}-status")
        for control in hidden:
            control.render()

    def typed(key: str):
        def handler(text: str, *values: str) -> tuple[Any, str]:
            return apply_text(app, key, text, dict(zip(CONSTRAINT_KEYS, values)))
        return handler

    def pick_file(name: str | None, *values: str):
        if not name:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            text = library.read(name)
        except GrammarError as exc:
            return gr.skip(), gr.skip(), f"⚠️ {exc}"
        value, note = apply_text(app, "grammar_string", text, dict(zip(CONSTRAINT_KEYS, values)))
        return text, value, note

    def from_controls(*values: str) -> list[str]:
        return [value or "" for value in values]

    for key, control in zip(CONSTRAINT_KEYS, hidden):
        # on leaving the box (or Enter in the one-line regex box), not per keystroke: an answer arriving while
        # the user types would move their cursor
        gr.on([editors[key].blur, editors[key].submit], typed(key), [editors[key], *hidden], [control, notes[key]],
              api_visibility="private", show_progress="hidden")
    files.input(pick_file, [files, *hidden], [editors["grammar_string"], params.controls["grammar_string"],
                                              notes["grammar_string"]], api_visibility="private")
    refresh.click(lambda: gr.Dropdown(choices=library.names()), None, files, api_visibility="private")

    def follow(event: Any) -> None:
        event.then(from_controls, hidden, [editors[key] for key in CONSTRAINT_KEYS], api_visibility="private",
                   show_progress="hidden")

    return follow
