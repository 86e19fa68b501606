"""Output rules, checked before the work starts: never an input, through symlinks to their
target, devices and FIFOs written in place, a missing directory refused, every error naming the
file (docs/reliability.md)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

SOLVE = ("--nodes", 1, "--gpus-per-node", 8, "--slots-per-gpu", 1)


@pytest.fixture
def trace(tmp_path: Path, run) -> Path:
    out = tmp_path / "t.npz"
    assert run("trace", "convert", "bundled:mixtral", "-o", out).exit_code == 0
    return out


def test_an_output_that_is_an_input_is_refused(tmp_path, trace, run, error):
    before = trace.read_bytes()
    r = run("solve", f"{trace}#first-half", *SOLVE, "-o", trace)
    error(r, f"error: {trace}: is also an input ({trace}#first-half); write the output to "
             "another path.")
    link = tmp_path / "alias.npz"  # the same file by another name
    link.symlink_to(trace)
    error(run("trace", "convert", trace, "-o", link), contains="is also an input")
    hard = tmp_path / "hard.npz"
    os.link(trace, hard)
    error(run("trace", "convert", hard, "-o", trace), contains="is also an input")
    assert trace.read_bytes() == before


def test_a_plan_exported_over_itself_is_refused(tmp_path, trace, run, error):
    plan = tmp_path / "plan.json"
    assert run("solve", trace, *SOLVE, "-o", plan).exit_code == 0
    before = plan.read_bytes()
    error(run("export", plan, "--format", "sglang", "-o", plan), contains="is also an input")
    assert plan.read_bytes() == before


def test_a_symlinked_output_updates_its_target_and_keeps_its_mode(tmp_path, trace, run):
    target = tmp_path / "data" / "real.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    r = run("trace", "convert", trace, "-o", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert np.load(target)["topk_ids"].shape[0] == 2048
    assert [p.name for p in target.parent.iterdir()] == ["real.npz"]  # no temporary left


def test_a_fifo_output_is_written_in_place(tmp_path, trace, run):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = run("trace", "convert", trace, "-o", fifo)
    reader.join(30)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a FIFO, not replaced by a file
    assert got and got[0][:2] == b"PK"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo", "t.npz"]


def test_dev_null_stays_a_device(trace, run):
    r = run("trace", "convert", trace, "-o", "/dev/null")
    assert r.exit_code == 0, r.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file(trace, run, error):
    error(run("trace", "convert", trace, "-o", "/dev/full"),
          "error: /dev/full: No space left on device")


def test_a_missing_directory_is_refused_before_the_work(tmp_path, trace, run, error):
    out = tmp_path / "no" / "such" / "plan.json"
    error(run("solve", trace, *SOLVE, "-o", out),
          f"error: {out}: directory {out.parent} does not exist (create it first: mkdir -p "
          f"{out.parent}).")
    assert not (tmp_path / "no").exists()
    error(run("sweep", trace, "--heldout", trace, "--allow-overlap", "-o", out.parent),
          contains="does not exist")


def test_an_unwritable_output_is_found_before_the_work(trace, run, error):
    error(run("solve", trace, *SOLVE, "-o", "/proc/plan.json"),
          contains="error: /proc/plan.json: cannot write in directory /proc")


def test_special_inputs_are_refused_before_reading(tmp_path, run, error):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    error(run("trace", "inspect", fifo), f"error: {fifo}: a FIFO, not a file; give a trace, "
                                         "plan or engine file, or a trace directory.")
    error(run("validate", "/dev/zero", fifo), contains="/dev/zero: a character device")
    error(run("show", "/dev/zero"), contains="/dev/zero: a character device")


@pytest.mark.parametrize("kind", ["token-level", "counts"])
def test_validate_refuses_a_trace_without_tokens_as_solve_does(tmp_path, trace, run, error,
                                                              kind):
    plan = tmp_path / "plan.json"
    assert run("solve", trace, *SOLVE, "-o", plan).exit_code == 0
    empty = tmp_path / "empty.npz"
    if kind == "counts":
        np.savez(empty, counts=np.zeros((32, 8), np.int64))
    else:
        np.savez(empty, topk_ids=np.zeros((0, 32, 2), np.int32), num_experts=np.asarray(8))
    error(run("validate", plan, empty), "error: The trace routes no tokens: nothing to replay.")
    error(run("solve", empty, *SOLVE, "-o", tmp_path / "p.json"),
          "error: The traces route no tokens.")
