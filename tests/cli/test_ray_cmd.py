"""``--ray`` on the command line: the same output as without it (solve, validate, compare on
in-memory and sharded traces), and its mistakes as one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.plan import Plan
from placement.routing_traces import Trace, write_native

pytestmark = pytest.mark.ray


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A toy token-level trace (in memory and sharded), a plan for it, and output paths."""
    from placement.routing_traces.sharded import write_sharded

    rng = np.random.default_rng(0)
    pr = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    ids = np.stack([np.stack([rng.choice(8, 2, replace=False, p=pr) for _ in range(2)])
                    for _ in range(300)])
    t = Trace(num_experts=8, topk_ids=ids, layer_ids=[3, 4], source_rank=rng.integers(0, 4, 300),
              window=np.repeat([0, 1, 2], 100), model="toy")
    write_native(t, tmp_path / "held.npz")
    write_sharded(t, tmp_path / "sh", shard_tokens=64)
    rows = np.array([[0, 1, 2, 0, 1, 3, 6, 1, 4, 0, 7, 5], [0, 1, 6, 0, 1, 7, 4, 1, 2, 0, 5, 3]])
    Plan(cluster=Cluster(2, 2, 3), num_experts=8, layer_ids=np.array([3, 4]), phy2log=rows,
         method="hand").save(tmp_path / "plan.json")
    return {"npz": str(tmp_path / "held.npz"), "dir": str(tmp_path / "sh"),
            "plan": str(tmp_path / "plan.json"), "tmp": str(tmp_path)}


def _figures(text: str) -> dict[str, Any]:
    d = json.loads(text)
    return {k: v for k, v in d.items() if "time" not in k and k not in ("trace_name", "trace")}


@pytest.mark.parametrize("source", ["npz", "dir"])
def test_validate_with_ray_is_the_same(run, ray_local, files: dict[str, str], source: str) -> None:
    a = run("validate", files["plan"], files[source], "--json", "--device", "cpu")
    b = run("validate", files["plan"], files[source], "--json", "--device", "cpu", "--ray",
            "--workers", 2)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert _figures(a.stdout) == _figures(b.stdout)
    assert ray_local.is_initialized()  # the CLI leaves a Ray it did not start


def test_solve_with_ray_is_the_same(run, ray_local, files: dict[str, str]) -> None:
    out = {}
    for name, extra in (("plain", ()), ("ray", ("--ray",)), ("ray1", ("--ray", "--workers", 1))):
        p = Path(files["tmp"]) / f"{name}.json"
        r = run("solve", files["npz"], "--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3,
                "--objective", "balance", "--json", "-o", p, *extra)
        assert r.exit_code == 0, r.output
        out[name] = (_figures(r.stdout), Plan.load(p).phy2log)
    for name in ("ray", "ray1"):
        assert {k: v for k, v in out[name][0].items() if k != "output"} == \
            {k: v for k, v in out["plain"][0].items() if k != "output"}
        np.testing.assert_array_equal(out[name][1], out["plain"][1])


def test_compare_sharded_with_ray_is_the_same(run, ray_local, files: dict[str, str]) -> None:
    tmp = Path(files["tmp"])
    a = run("compare", files["plan"], files["dir"], "--baseline", "contiguous", "-o", tmp / "a")
    b = run("compare", files["plan"], files["dir"], "--baseline", "contiguous", "-o", tmp / "b",
            "--ray")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout.splitlines()[:-1] == b.stdout.splitlines()[:-1]


def test_backend_mistakes_are_one_line(run, error, files: dict[str, str]) -> None:
    r = run("validate", files["plan"], files["npz"], "--workers", 2)
    error(r, "error: --workers is for --ray (use --jobs for this machine's processes) "
             "(see 'placement validate --help').", code=2)
    r = run("validate", files["plan"], files["npz"], "--ray", "--jobs", 2)
    error(r, contains="--jobs runs this machine's processes, --ray runs Ray tasks", code=2)


