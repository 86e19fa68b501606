"""``placement replan``: budgets, the byte-for-byte zero budget, held-out figures, mistakes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.engines import export_plan
from placement.moves import count_moves
from placement.plan import Plan
from placement.routing_traces import Trace, write_native
from placement.solver import ProblemData, SolveOptions, baseline_plan

C = Cluster(2, 2, 3)




def _counts(rng: np.random.Generator, windows: int, experts: int = 8) -> Trace:
    x = rng.lognormal(0.0, 1.0, size=(windows, 2, experts))
    return Trace(num_experts=experts, counts=np.rint(x / x.sum(-1, keepdims=True) * 1e5),
                 layer_ids=[3, 4], num_hidden_layers=5)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(8)
    old, now, later = _counts(rng, 1), _counts(rng, 2), _counts(rng, 1)
    deployed = baseline_plan(ProblemData.from_traces(old, C), SolveOptions(method="eplb"), "eplb")
    deployed.save(tmp_path / "deployed.json")
    write_native(now, tmp_path / "now.npz")
    write_native(later, tmp_path / "later.npz")
    write_native(_counts(rng, 1, experts=9), tmp_path / "nine.npz")
    return {k: str(tmp_path / f"{k}.{'json' if k == 'deployed' else 'npz'}")
            for k in ("deployed", "now", "later", "nine")} | {"dir": str(tmp_path)}


def test_zero_budget_writes_the_deployed_plan_byte_for_byte(run, files: dict[str, str]) -> None:
    out = str(Path(files["dir"]) / "out.json")
    r = run("replan", files["deployed"], files["now"], "--max-moves", "0", "-o", out)
    assert r.exit_code == 0, r.output
    assert Path(out).read_bytes() == Path(files["deployed"]).read_bytes()
    lines = r.stdout.splitlines()
    assert lines[0] == ("re-planned 2 layer(s) of the deployed plan (method eplb) on 2 node(s) x "
                        "2 GPU(s), 3 slot(s)/GPU = 12 slots per layer")
    assert lines[1] == "budget: 0 move(s) in total"
    assert lines[2] == "moves: 0 expert weight(s) (0.0% of 24 slots), 0 cross-node, in 0 layer(s); 0 B"
    assert lines[-1] == f"nothing moves: wrote the deployed plan unchanged to {out}"


def test_budget_and_the_moves_it_buys(run, files: dict[str, str]) -> None:
    out = str(Path(files["dir"]) / "out.json")
    r = run("replan", files["deployed"], files["now"], "--max-moves", "3", "--heldout",
             files["later"], "-o", out)
    assert r.exit_code == 0, r.output
    new, old = Plan.load(out), Plan.load(files["deployed"])
    mc = count_moves(np.asarray(old.phy2log), np.asarray(new.phy2log), C, 8)
    assert 0 < mc.total <= 3
    lines = r.stdout.splitlines()
    assert lines[1] == "budget: 3 move(s) in total"
    assert lines[2].startswith(f"moves: {mc.total} expert weight(s) ")
    assert lines[3].startswith("in-sample imbalance (even), worst scenario: ")
    assert "expert size: 352.32 MB per expert weight (mixtral-8x7b, guessed: --model to set; " \
           "3 x 4096 x 14336 x 2 B)" in lines
    k = lines.index("expert size: 352.32 MB per expert weight (mixtral-8x7b, guessed: --model to "
                    "set; 3 x 4096 x 14336 x 2 B)")
    assert lines[k + 1].startswith("transfer: ") and " over NVLink 160 GB/s and the network " \
        "40 GB/s per GPU (GPU " in lines[k + 1] and "; serving stall: " in lines[k + 1]
    i = lines.index(f"held-out, on {files['later']} (deployed -> re-planned):")
    assert lines[i + 1].startswith("  imbalance (even): ")
    assert lines[i + 2].startswith("  predicted MoE layer time (compute only), per step of 4,096 "
                                   "tokens per GPU: ")
    assert re.match(r"  predicted MoE layer time \(compute only\), all [\d,]+ tokens of the "
                    r"trace \(a total\): ", lines[i + 3])
    assert lines[-1] == f"saved plan to {out}"
    d = json.loads(run("diff", files["deployed"], out, "--json").stdout)
    assert d["moves"] == mc.total


def test_json_and_per_layer_budget(run, files: dict[str, str]) -> None:
    out = str(Path(files["dir"]) / "out.json")
    r = run("replan", files["deployed"], files["now"], "--max-moves", "2",
             "--per-layer-budget", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["budget_moves"] == 2 and d["per_layer_budget"] is True
    assert all(x["moves"] <= 2 for x in d["layers"]) and d["moves"] > 0
    assert d["imbalance_in_sample_after"] <= d["imbalance_in_sample_before"]
    assert d["moves"] == sum(x["moves"] for x in d["layers"])


def test_bytes_budget(run, files: dict[str, str]) -> None:
    out = str(Path(files["dir"]) / "out.json")
    # 1 GB buys floor(1e9 / 352.32 MB) = 2 expert weights of Mixtral-8x7B in BF16
    r = run("replan", files["deployed"], files["now"], "--max-bytes", "1GB", "--model",
             "mixtral-8x7b", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["budget_moves"] == 2 and d["moves"] <= 2
    assert d["bytes"] == d["moves"] * 3 * 4096 * 14336 * 2


def test_engine_file_as_deployed(run, files: dict[str, str]) -> None:
    loc = str(Path(files["dir"]) / "loc.json")
    export_plan(Plan.load(files["deployed"]), "sglang", loc)
    out = str(Path(files["dir"]) / "out.json")
    r = run("replan", loc, files["now"], "--nodes", "2", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "--max-moves", "4", "-o", out)
    assert r.exit_code == 0, r.output
    assert "(method imported:sglang)" in r.stdout.splitlines()[0]
    assert Plan.load(out).method == "replan"


_NO_BUDGET = ("error: give the budget as exactly one of --max-moves N or --max-bytes B "
              "(--max-moves 0 keeps the deployed plan) (see 'placement replan --help').")


@pytest.mark.parametrize(("args", "line"), [
    (("--max-moves", "-1"), "error: Expected max_moves >= 0 (an integer), got -1."),
    ((), _NO_BUDGET),
    (("--max-moves", "1", "--max-bytes", "1GB"), _NO_BUDGET),
    (("--max-bytes", "-3GB"), "error: Expected --max-bytes >= 0, got '-3GB'."),
    (("--max-bytes", "lots"), "error: Expected --max-bytes like 40GB, 500MB or 1e9, got 'lots'."),
    (("--nodes", "1", "--gpus-per-node", "4", "--slots-per-gpu", "3", "--max-moves", "1"),
     "error: {deployed}: the plan is for cluster 2x2x3 (nodes x GPUs per node x slots per GPU), "
     "not the given 1x4x3."),
])
def test_user_mistakes(run, error, files: dict[str, str], args: tuple[str, ...], line: str) -> None:
    out = str(Path(files["dir"]) / "out.json")
    error(run("replan", files["deployed"], files["now"], *args, "-o", out),
          line.format(**files), code=2 if line == _NO_BUDGET else 1)
    assert not Path(out).exists()


def test_traces_of_another_model(run, error, files: dict[str, str]) -> None:
    out = str(Path(files["dir"]) / "out.json")
    error(run("replan", files["deployed"], files["nine"], "--max-moves", "1", "-o",
                         out),
                    "error: the traces have 9 experts per layer but the deployed plan has 8.")
