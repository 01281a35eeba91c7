"""example: every hook Parlour calls, each with a minimal working implementation.

Copy this folder to `user_data/extensions/<your_name>/` and delete what you do not need. The file is
a text-generation-webui style `script.py`: plain functions named after the hooks, no imports from
Parlour needed. Hooks run in load order (the order of --extensions); a hook that raises, returns
the wrong type, or takes longer than --extension-timeout is logged, shown in the Session tab, and
skipped. Each behaviour below is off by default (the extension then changes nothing) and switched
on by a parameter, which settings.yaml can set as `example-<param>: value`.
"""

import gradio as gr

params = {
    "display_name": "Example",
    "is_tab": True,            # ui() gets its own tab instead of a place in the shared block
    # tunables (settings.yaml: `example-temperature: 0.5`)
    "temperature": None,       # state_modifier: force this temperature
    "input_prefix": "",        # chat_input_modifier: shown and sent before the user's message
    "uppercase_input": False,  # input_modifier
    "keep_last_turns": 0,      # history_modifier: only the last N turns reach the prompt (0 = all)
    "reply_start": "",         # bot_prefix_modifier: hidden text that starts every reply
    "plain_prompt": False,     # custom_generate_chat_prompt: "User: ...\nBot:" instead of the template
    "count_words": False,      # custom_tokenized_length: count words instead of tokens
    "extra_prompt_ids": [],    # tokenizer_modifier: token ids appended to the prompt
    "ban_token_ids": [],       # logits_processor_modifier: these tokens are never picked
    "echo": False,             # custom_generate_reply: answer with the user's words, no model
    "reply_suffix": "",        # output_modifier: appended to the shown reply
    "footer": "",              # reply_footer: a line under each reply
}


def setup():
    """Runs once when the extension loads: check params, open files, load small models."""
    params["extra_prompt_ids"] = [int(i) for i in params["extra_prompt_ids"]]
    params["ban_token_ids"] = [int(i) for i in params["ban_token_ids"]]


def ui():
    """Gradio components, built inside this extension's tab (is_tab) or the shared Extensions block."""
    gr.Markdown("The example extension: each hook's behaviour is switched on by a parameter.")
    suffix = gr.Textbox(value=params["reply_suffix"], label="Text added after every reply (output_modifier)")
    suffix.change(lambda x: params.update({"reply_suffix": x}), suffix, None, api_visibility="private")


def custom_css():
    """CSS added to the page (applied when the page is built: a restart after enabling)."""
    return ".example-extension { border-left: 3px solid var(--color-accent); }"


def custom_js():
    """JavaScript run when the page loads."""
    return "console.debug('example extension loaded');"


def state_modifier(state):
    """Change the generation state: sampling values (temperature, max_new_tokens, ...) and chat settings."""
    if params["temperature"] is not None:
        state["temperature"] = float(params["temperature"])
    return state


def chat_input_modifier(text, visible_text, state):
    """Change the new chat message: (what the model reads, what the chat shows)."""
    if params["input_prefix"]:
        return params["input_prefix"] + text, params["input_prefix"] + visible_text
    return text, visible_text


def input_modifier(string, state, is_chat=False):
    """Change the user's input (the chat message, or the notebook prompt when is_chat is False)."""
    return string.upper() if params["uppercase_input"] else string


def history_modifier(history):
    """Change the history the prompt is built from: {'internal': [[user, bot], ...], 'visible': [...]}."""
    keep = int(params["keep_last_turns"])
    if keep > 0:
        return {"internal": history["internal"][-keep:], "visible": history["visible"][-keep:]}
    return history


def bot_prefix_modifier(string, state):
    """Change the text that opens the bot's turn; what is added here is read by the model, not shown."""
    return string + params["reply_start"]


def custom_generate_chat_prompt(user_input, state, **kwargs):
    """Build the whole chat prompt yourself; return None to let Parlour use the model's template."""
    if not params["plain_prompt"]:
        return None
    lines = [f"User: {user}\nBot: {bot}" for user, bot in kwargs["history"]["internal"]]
    return "\n".join(lines + [f"User: {user_input}\nBot:"])


def custom_tokenized_length(prompt):
    """Count the prompt's tokens yourself (e.g. for a multimodal prompt); None: the tokenizer counts."""
    return len(prompt.split()) if params["count_words"] else None


def tokenizer_modifier(state, prompt, input_ids, input_embeds):
    """Change the token ids (a 1 x n tensor) after tokenization; return (prompt, input_ids, input_embeds)."""
    if params["extra_prompt_ids"]:
        import torch

        extra = torch.tensor([params["extra_prompt_ids"]], dtype=input_ids.dtype, device=input_ids.device)
        input_ids = torch.cat([input_ids, extra], dim=1)
    return prompt, input_ids, input_embeds


class BanTokens:
    """A logits processor: called with (input_ids, scores) at every step, returns new scores."""

    def __init__(self, token_ids):
        self.token_ids = list(token_ids)

    def __call__(self, input_ids, scores):
        out = scores.clone()
        out[:, self.token_ids] = -float("inf")
        return out


def logits_processor_modifier(processor_list, input_ids):
    """Add logits processors (Transformers models); input_ids is the prompt."""
    if params["ban_token_ids"]:
        processor_list.append(BanTokens(params["ban_token_ids"]))
    return processor_list


def custom_generate_reply(question, original_question, seed, state, stopping_strings, is_chat=False):
    """Replace the model: return an iterator of the growing reply text, or None to use the model.

    question is the whole prompt; original_question the user's own words.
    """
    if not params["echo"]:
        return None

    def replies():
        words = original_question.split()
        for n in range(1, len(words) + 1):
            yield " ".join(words[:n])

    return replies()


def output_modifier(string, state, is_chat=False):
    """Change the finished reply as shown; the history keeps the model's own text for the next prompt."""
    return string + params["reply_suffix"]


def reply_footer(stats, state):
    """Parlour hook: a line shown under the finished reply (stats: tokens, seconds, first_token_seconds, ...)."""
    return params["footer"].format(**stats) if params["footer"] else ""
