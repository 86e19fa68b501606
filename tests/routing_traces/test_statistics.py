"""Streaming statistics: exact counts and co-activation, a bounded deterministic sample, the
same whatever the chunking, the sharding and the backend; a problem built from them is the
traces' problem when the sample holds every token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.errors import CapabilityError, InputError
from placement.parallel import Local, Processes
from placement.routing_traces.sharded import open_sharded, write_sharded
from placement.routing_traces.statistics import TraceStatistics, gather_statistics, token_hash
from placement.routing_traces.synth import synthesize
from placement.routing_traces.trace import Trace
from placement.solver.problem import ProblemData

FIELDS = ("window_counts", "window_tokens", "coactivation", "sample_index", "sample_window",
          "sample_ids", "sample_source_rank")


@pytest.fixture(scope="module")
def trace() -> Trace:
    return synthesize("olmoe", num_tokens=3000, num_windows=3, num_source_ranks=4, num_layers=3,
                      seed=1)


def _same(a: TraceStatistics, b: TraceStatistics) -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)
            assert x.dtype == y.dtype, f


def test_counts_and_coactivation_are_exact(trace: Trace) -> None:
    st = gather_statistics(trace, sample_tokens=300, chunk_tokens=777)
    assert st.window_counts.dtype == np.int64
    np.testing.assert_array_equal(st.window_counts, trace.window_counts())
    np.testing.assert_array_equal(st.window_tokens, np.bincount(trace.window_index))
    assert st.coactivation is not None
    for layer in range(trace.num_layers):
        np.testing.assert_array_equal(st.coactivation[layer], trace.coactivation(layer))
    assert st.num_tokens == 3000 and st.has_source_rank


def test_a_token_listed_twice_counts_once_in_coactivation() -> None:
    ids = np.array([[[0, 0, 1]], [[2, 1, -1]]])
    st = gather_statistics(Trace(num_experts=3, topk_ids=ids))
    assert st.coactivation is not None
    np.testing.assert_array_equal(st.coactivation[0], Trace(num_experts=3, topk_ids=ids)
                                  .coactivation(0))
    assert st.coactivation[0, 0, 0] == 1 and st.coactivation[0, 0, 1] == 1


def test_the_sample_is_bounded_per_window_and_takes_the_smallest_hashes(trace: Trace) -> None:
    st = gather_statistics(trace, sample_tokens=301, seed=4)
    assert st.sample_window is not None and st.sample_index is not None
    assert np.bincount(st.sample_window).tolist() == [101, 101, 101]  # ceil(301 / 3)
    assert (np.diff(st.sample_index) > 0).all()  # token order
    h = token_hash(np.arange(3000), 4)
    for w in range(3):
        idx = np.flatnonzero(trace.window_index == w)
        best = np.sort(idx[np.argsort(h[idx], kind="stable")[:101]])
        np.testing.assert_array_equal(st.sample_index[st.sample_window == w], best)
    assert st.sample_ids is not None
    np.testing.assert_array_equal(st.sample_ids, trace.topk_ids[st.sample_index])
    other = gather_statistics(trace, sample_tokens=301, seed=5)
    assert not np.array_equal(other.sample_index, st.sample_index)  # the seed matters


def test_the_same_on_every_chunking_and_backend(trace: Trace) -> None:
    ref = gather_statistics(trace, sample_tokens=500)
    _same(ref, gather_statistics(trace, Local(), sample_tokens=500, chunk_tokens=97))
    _same(ref, gather_statistics(trace, Processes(2), sample_tokens=500, chunk_tokens=1000))


def test_a_sharded_trace_gives_the_in_memory_statistics(trace: Trace, tmp_path: Path) -> None:
    write_sharded(trace, tmp_path / "sh", shard_tokens=400)
    sh = open_sharded(tmp_path / "sh")
    _same(gather_statistics(trace, sample_tokens=450),
          gather_statistics(sh, Processes(2), sample_tokens=450))
    # a window selection: token indices count the selected tokens, as in memory
    _same(gather_statistics(trace.select_windows([0, 2]), sample_tokens=200, chunk_tokens=333),
          gather_statistics(sh.select_windows([0, 2]), sample_tokens=200))


def test_a_counts_trace_gives_its_counts() -> None:
    c = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    st = gather_statistics(Trace(num_experts=4, counts=c, top_k=2))
    np.testing.assert_array_equal(st.window_counts, c)
    assert not st.is_token_level and st.coactivation is None
    with pytest.raises(CapabilityError, match="no token sample"):
        st.sample_trace()


def test_bad_arguments_are_input_errors(trace: Trace) -> None:
    with pytest.raises(InputError, match=r"Expected sample_tokens >= 1, got 0\."):
        gather_statistics(trace, sample_tokens=0)
    with pytest.raises(InputError, match=r"Expected chunk_tokens >= 1, got 0\."):
        gather_statistics(trace, chunk_tokens=0)


@pytest.mark.parametrize("ranks", [4, None])
def test_a_full_sample_gives_the_traces_problem(ranks: int | None) -> None:
    t = synthesize("mixtral", num_tokens=900, num_windows=3, num_source_ranks=ranks,
                   num_layers=2, seed=2)
    cluster = Cluster(num_nodes=2, gpus_per_node=2, slots_per_gpu=3)
    a = ProblemData.from_traces(t, cluster)
    b = ProblemData.from_statistics(gather_statistics(t, sample_tokens=10_000), cluster)
    np.testing.assert_array_equal(a.scenario_counts, b.scenario_counts)
    assert a.scenario_names == b.scenario_names and a.top_k == b.top_k
    assert a.token_traces is not None and b.token_traces is not None
    for x, y in zip(a.token_traces, b.token_traces, strict=True):
        np.testing.assert_array_equal(x.topk_ids, y.topk_ids)
    for x, y in zip(a.token_sources(), b.token_sources(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_bounded_sample_keeps_the_exact_counts(trace: Trace) -> None:
    cluster = Cluster(num_nodes=2, gpus_per_node=2, slots_per_gpu=18)
    p = ProblemData.from_statistics([gather_statistics(trace, sample_tokens=90)] * 2, cluster)
    assert p.num_scenarios == 6 and p.scenario_names[0] == "0:w0"
    np.testing.assert_array_equal(p.scenario_counts[:3], trace.window_counts())
    assert p.token_traces is not None
    assert [t.num_tokens for t in p.token_traces] == [30] * 6
