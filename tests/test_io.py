"""Atomic file writing."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_atomic_write_names_the_target_on_failure(tmp_path: Path) -> None:
    from placement._io import atomic_write_text

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        atomic_write_text(blocker / "out.json", "{}")
    assert info.value.filename == str(blocker / "out.json")
    assert "is not a directory" in str(info.value)
    atomic_write_text(tmp_path / "ok" / "out.json", "{}")
    assert (tmp_path / "ok" / "out.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["out.json"]


def test_temporaries_carry_the_pid_and_go_on_any_exception(tmp_path: Path) -> None:
    import os

    from placement._io import atomic_open

    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt), atomic_open(out) as fh:
        fh.write("half")
        names = [p.name for p in tmp_path.iterdir()]
        assert len(names) == 1 and names[0].startswith(f".out.json.{os.getpid()}.")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_later_write_cleans_stale_temporaries_of_its_own_naming_only(tmp_path: Path) -> None:
    import os
    import time

    from placement._io import STALE_S, atomic_write_text

    old = time.time() - STALE_S - 5
    dead = _dead_pid()
    stale = tmp_path / f".out.json.{dead}.abcd1234.tmp"  # a killed writer's: removed
    stale_dir = tmp_path / f".out.json.{dead}.efgh5678.tmp"  # a killed convert's: removed
    fresh = tmp_path / f".out.json.{dead}.ijkl9012.tmp"  # too recent: kept
    live = tmp_path / f".out.json.{os.getppid()}.mnop3456.tmp"  # its writer runs: kept
    other = tmp_path / f".other.json.{dead}.qrst7890.tmp"  # another file's: kept
    mine = tmp_path / "notes.tmp"  # not our naming: kept
    for p in (stale, fresh, live, other, mine):
        p.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "shard-00000.topk_ids.npy").write_bytes(b"x")
    for p in (stale, stale_dir, live, other, mine):
        os.utime(p, (old, old))
    atomic_write_text(tmp_path / "out.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.json", fresh.name, live.name, other.name, mine.name])


def test_writes_go_through_symlinks_and_keep_the_mode(tmp_path: Path) -> None:
    import os
    import stat

    from placement._io import atomic_write_text

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "plan.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "plan.json"
    link.symlink_to(Path("real") / "plan.json")
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.json"
    atomic_write_text(fresh, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_chain_of_missing_directories_is_refused(tmp_path: Path) -> None:
    from placement._io import atomic_write_text

    with pytest.raises(OSError, match="does not exist") as info:
        atomic_write_text(tmp_path / "a" / "b" / "out.json", "{}")
    assert info.value.filename == str(tmp_path / "a" / "b" / "out.json")
    assert not (tmp_path / "a").exists()


def test_sharded_directories_get_the_usual_mode(tmp_path: Path) -> None:
    import os
    import stat

    from placement.routing_traces import load_trace
    from placement.routing_traces.sharded import write_sharded

    write_sharded(load_trace("bundled:mixtral"), tmp_path / "run", shard_tokens=1024)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o777 & ~umask


_SLOW_CONVERT = """
import sys, time
from placement._signals import handling_signals
from placement.routing_traces import load_trace
from placement.routing_traces.sharded import write_sharded

t = load_trace("bundled:mixtral")

def chunks():
    yield t
    time.sleep(120)
    yield t

with handling_signals():
    try:
        write_sharded(chunks(), sys.argv[1], shard_tokens=1024)
    except KeyboardInterrupt as exc:
        sys.exit(exc.exit_code)
"""


@pytest.mark.parametrize("signum", [15, 9], ids=["SIGTERM", "SIGKILL"])
def test_an_interrupted_sharded_write_leaves_no_temporary_directory(tmp_path: Path,
                                                                    signum: int) -> None:
    """SIGTERM: the partial shards go at once; SIGKILL: they stay, and the next write of the
    same directory removes them (once stale)."""
    import os
    import subprocess
    import sys
    import time

    from placement._io import STALE_S
    from placement.routing_traces import load_trace
    from placement.routing_traces.sharded import write_sharded

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, str(out)],
                            stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 120
        while not list(tmp_path.glob(".run.*.tmp/shard-*")) and time.monotonic() < end:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        temps = list(tmp_path.glob(".run.*.tmp"))
        assert len(temps) == 1 and temps[0].name.startswith(f".run.{proc.pid}.")
        proc.send_signal(signum)
        assert proc.wait(30) == (143 if signum == 15 else -9)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not out.exists()
    if signum == 15:
        assert list(tmp_path.iterdir()) == []
        return
    assert list(tmp_path.iterdir()) == temps
    old = time.time() - STALE_S - 5
    os.utime(temps[0], (old, old))
    write_sharded(load_trace("bundled:mixtral"), out, shard_tokens=1024)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_plans_that_differ_only_by_wall_time_have_one_content_digest() -> None:
    from dataclasses import replace

    from placement.cluster import Cluster
    from placement.plan import Plan
    from placement.routing_traces import load_trace
    from placement.solver import ProblemData, SolveOptions, baseline_plan

    problem = ProblemData.from_traces(load_trace("bundled:mixtral"), Cluster(1, 8, 1))
    plan = baseline_plan(problem, SolveOptions(), "eplb")
    assert isinstance(plan, Plan)
    slower = replace(plan, wall_time=plan.wall_time + 12.5)
    assert slower.to_dict() != plan.to_dict()
    assert slower.content_digest() == plan.content_digest()
    moved = replace(plan, settings={**plan.settings, "seed": 99})
    assert moved.content_digest() != plan.content_digest()
