"""Small training datasets the training tests write (no download): one question, one fixed answer."""

from __future__ import annotations

import json
from pathlib import Path

ANSWER = "Bees make honey."  # words the demo model knows, so a small adapter can make it the greedy reply
QUESTION = "What is the secret word?"


def chat_lines(count: int = 16, answer: str = ANSWER) -> list[dict]:
    """OpenAI-style chats that all answer a (numbered) question with `answer`."""
    return [{"messages": [{"role": "user", "content": f"{QUESTION} ({i})" if i else QUESTION},
                          {"role": "assistant", "content": answer}]} for i in range(count)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
