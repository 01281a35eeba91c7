"""The Chat tab's page-load event against a click on New, through Gradio's own event processing (the
built page, one page's session state, two events at once).

On a busy machine the page-load event (the newest chat) can still be running when the user's click on
New has been answered; its late answer must not take the new chat away. Here the load is held inside
its reading of the chat list until New's event has finished, so that order is certain on any machine.
"""

from __future__ import annotations

import asyncio
import threading

from gradio.state_holder import SessionState

from modules import ui


def _event(config: dict, api_name: str) -> tuple[int, list[int]]:
    dep = next(d for d in config["dependencies"] if d["api_name"] == api_name)
    return dep["id"], dep["inputs"]


def _values(config: dict, ids: list[int]) -> list:
    """What the page would send for `ids` as it first opens (each component's own value)."""
    by_id = {c["id"]: c for c in config["components"]}
    return [by_id[i]["props"].get("value") for i in ids]


def _session(blocks, state: SessionState) -> dict:
    return next(state[b._id] for b in blocks.blocks.values() if b.stateful and isinstance(state[b._id], dict)
                and "chat_id" in state[b._id])


def test_a_late_page_load_leaves_the_chat_new_opened(make_app):
    app = make_app()
    blocks = ui.build(app)
    config = blocks.get_config_file()
    load_id, load_inputs = _event(config, "on_load")
    character = _values(config, load_inputs)[0]  # the page's character, whose newest chat the load opens
    old = app.store.create_chat("local", title="yesterday", character=character)
    app.store.add_message("local", old, "user", "what we said yesterday")
    new_id, new_inputs = _event(config, "chat_new")
    state = SessionState(blocks)

    reading, go_on = threading.Event(), threading.Event()
    newest = app.chats.newest

    def held_newest(user: str, character: str):
        reading.set()
        assert go_on.wait(60), "the test never let the page load go on"
        return newest(user, character)

    app.chats.newest = held_newest

    async def both() -> dict:
        load = asyncio.create_task(blocks.process_api(load_id, _values(config, load_inputs), state=state))
        assert await asyncio.to_thread(reading.wait, 60)
        await blocks.process_api(new_id, _values(config, new_inputs), state=state)
        go_on.set()
        return await load

    loaded = asyncio.run(both())
    sess = _session(blocks, state)
    assert sess["chat_id"] != old  # the new chat is still the one on the page ...
    assert "what we said yesterday" not in str(loaded["data"])  # ... and the old one was never drawn
    assert sess["page"].chosen  # marked by New, on the object both events were handed

    # a page whose load runs alone still opens on the newest chat
    app.chats.newest = newest
    alone = SessionState(blocks)
    opened = asyncio.run(blocks.process_api(load_id, _values(config, load_inputs), state=alone))
    assert _session(blocks, alone)["chat_id"] == old
    assert "what we said yesterday" in str(opened["data"])


def test_every_event_that_writes_a_character_list_waits_its_turn(make_app):
    """Gradio shows an empty box for a Dropdown given choices without its current value: an answer with
    the list as it was before a card import, arriving after the import's own answer, would blank the
    imported character (a CI run saw it: the page-load's list came last). So every event that writes
    either list of characters runs in one concurrency group of one, in the order the page asked."""
    blocks = ui.build(app := make_app())
    del app
    lists = {b._id for b in blocks.blocks.values() if getattr(b, "elem_id", None) in ("character", "char-pick")}
    assert len(lists) == 2
    writers = [f for f in blocks.fns.values() if lists & {o._id for o in f.outputs}]
    assert len(writers) >= 8  # page load, card import (3), refresh, save, duplicate, delete, ...
    loose = [(f.name, f.concurrency_id, f.concurrency_limit) for f in writers
             if (f.concurrency_id, f.concurrency_limit) != ("character-lists", 1)]
    assert not loose
