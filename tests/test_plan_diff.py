"""Moves between plans (placement.moves) and plan diffs (placement.plan_diff), checked against an
independent brute-force count on small plans."""

from __future__ import annotations

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.errors import InputError, PlanError
from placement.models import model_preset
from placement.moves import count_moves
from placement.plan import Plan
from placement.plan_diff import (
    default_bytes_per_param,
    diff_plans,
    expert_bytes,
    format_diff,
    format_transfer,
    time_text,
)
from placement.plan_eval import STEP_TOKENS_PER_GPU
from placement.routing_traces import Trace
from placement.validation import replay


def brute_force(old: np.ndarray, new: np.ndarray, cluster: Cluster) -> tuple[list, list, list]:
    """Per layer ``(moves, cross-node moves, changed slots)`` by walking the slots one by one:
    every GPU starts with the list of its old experts; an expert of its new slots that is still
    in the list is crossed off (it stays), any other is a move, cross-node when no GPU of the
    node had it in ``old``."""
    spg, gpn = cluster.slots_per_gpu, cluster.gpus_per_node
    moves, cross, changed = [], [], []
    for a, b in zip(old.tolist(), new.tolist(), strict=True):
        m = x = 0
        for g in range(cluster.num_gpus):
            have = a[g * spg:(g + 1) * spg]
            node = g // gpn
            node_had = set(a[node * gpn * spg:(node + 1) * gpn * spg])
            left = list(have)
            for e in b[g * spg:(g + 1) * spg]:
                if e in left:
                    left.remove(e)
                else:
                    m += 1
                    x += e not in node_had
        moves.append(m)
        cross.append(x)
        changed.append(sum(p != q for p, q in zip(a, b, strict=True)))
    return moves, cross, changed


C = Cluster(2, 2, 3)  # 2 nodes x 2 GPUs x 3 slots = 12 slots
E = 8


def _colocated(row: np.ndarray) -> bool:
    srt = np.sort(row.reshape(C.num_gpus, C.slots_per_gpu), axis=1)
    return bool((srt[:, 1:] == srt[:, :-1]).any())


def _random_rows(rng: np.random.Generator, L: int, colocate: bool) -> np.ndarray:
    rows = []
    for _ in range(L):
        extra = rng.integers(0, E, size=C.num_slots - E)
        row = rng.permutation(np.concatenate([np.arange(E), extra]))
        if not colocate:  # no GPU holds an expert twice: redraw until so
            while _colocated(row):
                row = rng.permutation(row)
        rows.append(row)
    return np.stack(rows)


@pytest.mark.parametrize("seed", range(12))
def test_count_moves_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    old = _random_rows(rng, 5, colocate=True)
    new = _random_rows(rng, 5, colocate=True)
    mc = count_moves(old, new, C, E)
    bf = brute_force(old, new, C)
    assert mc.moves.tolist() == bf[0]
    assert mc.cross_node_moves.tolist() == bf[1]
    assert mc.changed_slots.tolist() == bf[2]
    assert (mc.moves <= mc.changed_slots).all()
    assert mc.incoming.sum() == mc.total


def test_slot_order_inside_a_gpu_moves_nothing() -> None:
    old = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    new = old.reshape(4, 3)[:, ::-1].reshape(1, -1)  # every GPU's slots reversed
    mc = count_moves(old, new, C, E)
    assert mc.total == 0 and mc.total_cross_node == 0
    assert mc.changed_slots.tolist() == [8]


def test_named_instance_by_hand() -> None:
    # node 0 = GPUs 0, 1; node 1 = GPUs 2, 3
    old = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    new = np.array([[0, 1, 5, 3, 4, 5, 4, 7, 6, 2, 1, 3]])
    # GPU 0 receives 5 (GPU 1 of its node holds it: NVLink); GPU 2 receives 4, which node 1 did
    # not hold (cross-node), and keeps 6 and 7 (6 changes slot); GPU 3 only reorders 1, 2, 3
    mc = count_moves(old, new, C, E)
    assert mc.moves.tolist() == [2]
    assert mc.cross_node_moves.tolist() == [1]
    assert mc.changed_slots.tolist() == [5]
    assert brute_force(old, new, C) == ([2], [1], [5])


