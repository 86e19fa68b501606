"""The report's frontier section: one row per plan, ratios to EPLB's sends and time."""

from __future__ import annotations

import numpy as np

from placement.cluster import Cluster
from placement.frontier import Frontier, FrontierPoint
from placement.models import model_preset
from placement.plan import Plan
from placement.report.render import frontier_table


def _frontier(with_eplb: bool = True) -> Frontier:
    rows = np.array([[0, 1, 2, 0, 1, 3, 6, 1, 4, 0, 7, 5]])
    plan = Plan(cluster=Cluster(2, 2, 3), num_experts=8, layer_ids=np.array([0]), phy2log=rows,
                method="hand")
    pts = [FrontierPoint("optimizer (time)", "optimizer", "time", None, 1.1, 0.5, 0.6, 2e-4,
                         plan),
           FrontierPoint("contiguous", "contiguous", None, None, 1.3, 0.8, 1.0, 3e-4, plan)]
    if with_eplb:
        pts.append(FrontierPoint("eplb", "eplb", None, None, 1.2, 1.0, 1.2, 4e-4, plan))
    return Frontier(tuple(pts), plan.cluster, model_preset("mixtral-8x7b"), "two-batch", 100)


def test_rows_and_ratios_to_eplb() -> None:
    header, rows = frontier_table(_frontier())
    assert header == ["plan", "imbalance (static)", "sends/token", "copies/token",
                      "MoE layer time", "sends/eplb", "time/eplb"]
    assert rows[0] == ["optimizer (time)", "1.1000", "0.5000", "0.6000", "200.0 us", "0.500",
                       "0.500"]
    assert rows[2][-2:] == ["1.000", "1.000"]


def test_without_eplb_no_ratio_columns() -> None:
    header, rows = frontier_table(_frontier(with_eplb=False))
    assert header[-1] == "MoE layer time" and all(len(r) == 5 for r in rows)
    # the JSON names the hardware of the times: the cluster's, at the model's precision
    d = _frontier().to_dict()
    assert d["hardware"]["precision"] == "bf16" and d["hardware"]["gpu"] == "h800"
