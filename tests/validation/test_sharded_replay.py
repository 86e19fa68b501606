"""A sharded trace replays to the in-memory replay's figures, shard by shard, on any backend."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from replay_reference import random_plan, random_plan_dispatch, random_tokens

from placement.cluster import Cluster
from placement.errors import InputError
from placement.parallel import Processes
from placement.routing_traces.sharded import open_trace_source, write_sharded
from placement.routing_traces.trace import Trace
from placement.validation import ValidationResult, replay
from placement.validation.sharded import ReplayPartial, replay_shard, replay_tasks

FIELDS = ("gpu_loads", "matrix", "node_sends", "tokens", "num_tokens", "assignments",
          "imbalance", "cross_node_sends", "cross_node_copies", "intra_node_copies",
          "layer_ids", "skipped_layer_ids", "messages", "dispatch", "trace_kind")


def _same(a: ValidationResult, b: ValidationResult, exact: bool) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if exact:
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            assert x == y, name


def _case(ranks: int | None, seed: int = 3) -> tuple[Cluster, Trace]:
    rng = np.random.default_rng(seed)
    cluster = Cluster(num_nodes=2, gpus_per_node=2, slots_per_gpu=3)
    t = random_tokens(rng, 500, 3, 10, 3, pad=0.1, ranks=ranks, layer_ids=[1, 2, 4])
    w = np.repeat(np.arange(4), 125)
    t = Trace(num_experts=10, topk_ids=t.topk_ids, layer_ids=t.layer_ids,
              source_rank=t.source_rank, window=w)
    return cluster, t


@pytest.mark.parametrize("ranks", [5, None], ids=["ranks", "no-ranks"])
@pytest.mark.parametrize("dispatch", ["static", "plan", "even", "sglang-static"])
def test_sharded_equals_in_memory(tmp_path: Path, ranks: int | None, dispatch: str) -> None:
    cluster, trace = _case(ranks)
    rng = np.random.default_rng(1)
    plan = random_plan_dispatch(rng, random_plan(rng, cluster, 10, [0, 1, 2, 4]))
    st = write_sharded(trace, tmp_path / "sh", shard_tokens=97)
    mem = replay(plan, trace, dispatch=dispatch, chunk_tokens=40, device="cpu")
    sh = replay(plan, st, dispatch=dispatch, chunk_tokens=33, device="cpu")
    _same(mem, sh, exact=dispatch != "even")
    assert sh.skipped_layer_ids == (0,)


@pytest.mark.parametrize("dispatch", ["lp", "dynamic"])
def test_per_batch_rules_need_the_trace_in_memory(tmp_path: Path, dispatch: str) -> None:
    cluster, trace = _case(5)
    plan = random_plan(np.random.default_rng(3), cluster, 10, [0, 1, 2, 4])
    st = write_sharded(trace, tmp_path / "sh", shard_tokens=97)
    with pytest.raises(InputError, match=f"dispatch {dispatch} replays in-memory traces only"):
        replay(plan, st, dispatch=dispatch)


@pytest.mark.parametrize("ranks", [5, None], ids=["ranks", "no-ranks"])
def test_window_selection(tmp_path: Path, ranks: int | None) -> None:
    cluster, trace = _case(ranks)
    rng = np.random.default_rng(2)
    plan = random_plan(rng, cluster, 10, [1, 2, 4])
    write_sharded(trace, tmp_path / "sh", shard_tokens=60)
    sel = open_trace_source(f"{tmp_path / 'sh'}#1,3")
    mem = replay(plan, trace.select_windows([1, 3]), device="cpu")
    _same(mem, replay(plan, sel, device="cpu"), exact=True)


def test_tasks_pickle_and_processes(tmp_path: Path) -> None:
    cluster, trace = _case(5)
    rng = np.random.default_rng(4)
    plan = random_plan(rng, cluster, 10, [1, 2, 4])
    st = write_sharded(trace, tmp_path / "sh", shard_tokens=128)
    local = replay(plan, st, device="cpu")
    pooled = replay(plan, st, device="cpu", backend=Processes(2))
    _same(local, pooled, exact=True)
    tasks = replay_tasks(plan, st, rule="static", table=None, phy2log=plan.phy2log,
                         chunk_tokens=64, device="cpu")
    assert len(tasks) == 4
    assert pickle.loads(pickle.dumps(tasks[0])).ref == tasks[0].ref


def test_partials_add_exactly(tmp_path: Path) -> None:
    cluster, trace = _case(5)
    rng = np.random.default_rng(5)
    plan = random_plan(rng, cluster, 10, [1, 2, 4])
    st = write_sharded(trace, tmp_path / "sh", shard_tokens=250)
    from placement.plan import static_dispatch

    p2l = plan.phy2log
    tasks = replay_tasks(plan, st, rule="static", table=static_dispatch(p2l, cluster, 10),
                         phy2log=p2l, chunk_tokens=50, device="cpu")
    parts = [replay_shard(t) for t in tasks]
    total = parts[0] + parts[1]
    assert isinstance(total, ReplayPartial) and total.tokens == 500
    assert total.lse.dtype == np.int64 and total.phist is not None


def test_out_of_range_id_is_one_line(tmp_path: Path) -> None:
    from placement.errors import TraceFormatError

    cluster, trace = _case(5)
    plan = random_plan(np.random.default_rng(6), cluster, 10, [1, 2, 4])
    st = write_sharded(trace, tmp_path / "sh", shard_tokens=200)
    f = tmp_path / "sh" / "shard-00001.topk_ids.npy"
    a = np.load(f)
    a[3, 0, 0] = 10  # same size and header: only a checksum or the replay's check sees it
    np.save(f, a)
    with pytest.raises(TraceFormatError, match=r"shard 1 holds expert id 10, outside \[-1, 10\)"):
        replay(plan, st, device="cpu")


def test_read_only_partials_are_copied_before_torch_sees_them() -> None:
    # partials that come back from a Ray worker are read-only views of its object store: torch
    # warns on those (and may write to them), so the finish copies them, and only them
    from placement.validation.sharded import _writable

    ro = np.arange(6, dtype=np.int64)
    ro.setflags(write=False)
    assert not np.shares_memory(_writable(ro).numpy(), ro)
    rw = np.arange(6, dtype=np.int64)
    assert np.shares_memory(_writable(rw).numpy(), rw)