def _plan(rows: np.ndarray, layer_ids: list[int] | None = None, cluster: Cluster = C,
          experts: int = E, model: str | None = None) -> Plan:
    ids = layer_ids if layer_ids is not None else list(range(rows.shape[0]))
    return Plan(cluster=cluster, num_experts=experts, layer_ids=np.array(ids), phy2log=rows,
                method="hand", model=model, allow_colocated_replicas=True)


def test_diff_totals_bytes_and_layers() -> None:
    rng = np.random.default_rng(7)
    old_rows, new_rows = _random_rows(rng, 3, True), _random_rows(rng, 3, True)
    m = model_preset("mixtral-8x7b")
    d = diff_plans(_plan(old_rows), _plan(new_rows), model=m, bytes_per_param=2.0)
    bf = brute_force(old_rows, new_rows, C)
    per = 3 * 4096 * 14336 * 2.0
    assert expert_bytes(m, 2.0) == per
    out = d.to_dict()
    assert out["moves"] == sum(bf[0])
    assert out["cross_node_moves"] == sum(bf[1])
    assert out["changed_slots"] == sum(bf[2])
    assert out["bytes"] == sum(bf[0]) * per
    assert [x["moves"] for x in out["layers"]] == bf[0]
    assert [x["cross_node_moves"] for x in out["layers"]] == bf[1]
    assert [x["bytes"] for x in out["layers"]] == [v * per for v in bf[0]]
    assert out["model"] == "mixtral-8x7b" and out["model_guessed"] is False


def test_default_weight_bytes_follow_the_model() -> None:
    row = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    new = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 4, 1, 2, 3]])
    d = diff_plans(_plan(row), _plan(new))  # 8 experts: guessed Mixtral-8x7B, BF16 weights
    assert d.model is not None and d.model.name == "mixtral-8x7b" and d.bytes_per_param == 2.0
    assert d.bytes == 3 * 4096 * 14336 * 2.0
    assert default_bytes_per_param(model_preset("deepseek-v3")) == 1.0


def test_diff_guesses_the_model_and_compares_common_layers() -> None:
    rng = np.random.default_rng(3)
    a = _plan(_random_rows(rng, 3, True), [3, 4, 5], model="DeepSeek-V3")
    b = _plan(_random_rows(rng, 2, True), [4, 5])
    d = diff_plans(a, b)
    assert d.model is not None and d.model.name == "deepseek-v3" and d.model_guessed
    assert d.layer_ids.tolist() == [4, 5] and d.only_old == (3,) and d.only_new == ()
    bf = brute_force(np.asarray(a.phy2log)[1:], np.asarray(b.phy2log), C)
    assert d.moves == sum(bf[0])
    assert "note: layer(s) 3 only in OLD: not compared" in format_diff(d).splitlines()


def test_unknown_model_leaves_bytes_unknown() -> None:
    # 7 experts: no model preset has that many, so no guess
    a = _plan(np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]]), experts=7)
    b = _plan(np.array([[0, 1, 2, 3, 4, 5, 6, 6, 1, 2, 3, 4]]), experts=7)
    d = diff_plans(a, b)
    assert d.model is None and d.bytes is None and d.to_dict()["bytes"] is None
    assert "bytes: unknown (the model is not known; give --model)" in format_diff(d).splitlines()


@pytest.mark.parametrize(("other", "message"), [
    (dict(cluster=Cluster(1, 4, 3)), "the plans are for different clusters: OLD 2x2x3, NEW "
     "1x4x3 (nodes x GPUs per node x slots per GPU); a diff needs one cluster."),
    (dict(experts=7), "the plans place different experts: OLD 8 per layer, NEW 7."),
    (dict(layer_ids=[9]), "the plans share no layer: OLD places 0, NEW 9."),
])
def test_diff_refuses_plans_that_do_not_compare(other: dict, message: str) -> None:
    row = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    a = _plan(row)
    kw = dict(other)
    b_row = row if "experts" not in kw else np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]])
    b = _plan(b_row, kw.get("layer_ids"), kw.get("cluster", C), kw.get("experts", E))
    with pytest.raises(PlanError) as exc:
        diff_plans(a, b)
    assert str(exc.value) == message