def test_missing_ray_says_how_to_install_it(run, error, files: dict[str, str],
                                            monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    r = run("validate", files["plan"], files["npz"], "--ray")
    error(r, "error: --ray needs Ray, which is not installed: install it with "
             "pip install 'placement[ray]'.")


def test_solve_plans_a_sharded_trace_from_statistics(run, ray_local, files: dict[str, str]
                                                    ) -> None:
    tmp = Path(files["tmp"])
    args = ("--nodes", 2, "--gpus-per-node", 2, "--slots-per-gpu", 3, "--objective", "balance")
    a = run("solve", files["npz"], *args, "-o", tmp / "a.json")
    b = run("solve", files["dir"], *args, "-o", tmp / "b.json")
    c = run("solve", files["dir"], *args, "-o", tmp / "c.json", "--ray", "--workers", 2)
    assert a.exit_code == 0 and b.exit_code == 0 and c.exit_code == 0, a.output + b.output
    # the default sample holds all 300 tokens: the plan is the in-memory trace's
    assert b.stdout.splitlines()[0] == ("planning from statistics: exact counts; for traffic a "
                                        "sample of 300 of 300 tokens (--sample-tokens 65,536)")
    pa, pb, pc = (Plan.load(tmp / f"{n}.json") for n in "abc")
    np.testing.assert_array_equal(pa.phy2log, pb.phy2log)
    np.testing.assert_array_equal(pb.phy2log, pc.phy2log)
    assert pb.settings["statistics"] == {"sample_tokens": 65536, "sampled": 300, "tokens": 300}
    d = run("solve", files["npz"], *args, "-o", tmp / "d.json", "--sample-tokens", 30)
    assert d.exit_code == 0, d.output
    assert Plan.load(tmp / "d.json").settings["statistics"]["sampled"] == 30


def test_inspect_sharded_with_ray_is_the_same(run, ray_local, files: dict[str, str]) -> None:
    a = run("trace", "inspect", files["npz"], "--json")
    b = run("trace", "inspect", files["dir"], "--json", "--ray")
    c = run("trace", "inspect", files["dir"], "--json", "--jobs", 2)
    assert a.exit_code == 0 and b.exit_code == 0 and c.exit_code == 0, a.output + b.output
    da, db, dc = (json.loads(r.stdout) for r in (a, b, c))
    for d in (da, db, dc):
        d.pop("source")
    assert da == db == dc


def test_replan_with_ray_is_the_same(run, ray_local, tmp_path: Path) -> None:
    from placement.solver import ProblemData, SolveOptions, baseline_plan

    rng = np.random.default_rng(8)

    def counts(windows: int) -> Trace:
        x = rng.lognormal(0.0, 1.0, size=(windows, 2, 8))
        return Trace(num_experts=8, counts=np.rint(x / x.sum(-1, keepdims=True) * 1e5),
                     layer_ids=[3, 4], num_hidden_layers=5)

    c = Cluster(2, 2, 3)
    baseline_plan(ProblemData.from_traces(counts(1), c), SolveOptions(method="eplb"),
                  "eplb").save(tmp_path / "deployed.json")
    write_native(counts(2), tmp_path / "now.npz")
    outs = []
    for name, extra in (("a", ()), ("b", ("--ray", "--workers", 2))):
        r = run("replan", tmp_path / "deployed.json", tmp_path / "now.npz", "--max-moves", 3,
                "-o", tmp_path / f"{name}.json", *extra)
        assert r.exit_code == 0, r.output
        outs.append((r.stdout.splitlines()[:-1], Plan.load(tmp_path / f"{name}.json").phy2log))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["validate", "compare"])
def test_a_cluster_address_that_does_not_answer_is_an_error(run, error, files: dict[str, str],
                                                            command: str) -> None:
    """Issue 19: --ray-address is checked before the work, also where the work (an in-memory
    trace's replay) runs in this process: nothing listening is one line, never ignored."""
    port = _closed_port()
    args = ([files["plan"], files["npz"], "--json"] if command == "validate" else
            [files["plan"], files["npz"], "--baseline", "contiguous", "-o",
             Path(files["tmp"]) / "r"])
    r = run(command, *args, "--ray-address", f"127.0.0.1:{port}")
    error(r, f"error: could not reach the Ray cluster at 127.0.0.1:{port}: Connection refused")
    assert not (Path(files["tmp"]) / "r").exists()
