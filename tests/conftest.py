"""Fixtures shared by every test area."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (read-only real data); a missing folder fails the test."""
    if not (SHARED / "traces").is_dir():
        pytest.fail(f"shared data not found at {SHARED} (expected ../shared beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray of 2 CPUs, started once for the session (``placement.parallel.Ray()`` backends
    use it; the CLI's ``shutdown_ray`` leaves it running: this fixture started it)."""
    ray = pytest.importorskip("ray")
    from placement.parallel import ray_init_args

    if not ray.is_initialized():
        ray.init(**ray_init_args(2))
    yield ray
    ray.shutdown()
