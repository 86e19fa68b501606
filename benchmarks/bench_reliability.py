"""Reliability figures (issue 22): signals at several moments of parallel commands, and
hostile input files.

Signals: each command runs with ``--jobs 2`` (or ``--ray --workers 2``); once its workers run,
plus a delay, it gets SIGINT, SIGTERM, or two SIGINTs 0.1 s apart. Measured: the exit status,
seconds from the (first) signal to the main process's exit and to the last process of the
command gone, the lines on stderr, and ``.tmp`` files left in its directory.

Hostile files: each is read by a fresh ``placement`` process; measured: exit status, stderr
lines, wall seconds and peak RSS (``wait4``).

    nice python benchmarks/bench_reliability.py [--quick] [--ray] [--json out.json]

Linux only (``/proc``). Targets: every process gone within 2 s of the signal, exit 130/143,
one line; each hostile file exit 1, one line, < 1 s, < 200 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

PY = [sys.executable, "-m", "placement"]


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------
def _ppids() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            out.setdefault(int(stat[stat.rfind(b")") + 2:].split()[1]), []).append(int(name))
    return out


def _descendants(pid: int) -> set[int]:
    m, out, todo = _ppids(), set(), [pid]
    while todo:
        for c in m.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def signal_run(args: list[str], cwd: Path, sigs: list[int], delay: float, workers: int
               ) -> dict[str, Any]:
    proc = subprocess.Popen(PY + args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: set[int] = set()
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
        kids = _descendants(proc.pid)
        seen |= kids
        if len(kids) >= workers:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return {"error": "ended before its workers ran", "rc": proc.returncode}
    end = time.monotonic() + delay
    while time.monotonic() < end:
        seen |= _descendants(proc.pid)
        time.sleep(0.02)
    seen |= _descendants(proc.pid)
    sent = time.monotonic()
    for k, s in enumerate(sigs):
        if k:
            time.sleep(0.1)
        proc.send_signal(s)
    rc = None
    while time.monotonic() - sent < 60:
        rc = proc.poll()
        if rc is not None:
            break
        time.sleep(0.005)
    exit_s = time.monotonic() - sent
    while any(_alive(p) for p in seen) and time.monotonic() - sent < 60:
        time.sleep(0.005)
    gone_s = time.monotonic() - sent
    left = [p for p in seen if _alive(p)]
    for p in left + ([proc.pid] if proc.poll() is None else []):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    temps = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*.tmp"))
    return {"rc": rc, "exit_s": round(exit_s, 2), "all_gone_s": round(gone_s, 2),
            "processes": len(seen), "left": len(left), "stderr_lines": len(err.splitlines()),
            "traceback": "Traceback" in err, "temps_left": temps,
            "stderr": err.strip()[:200]}


# ---------------------------------------------------------------------------------------------
# hostile files
# ---------------------------------------------------------------------------------------------
def _npy(a: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(a)
    if shape is not None:
        header["shape"] = shape
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(a.tobytes())
    return buf.getvalue()


def make_hostile(d: Path, bomb_mib: int) -> dict[str, Path]:
    files: dict[str, Path] = {}
    files["experts-5e7.npz"] = d / "experts.npz"
    np.savez_compressed(files["experts-5e7.npz"], topk_ids=np.zeros((4, 16, 2), np.int32),
                        num_experts=np.asarray(50_000_000))
    files["npy-3.8PB.npz"] = d / "pib.npz"
    with zipfile.ZipFile(files["npy-3.8PB.npz"], "w") as zf:
        zf.writestr("topk_ids.npy", _npy(np.zeros(8, np.int64), (475_000_000_000_000,)))
        zf.writestr("num_experts.npy", _npy(np.asarray(8)))
    files[f"zip-bomb-{bomb_mib}MiB.npz"] = d / "bomb.npz"
    with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("topk_ids.npy", "w", force_zip64=True) as fh:
            header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.int32))
            header["shape"] = ((bomb_mib << 20) // 128, 16, 2)
            np.lib.format.write_array_header_1_0(fh, header)
            zero = bytes(1 << 20)
            for _ in range(bomb_mib):
                fh.write(zero)
        zf.writestr("num_experts.npy", _npy(np.asarray(8)))
    files["nested-json"] = d / "deep.json"
    files["nested-json"].write_text('{"logical_count": ' + "[" * 200_000 + "]" * 200_000 + "}")
    files["/dev/zero"] = Path("/dev/zero")
    files["fifo"] = d / "fifo"
    os.mkfifo(files["fifo"])
    return files


def hostile_run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.Popen(PY + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **env})
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "stderr_lines": len(err.splitlines()), "line": err.strip()[:160]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer moments")
    ap.add_argument("--ray", action="store_true", help="also solve --ray --workers 2")
    ap.add_argument("--no-signals", action="store_true")
    ap.add_argument("--no-hostile", action="store_true")
    ap.add_argument("--only", default="", help="only the commands whose name holds this")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results: dict[str, Any] = {"signals": [], "hostile": []}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if not a.no_hostile:
            files = make_hostile(d, 3072)  # the probe's 3 GiB in ~3 MB, at full size
            base = hostile_run(["--version"], {})  # the interpreter's start, for comparison
            results["hostile"].append({"file": "(none: placement --version)", **base})
            print(json.dumps(results["hostile"][-1]), flush=True)
            for name, f in files.items():
                for cmd in (["trace", "inspect"], ["show"]):
                    r = hostile_run([*cmd, str(f)], {})
                    results["hostile"].append({"file": name, "command": " ".join(cmd), **r})
                    print(json.dumps(results["hostile"][-1]), flush=True)
        if not a.no_signals:
            # a sharded trace big enough for validate --jobs 2 to run for seconds, and a plan
            subprocess.run([*PY, "solve", "bundled:deepseek-v3#first-half", "--preset",
                                 "deepseek-prefill", "-o", str(d / "plan.json"), "--method",
                                 "eplb"], check=True, capture_output=True)
            subprocess.run([sys.executable, "-c", (
                "import numpy as np, sys\n"
                "from placement.routing_traces import load_trace\n"
                "from placement.routing_traces.trace import Trace\n"
                "from placement.routing_traces.sharded import write_sharded\n"
                "t = load_trace('bundled:deepseek-v3#second-half')\n"
                "big = Trace(num_experts=t.num_experts, topk_ids=np.tile(t.topk_ids, (100, 1, 1)),"
                " layer_ids=t.layer_ids, model=t.model, num_hidden_layers=t.num_hidden_layers)\n"
                "write_sharded(big, sys.argv[1], shard_tokens=20480)\n"), str(d / "big")],
                check=True)
            commands = {
                "solve --jobs 2": (["solve", "bundled:deepseek-v3", "--preset",
                                    "deepseek-prefill", "-o", "p.json", "--jobs", "2"], 2),
                "validate --jobs 2": (["validate", str(d / "plan.json"), str(d / "big"),
                                       "--jobs", "2", "--allow-overlap"], 2),
                "sweep --jobs 2": (["sweep", "bundled:deepseek-v3#first-half", "--heldout",
                                    "bundled:deepseek-v3#second-half", "--redundant", "0,32",
                                    "--nodes", "4,8", "--gpu", "h800", "--model", "deepseek-v3",
                                    "--jobs", "2", "-o", "sweep"], 3),
            }
            if a.ray:
                commands["solve --ray --workers 2"] = (
                    ["solve", "bundled:deepseek-v3", "--preset", "deepseek-prefill", "-o",
                     "p.json", "--ray", "--workers", "2"], 6)
            delays = [0.0, 2.0] if a.quick else [0.0, 0.5, 2.0, 5.0]
            kinds = {"SIGINT": [signal.SIGINT], "SIGTERM": [signal.SIGTERM],
                     "SIGINT x2": [signal.SIGINT, signal.SIGINT]}
            for cname, (args, workers) in commands.items():
                if a.only not in cname:
                    continue
                for delay in delays:
                    for kname, sigs in kinds.items():
                        run_dir = d / f"run-{len(results['signals'])}"
                        run_dir.mkdir()
                        r = signal_run(args, run_dir, sigs, delay, workers)
                        row = {"command": cname, "signal": kname, "after_workers_s": delay, **r}
                        results["signals"].append(row)
                        print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
