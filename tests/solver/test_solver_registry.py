"""The solver methods come from one registry: names, CLI choices, baselines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner
from solver_helpers import counts_trace

import placement
from placement.cli import main
from placement.cluster import Cluster
from placement.errors import InputError
from placement.plan import Plan
from placement.solver import BASELINES, METHODS, SolveOptions, SolverMethod, get_method, solve
from placement.solver import registry as reg
from placement.solver.problem import ProblemData


def test_names_derive_from_the_registry() -> None:
    assert METHODS == tuple(m.name for m in reg.REGISTRY) == placement.METHODS
    assert METHODS[0] == "optimizer"
    assert BASELINES == ("eplb", "eplb-global", "sglang-vec", "contiguous")
    for m in reg.REGISTRY:
        assert isinstance(m, SolverMethod)
        assert m.description and m is get_method(m.name)


def test_cli_choices_and_help_come_from_the_registry() -> None:
    r = CliRunner().invoke(main, ["solve", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for m in reg.REGISTRY:
        assert m.name in text
    assert "DeepSeek's EPLB, global policy" in text


def test_unknown_method() -> None:
    with pytest.raises(InputError, match="Unknown method 'magic'; choose one of: optimizer, eplb"):
        get_method("magic")


def test_a_new_method_is_one_function_and_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def solve_mine(problem: ProblemData, options: SolveOptions, progress=None) -> Plan:  # type: ignore[no-untyped-def]
        calls.append(problem.num_layers)
        return get_method("contiguous").solve(problem, options, progress)

    mine = reg.Method("mine", "a test method", f"{__name__}:solve_mine")
    monkeypatch.setitem(globals(), "solve_mine", solve_mine)
    monkeypatch.setattr(reg, "REGISTRY", (*reg.REGISTRY, mine))
    monkeypatch.setattr(reg, "METHODS", (*reg.METHODS, "mine"))
    trace = counts_trace(np.full((1, 2, 8), 1 / 8))
    res = solve(trace, Cluster(1, 2, 4), dataclasses.replace(SolveOptions(jobs=1), method="mine"))
    assert calls == [2]
    assert res.plan.method == "contiguous"
    assert res.reference  # compared with EPLB like every method
