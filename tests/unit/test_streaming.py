"""Stop strings, incremental decoding at UTF-8 boundaries, the fair queue and throttling."""

import threading

import pytest

from modules.generation import FairQueue, QueueFull, StopStringFilter, Update, _Cancelled, throttle
from modules.loaders.base import IncrementalDecoder


def feed_all(stops, pieces):
    f = StopStringFilter(stops)
    shown = [f.feed(p) for p in pieces]
    return shown, f.flush(), f.stopped


def test_stop_string_split_across_pieces_is_held_back_then_cut():
    shown, tail, stopped = feed_all(["\nUser:"], ["Hello", "\nUs", "er:", " more"])
    assert shown == ["Hello", "", "", ""]
    assert stopped and tail == ""


def test_partial_match_that_is_not_a_stop_is_released():
    shown, tail, stopped = feed_all(["</s>"], ["a <", "/b> c", "<"])
    assert "".join(shown) + tail == "a </b> c<"
    assert shown[0] == "a "  # '<' held back while it could start '</s>'
    assert not stopped


def test_stop_inside_one_piece_and_earliest_wins():
    shown, _, stopped = feed_all(["END", "STOP"], ["one STOP two END"])
    assert shown == ["one "] and stopped


class ByteTokenizer:
    """Token i is the single byte i: multi-byte characters span several tokens."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_a_character():
    text = "héllo → 世界 🎉!"
    ids = list(text.encode("utf-8"))
    decoder = IncrementalDecoder(ByteTokenizer().decode)
    pieces = [decoder.add([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_queue_is_first_come_first_served_and_bounded():
    queue = FairQueue(max_waiting=2)
    cancel = threading.Event()
    list(queue.acquire(cancel))  # the first request runs at once
    order = []

    def waiter(tag):
        positions = list(queue.acquire(threading.Event()))
        order.append((tag, positions[0]))
        queue.release()

    first = threading.Thread(target=waiter, args=("a",))
    first.start()
    while queue.waiting() < 1:
        pass
    second = threading.Thread(target=waiter, args=("b",))
    second.start()
    while queue.waiting() < 2:
        pass
    with pytest.raises(QueueFull):
        list(queue.acquire(threading.Event()))
    queue.release()
    first.join(5)
    second.join(5)
    assert order == [("a", 1), ("b", 2)]


def test_cancel_while_waiting_leaves_the_queue():
    queue = FairQueue(max_waiting=4)
    list(queue.acquire(threading.Event()))
    cancel = threading.Event()
    waiting = queue.acquire(cancel)
    assert next(waiting) == 1
    cancel.set()
    with pytest.raises(_Cancelled):
        next(waiting)
    assert queue.waiting() == 0


def test_throttle_keeps_first_and_last_and_drops_in_between():
    updates = [Update(text="a" * i, tokens=i) for i in range(1, 200)] + [Update(text="end", finish_reason="stop")]
    out = list(throttle(iter(updates), fps=20))
    assert out[0].text == "a" and out[-1].finish_reason == "stop"
    assert len(out) < 20


def test_stop_filter_passes_text_without_stop_characters_at_once_and_still_catches_stops():
    from modules.generation import StopStringFilter

    stops = StopStringFilter(["\nUser:", "<|im_end|>"])
    assert stops.feed("Hello there") == "Hello there"  # no '\n' or '<' in it: nothing held
    assert stops.feed(" friend\nUs") == " friend"  # a possible start of "\nUser:" is held
    assert stops.feed("ually") == "\nUsually"
    assert stops.feed(" ok <|im_") == " ok "
    assert stops.feed("end|> more") == "" and stops.stopped


def test_update_copy_is_a_separate_update_with_the_changes():
    from modules.generation import Update

    update = Update(text="ab", delta="b", tokens=2)
    copy = update.copy(delta="xb")
    assert isinstance(copy, Update) and copy == Update(text="ab", delta="xb", tokens=2)
    update.text += "c"
    assert copy.text == "ab"


def test_throttle_slows_down_for_a_reader_that_takes_long_over_each_update():
    """A reader spending 100 ms on each update gets one every 400 ms at most (a 25% share), not 20 a second."""
    now = [0.0]
    updates = [Update(text="a" * i, tokens=i) for i in range(1, 101)]

    def produced():
        for update in updates:
            now[0] += 0.01  # the model: a token every 10 ms
            yield update

    shown = []
    for update in throttle(produced(), fps=20, clock=lambda: now[0]):
        shown.append((now[0], update.tokens))
        now[0] += 0.1  # the reader's work on it
    gaps = [b[0] - a[0] for a, b in zip(shown[1:], shown[2:])]
    assert shown[0][1] == 1 and shown[-1][1] == 100  # first text at once, the last always
    assert gaps and min(gaps[:-1], default=0.4) >= 0.4 - 1e-9


def test_throttle_never_waits_longer_than_its_slowest_pace():
    now = [0.0]

    def produced():
        for i in range(1, 60):
            now[0] += 0.05
            yield Update(text="a" * i, tokens=i)

    shown = []
    for update in throttle(produced(), fps=20, clock=lambda: now[0]):
        shown.append(now[0])
        now[0] += 1.0  # a reader taking 1 s per update: uncapped, the pace would be one update per 4 s
    assert len(shown) == 59  # capped at 0.5 s: every update (each 1.05 s after the last) is passed on
