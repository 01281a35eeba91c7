"""Key/value caches of token sequences the model has read, so a request that starts the same way
reads only what is new.

A chat's next turn starts with the whole previous turn (prompt and reply); a regenerate or a continue
repeats the prompt; a branch from an earlier message repeats the chat up to there; API clients send
the same system prompt every time. The model's keys and values for those shared tokens are the same
every time (they depend only on the tokens before them), so they are kept here and handed to the next
request, which then runs the model over the rest only.

The store is a radix tree of token runs, as SGLang's RadixAttention keeps it: each node holds a run of
tokens and the model's keys/values for exactly that run (one (keys, values) pair per layer, shape
[1, heads, run, head_dim]); a path from the root spells a sequence that was read. Sequences that share
a beginning share its nodes, so regenerations, branches and the chats a user switches between are
kept side by side, and the memory of a shared beginning is paid once. (llama.cpp's server keeps one
sequence per slot, so switching chats and coming back reads the first one again.)

Memory is bounded by `budget_bytes`: after each store, the least recently used leaves go first (a
node's beginning stays while a longer sequence through it is in use).

Who may share: every `scope` (one per user, see `GenerationRequest.cache_scope`) has its own tree.
No text or tensor from the cache ever reaches a client (a reply is the same with or without it), but
the *time* to the first token does: a hit answers sooner. With one shared tree, a user could time
guesses of what another user's prompts begin with (the timing attack measured on shared prompt caches
of hosted APIs). Partitioning costs only the reuse of prompts two users happen to share, which is
rare except for a system prompt; so users are kept apart.

Tensors in the tree are never changed in place: `match` hands out views and concatenations, and the
Transformers cache layers that receive them (`DynamicLayer`) grow by concatenation, making new
tensors. Stored runs are copies (`clone`), so a stored sequence does not keep a whole batch's cache
alive. A cache belongs to one model: whoever changes the weights (another model, a LoRA adapter)
makes a new `PrefixCache`.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) per layer, [batch, heads, tokens, head_dim]


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]
    kv: KV
    parent: "_Node | None"
    children: dict[int, "_Node"] = field(default_factory=dict)
    used: int = 0  # tick of the last match or store through this node
    nbytes: int = 0


def _kv_bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def _common(run: tuple[int, ...], ids: Sequence[int], start: int, stop: int) -> int:
    """How many of `run` equal ids[start:stop] from its beginning."""
    n = min(len(run), stop - start)
    if tuple(ids[start:start + n]) == run[:n]:
        return n
    i = 0
    while run[i] == ids[start + i]:
        i += 1
    return i


def _slice(kv: KV, start: int, stop: int | None = None) -> KV:
    return [(k[..., start:stop, :], v[..., start:stop, :]) for k, v in kv]


@dataclass
class Prefix:
    """What `match` found: the first `length` tokens' keys/values (None when nothing matched)."""

    length: int
    kv: KV | None


class PrefixCache:
    """Keys/values of recently read token sequences, per scope, within a memory budget (LRU)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._roots: dict[str, _Node] = {}
        self._lock = threading.Lock()
        self._tick = itertools.count(1)
        self.nbytes = 0
        # counters the tests, the bench and /v1/internal/model/info read
        self.lookups = self.hits = self.reused_tokens = self.evicted_tokens = 0

    def match(self, scope: str, ids: Sequence[int]) -> Prefix:
        """The longest beginning of `ids` whose keys/values are kept, short of the last token (the model
        must read at least one token to give the next one's logits)."""
        limit = len(ids) - 1
        with self._lock:
            self.lookups += 1
            node = self._roots.get(scope)
            pos, parts = 0, []
            tick = next(self._tick)
            if node is not None:
                node.used = tick
            while node is not None and pos < limit:
                child = node.children.get(ids[pos])
                if child is None:
                    break
                n = _common(child.tokens, ids, pos, limit)
                parts.append(child.kv if n == len(child.tokens) else _slice(child.kv, 0, n))
                child.used = tick  # every node on the path: a sequence in use keeps its beginning
                pos += n
                node = child if n == len(child.tokens) else None
            if not pos:
                return Prefix(0, None)
            self.hits += 1
            self.reused_tokens += pos
        kv = parts[0] if len(parts) == 1 else [
            (torch.cat([p[i][0] for p in parts], dim=-2), torch.cat([p[i][1] for p in parts], dim=-2))
            for i in range(len(parts[0]))]
        return Prefix(pos, kv)

    def store(self, scope: str, ids: Sequence[int], kv: KV) -> None:
        """Keep the keys/values `kv` of exactly `ids` (batch dimension 1); only runs not kept already are
        copied. Then drop least recently used runs until the budget holds."""
        if not ids or self.budget_bytes <= 0:
            return
        with self._lock:
            tick = next(self._tick)
            node = self._roots.setdefault(scope, _Node((), [], None))
            node.used = tick
            pos = 0
            while pos < len(ids):
                child = node.children.get(ids[pos])
                if child is None:
                    run = _slice(kv, pos)
                    child = _Node(tuple(ids[pos:]), [(k.clone(), v.clone()) for k, v in run], node, used=tick)
                    child.nbytes = _kv_bytes(child.kv)
                    self.nbytes += child.nbytes
                    node.children[ids[pos]] = child
                    break
                n = _common(child.tokens, ids, pos, len(ids))
                if n < len(child.tokens):
                    child = self._split(child, n)
                child.used = tick
                node, pos = child, pos + n
            self._evict()

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut `node` after its first `n` tokens; returns the new upper part (the old node is its child)."""
        head = _Node(node.tokens[:n], [(k.clone(), v.clone()) for k, v in _slice(node.kv, 0, n)], node.parent,
                     used=node.used)
        node.parent.children[node.tokens[0]] = head
        node.tokens = node.tokens[n:]
        node.kv = [(k.clone(), v.clone()) for k, v in _slice(node.kv, n)]
        node.parent = head
        head.children[node.tokens[0]] = node
        old = node.nbytes
        head.nbytes, node.nbytes = _kv_bytes(head.kv), _kv_bytes(node.kv)
        self.nbytes += head.nbytes + node.nbytes - old
        return head

    def _evict(self) -> None:
        while self.nbytes > self.budget_bytes:
            leaves = [n for root in self._roots.values() for n in _walk(root) if not n.children and n.parent]
            if not leaves:
                break
            leaf = min(leaves, key=lambda n: n.used)
            del leaf.parent.children[leaf.tokens[0]]
            self.nbytes -= leaf.nbytes
            self.evicted_tokens += len(leaf.tokens)
        for scope in [s for s, root in self._roots.items() if not root.children]:
            del self._roots[scope]

    def clear(self) -> None:
        with self._lock:
            self._roots.clear()
            self.nbytes = 0

    def sequences(self, scope: str) -> int:
        """How many distinct sequences `scope` has kept (leaves of its tree)."""
        with self._lock:
            root = self._roots.get(scope)
            return sum(1 for n in _walk(root) if not n.children and n.parent) if root else 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self.nbytes, "budget_bytes": self.budget_bytes, "lookups": self.lookups,
                    "hits": self.hits, "reused_tokens": self.reused_tokens, "evicted_tokens": self.evicted_tokens}


def _walk(node: _Node):
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())
