"""Which components an event shows its progress on (modules/ui/progress.py): the page rewrites the loading
status of each of them on every status message of every event, so the quiet events name as few as possible."""

import gradio as gr

from modules.ui import progress


def config_of(blocks: gr.Blocks) -> dict[str, list | None]:
    """api name -> the progress targets the page gets (None: all of the event's outputs)."""
    return {dep["api_name"]: dep["show_progress_on"] for dep in blocks.get_config_file()["dependencies"]}


def test_quiet_events_show_progress_only_on_the_chat_and_user_events_keep_theirs():
    with gr.Blocks() as blocks:
        chat = gr.Chatbot()
        text, status, other = gr.Textbox(), gr.Markdown(), gr.Markdown()
        button = gr.Button()
        timer = gr.Timer(1.0)
        button.click(lambda: None, None, [chat, text, status], show_progress="hidden", api_name="send")
        button.click(lambda: None, None, [status, other], show_progress="hidden", api_name="refresh")
        button.click(lambda: None, None, [status, other], api_name="save")
        button.click(lambda: None, None, [chat, status], show_progress="hidden", show_progress_on=status,
                     api_name="chosen")
        timer.tick(lambda: None, None, [status, other], api_name="poll")
        blocks.load(lambda: None, None, [chat, text, status], api_name="opening")

    assert progress.narrow(blocks) == 3
    targets = config_of(blocks)
    assert targets["send"] == [chat._id]  # the chat's pending/generating state stays
    assert targets["refresh"] == []  # nothing: not even Gradio's default of all outputs
    assert targets["poll"] == []  # a timer is quiet whatever its show_progress
    assert targets["save"] is None  # a user's own action: progress on its outputs, as Gradio does
    assert targets["opening"] is None  # the page load keeps its outputs disabled until it has answered
    assert targets["chosen"] == [status._id]  # named by its event: left alone
