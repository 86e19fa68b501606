"""The Trace type: validation, counts, co-activation and selection against brute force."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from placement.errors import CapabilityError, TraceFormatError
from placement.routing_traces import Trace


def _tokens(T: int = 50, L: int = 3, k: int = 2, E: int = 6, seed: int = 0,
            **kw: Any) -> Trace:
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, E, size=(T, L, k))
    return Trace(num_experts=E, topk_ids=ids, **kw)


IDS = np.zeros((4, 2, 2), dtype=np.int64)

BROKEN: list[tuple[dict[str, Any], str]] = [
    (dict(num_experts=4), "exactly one of topk_ids"),
    (dict(num_experts=4, topk_ids=IDS, counts=np.ones((2, 4))), "exactly one of topk_ids"),
    (dict(num_experts=0, topk_ids=IDS), "num_experts >= 1"),
    (dict(num_experts="many", topk_ids=IDS), "num_experts to be an integer"),
    (dict(num_experts=4, topk_ids=IDS.astype(float)), "topk_ids to be an integer array"),
    (dict(num_experts=4, topk_ids=IDS.astype(bool)), "topk_ids to be an integer array"),
    (dict(num_experts=4, topk_ids=IDS[:, :, 0]), "topk_ids with 3 dimension"),
    (dict(num_experts=4, topk_ids=np.zeros((4, 0, 2), int)), "L, k >= 1"),
    (dict(num_experts=4, topk_ids=IDS + 4), "found 4"),
    (dict(num_experts=4, topk_ids=IDS - 2), "found -2"),
    (dict(num_experts=4, topk_ids=IDS, top_k=3), "top_k=3 disagrees"),
    (dict(num_experts=4, topk_ids=IDS, source_rank=np.zeros(3, int)), "source_rank of length 4"),
    (dict(num_experts=4, topk_ids=IDS, source_rank=-np.ones(4, int)), "source_rank >= 0"),
    (dict(num_experts=4, topk_ids=IDS, window=np.zeros(5, int)), "window of length 4"),
    (dict(num_experts=4, topk_ids=IDS, topk_weights=IDS), "topk_weights to be floats"),
    (dict(num_experts=4, topk_ids=IDS, topk_weights=np.ones((4, 2, 3))), "topk_weights of shape"),
    (dict(num_experts=4, topk_ids=IDS, topk_weights=np.full((4, 2, 2), np.nan)), "NaN"),
    (dict(num_experts=4, counts=np.ones((2, 4), bool)), "counts to be numbers"),
    (dict(num_experts=4, counts=np.ones((1, 1, 1, 2, 4))), "counts [L, E], [W, L, E]"),
    (dict(num_experts=4, counts=np.ones((2, 5))), "last axis to be num_experts=4"),
    (dict(num_experts=4, counts=np.ones((0, 2, 4))), "counts is empty"),
    (dict(num_experts=4, counts=np.full((2, 4), np.nan)), "NaN or infinite"),
    (dict(num_experts=4, counts=-np.ones((2, 4))), "negative"),
    (dict(num_experts=4, counts=np.ones((2, 4)), top_k=0), "top_k >= 1"),
    (dict(num_experts=4, counts=np.ones((2, 4)), window=np.zeros(2, int)), "token-level traces"),
    (dict(num_experts=4, topk_ids=IDS, layer_ids=[0]), "Expected 2 layer_ids"),
    (dict(num_experts=4, topk_ids=IDS, layer_ids=[-1, 0]), "layer_ids >= 0"),
    (dict(num_experts=4, topk_ids=IDS, layer_ids=[3, 3]), "repeated"),
    (dict(num_experts=4, topk_ids=IDS, layer_ids=[3, 4], num_hidden_layers=4),
     "num_hidden_layers=4"),
    (dict(num_experts=4, topk_ids=IDS, window=np.array([0, 0, 1, 1]), window_names=["a"]),
     "Expected 2 window_names"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_constructor_inputs(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TraceFormatError) as err:
        Trace(**kwargs)
    assert fragment in str(err.value)


def test_window_rank_counts_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    T, L, k, E = 120, 3, 4, 7
    ids = rng.integers(-1, E, size=(T, L, k))
    window = rng.choice([10, 20, 35], size=T)
    rank = rng.integers(0, 5, size=T)
    t = Trace(num_experts=E, topk_ids=ids, window=window, source_rank=rank)
    expected = np.zeros((3, 5, L, E))
    w_index = {10: 0, 20: 1, 35: 2}
    for i in range(T):
        for layer in range(L):
            for e in ids[i, layer]:
                if e >= 0:
                    expected[w_index[window[i]], rank[i], layer, e] += 1
    np.testing.assert_array_equal(t.window_rank_counts(), expected)
    np.testing.assert_array_equal(t.window_counts(), expected.sum(axis=1))
    np.testing.assert_array_equal(t.rank_counts(), expected.sum(axis=0))
    np.testing.assert_array_equal(t.counts(), expected.sum(axis=(0, 1)))
    # vs numpy bincount per layer
    for layer in range(L):
        x = ids[:, layer].reshape(-1)
        np.testing.assert_array_equal(t.counts()[layer], np.bincount(x[x >= 0], minlength=E))
    assert t.num_windows == 3
    assert t.window_names == ("10", "20", "35")
    assert t.num_source_ranks == 5
    assert t.num_assignments == np.count_nonzero(ids >= 0)


def test_coactivation_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    T, E = 80, 6
    ids = rng.integers(-1, E, size=(T, 2, 3))
    ids[0, 0] = [2, 2, 5]  # a repeated id counts once
    t = Trace(num_experts=E, topk_ids=ids)
    for layer in range(2):
        expected = np.zeros((E, E))
        for row in ids[:, layer]:
            s = {int(e) for e in row if e >= 0}
            for i in s:
                for j in s:
                    expected[i, j] += 1
        np.testing.assert_array_equal(t.coactivation(layer), expected)
    with pytest.raises(IndexError):
        t.coactivation(2)


def test_counts_trace_shapes_and_capabilities() -> None:
    c = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    t = Trace(num_experts=5, counts=c, layer_ids=[3, 4, 5, 6], num_hidden_layers=8, top_k=2)
    assert t.kind == "counts" and not t.is_token_level
    assert (t.num_windows, t.num_source_ranks, t.num_layers, t.top_k) == (2, 3, 4, 2)
    assert t.dense_layer_ids == (0, 1, 2, 7)
    np.testing.assert_array_equal(t.window_counts(), c.sum(axis=1))
    np.testing.assert_array_equal(t.counts(), c.sum(axis=(0, 1)))
    with pytest.raises(CapabilityError):
        t.coactivation(0)
    with pytest.raises(CapabilityError):
        _ = t.topk_ids
    no_rank = Trace(num_experts=5, counts=c.sum(axis=1))
    assert no_rank.num_source_ranks is None
    with pytest.raises(CapabilityError):
        no_rank.rank_counts()


def test_arrays_are_read_only() -> None:
    t = _tokens(source_rank=np.zeros(50, int))
    with pytest.raises(ValueError):
        t.topk_ids[0, 0, 0] = 1
    assert t.source_rank is not None
    with pytest.raises(ValueError):
        t.source_rank[0] = 1


def test_select_windows_tokens_and_counts() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 4, size=(30, 2, 1))
    window = np.repeat([0, 1, 2], 10)
    t = Trace(num_experts=4, topk_ids=ids, window=window, window_names=["a", "b", "c"])
    sub = t.select_windows([2, 0])
    assert sub.num_tokens == 20
    assert sub.window_names == ("a", "c")  # token traces keep window order
    np.testing.assert_array_equal(sub.counts(), t.window_counts()[[0, 2]].sum(axis=0))
    c = Trace(num_experts=4, counts=t.window_counts(), window_names=["a", "b", "c"])
    csub = c.select_windows([2, 0])
    assert csub.window_names == ("c", "a")
    np.testing.assert_array_equal(csub.window_counts(), t.window_counts()[[2, 0]])
    with pytest.raises(IndexError):
        t.select_windows([3])


def test_select_layers_keeps_ids_and_metadata() -> None:
    t = _tokens(L=4, layer_ids=[1, 2, 3, 4], num_hidden_layers=5, model="m")
    sub = t.select_layers([3, 1])
    np.testing.assert_array_equal(sub.layer_ids, [4, 2])
    np.testing.assert_array_equal(sub.topk_ids, t.topk_ids[:, [3, 1]])
    assert (sub.model, sub.num_hidden_layers) == ("m", 5)
    assert sub.dense_layer_ids == (0, 1, 3)


def test_iter_token_chunks_cover_all_tokens() -> None:
    t = _tokens(T=23, source_rank=np.arange(23) % 4)
    chunks = list(t.iter_token_chunks(10))
    assert [c[0].shape[0] for c in chunks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), t.topk_ids)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), t.source_rank)
