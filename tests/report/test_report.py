"""compare() and write_report(): figures by hand on small cases, files written, errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from placement.cluster import Cluster
from placement.cost import CostOptions, ModelShape
from placement.errors import InputError
from placement.plan import Plan, static_dispatch
from placement.report import (
    NA_TRAFFIC,
    compare,
    format_comparison,
    format_summary_table,
    write_report,
)
from placement.report.figures import make_figures, traffic_layer
from placement.report.render import render_html, render_markdown, shows_deepseek_reference
from placement.routing_traces.trace import Trace

CLUSTER = Cluster(2, 2, 3)  # 4 GPUs, 12 slots
MODEL = ModelShape("toy", 64, 32, 2, 8, 3, 4)
E = 8


def _trace(seed: int, tokens: int = 60, counts: bool = False) -> Trace:
    rng = np.random.default_rng(seed)
    # skewed: experts 0 and 1 are hot
    p = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
    ids = np.stack([np.stack([rng.choice(E, 2, replace=False, p=p) for _ in range(3)])
                    for _ in range(tokens)])
    t = Trace(num_experts=E, topk_ids=ids, layer_ids=[1, 2, 3],
              source_rank=rng.integers(0, 4, tokens))
    if counts:
        return Trace(num_experts=E, counts=t.window_counts(), layer_ids=[1, 2, 3], top_k=2)
    return t


def _plan(rows: list[list[int]], method: str = "mine") -> Plan:
    return Plan(cluster=CLUSTER, num_experts=E, layer_ids=np.array([1, 2, 3]),
                phy2log=np.array(rows), method=method)


# hot experts 0 and 1 get three or four replicas each, on both nodes
MINE = _plan([
    [0, 1, 2, 0, 1, 3, 6, 1, 4, 0, 7, 5],
    [0, 1, 6, 0, 1, 7, 4, 1, 2, 0, 5, 3],
    [0, 1, 4, 0, 1, 5, 2, 1, 6, 0, 3, 7],
])


def _f(x: float | None) -> float:
    assert x is not None
    return x


def _loads_by_hand(plan: Plan, trace: Trace) -> np.ndarray:
    table = static_dispatch(plan.phy2log, CLUSTER, E)
    loads = np.zeros((3, 4))
    for t in range(trace.num_tokens or 0):
        g = int(trace.source_rank[t]) % 4  # type: ignore[index]
        for layer in range(3):
            for e in trace.topk_ids[t, layer]:
                loads[layer, table[layer, g, e] // 3] += 1
    return loads


def test_rows_ratios_and_table() -> None:
    held, fit = _trace(1), _trace(2)
    cmp = compare([held], [MINE], baselines=["eplb", "contiguous"], baseline_inputs=[fit],
                  model=MODEL, labels=["mine"], trace_names=["held.npz"])
    assert cmp.labels == ("mine", "eplb", "contiguous")
    assert cmp.baseline == (False, True, True)
    rows = cmp.rows()
    loads = _loads_by_hand(MINE, held)
    want = float(np.mean(loads.max(1) / loads.mean(1)))
    assert rows[0].imbalance == pytest.approx(want)
    ref = rows[1]
    assert ref.imbalance_ratio == pytest.approx(1.0)
    assert rows[0].imbalance_ratio == pytest.approx(rows[0].imbalance / ref.imbalance)
    assert rows[2].sends_ratio == pytest.approx(
        _f(rows[2].sends_per_token) / _f(ref.sends_per_token))
    # GB per million tokens: sends/token x hidden 64 x (1 + 2) bytes x 3 MoE layers x 1e6 / 1e9
    assert rows[0].cross_node_gb_per_million_tokens == pytest.approx(
        _f(rows[0].sends_per_token) * 64 * 3 * 3 * 1e-3)
    # $ per 1M tokens: 4 GPUs x $2 / 3600 s / tokens per s x 1e6
    assert rows[0].usd_per_million_tokens == pytest.approx(
        4 * 2.0 / 3600 / _f(rows[0].tokens_per_s) * 1e6)
    assert rows[0].tokens_per_s_ratio == pytest.approx(
        _f(rows[0].tokens_per_s) / _f(ref.tokens_per_s))
    assert cmp.best == 0
    table = format_summary_table(cmp).splitlines()
    assert table[0] == ("| plan | method | imbalance (static) | cross-node sends per token | "
                        "cross-node GB per 1M tokens | tokens/s per node (MoE-part bound) | "
                        "$ per 1M tokens (MoE-part bound) |")
    # per node: the cluster's tokens/s over its 2 nodes
    assert rows[0].tokens_per_s_per_node == pytest.approx(_f(rows[0].tokens_per_s) / 2)
    assert f"| {rows[0].tokens_per_s_per_node / 1e3:.1f}k " in table[2] or \
        f"| {rows[0].tokens_per_s_per_node / 1e6:.1f}M " in table[2]
    assert table[2].startswith(f"| mine | mine | {rows[0].imbalance:.4f} "
                               f"({rows[0].imbalance_ratio:.3f}x) | ")
    assert table[3].startswith("| eplb (baseline) | eplb | ")
    assert len(table) == 5
    text = format_comparison(cmp).splitlines()
    assert text[0] == ("compared 3 plan(s) on 1 held-out trace(s), cluster 2x2x3 (4 GPUs), "
                       "dispatch static")
    assert text[2].startswith("mine ")
    assert any(line.startswith("mine against eplb on the held-out data: imbalance ")
               for line in text)


def test_two_traces_are_averaged() -> None:
    a, b = _trace(3), _trace(4, tokens=30)
    one = compare([a], [MINE], baselines=["contiguous"], model=MODEL).rows()[0]
    two = compare([b], [MINE], baselines=["contiguous"], model=MODEL).rows()[0]
    both = compare([a, b], [MINE], baselines=["contiguous"], model=MODEL).rows()[0]
    assert both.imbalance == pytest.approx((one.imbalance + two.imbalance) / 2)
    assert both.sends_per_token == pytest.approx(
        (_f(one.sends_per_token) + _f(two.sends_per_token)) / 2)


def test_write_report_files(tmp_path: Path) -> None:
    cmp = compare([_trace(1)], [MINE], baselines=["eplb", "contiguous"],
                  baseline_inputs=[_trace(2)], model=MODEL, labels=["mine"],
                  cost_options=CostOptions(usd_per_gpu_hour=3.0))
    paths = write_report(cmp, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["cross_node_sends.png", "imbalance.png", "report.html", "report.md",
                     "tokens_per_gpu.png", "traffic_matrix.png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "![Per-layer imbalance](imbalance.png)" in md
    assert re.search(r"^\| mine \| mine \| \d\.\d{4} \(\d\.\d{3}x\) \|", md, re.M)
    assert "DeepSeek's published figures" not in md  # a toy model: see the test below
    assert "price $3 per GPU-hour" in md
    html = (tmp_path / "out" / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "<script" not in html  # nothing fetched from elsewhere
    assert html.count("<tr>") == 1 + 3  # summary header + 3 plans


def test_aggregated_trace_has_no_traffic_columns(tmp_path: Path) -> None:
    cmp = compare([_trace(1, counts=True)], [MINE], baselines=["contiguous"], model=MODEL)
    row = cmp.rows()[0]
    assert row.sends_per_token is None and row.cross_node_gb_per_million_tokens is None
    assert row.compute_only and row.tokens_per_s is not None
    # counts without source ranks: the loads use the even rule, and every label says so
    assert cmp.rules == ("even",) and cmp.imbalance_label == "imbalance (even)"
    assert format_comparison(cmp).splitlines()[0] == (
        "compared 2 plan(s) on 1 held-out trace(s), cluster 2x2x3 (4 GPUs), dispatch even "
        "(static asked; counts without source ranks have only the even rule)")
    assert format_summary_table(cmp).splitlines()[0].startswith("| plan | method | imbalance "
                                                               "(even) |")
    line = format_summary_table(cmp).splitlines()[2]
    assert line.count(NA_TRAFFIC) == 2
    assert "(compute only)" in line
    names = sorted(p.name for p in write_report(cmp, tmp_path))
    assert names == ["imbalance.png", "report.html", "report.md", "tokens_per_gpu.png"]


def test_no_model_means_no_cost() -> None:
    cmp = compare([_trace(1)], [MINE], baselines=[])
    row = cmp.rows()[0]
    assert row.tokens_per_s is None and row.cross_node_gb_per_million_tokens is None
    assert row.sends_per_token is not None
    assert any("model shape unknown" in m for m in cmp.messages)
    assert cmp.reference is None


def test_layer_choice(tmp_path: Path) -> None:
    cmp = compare([_trace(1)], [MINE], baselines=["contiguous"], model=MODEL)
    paths = write_report(cmp, tmp_path, layer=2)
    assert "## Traffic matrix of layer 2" in (tmp_path / "report.md").read_text()
    assert len(paths) == 6
    with pytest.raises(InputError, match=r"--layer 7 was not replayed \(replayed layers: 1-3"):
        write_report(cmp, tmp_path / "x", layer=7)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baselines": ["eplb"]}, "baseline eplb needs traces to plan from: give --baseline-from"),
        ({"baselines": ["magic"]}, "Unknown baseline 'magic'"),
        ({"baselines": [], "plans": []}, "nothing to compare"),
        ({"cluster": Cluster(1, 4, 3)}, "the cluster options give 1x4x3 but the plans are for "
                                        "2x2x3"),
        ({"plans": [], "baselines": ["contiguous"]}, "no plan given: give cluster options"),
        ({"traces": []}, "compare needs at least one held-out trace"),
        ({"dispatch": "nearest"}, "Expected dispatch in static, even, plan"),
        ({"traces": [_trace(1), Trace(num_experts=E, topk_ids=np.zeros((2, 1, 2), dtype=int),
                                      layer_ids=[1])]},
         "held-out trace 2 has other layers than trace 1"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    args: dict = {"traces": [_trace(1)], "plans": [MINE]}
    args.update(kwargs)
    traces, plans = args.pop("traces"), args.pop("plans")
    with pytest.raises(InputError, match=message):
        compare(traces, plans, **args)


def test_reference_is_the_eplb_baseline_even_when_a_plan_is_called_eplb() -> None:
    cmp = compare([_trace(1)], [MINE], baselines=["contiguous", "eplb"],
                  baseline_inputs=[_trace(2)], labels=["eplb"])
    assert cmp.labels == ("eplb", "contiguous", "eplb#2")
    assert cmp.reference == 2


def test_plans_for_different_clusters() -> None:
    other = Plan(cluster=Cluster(1, 4, 3), num_experts=E, layer_ids=np.array([1, 2, 3]),
                 phy2log=MINE.phy2log)
    with pytest.raises(InputError, match=r"plans are for different clusters \(2x2x3 and 1x4x3\)"):
        compare([_trace(1)], [MINE, other], baselines=[])


def _contiguous_rows() -> np.ndarray:
    cmp = compare([_trace(1)], [MINE], baselines=["contiguous"], model=MODEL)
    return cmp.plans[1].phy2log


def test_traffic_matrix_shows_the_layer_where_the_plans_differ_most(tmp_path: Path) -> None:
    contiguous = _contiguous_rows()
    # the plan is the baseline in layers 1 and 3 and differs in layer 2 only
    plan = _plan([contiguous[0].tolist(), MINE.phy2log[1].tolist(), contiguous[2].tolist()])
    cmp = compare([_trace(1)], [plan], baselines=["contiguous"], model=MODEL, labels=["mine"])
    assert traffic_layer(cmp, [cmp.best, 1], None)[0] == 1
    write_report(cmp, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Traffic matrix of layer 2" in md
    assert "Decoder layer 2: the layer where mine and contiguous differ most (" in md
    # the same plans in every layer: the busiest layer, and the caption says why
    same = compare([_trace(1)], [_plan(contiguous.tolist())], baselines=["contiguous"],
                   model=MODEL, labels=["same"])
    assert traffic_layer(same, [same.best, 1], None)[1] == (
        "the busiest layer; the two plans route every layer the same")


def test_gpu_axes_have_whole_number_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    import placement.report.figures as figures

    drawn: list[object] = []
    real = figures._png
    monkeypatch.setattr(figures, "_png", lambda fig: (drawn.append(fig), real(fig))[1])
    cmp = compare([_trace(1)], [MINE], baselines=["contiguous"], model=MODEL)
    make_figures(cmp)
    checked = 0
    for fig in drawn:
        for ax in fig.axes:  # type: ignore[attr-defined]
            for axis, label, lim in ((ax.xaxis, ax.get_xlabel(), ax.get_xlim()),
                                     (ax.yaxis, ax.get_ylabel(), ax.get_ylim())):
                if not label.startswith(("GPU", "destination GPU", "source GPU")):
                    continue
                lo, hi = sorted(lim)
                shown = [t for t in axis.get_ticklocs() if lo <= t <= hi]
                assert shown and all(float(t).is_integer() for t in shown), (label, shown)
                checked += 1
    assert checked == 2 + 2 * 2  # tokens-per-GPU x axes (2 panels), traffic matrix x and y


def test_deepseek_published_figures_only_in_deepseek_reports(tmp_path: Path) -> None:
    from placement.models import MODEL_PRESETS

    cmp = compare([_trace(1)], [MINE], baselines=["contiguous"], model=MODEL)
    assert not shows_deepseek_reference(cmp)
    write_report(cmp, tmp_path / "toy")
    assert "DeepSeek's published" not in (tmp_path / "toy" / "report.md").read_text()
    assert "DeepSeek's published" not in (tmp_path / "toy" / "report.html").read_text()
    v3 = dataclasses.replace(cmp, model=MODEL_PRESETS["deepseek-v3"])
    assert shows_deepseek_reference(v3)
    assert "## DeepSeek's published figures" in render_markdown(v3, [])
    assert "<h2>DeepSeek's published figures" in render_html(v3, [])
    # no model: only on DeepSeek's own deployments
    unknown = dataclasses.replace(cmp, model=None)
    assert not shows_deepseek_reference(unknown)
