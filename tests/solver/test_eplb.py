"""DeepSeek EPLB port: every reference output reproduced exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from placement.errors import InputError
from placement.solver.eplb import rebalance_experts


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, np.ndarray]:
    with np.load(shared_dir / "reference" / "eplb_reference_outputs.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _full_cases(ref: dict[str, np.ndarray]) -> list[str]:
    return sorted({k.rsplit("__", 1)[0] for k in ref if not k.startswith("readme__")})


def test_readme_case(reference: dict[str, np.ndarray]) -> None:
    num_replicas, groups, nodes, gpus = (int(x) for x in reference["readme__params"])
    phy2log, log2phy, logcnt = rebalance_experts(
        reference["readme__weight"], num_replicas, groups, nodes, gpus
    )
    np.testing.assert_array_equal(phy2log.numpy(), reference["readme__phy2log"])
    np.testing.assert_array_equal(log2phy.numpy(), reference["readme__log2phy"])
    np.testing.assert_array_equal(logcnt.numpy(), reference["readme__logcnt"])


def test_every_full_case_is_listed(reference: dict[str, np.ndarray]) -> None:
    cases = _full_cases(reference)
    assert len(cases) == 6
    for case in cases:
        assert re.fullmatch(r"\w+__P\d+_g\d+_n\d+_G\d+", case), case


@pytest.mark.parametrize("index", range(6))
def test_full_case(reference: dict[str, np.ndarray], shared_dir: Path, index: int) -> None:
    case = _full_cases(reference)[index]
    workload, shape = case.split("__")
    P, g, n, G = (int(x) for x in re.findall(r"\d+", shape))
    np.testing.assert_array_equal(reference[f"{case}__params"], [P, g, n, G])
    path = shared_dir / "traces" / "deepseek_v3_sglang" / f"{workload}.json"
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
