"""Files that are not what they claim: one line, exit 1, before memory or time runs out.

Every hostile file is made in the test's temporary directory and read by ``python -m
placement`` in a subprocess whose address space is capped (``RLIMIT_AS``), so a regression
fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

LIMIT_AS = 3 << 30  # the interpreter, numpy and torch fit; 6 GB of counts or a PiB do not


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def _placement(*args: object, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "placement", *map(str, args)],
                          capture_output=True, text=True, timeout=120, preexec_fn=_cap,
                          env={**os.environ, **(env or {})})


def _one_line(r: subprocess.CompletedProcess[str], contains: str) -> None:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert contains in lines[0], lines[0]


def _npy(a: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """``a`` as .npy bytes, its header declaring ``shape`` when given."""
    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(a)
    if shape is not None:
        header["shape"] = shape
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(a.tobytes())
    return buf.getvalue()


def test_a_trace_declaring_fifty_million_experts(tmp_path):
    f = tmp_path / "experts.npz"
    np.savez_compressed(f, topk_ids=np.zeros((4, 16, 2), np.int32),
                        num_experts=np.asarray(50_000_000))
    assert f.stat().st_size < 1000
    _one_line(_placement("trace", "inspect", f),
              "declares num_experts = 50,000,000, beyond the 65,536 experts")
    _one_line(_placement("solve", f, "--preset", "deepseek-prefill", "-o", tmp_path / "p.json"),
              "PLACEMENT_MAX_EXPERTS=50000000")


def test_an_npy_header_declaring_petabytes(tmp_path):
    f = tmp_path / "pib.npz"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("topk_ids.npy", _npy(np.zeros(8, np.int64), (475_000_000_000_000,)))
        zf.writestr("num_experts.npy", _npy(np.asarray(8)))
    _one_line(_placement("trace", "inspect", f), "of shape [475000000000000] would take 3.4 PiB")


def test_an_npy_header_declaring_more_than_the_member_holds(tmp_path):
    f = tmp_path / "forged.npz"
    with zipfile.ZipFile(f, "w") as zf:
        zf.writestr("topk_ids.npy", _npy(np.zeros(8, np.int32), (1000, 16, 2)))
        zf.writestr("num_experts.npy", _npy(np.asarray(8)))
    _one_line(_placement("trace", "inspect", f), "truncated or forged")


def _bomb(path: Path, mib: int) -> None:
    """An npz of ``mib`` MiB of compressed zeros (a valid trace: 8 experts, top-2)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("topk_ids.npy", "w") as fh:
            header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.int32))
            header["shape"] = ((mib << 20) // (4 * 16 * 2), 16, 2)
            np.lib.format.write_array_header_1_0(fh, header)
            for _ in range(mib):
                fh.write(bytes(1 << 20))
        zf.writestr("num_experts.npy", _npy(np.asarray(8)))


def test_a_zip_bomb_beyond_the_bound_and_the_way_to_raise_it(tmp_path):
    """Scaled down: 24 MiB of zeros in ~25 kB (the 3 GiB in 3 MB of the probe, a thousandth),
    against a read limit lowered in proportion; raising the limit reads the file."""
    f = tmp_path / "bomb.npz"
    _bomb(f, 24)
    assert f.stat().st_size < 100_000
    _one_line(_placement("trace", "inspect", f, env={"PLACEMENT_READ_LIMIT": "4M"}),
              "would take 24.0 MiB, beyond the read limit of 4.0 MiB")
    ok = _placement("trace", "inspect", f, env={"PLACEMENT_READ_LIMIT": "64M"})
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("wrap", ["{}", '{{"logical_count": {}}}'], ids=["array", "sglang"])
def test_deeply_nested_json_everywhere(tmp_path, wrap):
    f = tmp_path / "deep.json"
    f.write_text(wrap.format("[" * 100_000 + "]" * 100_000))
    _one_line(_placement("trace", "inspect", f), "nested too deeply")
    _one_line(_placement("show", f), "nested too deeply")
    _one_line(_placement("import", f, "--preset", "deepseek-prefill", "-o", tmp_path / "p.json"),
              "nested too deeply")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"format": "placement-sharded-trace", "x": '
                                       + "[" * 100_000 + "]" * 100_000 + "}")
    r = _placement("trace", "inspect", run)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr


def test_library_json_readers_never_raise_recursion_error(tmp_path):
    from placement.errors import PlacementError
    from placement.plan import Plan
    from placement.routing_traces import load_trace

    f = tmp_path / "deep.json"
    f.write_text('{"logical_count": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PlacementError, match="nested too deeply"):
        load_trace(f)
    with pytest.raises(PlacementError, match="nested too deeply"):
        Plan.load(f)


def test_devices_and_fifos_are_never_read(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)  # no writer: opening it would wait for ever
    for cmd in (("trace", "inspect"), ("show",)):
        _one_line(_placement(*cmd, "/dev/zero"), "/dev/zero: a character device, not a file")
        _one_line(_placement(*cmd, fifo), "a FIFO, not a file")
    _one_line(_placement("validate", "/dev/zero", "bundled:mixtral"), "a character device")


def test_library_readers_refuse_special_files(tmp_path):
    from placement.errors import PlacementError
    from placement.plan import Plan
    from placement.routing_traces import load_trace

    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        with pytest.raises(PlacementError, match="not a file"):
            load_trace(path)
        with pytest.raises(PlacementError, match="not a plan file"):
            Plan.load(path)


def test_the_read_limit_environment_variable():
    from placement._io import DEFAULT_READ_LIMIT, allowed_bytes, read_limit

    assert read_limit() == DEFAULT_READ_LIMIT or "PLACEMENT_READ_LIMIT" in os.environ
    old = os.environ.get("PLACEMENT_READ_LIMIT")
    try:
        os.environ["PLACEMENT_READ_LIMIT"] = "64G"
        assert read_limit() == 64 << 30
        os.environ["PLACEMENT_READ_LIMIT"] = "junk"
        assert read_limit() == DEFAULT_READ_LIMIT
        assert allowed_bytes(1 << 30) == 100 << 30  # 100 times the file's size beyond it
    finally:
        if old is None:
            os.environ.pop("PLACEMENT_READ_LIMIT", None)
        else:
            os.environ["PLACEMENT_READ_LIMIT"] = old