def test_diff_rejects_bad_bytes_per_param() -> None:
    row = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    with pytest.raises(InputError, match="bytes_per_param > 0"):
        diff_plans(_plan(row), _plan(row), bytes_per_param=0.0)


def test_diff_with_a_trace_replays_both_plans() -> None:
    rng = np.random.default_rng(11)
    a, b = _plan(_random_rows(rng, 2, False)), _plan(_random_rows(rng, 2, False))
    ids = rng.integers(0, E, size=(64, 2, 2))
    trace = Trace(num_experts=E, topk_ids=ids, source_rank=np.arange(64) % 4)
    d = diff_plans(a, b, trace=trace, model=model_preset("mixtral-8x7b"))
    for plan, fig in ((a, d.old_figures), (b, d.new_figures)):
        assert fig is not None and fig.rule == "static"
        r = replay(plan, trace, dispatch="static")
        np.testing.assert_allclose(fig.imbalance, r.imbalance)
        assert fig.sends_per_token is not None and r.cross_node_sends_per_token is not None
        np.testing.assert_allclose(fig.sends_per_token, r.cross_node_sends_per_token)
        assert fig.layer_time is not None and (fig.layer_time > 0).all()
    out = d.to_dict()
    assert out["trace"]["old"]["imbalance_static"] == pytest.approx(d.old_figures.mean_imbalance)
    assert "imbalance_static_old" in out["layers"][0]
    lines = format_diff(d).splitlines()
    assert lines[-5].startswith("  imbalance (static): ")
    # per step of a stated batch, and the whole trace's total, labelled as such
    fo = d.old_figures
    assert fo is not None and fo.layer_time is not None and fo.tokens is not None
    step = fo.layer_time * (STEP_TOKENS_PER_GPU * a.cluster.num_gpus) / fo.tokens
    assert fo.mean_step_time == pytest.approx(float(np.mean(step)))
    assert lines[-2].startswith("  predicted MoE layer time (two-batch overlap), per step of "
                                "4,096 tokens per GPU: " + time_text(float(np.mean(step))))
    assert lines[-1].startswith(f"  predicted MoE layer time (two-batch overlap), all "
                                f"{trace.num_tokens:,} tokens of the trace (a total): "
                                + time_text(float(np.mean(fo.layer_time))))


def test_transfer_time_by_hand() -> None:
    """GPU 0 takes expert 2 from its node (NVLink), GPU 2 takes expert 2 from the other node
    (network): at 100 and 10 GB/s, 1 GB weights take 10 ms and 100 ms; the network one sets
    the time. Two such layers: 200 ms at once, at most 100 ms per layer."""
    from placement.moves import count_moves, transfer_time

    c = Cluster(2, 2, 2, nvlink_gbps=100.0, network_gbps=10.0)
    old = np.array([[0, 1, 2, 3, 0, 0, 1, 1]] * 2)
    new = np.array([[2, 1, 2, 3, 2, 0, 1, 1]] * 2)
    mc = count_moves(old, new, c, 4)
    assert mc.cross_node_incoming is not None
    assert mc.cross_node_incoming.tolist() == [[0, 0, 1, 0]] * 2
    t = transfer_time(mc, c, 1e9)
    assert t.seconds == pytest.approx(0.2) and t.gpu == 2
    assert (t.nvlink_moves, t.network_moves) == (0, 2)
    np.testing.assert_allclose(t.per_layer_seconds, [0.1, 0.1])
    assert format_transfer(t) == (
        "transfer: 200.00 ms over NVLink 100 GB/s and the network 10 GB/s per GPU (GPU 2 "
        "receives 2 weight(s), 2 cross-node); serving stall: 200.00 ms moving every layer at "
        "once, at most 100.00 ms per layer moving one layer at a time")
    # NVLink only: 1 GB at 100 GB/s per layer on GPU 0
    near = np.array([[2, 1, 2, 3, 0, 0, 1, 1]] * 2)
    t = transfer_time(count_moves(old, near, c, 4), c, 1e9)
    assert (t.seconds, t.gpu, t.nvlink_moves, t.network_moves) == (pytest.approx(0.02), 0, 2, 0)
    assert format_transfer(transfer_time(count_moves(old, old, c, 4), c, 1e9)) == \
        "transfer: nothing moves, no serving stall"
