"""Long chats: what the prompt cache saves on a next turn, and what a request joining a running batch costs.

    .venv/bin/python bench/long_chat.py [--model-dir PATH] [--history 1500] [--tokens 64] [--rounds 5]

Against real server processes, through /v1/chat/completions (streaming, greedy, EOS banned), with a
~26M-parameter Llama of 4,096 positions built here in seconds (untrained: the timings matter, not the
text) or the model in --model-dir.

1. Turns. A chat of about --history tokens the server has never seen is sent (the first time), then
   its next turn (the history, that reply and a new message), a regenerate of that turn, a branch (the
   history with another last message) and, after another chat in between, the first chat again (a
   switch back). Time to first token of each ÷ the first time's; median and range over --rounds chats.
   The same with the prompt cache off (prompt_cache_mib 0, loaded through /v1/internal/model/load).
2. Joins. Four users, each with a chat of about --history tokens, start --stagger seconds apart and
   stream --tokens tokens each: per user the time to first token, the median gap between chunks and
   the longest gap while a later user joined; aggregate tok/s. Cold (chats never seen) and warm (their
   next turns), with the default --batch-size 4 and with --batch-size 1.
Not run by CI: figures depend on the machine; the table goes in the README.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_model, get, post, spread, start_server, stop, stream_times

WORDS = ("the river stone light garden window quiet morning letter station harbour evening paper market "
         "winter voice summer bridge forest music table story hill road lamp field cloud city school "
         "friend dinner journey question answer number colour moment picture island").split()


def history(seed: int, tokens: int, count) -> list[dict[str, str]]:
    """A chat of user/assistant turns of about `tokens` tokens (as `count` measures messages), ending with
    a user message."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": f"You are assistant number {seed}."}]
    while True:
        role = "user" if messages[-1]["role"] != "user" else "assistant"
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
                     for _ in range(rng.randint(2, 5))]
        messages.append({"role": role, "content": " ".join(sentences)})
        if role == "user" and count(messages) >= tokens:
            return messages


def next_turn(chat: list[dict[str, str]], reply: str = "Yes.") -> list[dict[str, str]]:
    return chat + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Tell me more."}]


def ttft(url: str, messages: list[dict[str, str]], tokens: int) -> tuple[float, str, list[float]]:
    """(seconds to the first text, the reply, chunk arrival times) of one streamed chat reply."""
    start, times, text = stream_times(url + "/v1/chat/completions",
                                      {"messages": messages, "max_tokens": tokens, "temperature": 0,
                                       "ban_eos_token": True})
    return times[0] - start, text, [start, *times]


def turns(url: str, seeds: list[int], size: int, tokens: int, count) -> dict[str, list[float]]:
    """Each turn's time to first token ÷ the first time's, per chat."""
    ratios: dict[str, list[float]] = {"first (s)": [], "next turn": [], "regenerate": [], "branch": [],
                                      "switch back": []}
    for seed in seeds:
        chat = history(seed, size, count)
        first, reply, _ = ttft(url, chat, tokens)
        following = next_turn(chat, reply)
        ratios["first (s)"].append(first)
        ratios["next turn"].append(ttft(url, following, tokens)[0] / first)
        ratios["regenerate"].append(ttft(url, following, tokens)[0] / first)
        ratios["branch"].append(ttft(url, chat[:-1] + [{"role": "user", "content": "Something else."}], tokens)[0]
                                / first)
        ttft(url, history(seed + 10_000, size, count), tokens)  # another chat in between
        ratios["switch back"].append(ttft(url, following, tokens)[0] / first)
    return ratios


