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


def _nap_or_fail(x: int) -> int:
    import time

    if x == 0:
        time.sleep(0.2)
        raise InputError("Expected x != 0, got 0.")
    time.sleep(60)
    return x


def test_an_error_stops_the_pool_without_waiting_for_running_pieces():
    """A piece's error cancels the rest and terminates the workers: the map does not wait the
    60 s the other pieces would take, and no worker is left."""
    import multiprocessing

    with pytest.raises(InputError, match="Expected x != 0"):
        ordered_map(_nap_or_fail, [0, 1, 2, 3], Processes(2))
    assert multiprocessing.active_children() == []


def test_workers_ignore_sigint_and_know_their_parent():
    """Worker set-up: SIGINT ignored (Ctrl-C reaches the whole process group, the parent
    decides), SIGTERM the default action."""
    import os
    import signal

    assert ordered_map(_signal_dispositions, [0, 1], Processes(2)) == [
        (signal.SIG_IGN, signal.SIG_DFL, os.getpid())] * 2


def _signal_dispositions(_: int) -> tuple[object, object, int]:
    import os
    import signal

    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), os.getppid()
