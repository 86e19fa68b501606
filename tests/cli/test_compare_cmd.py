"""``placement compare``: plans told from traces by content, baselines' data, files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.plan import Plan
from placement.routing_traces import Trace, write_native

E = 8


def _trace(seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    p = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    ids = np.stack([np.stack([rng.choice(E, 2, replace=False, p=p) for _ in range(2)])
                    for _ in range(40)])
    return Trace(num_experts=E, topk_ids=ids, layer_ids=[3, 4], source_rank=rng.integers(0, 4, 40),
                 model="toy")


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    write_native(_trace(1), tmp_path / "fit.npz")
    write_native(_trace(2), tmp_path / "held.npz")
    rows = np.array([[0, 1, 2, 0, 1, 3, 6, 1, 4, 0, 7, 5], [0, 1, 6, 0, 1, 7, 4, 1, 2, 0, 5, 3]])
    plan = Plan(cluster=Cluster(2, 2, 3), num_experts=E, layer_ids=np.array([3, 4]),
                phy2log=rows, method="hand", settings={"inputs": [str(tmp_path / "fit.npz")]})
    plan.save(tmp_path / "mine.json")
    bare = Plan(cluster=Cluster(2, 2, 3), num_experts=E, layer_ids=np.array([3, 4]),
                phy2log=rows, method="hand")
    bare.save(tmp_path / "bare.json")
    return {k: str(tmp_path / f) for k, f in (("fit", "fit.npz"), ("held", "held.npz"),
                                              ("mine", "mine.json"), ("bare", "bare.json"),
                                              ("out", "report"))}


def test_report_from_recorded_inputs(run, setup: dict[str, str]) -> None:
    # plan first, trace second: told apart by content
    r = run("compare", setup["mine"], setup["held"], "--baseline", "eplb", "--baseline",
             "contiguous", "--model", "mixtral-8x7b", "--layer", "4", "-o", setup["out"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "compared 3 plan(s) on 1 held-out trace(s), cluster 2x2x3 (4 GPUs), " \
                       "dispatch static"
    assert lines[1].split() == ["plan", "imbalance", "(static)", "sends/token", "GB/1M", "tok",
                                "tokens/s/node", "$/1M", "tok"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["mine", "eplb", "contiguous"]
    assert lines[-1] == (f"wrote 6 files to {setup['out']}: imbalance.png, cross_node_sends.png, "
                         "tokens_per_gpu.png, traffic_matrix.png, report.md, report.html")
    md = (Path(setup["out"]) / "report.md").read_text()
    assert "planned from fit.npz" in md
    assert "## Traffic matrix of layer 4" in md
    assert "| mine | hand | " in md


def test_baseline_from_overrides(run, setup: dict[str, str], tmp_path: Path) -> None:
    out = str(tmp_path / "r2")
    r = run("compare", setup["held"], setup["bare"], "--baseline-from", setup["fit"], "-o", out)
    assert r.exit_code == 0, r.output
    assert [ln.split()[0] for ln in r.stdout.splitlines()[2:4]] == ["bare", "eplb"]
    # 8 experts, top-2: the only preset that fits is Mixtral; the guess is said
    assert r.stderr == "note: model shape guessed: mixtral-8x7b (give --model NAME to choose).\n"


def test_eplb_without_data_is_one_line(run, error, setup: dict[str, str]) -> None:
    error(run("compare", setup["held"], setup["bare"], "-o", setup["out"]),
                    contains="the EPLB baseline needs the traces the plans were made from: give "
                    "--baseline-from TRACE")
    assert not Path(setup["out"]).exists()


def test_contiguous_needs_no_data(run, setup: dict[str, str]) -> None:
    r = run("compare", setup["held"], setup["bare"], "--baseline", "contiguous",
             "-o", setup["out"])
    assert r.exit_code == 0, r.output
    assert (Path(setup["out"]) / "report.html").is_file()


def test_heldout_equal_to_recorded_input_is_refused(run, error, setup: dict[str, str]) -> None:
    error(run("compare", setup["fit"], setup["mine"], "-o", setup["out"]),
                    contains=f"{setup['fit']}: this trace is data {setup['mine']} was made from (its "
                    "input fit.npz): judge the plan on other data, or pass --allow-overlap for "
                    "in-sample figures.")


def test_baselines_only_with_cluster_options(run, error, setup: dict[str, str], tmp_path: Path) -> None:
    out = str(tmp_path / "r3")
    r = run("compare", setup["held"], "--nodes", "2", "--gpus-per-node", "2",
             "--slots-per-gpu", "3", "--baseline", "contiguous", "-o", out)
    assert r.exit_code == 0, r.output
    r = run("compare", setup["held"], "--baseline", "contiguous", "-o", out)
    error(r, contains="Cluster not fully given")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--layer", "9"], "--layer 9 was not replayed"),
        (["--nodes", "1", "--gpus-per-node", "4", "--slots-per-gpu", "3"],
         "the cluster options give 1x4x3 but the plans are for 2x2x3"),
    ],
)
def test_one_line_errors(run, error, setup: dict[str, str], extra: list[str], fragment: str) -> None:
    r = run("compare", setup["held"], setup["bare"], "--baseline", "contiguous",
             "-o", setup["out"], *extra)
    error(r, contains=fragment)


def test_only_plans_and_mismatched_trace(run, error, setup: dict[str, str], tmp_path: Path) -> None:
    error(run("compare", setup["mine"], "-o", setup["out"]),
                    contains="no held-out trace given")
    other = Trace(num_experts=E, topk_ids=np.tile(np.array([0, 1]), (3, 1, 1)), layer_ids=[7])
    write_native(other, tmp_path / "l7.npz")
    error(run("compare", str(tmp_path / "l7.npz"), setup["bare"], "--baseline",
                         "contiguous", "-o", setup["out"]),
                    contains="the trace has layer(s) 7 that the plan lacks")


def test_plan_detection(setup: dict[str, str], tmp_path: Path) -> None:
    from placement.cli.compare_cmd import is_plan_file

    assert is_plan_file(setup["mine"])
    assert not is_plan_file(setup["held"])
    (tmp_path / "counts.json").write_text(json.dumps({"logical_count": [[1, 2]]}))
    assert not is_plan_file(str(tmp_path / "counts.json"))
    assert not is_plan_file(str(tmp_path / "missing.json"))


def test_frontier_writes_its_files_and_section(run, setup: dict[str, str]) -> None:
    r = run("compare", setup["mine"], setup["held"], "--frontier", "--model", "mixtral-8x7b",
            "--baseline", "eplb", "--baseline", "contiguous", "-o", setup["out"])
    assert r.exit_code == 0, r.output
    out = Path(setup["out"])
    assert r.stdout.splitlines()[-1] == (
        f"wrote 8 files to {setup['out']}: imbalance.png, cross_node_sends.png, "
        "tokens_per_gpu.png, traffic_matrix.png, frontier.png, frontier.json, report.md, "
        "report.html")
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    fr = json.loads((out / "frontier.json").read_text())
    labels = [p["label"] for p in fr["points"]]
    assert labels[0] == "optimizer (balance)" and "optimizer (time)" in labels
    # the registry's baselines
    assert labels[-4:] == ["eplb", "eplb-global", "sglang-vec", "contiguous"]
    # the frontier's times are the solver's and the cost model's: the cluster's figures
    assert fr["hardware"]["summary"] == Cluster(2, 2, 3).figures("bf16").summary()
    # planned from the same data and judged on the same trace, EPLB is the same plan as the
    # comparison's EPLB baseline: the same held-out imbalance
    eplb = next(p for p in fr["points"] if p["label"] == "eplb")
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("eplb "))
    assert f"{eplb['imbalance_static']:.4f}" == row.split()[1]
    md = (out / "report.md").read_text()
    assert "## Balance against traffic: the frontier (held out)" in md
    assert "| optimizer (time) | " in md and "![frontier](frontier.png)" in md
    html = (out / "report.html").read_text()
    assert "the frontier (held out)</h2>" in html and html.count("data:image/png;base64") == 5


def test_frontier_on_counts_is_one_line_and_the_report_goes_on(
        run, setup: dict[str, str], tmp_path: Path) -> None:
    held = _trace(2)
    counts = Trace(num_experts=E, counts=held.window_counts(), layer_ids=held.layer_ids,
                   model="toy")
    write_native(counts, tmp_path / "counts.npz")
    r = run("compare", setup["mine"], str(tmp_path / "counts.npz"), "--frontier",
            "--model", "mixtral-8x7b", "-o", setup["out"])
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("no frontier: ")]
    assert said == ["no frontier: the balance/traffic trade-off needs token-level traces "
                    "(planning and held-out); these hold aggregated counts"]
    assert (Path(setup["out"]) / "report.md").exists()
    assert not (Path(setup["out"]) / "frontier.png").exists()


def test_frontier_without_planning_data_is_one_line(run, setup: dict[str, str]) -> None:
    r = run("compare", setup["held"], setup["bare"], "--baseline", "contiguous", "--frontier",
            "-o", setup["out"])
    assert r.exit_code == 0, r.output
    assert "no frontier: it solves the traces the plans were made from; give --baseline-from " \
           "TRACE" in r.stdout.splitlines()


def test_lp_dispatch_and_sglang_vec_baseline(run, setup: dict[str, str]) -> None:
    r = run("compare", setup["mine"], setup["held"], "--baseline", "eplb", "--baseline",
            "sglang-vec", "--model", "mixtral-8x7b", "--dispatch", "lp", "-o", setup["out"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "compared 3 plan(s) on 1 held-out trace(s), cluster 2x2x3 (4 GPUs), " \
                       "dispatch lp"
    assert lines[1].split()[:3] == ["plan", "imbalance", "(lp)"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["mine", "eplb", "sglang-vec"]
