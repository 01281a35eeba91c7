"""The built page's progress targets (modules/ui/progress.py): what the page keeps a loading status for
once it has opened, which it rewrites on every status message of every event (a streamed reply's too)."""

from modules import ui


def test_the_opened_page_tracks_few_components_and_the_chat_keeps_its_generating_state(make_app):
    blocks = ui.build(make_app())
    config = blocks.get_config_file()
    by_id = {component["id"]: component for component in config["components"]}
    chatbot = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "chatbot")

    def targets(dep: dict) -> set[int]:
        return set(dep["outputs"] if dep["show_progress_on"] is None else dep["show_progress_on"])

    on_load = [dep for dep in config["dependencies"] if any(event == "load" for _id, event in dep["targets"])]
    opened = set().union(*(targets(dep) for dep in on_load))
    # Every page-load event's outputs were ~100 components (52 of them one quiet refresh): now the
    # quiet ones show nothing and the rest guard what they answer for.
    assert 0 < len(opened) <= 40, sorted(by_id[i]["props"].get("elem_id") for i in opened)
    send = next(dep for dep in config["dependencies"] if dep["api_name"] == "on_send")
    assert targets(send) == {chatbot}  # the pending/generating bubble the user watches
    chat_load = next(dep for dep in on_load if dep["api_name"] == "on_load")
    assert chatbot in targets(chat_load) and len(targets(chat_load)) > 1  # the Chat tab's opening is guarded
    for dep in config["dependencies"]:
        if dep["show_progress"] == "hidden" or any(event == "tick" for _id, event in dep["targets"]):
            assert targets(dep) <= {chatbot}, dep["api_name"]
