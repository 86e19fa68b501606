"""What a real Ray cluster costs: start-up, connection, per-task overhead, and a solve, on the
two-raylet token-authenticated cluster of tests/test_ray_cluster.py (``ray start --head`` +
``ray start --address`` on this machine, one CPU each).

    nice python benchmarks/bench_ray_cluster.py [--tasks 200]

Prints one line per figure; every figure is measured here, in this run (the local figures are
the baseline of the same run).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_ray_cluster import two_raylets  # noqa: E402

_CLIENT = """
import json, os, sys, time
from placement.parallel import Local, Ray, check_ray_address, ordered_map, ray_task_nodes
address, n = sys.argv[1], int(sys.argv[2])
out = {}
t = time.perf_counter(); check_ray_address(address); out["handshake_s"] = time.perf_counter() - t
import ray
t = time.perf_counter()
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
out["connect_s"] = time.perf_counter() - t
backend = Ray(address=address)
t = time.perf_counter(); ordered_map(abs, range(8), backend); out["warm_up_s"] = time.perf_counter() - t
for name, b in (("local", Local()), ("ray", backend), ("ray_1", Ray(address=address, workers=1))):
    t = time.perf_counter(); ordered_map(abs, range(n), b); out[name + "_s"] = time.perf_counter() - t
import time as _t
from placement import parallel
parallel._TASK_NODES.clear()
for name, b in (("sleep_local", Local()), ("sleep_ray", backend)):
    t = time.perf_counter(); ordered_map(_t.sleep, [0.25] * 8, b); out[name + "_s"] = time.perf_counter() - t
out["sleep_nodes"] = ray_task_nodes()
out["nodes"] = ray_task_nodes()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200, help="trivial tasks per map")
    args = ap.parse_args()
    token = secrets.token_hex(32)
    home = tempfile.mkdtemp(prefix="plrch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=home, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]),
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    t0 = time.perf_counter()
    with two_raylets(env) as (address, _):
        up = time.perf_counter() - t0
        print(f"cluster start (head + 1 worker raylet, both alive): {up:.1f} s")
        import json

        done = subprocess.run([sys.executable, "-c", _CLIENT, address, str(args.tasks)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise SystemExit(done.stderr)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        n = args.tasks
        print(f"handshake (check_ray_address): {r['handshake_s']:.2f} s; "
              f"ray.init(address): {r['connect_s']:.2f} s; first map of 8 tasks "
              f"(worker start-up): {r['warm_up_s']:.2f} s")
        for name in ("ray", "ray_1"):
            per = (r[name + "_s"] - r["local_s"]) / n * 1e3
            print(f"{n} trivial tasks, {name}: {r[name + '_s']:.2f} s "
                  f"(local {r['local_s'] * 1e3:.2f} ms): {per:.2f} ms per task")
        print(f"8 tasks of 0.25 s (time.sleep): local {r['sleep_local_s']:.2f} s, ray "
              f"{r['sleep_ray_s']:.2f} s, tasks per node "
              f"{sorted(r['sleep_nodes'].values(), reverse=True)}")


if __name__ == "__main__":
    main()
