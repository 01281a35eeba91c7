"""Which components show an event's progress: as few as the user needs, because each costs the page.

Gradio's page keeps a loading status for every component that any event run on it so far has shown
progress on (an event's outputs, unless `show_progress_on` names others), and rewrites all of them on
every status message of every event: each rewrite looks its component up by walking the whole layout
tree. With Parlour's ~470 components and the ~100 outputs of the page-load events (52 of them one quiet
refresh), that walk was the browser's top cost while a reply streamed (bench/browser_profile.py: the
tree search and the Svelte getters it calls, 1.5 s of self time in one 200-token reply, on a main thread
busy the whole time) and about two seconds of CPU while the page opened. So, once the layout is built:

  - events that show no progress (`show_progress="hidden"`) and timers show it only on a Chatbot among
    their outputs: the chat's pending and generating states are what a user watches (and what the
    browser tests wait on); everything else they touch is refreshed quietly;
  - every other event keeps Gradio's progress on its outputs. For the page-load events that is more
    than a spinner: Gradio keeps a pending event's interactive outputs disabled, so a click on New or
    an imported card cannot race the page's opening (a late page-load answer would undo it).

An event that names `show_progress_on` itself is left as it is."""

from __future__ import annotations

import gradio as gr

QUIET_TRIGGERS = frozenset({"tick"})


def narrow(blocks: gr.Blocks) -> int:
    """Narrow the progress targets of the events in `blocks` (see the module's docstring); returns how
    many events were narrowed."""
    narrowed = 0
    for fn in blocks.fns.values():
        if fn.show_progress_on is not None:
            continue
        quiet = fn.show_progress == "hidden" or any(event in QUIET_TRIGGERS for _block, event in fn.targets)
        if quiet:
            fn.show_progress_on = [block for block in fn.outputs if isinstance(block, gr.Chatbot)]
            narrowed += 1
    return narrowed
