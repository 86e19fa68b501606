"""ProblemData from traces and from their statistics: the same checks, the same messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from placement import Cluster, InputError
from placement.routing_traces import synthesize
from placement.routing_traces.statistics import gather_statistics
from placement.solver import ProblemData


def _from_traces(traces: Sequence[Any], cluster: Cluster) -> ProblemData:
    return ProblemData.from_traces(list(traces), cluster)


def _from_statistics(traces: Sequence[Any], cluster: Cluster) -> ProblemData:
    return ProblemData.from_statistics([gather_statistics(t) for t in traces], cluster)


BUILDERS = [pytest.param(_from_traces, id="traces"),
            pytest.param(_from_statistics, id="statistics")]


@pytest.mark.parametrize("build", BUILDERS)
def test_traces_of_other_experts_are_refused(build: Callable[..., ProblemData]) -> None:
    a = synthesize("mixtral", num_tokens=64, num_layers=2, seed=0)
    b = synthesize("olmoe", num_tokens=64, num_layers=2, seed=0)
    with pytest.raises(InputError, match=r"^trace 1 has 64 experts, trace 0 has 8\.$"):
        build([a, b], Cluster(1, 4, 16))


@pytest.mark.parametrize("build", BUILDERS)
def test_traces_of_other_layers_are_refused(build: Callable[..., ProblemData]) -> None:
    a = synthesize("mixtral", num_tokens=64, num_layers=2, seed=0)
    b = synthesize("mixtral", num_tokens=64, num_layers=3, seed=0)
    with pytest.raises(InputError, match=r"^trace 1 traces other layers than trace 0\.$"):
        build([a, b], Cluster(1, 2, 4))


@pytest.mark.parametrize("build", BUILDERS)
def test_a_cluster_too_small_is_refused(build: Callable[..., ProblemData]) -> None:
    a = synthesize("mixtral", num_tokens=64, num_layers=2, seed=0)
    with pytest.raises(InputError):
        build([a], Cluster(1, 2, 3))
