"""The torch replay against a slow, obvious Python reference, on random small cases."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from replay_reference import (
    random_plan,
    random_plan_dispatch,
    random_tokens,
    reference_replay,
)

import placement.validation.token_stream as token_stream
from placement.cluster import Cluster
from placement.errors import InputError
from placement.plan import static_dispatch
from placement.routing_traces.trace import Trace
from placement.validation import ValidationResult, replay

# (name, nodes, gpus per node, slots per GPU, experts, layers, top-k, tokens, pad, ranks)
CASES = [
    ("one-node", 1, 4, 2, 6, 2, 2, 40, 0.0, None),
    ("two-nodes-pad", 2, 2, 3, 9, 3, 3, 60, 0.2, 4),
    ("three-nodes-odd-k", 3, 2, 2, 10, 2, 3, 50, 0.1, None),
    ("four-nodes-ranks-wrap", 4, 1, 3, 8, 2, 4, 45, 0.0, 7),
    ("five-nodes-k5", 5, 2, 1, 9, 2, 5, 30, 0.15, 10),
]


def _a(x: np.ndarray | None) -> np.ndarray:
    assert x is not None
    return x


def _check(res: ValidationResult, ref: dict[str, np.ndarray], exact: bool) -> None:
    close = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9))
    close(res.gpu_loads, ref["loads"])
    assert res.matrix is not None and res.node_sends is not None
    close(res.matrix, ref["matrix"])
    close(res.node_sends, ref["node_sends"])
    close(res.tokens, ref["tokens"])
    close(res.cross_node_sends, ref["sends"])
    close(res.cross_node_copies, ref["copies"])
    close(res.intra_node_copies, ref["intra"])
    tok = ref["tokens"]
    np.testing.assert_allclose(_a(res.cross_node_sends_per_token), ref["sends"] / tok)
    np.testing.assert_allclose(_a(res.cross_node_copies_per_token), ref["copies"] / tok)
    loads = ref["loads"]
    np.testing.assert_allclose(res.imbalance, loads.max(1) / loads.mean(1))


def _src(trace: Trace, G: int) -> np.ndarray:
    T = int(trace.num_tokens or 0)
    if trace.source_rank is None:
        return np.arange(T) % G
    return trace.source_rank.astype(np.int64) % G


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rule", ["static", "plan", "even"])
def test_replay_matches_reference(case: tuple, rule: str) -> None:
    name, nodes, gpn, spg, E, L, k, T, pad, ranks = case
    rng = np.random.default_rng(zlib.crc32(f"{name}:{rule}".encode()))
    c = Cluster(nodes, gpn, spg)
    plan = random_plan(rng, c, E, list(range(L)), colocated=(name == "one-node"))
    plan = random_plan_dispatch(rng, plan)
    trace = random_tokens(rng, T, L, E, k, pad=pad, ranks=ranks)
    res = replay(plan, trace, dispatch=rule, chunk_tokens=7, device="cpu")
    if rule == "static":
        table = static_dispatch(plan.phy2log, c, E)
    elif rule == "plan":
        table = _a(plan.dispatch)
    else:
        table = None
    ref = reference_replay(plan.phy2log, table, trace.topk_ids, _src(trace, c.num_gpus),
                           nodes, gpn, spg)
    _check(res, ref, exact=rule != "even")
    assert res.dispatch == rule
    assert res.num_tokens == T


@pytest.mark.parametrize("rule", ["static", "even"])
def test_chunk_size_does_not_change_the_result(rule: str) -> None:
    rng = np.random.default_rng(3)
    c = Cluster(3, 2, 3)
    plan = random_plan(rng, c, 12, [0, 1, 2])
    trace = random_tokens(rng, 101, 3, 12, 4, pad=0.1)
    results = [replay(plan, trace, dispatch=rule, chunk_tokens=n) for n in (1, 13, 64, 1000)]
    for r in results[1:]:
        for a, b in ((r.gpu_loads, results[0].gpu_loads), (r.matrix, results[0].matrix),
                     (r.node_sends, results[0].node_sends), (r.tokens, results[0].tokens)):
            np.testing.assert_allclose(_a(a), _a(b), rtol=1e-12)


def test_single_replica_plan_all_rules_agree() -> None:
    """With one replica per expert (P == E) dispatch is unique: every rule gives the same."""
    rng = np.random.default_rng(5)
    c = Cluster(2, 3, 2)  # 12 slots
    plan = random_plan(rng, c, 12, [4, 7])
    trace = random_tokens(rng, 80, 2, 12, 3, pad=0.05, layer_ids=[4, 7])
    got = [replay(plan, trace, dispatch=r) for r in ("static", "plan", "even")]
    for r in got[1:]:
        np.testing.assert_allclose(r.gpu_loads, got[0].gpu_loads)
        np.testing.assert_allclose(_a(r.matrix), _a(got[0].matrix))
        np.testing.assert_allclose(_a(r.node_sends), _a(got[0].node_sends), atol=1e-12)


@pytest.mark.parametrize("bins", [0, 1 << 9, 1 << 12])
def test_node_mask_grouping(monkeypatch: pytest.MonkeyPatch, bins: int) -> None:
    """Small pattern tables cut the node mask in several groups; the result does not change."""
    rng = np.random.default_rng(11)
    c = Cluster(7, 2, 2)
    plan = random_plan(rng, c, 20, [0, 1])
    trace = random_tokens(rng, 70, 2, 20, 6, pad=0.1, ranks=14)
    full = replay(plan, trace)
    monkeypatch.setattr(token_stream, "PATTERN_BINS", bins)
    cut = replay(plan, trace)
    np.testing.assert_array_equal(cut.node_sends, full.node_sends)
    np.testing.assert_array_equal(cut.tokens, full.tokens)
    ref = reference_replay(plan.phy2log, static_dispatch(plan.phy2log, c, 20), trace.topk_ids,
                           _src(trace, c.num_gpus), 7, 2, 2)
    np.testing.assert_array_equal(cut.node_sends, ref["node_sends"])


def test_many_nodes_use_wide_masks() -> None:
    """More than 30 nodes: 64-bit node masks."""
    rng = np.random.default_rng(2)
    c = Cluster(40, 1, 2)
    plan = random_plan(rng, c, 64, [0])
    trace = random_tokens(rng, 60, 1, 64, 6, ranks=40)
    res = replay(plan, trace, chunk_tokens=16)
    ref = reference_replay(plan.phy2log, static_dispatch(plan.phy2log, c, 64), trace.topk_ids,
                           _src(trace, 40), 40, 1, 2)
    _check(res, ref, exact=True)


def test_trace_layers_matched_by_id_and_extra_plan_layers_skipped() -> None:
    rng = np.random.default_rng(8)
    c = Cluster(2, 2, 3)
    plan = random_plan(rng, c, 10, [3, 4, 5, 6])
    ids = random_tokens(rng, 30, 2, 10, 2).topk_ids
    trace = Trace(num_experts=10, topk_ids=ids, layer_ids=[6, 4])
    res = replay(plan, trace)
    assert res.layer_ids.tolist() == [6, 4]
    assert res.skipped_layer_ids == (3, 5)
    assert any("replayed the 2 common layer(s)" in m for m in res.messages)
    table = static_dispatch(plan.phy2log[[3, 1]], c, 10)
    ref = reference_replay(plan.phy2log[[3, 1]], table, ids, np.arange(30) % 4, 2, 2, 3)
    _check(res, ref, exact=True)


def test_trace_layer_missing_from_plan_is_an_error() -> None:
    rng = np.random.default_rng(1)
    plan = random_plan(rng, Cluster(1, 2, 3), 6, [3, 4])
    trace = random_tokens(rng, 5, 2, 6, 2, layer_ids=[4, 9])
    with pytest.raises(InputError, match=r"the trace has layer\(s\) 9 that the plan lacks"):
        replay(plan, trace)


def test_expert_count_mismatch_is_an_error() -> None:
    rng = np.random.default_rng(1)
    plan = random_plan(rng, Cluster(1, 2, 4), 6, [0])
    trace = random_tokens(rng, 5, 1, 7, 2)
    with pytest.raises(InputError, match="trace has 7 experts per layer but the plan has 6"):
        replay(plan, trace)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dispatch": "random"}, "Expected dispatch in static, even, plan"),
        ({"chunk_tokens": 0}, "Expected chunk_tokens >= 1"),
        ({"hidden_size": 0}, "Expected hidden_size >= 1"),
        ({"dispatch_bytes_per_element": -1.0}, "Expected dispatch_bytes_per_element > 0"),
        ({"device": "tpu"}, "Expected device in"),
        ({"threads": 0}, "Expected threads >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    rng = np.random.default_rng(1)
    plan = random_plan(rng, Cluster(1, 2, 4), 6, [0])
    trace = random_tokens(rng, 5, 1, 6, 2)
    with pytest.raises(InputError, match=message):
        replay(plan, trace, **kwargs)


def test_cuda_requested_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    rng = np.random.default_rng(1)
    plan = random_plan(rng, Cluster(1, 2, 4), 6, [0])
    with pytest.raises(InputError, match="no CUDA device is available"):
        replay(plan, random_tokens(rng, 5, 1, 6, 2), device="cuda")


def test_aggregated_trace_gives_even_loads_and_no_traffic() -> None:
    rng = np.random.default_rng(4)
    c = Cluster(2, 2, 3)
    plan = random_plan(rng, c, 9, [0, 1], colocated=True)
    counts = rng.integers(0, 50, (3, 2, 9)).astype(float)
    trace = Trace(num_experts=9, counts=counts, top_k=3)
    res = replay(plan, trace, dispatch="static")
    # independent: every expert's count split evenly over its slots, summed per GPU
    total = counts.sum(0)
    want = np.zeros((2, c.num_gpus))
    for layer in range(2):
        for p in range(c.num_slots):
            e = plan.phy2log[layer, p]
            want[layer, p // 3] += total[layer, e] / (plan.phy2log[layer] == e).sum()
    np.testing.assert_allclose(res.gpu_loads, want)
    np.testing.assert_allclose(_a(res.tokens), total.sum(1) / 3)
    assert res.dispatch == "even"
    assert not res.has_traffic and res.cross_node_sends_per_token is None
    d = res.to_dict()
    assert d["cross_node_sends_per_token"] is None and d["cross_node_copies_per_token"] is None
    assert d["layers"][0]["cross_node_sends_per_token"] is None
    assert d["traffic_note"] == "traffic: n/a (needs token-level trace); this trace holds aggregated counts"
    assert "traffic: n/a (needs token-level trace)" in res.summary()


def test_aggregated_trace_with_source_ranks_uses_the_table() -> None:
    rng = np.random.default_rng(6)
    c = Cluster(2, 2, 3)
    plan = random_plan_dispatch(rng, random_plan(rng, c, 9, [0]))
    counts = rng.integers(0, 20, (2, 5, 1, 9)).astype(float)  # [W, R, L, E], R=5 > G=4
    trace = Trace(num_experts=9, counts=counts)
    res = replay(plan, trace, dispatch="plan")
    want = np.zeros((1, 4))
    for r in range(5):
        for e in range(9):
            want[0, int(_a(plan.dispatch)[0, r % 4, e]) // 3] += counts[:, r, 0, e].sum()
    np.testing.assert_allclose(res.gpu_loads, want)
    assert res.dispatch == "plan" and res.tokens is None


def test_bytes_json_and_per_gpu_traffic() -> None:
    rng = np.random.default_rng(9)
    c = Cluster(3, 2, 3)
    plan = random_plan(rng, c, 12, [0, 1])
    trace = random_tokens(rng, 50, 2, 12, 4, ranks=6)
    res = replay(plan, trace, hidden_size=100, dispatch_bytes_per_element=1,
                 combine_bytes_per_element=2)
    ref = reference_replay(plan.phy2log, static_dispatch(plan.phy2log, c, 12), trace.topk_ids,
                           _a(trace.source_rank) % 6, 3, 2, 3)
    for got, want in ((res.cross_node_bytes("dispatch"), ref["sends"] * 100),
                      (res.cross_node_bytes("combine"), ref["sends"] * 200),
                      (res.intra_node_bytes("combine"), ref["intra"] * 200),
                      (res.matrix_bytes("dispatch"), ref["matrix"] * 100)):
        assert got is not None
        np.testing.assert_allclose(got, want)
    # per GPU: what each GPU sends, and what arrives where (same local index on the far node)
    per = res.per_gpu_traffic()
    assert per is not None
    ns = ref["node_sends"]
    np.testing.assert_allclose(per["net_send"], ns.sum(2))
    want_recv = np.zeros((2, 6))
    for g in range(6):
        for n in range(3):
            want_recv[:, n * 2 + g % 2] += ns[:, g, n]
    np.testing.assert_allclose(per["net_recv"], want_recv)
    m = ref["matrix"]
    same = np.array([[g // 2 == h // 2 and g != h for h in range(6)] for g in range(6)])
    np.testing.assert_allclose(per["intra_send"], (m * same).sum(2))
    np.testing.assert_allclose(per["intra_recv"], (m * same).sum(1))
    d = json.loads(res.to_json())
    assert d["imbalance_static"] == pytest.approx(float(np.mean(ref["loads"].max(1) / ref["loads"].mean(1))))
    assert d["cross_node_sends_per_token"] == pytest.approx(float(np.mean(ref["sends"] / 50)))
    assert d["cross_node_copies_per_token"] == pytest.approx(float(np.mean(ref["copies"] / 50)))
    assert [lay["layer_id"] for lay in d["layers"]] == [0, 1]
    assert d["layers"][1]["cross_node_bytes"]["combine"] == pytest.approx(ref["sends"][1] * 200)
    assert d["layers"][0]["tokens_per_gpu"] == pytest.approx(ref["loads"][0].tolist())


def test_progress_and_summary_lines() -> None:
    rng = np.random.default_rng(10)
    c = Cluster(2, 1, 3)
    plan = random_plan(rng, c, 5, [0])
    trace = random_tokens(rng, 25, 1, 5, 2)
    seen: list[tuple[int, int]] = []
    res = replay(plan, trace, chunk_tokens=10, progress=lambda d, t: seen.append((d, t)),
                 plan_name="p.json", trace_name="t.npz")
    assert seen == [(10, 25), (20, 25), (25, 25)]
    lines = res.summary().splitlines()
    assert lines[0] == "replayed trace t.npz against plan p.json: 1 layer(s), 25 tokens, " \
                       "dispatch static, device cpu"
    assert lines[1] == "cluster: 2 node(s) x 1 GPU(s), 3 slot(s)/GPU = 6 slots per layer"
    imb = res.imbalance[0]
    assert lines[2] == (f"imbalance (static): {imb:.4f} (max/mean tokens per GPU, mean over "
                        f"layers; worst layer 0: {imb:.4f})")
    assert lines[3].startswith("cross-node sends per token: ")
    assert lines[-1] == "note: the trace has no source ranks: tokens are spread evenly over " \
                        "GPUs (t % G)."


def test_eplb_plan_on_held_out_flame_trace() -> None:
    """FLAME-MoE (real, token-level, shipped): an EPLB plan made on half the sequences, replayed
    on the rest."""
    from placement.routing_traces import load_trace
    from placement.solver import SolveOptions, solve

    trace = load_trace("bundled:flame-moe")
    W = trace.num_windows
    fit, held = trace.select_windows(range(W // 2)), trace.select_windows(range(W // 2, W))
    c = Cluster(2, 4, 9)
    plan = solve(fit, c, SolveOptions(method="eplb")).plan
    res = replay(plan, held)
    ref = reference_replay(plan.phy2log, static_dispatch(plan.phy2log, c, 64),
                           held.topk_ids[:200], np.arange(200) % 8, 2, 4, 9)
    part = replay(plan, Trace(num_experts=64, topk_ids=held.topk_ids[:200],
                              layer_ids=held.layer_ids))
    _check(part, ref, exact=True)
    assert 1.0 <= res.mean_imbalance < 2.0
    assert res.mean_cross_node_sends_per_token is not None
    assert 0 < res.mean_cross_node_sends_per_token <= 1.0  # 2 nodes: at most one remote node
