"""Fixtures and small instances for the solver tests."""

from __future__ import annotations

import numpy as np
import pytest

from placement.cluster import Cluster


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def small_cluster() -> Cluster:
    """4 GPUs on 2 nodes, 3 slots each (12 slots)."""
    return Cluster(2, 2, 3)
