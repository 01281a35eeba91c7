"""The prompt cache's radix tree (modules/prefix_cache.py) on stand-in tensors: longest match, shared
beginnings stored once, scopes apart, least recently used runs evicted first."""

from __future__ import annotations

import torch

from modules.prefix_cache import PrefixCache

LAYERS = 2


def kv_of(ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stand-in keys/values: each token's entry is its id (so a slice shows which tokens it holds)."""
    column = torch.tensor(ids, dtype=torch.float32)[None, None, :, None]  # [1, heads=1, tokens, dim=1]
    return [(column + layer, -column - layer) for layer in range(LAYERS)]


def tokens_in(kv) -> list[int]:
    return [int(x) for x in kv[0][0][0, 0, :, 0]]


def test_the_longest_kept_beginning_is_found_short_of_the_last_token():
    cache = PrefixCache(10**6)
    cache.store("u", [1, 2, 3, 4, 5], kv_of([1, 2, 3, 4, 5]))
    found = cache.match("u", [1, 2, 3, 9, 9])
    assert found.length == 3 and tokens_in(found.kv) == [1, 2, 3]
    assert [float(x) for x in found.kv[1][1][0, 0, :, 0]] == [-2.0, -3.0, -4.0]  # each layer's own values
    # the whole sequence again (a regenerate): all but the last token, which the model must read
    assert cache.match("u", [1, 2, 3, 4, 5]).length == 4
    assert cache.match("u", [1, 2, 3, 4, 5, 6, 7]).length == 5
    assert cache.match("u", [7, 1, 2]).length == 0 and cache.match("u", [7, 1, 2]).kv is None


def test_branches_share_their_beginning_and_each_is_found_whole():
    cache = PrefixCache(10**6)
    cache.store("u", [1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    one = cache.nbytes
    cache.store("u", [1, 2, 3, 7, 8], kv_of([1, 2, 3, 7, 8]))  # a branch from token 3
    assert cache.nbytes == one + 2 * one // 4  # only the two new tokens were added
    assert cache.sequences("u") == 2
    for ids in ([1, 2, 3, 4, 0], [1, 2, 3, 7, 8, 0]):
        found = cache.match("u", ids)
        assert found.length == len(ids) - 1 and tokens_in(found.kv) == ids[:-1]
    cache.store("u", [1, 2, 3, 4], kv_of([1, 2, 3, 4]))  # kept already: nothing new
    assert cache.nbytes == one + 2 * one // 4


def test_stored_runs_are_copies_and_matches_never_change_them():
    cache = PrefixCache(10**6)
    kv = kv_of([1, 2, 3])
    cache.store("u", [1, 2, 3], kv)
    kv[0][0].fill_(0)  # the caller's tensors may change or go: the tree has its own
    found = cache.match("u", [1, 2, 3, 4])
    assert tokens_in(found.kv) == [1, 2, 3]


def test_scopes_do_not_see_each_other():
    cache = PrefixCache(10**6)
    cache.store("alice", [1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    assert cache.match("bob", [1, 2, 3, 4]).length == 0
    assert cache.match("alice", [1, 2, 3, 4]).length == 3


def test_the_budget_evicts_the_least_recently_used_first():
    per_token = sum(k.numel() * 4 + v.numel() * 4 for k, v in kv_of([0]))
    cache = PrefixCache(per_token * 10)
    cache.store("u", [1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    cache.store("v", [5, 6, 7, 8], kv_of([5, 6, 7, 8]))
    assert cache.match("u", [1, 2, 3, 4, 0]).length == 4  # u is now the more recently used
    cache.store("u", [9, 9, 9, 9], kv_of([9, 9, 9, 9]))  # 12 tokens > 10: the oldest (v) goes
    assert cache.nbytes <= cache.budget_bytes
    assert cache.match("v", [5, 6, 7, 8, 0]).length == 0
    assert cache.match("u", [1, 2, 3, 4, 0]).length == 4 and cache.match("u", [9, 9, 9, 9, 0]).length == 4
    assert cache.stats()["evicted_tokens"] == 4


def test_a_sequence_longer_than_the_budget_is_not_kept_and_off_means_off():
    per_token = sum(k.numel() * 4 + v.numel() * 4 for k, v in kv_of([0]))
    small = PrefixCache(per_token * 3)
    small.store("u", [1, 2, 3, 4], kv_of([1, 2, 3, 4]))
    assert small.nbytes == 0 and small.match("u", [1, 2, 3, 4, 5]).length == 0
    off = PrefixCache(0)
    off.store("u", [1, 2], kv_of([1, 2]))
    assert off.match("u", [1, 2, 3]).length == 0


def test_clear_forgets_everything():
    cache = PrefixCache(10**6)
    cache.store("u", [1, 2, 3], kv_of([1, 2, 3]))
    cache.clear()
    assert cache.nbytes == 0 and cache.match("u", [1, 2, 3, 4]).length == 0
