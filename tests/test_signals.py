"""Signals sent to real commands: one line, exit 128 + signal, no process and no file left.

Each test starts ``python -m placement ...`` with ``--jobs 2``, waits until its workers run,
signals the main pid and then checks, by pid, that every process it saw is gone; whatever is
left is SIGKILLed by pid at the end (a failure never leaves workers on the machine).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _procs import HAVE_PROC, descendants, gone_within, kill_all, start, wait_for_workers

pytestmark = pytest.mark.skipif(not HAVE_PROC, reason="needs /proc (Linux)")

SOLVE = ["solve", "bundled:deepseek-v3", "--preset", "deepseek-prefill", "-o", "plan.json",
         "--jobs", "2"]
SWEEP = ["sweep", "bundled:deepseek-v3#first-half", "--heldout",
         "bundled:deepseek-v3#second-half", "--redundant", "0,32", "--nodes", "4,8",
         "--gpu", "h800", "--model", "deepseek-v3", "--jobs", "2", "-o", "sweep"]


def _interrupt(tmp_path: Path, args: list[str], signals: list[signal.Signals],
               workers: int = 2, after_s: float = 0.5) -> tuple[int, str, set[int]]:
    """Run ``placement ARGS`` in ``tmp_path``, send ``signals`` (0.1 s apart) once it has
    ``workers`` descendants (+ ``after_s``); return (exit status, stderr, pids still running
    5 s after it ended)."""
    proc = start(args, tmp_path)
    seen: set[int] = set()
    try:
        if not wait_for_workers(proc, workers, seen):
            pytest.fail(f"the command ended (or never started {workers} workers): "
                        f"{proc.wait(30)} {proc.stderr.read().decode()[-500:]}")
        time.sleep(after_s)
        seen |= descendants(proc.pid)
        for s in signals:
            proc.send_signal(s)
            time.sleep(0.1)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the command did not end within 20 s of the signal")
        left = gone_within(seen, 5.0)
        return rc, proc.stderr.read().decode(), left
    finally:
        kill_all(seen | {proc.pid})
        proc.wait(5)


def _no_temp_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_solve_jobs_2_stops_on_the_first_signal(tmp_path, sig):
    rc, err, left = _interrupt(tmp_path, SOLVE, [sig])
    assert rc == 128 + sig
    assert err == "interrupted\n"
    assert not left
    assert not (tmp_path / "plan.json").exists()
    assert _no_temp_files(tmp_path) == []


@pytest.mark.slow
def test_a_second_sigint_exits_at_once(tmp_path):
    rc, err, left = _interrupt(tmp_path, SOLVE, [signal.SIGINT, signal.SIGINT])
    assert rc == 130
    assert err == "interrupted\n"
    assert not left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sweep_jobs_2_leaves_no_worker_tracker_or_traceback(tmp_path, sig):
    # spawned workers and multiprocessing's resource_tracker: three descendants
    rc, err, left = _interrupt(tmp_path, SWEEP, [sig], workers=3, after_s=1.0)
    assert rc == 128 + sig
    assert err == "interrupted\n"  # no traceback from a worker, no resource_tracker warning
    assert not left
    assert _no_temp_files(tmp_path) == []


@pytest.mark.slow
def test_workers_end_when_the_parent_is_sigkilled(tmp_path):
    proc = start(SOLVE, tmp_path)
    seen: set[int] = set()
    try:
        assert wait_for_workers(proc, 2, seen)
        proc.kill()
        proc.wait(10)
        assert not gone_within(seen, 5.0)
    finally:
        kill_all(seen)


_POOL = textwrap.dedent("""
    import os, sys, time
    from placement.parallel import Processes, ordered_map

    def nap(x):
        time.sleep(60)
        return x

    print(os.getpid(), flush=True)
    ordered_map(nap, [1, 2, 3, 4], Processes(2))
""")


def test_pool_workers_end_with_a_sigkilled_parent_library_use(tmp_path):
    """The library alone (no CLI, fork start method): the workers notice their parent died."""
    proc = subprocess.Popen([sys.executable, "-c", _POOL], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: set[int] = set()
    try:
        assert wait_for_workers(proc, 2, seen, limit_s=60)
        proc.kill()
        proc.wait(10)
        assert not gone_within(seen, 5.0)
        assert b"Traceback" not in proc.stderr.read()
    finally:
        kill_all(seen | {proc.pid})


_SWALLOW = textwrap.dedent("""
    import sys, time
    from placement._signals import handling_signals

    with handling_signals():
        while True:  # a library that swallows KeyboardInterrupt
            try:
                print("ready", flush=True)
                time.sleep(30)
            except KeyboardInterrupt:
                pass
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_swallowed_signal_still_ends_the_process(tmp_path, sig):
    """The first signal's way out stalls (the exception is caught and dropped): the grace timer
    ends the process as a second signal would."""
    proc = subprocess.Popen([sys.executable, "-c", _SWALLOW], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        assert proc.wait(20) == 128 + sig
        assert proc.stderr is not None and proc.stderr.read() == b"interrupted\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