def joins(url: str, chats: list[list[dict[str, str]]], tokens: int, stagger: float) -> dict[str, object]:
    """Users start `stagger` s apart; each one's TTFT, median chunk gap, longest gap during a later join."""
    results: list[tuple[float, str, list[float]] | None] = [None] * len(chats)
    begin = time.perf_counter()

    def user(i: int) -> None:
        time.sleep(max(0.0, begin + i * stagger - time.perf_counter()))
        results[i] = ttft(url, chats[i], tokens)

    with concurrent.futures.ThreadPoolExecutor(len(chats)) as pool:
        list(pool.map(user, range(len(chats))))
    end = max(r[2][-1] for r in results)
    starts = [r[2][0] for r in results]
    users = []
    for i, (first, _, times) in enumerate(results):
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        # gaps that span another user's start (until that user's first token): what a join costs the others
        joined = [b - a for a, b in zip(times[1:], times[2:])
                  if any(a <= s + results[j][0] and b >= s for j, s in enumerate(starts) if j != i)]
        users.append((first, statistics.median(gaps) if gaps else 0.0, max(joined, default=0.0)))
    return {"users": users, "tok/s": len(chats) * tokens / (end - begin)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a model folder (default: the ~26M Llama, built in ~/.cache/parlour/bench-models)")
    parser.add_argument("--history", type=int, default=1500, help="tokens in each chat's history")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=5, help="chats measured in part 1")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds between users' starts in part 2")
    args = parser.parse_args()
    model = args.model_dir or bench_model("long")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    count = lambda messages: len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    seeds = list(range(1, args.rounds + 1))
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(model.parent, model.name, Path(tmp) / "batched")
        try:
            ttft(url, history(0, 200, count), 8)  # warm-up
            on = turns(url, seeds, args.history, args.tokens, count)
            cache = get(url + "/v1/internal/model/info")["info"]["prompt_cache"]
            chats = [history(100 + i, args.history, count) for i in range(4)]
            cold = joins(url, chats, args.tokens, args.stagger)
            warm = joins(url, [next_turn(c) for c in chats], args.tokens, args.stagger)
            post(url + "/v1/internal/model/load", {"model_name": model.name, "args": {"prompt_cache_mib": 0}})
            ttft(url, history(0, 200, count), 8)
            off = turns(url, [s + 1000 for s in seeds], args.history, args.tokens, count)
        finally:
            stop(proc)
        proc, url = start_server(model.parent, model.name, Path(tmp) / "serial", "--batch-size", "1")
        try:
            ttft(url, history(0, 200, count), 8)
            chats = [history(200 + i, args.history, count) for i in range(4)]
            serial_cold = joins(url, chats, args.tokens, args.stagger)
            serial_warm = joins(url, [next_turn(c) for c in chats], args.tokens, args.stagger)
        finally:
            stop(proc)

    for name in on:
        if name == "first (s)":
            rows.append(("first time a chat is seen, time to first token (s)", spread(on[name]), spread(off[name])))
        else:
            rows.append((f"{name}: time to first token ÷ first time", spread(on[name], "{:.3f}"),
                         spread(off[name], "{:.3f}") + (" (target <= 0.10; llama.cpp 0.03)" if name == "next turn" else "")))
    print(f"\nParlour long-chat bench: {model.name}, chats of ~{args.history} tokens, replies of {args.tokens} "
          f"tokens, greedy; median (range) of {args.rounds} chats\n")
    print("| turn | prompt cache on | prompt cache off |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nprompt cache after part 1: {cache['bytes'] / 2**20:.0f} MiB kept, {cache['reused_tokens']} tokens reused "
          f"in {cache['hits']} of {cache['lookups']} lookups\n")
    print(f"4 users, {args.stagger:g} s apart, {args.tokens} tokens each: time to first token / median gap / longest "
          "gap while another joined (s)\n")
    print("| server | chats | user 1 | user 2 | user 3 | user 4 | aggregate tok/s |\n|---|---|---|---|---|---|---|")
    for label, table in (("--batch-size 4", cold), ("--batch-size 4", warm), ("--batch-size 1", serial_cold),
                         ("--batch-size 1", serial_warm)):
        kind = "cold" if table in (cold, serial_cold) else "next turn"
        cells = [f"{a:.2f} / {b * 1000:.0f} ms / {c:.2f}" for a, b, c in table["users"]]
        print(f"| {label} | {kind} | " + " | ".join(cells) + f" | {table['tok/s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
