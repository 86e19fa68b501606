"""The ordered map: results in input order on every backend, user errors pass through."""

from __future__ import annotations

import pytest

from placement.errors import InputError, WorkerError
from placement.parallel import Local, Processes, backend_for_jobs, ordered_map


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    if x == 3:
        raise InputError("Expected x != 3, got 3.")
    if x == 4:
        raise RuntimeError("boom")
    return x


@pytest.mark.parametrize("backend", [Local(), Processes(2)], ids=["local", "processes"])
def test_results_come_back_in_input_order(backend):
    seen: list[tuple[int, int]] = []
    out = ordered_map(_square, list(range(7, -1, -1)), backend, lambda d, t: seen.append((d, t)))
    assert out == [x * x for x in range(7, -1, -1)]
    assert seen[0] == (0, 8) and seen[-1] == (8, 8)


def test_user_errors_pass_through_and_bugs_are_worker_errors():
    with pytest.raises(InputError, match="Expected x != 3"):
        ordered_map(_fail, [1, 3], Processes(2))
    with pytest.raises(WorkerError, match="boom"):
        ordered_map(_fail, [1, 4], Processes(2))


def test_backend_for_jobs():
    assert backend_for_jobs(1, 10) == Local()
    assert backend_for_jobs(4, 1) == Local()
    with pytest.raises(InputError, match=r"Expected jobs >= 1, got 0\."):
        backend_for_jobs(0, 3)
    with pytest.raises(InputError, match=r"Expected workers >= 1, got 0\."):
        Processes(0)
