"""character_bias: a hidden string that starts every reply.

The string is added to the bot prefix, so the model reads it as the start of its own turn and
continues in that voice, while the reply shown and stored begins after it.
"""

import gradio as gr

params = {
    "display_name": "Character bias",
    "is_tab": False,
    "activate": True,
    "bias string": " *I am so happy*",
}


def bot_prefix_modifier(string, state):
    """Append the bias to the text that opens the bot's turn."""
    if params["activate"]:
        return f"{string}{params['bias string'].strip()} "
    return string


def ui():
    activate = gr.Checkbox(value=params["activate"], label="Start every reply with the bias string")
    bias = gr.Textbox(value=params["bias string"], label="Bias string", lines=1)
    activate.change(lambda x: params.update({"activate": x}), activate, None, api_visibility="private")
    bias.change(lambda x: params.update({"bias string": x}), bias, None, api_visibility="private")
