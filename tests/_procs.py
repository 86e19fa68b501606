"""Processes seen from /proc, for the tests that signal real commands (Linux only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HAVE_PROC = Path("/proc/self/stat").exists()


def _ppid_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(name))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now."""
    m, out, todo = _ppid_map(), set(), [pid]
    while todo:
        for c in m.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def kill_all(pids: set[int]) -> None:
    """SIGKILL what is left of ``pids`` (test clean-up, by pid)."""
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def start(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[bytes]:
    """``python -m placement ARGS`` in ``cwd``, stdout dropped, stderr kept."""
    return subprocess.Popen([sys.executable, "-m", "placement", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env or os.environ.copy())


def wait_for_workers(proc: subprocess.Popen[bytes], n: int, seen: set[int],
                     limit_s: float = 120.0) -> bool:
    """Poll until ``proc`` has ``n`` descendants (adding every one seen to ``seen``); False if
    it ended first or ``limit_s`` passed."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None:
        kids = descendants(proc.pid)
        seen |= kids
        if len(kids) >= n:
            return True
        time.sleep(0.05)
    return False


def gone_within(pids: set[int], limit_s: float) -> set[int]:
    """The pids of ``pids`` still running after up to ``limit_s`` seconds."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return set()
        time.sleep(0.05)
    return {p for p in pids if alive(p)}
