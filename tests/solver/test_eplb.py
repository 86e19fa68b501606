"""DeepSeek EPLB port: every reference output reproduced exactly (the README example always; the
full DeepSeek-V3 cases from the real-data folder's reference outputs, skipped where it is
absent), and EPLB's invariants on the shipped DeepSeek-V3 workloads at the same shapes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from placement.errors import InputError
from placement.routing_traces import load_trace
from placement.solver.eplb import rebalance_experts

# The example of DeepSeek's EPLB README (github.com/deepseek-ai/EPLB) and the output of its
# rebalance_experts there: 2 layers x 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs.
README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
README_LOG2PHY = [[[12, -1], [15, 13], [11, -1], [6, -1], [7, 5], [0, 2], [1, -1], [3, -1],
                   [4, -1], [9, -1], [8, 10], [14, -1]],
                  [[13, -1], [15, 11], [8, -1], [14, -1], [9, -1], [10, 12], [2, 4], [0, -1],
                   [6, 3], [7, -1], [1, -1], [5, -1]]]
README_LOGCNT = [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1], [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]


@pytest.fixture(scope="module")
def reference(real_data) -> dict[str, np.ndarray]:
    """The real-data folder's reference outputs of DeepSeek's own EPLB on the real DeepSeek-V3
    SGLang workloads (skips where they are absent)."""
    path = real_data("reference/eplb_reference_outputs.npz", "traces/deepseek_v3_sglang")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _full_cases(ref: dict[str, np.ndarray]) -> list[str]:
    return sorted({k.rsplit("__", 1)[0] for k in ref if not k.startswith("readme__")})


def test_readme_case() -> None:
    phy2log, log2phy, logcnt = rebalance_experts(np.array(README_WEIGHT), 16, 4, 2, 8)
    np.testing.assert_array_equal(phy2log.numpy(), README_PHY2LOG)
    np.testing.assert_array_equal(log2phy.numpy(), README_LOG2PHY)
    np.testing.assert_array_equal(logcnt.numpy(), README_LOGCNT)


def test_readme_case_is_the_reference_output(reference: dict[str, np.ndarray]) -> None:
    assert reference["readme__params"].tolist() == [16, 4, 2, 8]
    np.testing.assert_array_equal(reference["readme__weight"], README_WEIGHT)
    np.testing.assert_array_equal(reference["readme__phy2log"], README_PHY2LOG)
    np.testing.assert_array_equal(reference["readme__log2phy"], README_LOG2PHY)
    np.testing.assert_array_equal(reference["readme__logcnt"], README_LOGCNT)


@pytest.mark.parametrize(("P", "g", "n", "G"),
                         [(288, 8, 4, 32), (288, 8, 18, 144), (288, 8, 1, 72), (256, 8, 4, 32),
                          (320, 8, 8, 64)])
def test_invariants_on_shipped_workloads(P: int, g: int, n: int, G: int) -> None:
    """The reference cases' shapes on the shipped DeepSeek-V3 workloads: every expert served,
    replica counts and maps agree, hot experts
    get the replicas, and with groups packed to nodes (g % n == 0) a group stays on one node."""
    weight = load_trace("bundled:deepseek-v3-workloads").window_counts()[0]  # [58, 256]
    L, E = weight.shape
    phy2log, log2phy, logcnt = (x.numpy() for x in rebalance_experts(weight, P, g, n, G))
    assert phy2log.shape == (L, P) and logcnt.shape == (L, E)
    assert (logcnt >= 1).all() and (logcnt.sum(axis=1) == P).all()
    valid = log2phy >= 0
    np.testing.assert_array_equal(valid.sum(axis=2), logcnt)
    back = np.take_along_axis(phy2log, np.where(valid, log2phy, 0).reshape(L, -1), axis=1)
    assert (back.reshape(log2phy.shape)[valid] == np.broadcast_to(
        np.arange(E)[None, :, None], log2phy.shape)[valid]).all()
    for layer in range(L):
        np.testing.assert_array_equal(np.bincount(phy2log[layer], minlength=E), logcnt[layer])
        # the hottest expert has at least as many replicas as the coldest
        assert logcnt[layer, weight[layer].argmax()] >= logcnt[layer, weight[layer].argmin()]
        if g % n == 0 and n > 1:
            node_of_slot = np.arange(P) // (P // n)
            group = phy2log[layer] // (E // g)
            for k in range(g):
                assert len(set(node_of_slot[group == k])) == 1


def test_every_full_case_is_listed(reference: dict[str, np.ndarray]) -> None:
    cases = _full_cases(reference)
    assert len(cases) == 6
    for case in cases:
        assert re.fullmatch(r"\w+__P\d+_g\d+_n\d+_G\d+", case), case


@pytest.mark.parametrize("index", range(6))
def test_full_case(reference: dict[str, np.ndarray], real_trace, index: int) -> None:
    case = _full_cases(reference)[index]
    workload, shape = case.split("__")
    P, g, n, G = (int(x) for x in re.findall(r"\d+", shape))
    np.testing.assert_array_equal(reference[f"{case}__params"], [P, g, n, G])
    path = real_trace(f"deepseek_v3_sglang/{workload}.json")
    weight = np.asarray(json.loads(path.read_text())["logical_count"])[3:61]
    phy2log, _, logcnt = rebalance_experts(weight, P, g, n, G)
    np.testing.assert_array_equal(phy2log.numpy(), reference[f"{case}__phy2log"])
    np.testing.assert_array_equal(logcnt.numpy(), reference[f"{case}__logcnt"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones((1, 8)), 6, 1, 1, 2), "num_replicas"),
        ((np.ones((1, 8)), 9, 1, 1, 2), "multiple of num_gpus"),
        ((np.ones((1, 8)), 8, 1, 3, 4), "multiple of num_nodes"),
        ((-np.ones((1, 8)), 8, 1, 1, 2), "non-negative"),
        ((np.ones(8), 8, 1, 1, 2), "weight"),
    ],
)
def test_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match):
        rebalance_experts(*args)
