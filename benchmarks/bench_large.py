"""Benchmark of sharded streaming traces: peak memory and replay throughput on a large trace.

Usage::

    python benchmarks/bench_large.py --quick      # small, under a minute
    python benchmarks/bench_large.py              # 4M tokens
    python benchmarks/bench_large.py --full       # 20M tokens x 20 layers x top-8 (~6.4 GB)

Steps (every heavy step runs in a child process; its peak resident set is the child's
``ru_maxrss``, read with ``resource.getrusage(RUSAGE_CHILDREN)`` in a small wrapper process
that runs nothing else):

1. synthesize a DeepSeek-V3-shaped trace (256 experts, top-8, 20 MoE layers, 32 source ranks,
   16 windows, skewed per-layer popularity; deterministic: chunk ``c`` draws from
   ``default_rng([seed, c])``) chunk by chunk straight into a sharded directory
   (:func:`placement.routing_traces.sharded.write_sharded`): the trace is never whole in memory;
   the same generator writes the first ``--inmem-tokens`` tokens as a native ``.npz`` too;
2. ``placement validate plan.json DIR`` on the sharded trace: peak RSS, replay seconds (the
   result's ``wall_time``), assignments per second;
3. ``placement validate plan.json small.npz`` (in memory, the same per-token work on a size
   that fits) and the same tokens sharded: peak RSS and assignments per second; steps 2 and 3
   run in turn ``repeats`` times, best time and highest RSS kept;
4. an SGLang ``per_token`` directory (one ``.pt`` dump per rank, the recorder's layout)
   converted with ``placement trace convert DIR -o OUT --sharded`` (streaming) and, for
   comparison (up to a million tokens), read whole to a ``.npz``: peak RSS.

Prints a markdown table. Throughput depends on the machine's other load: compare the ratio of
two figures measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from placement.cluster import Cluster  # noqa: E402
from placement.plan import Plan  # noqa: E402
from placement.routing_traces.trace import Trace  # noqa: E402

E, K, RANKS, WINDOWS = 256, 8, 32, 16
SIZES: dict[str, dict[str, int]] = {
    "quick": dict(tokens=400_000, inmem=200_000, shard=131_072, layers=20, sg_ranks=2,
                  sg_tokens=40_000, repeats=3),
    "default": dict(tokens=4_000_000, inmem=1_000_000, shard=1_048_576, layers=20, sg_ranks=4,
                    sg_tokens=250_000, repeats=2),
    "full": dict(tokens=20_000_000, inmem=2_000_000, shard=1_048_576, layers=20, sg_ranks=8,
                 sg_tokens=250_000, repeats=2),
}


# -------------------------------------------------------------------------------------------
# deterministic synthesis, chunk by chunk
# -------------------------------------------------------------------------------------------
def synth_chunks(tokens: int, layers: int, seed: int = 0, chunk: int = 65_536,
                 total: int | None = None) -> Iterator[Trace]:
    """``tokens`` tokens in chunks; token ``t`` is the same whatever ``tokens`` is (a prefix of
    a longer run is its first tokens). Per token and layer: a first expert drawn from the
    layer's skewed popularity, the other k - 1 at random distinct offsets after it."""
    total = total or tokens
    rng0 = np.random.default_rng(seed)
    cdf = np.cumsum(np.exp(rng0.normal(size=(layers, E)) * 1.2), axis=1)
    cdf /= cdf[:, -1:]
    for c, start in enumerate(range(0, tokens, chunk)):
        t = min(chunk, tokens - start)
        rng = np.random.default_rng([seed, c])
        u = rng.random((t, layers))
        first = np.stack([np.searchsorted(cdf[la], u[:, la], side="right") for la in
                          range(layers)], axis=1)  # [t, L]
        first = np.minimum(first, E - 1)
        steps = rng.integers(1, 32, size=(t, layers, K - 1))
        off = np.concatenate([np.zeros((t, layers, 1), np.int64), np.cumsum(steps, axis=2)],
                             axis=2)
        ids = ((first[:, :, None] + off) % E).astype(np.int16)
        src = rng.integers(0, RANKS, size=t)
        win = (np.arange(start, start + t, dtype=np.int64) * WINDOWS) // total
        yield Trace(num_experts=E, topk_ids=ids, source_rank=src, window=win,
                    model="synthetic DeepSeek-V3")


def _synth_main(args: argparse.Namespace) -> None:
    """Child: write the sharded trace (and the small .npz) for ``--synth``."""
    from placement.routing_traces.native import write_native
    from placement.routing_traces.sharded import write_sharded

    sz = json.loads(args.synth)
    start = time.perf_counter()
    if sz.get("dir"):
        write_sharded(synth_chunks(sz["tokens"], sz["layers"]), sz["dir"], sz["shard"],
                      verify=False)
    if sz.get("npz"):
        parts = list(synth_chunks(sz["inmem"], sz["layers"], total=sz["tokens"]))
        t = Trace(num_experts=E, topk_ids=np.concatenate([p.topk_ids for p in parts]),
                  source_rank=np.concatenate([np.asarray(p.source_rank) for p in parts]),
                  window=np.concatenate([np.asarray(p.window) for p in parts]),
                  model="synthetic DeepSeek-V3")
        del parts
        write_native(t, sz["npz"], compress=False)
    print(json.dumps({"seconds": time.perf_counter() - start}))


# -------------------------------------------------------------------------------------------
# an SGLang per_token run
# -------------------------------------------------------------------------------------------
def _sglang_main(args: argparse.Namespace) -> None:
    """Child: one ``.pt`` dump per rank, as SGLang's per_token recorder writes them (decoder
    layers = the MoE layers plus 3 dense, physical ids = logical here)."""
    import torch

    sz = json.loads(args.sglang)
    d = Path(sz["dir"])
    d.mkdir(parents=True, exist_ok=True)
    layers, dense = sz["layers"], 3
    p2l = torch.arange(E).repeat(layers + dense, 1)
    per_pass = 4096
    for rank in range(sz["ranks"]):
        gen = synth_chunks(sz["tokens"], layers, seed=100 + rank, chunk=per_pass)
        records: list[dict[str, Any]] = []
        for fpid, t in enumerate(gen):
            ids = np.full((layers + dense, t.num_tokens or 0, 8), -1, dtype=np.int32)
            ids[dense:] = np.asarray(t.topk_ids).transpose(1, 0, 2)
            count = np.zeros((layers + dense, E), dtype=np.int32)
            records.append(dict(forward_pass_id=fpid, rank=rank, gatherer_key="primary",
                                global_physical_count=torch.from_numpy(count),
                                topk_ids_of_layer=torch.from_numpy(ids), forward_mode=1,
                                misc_objects=[]))
        torch.save(dict(records=records, last_physical_to_logical_map=p2l),
                   d / f"expert_distribution_recorder_1700000000.0_{rank}.pt")
        del records
    print(json.dumps({"files": sz["ranks"]}))


# -------------------------------------------------------------------------------------------
# children and their peak memory
# -------------------------------------------------------------------------------------------
def _rss_main(cmd: list[str]) -> None:
    """Wrapper: run ``cmd``, print its stdout, seconds and peak RSS (the only child)."""
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-2000:],
                      "seconds": secs, "rss_mb": rss_kb / 1024}))


def child(cmd: list[str]) -> dict[str, Any]:
    """``cmd`` in a fresh wrapper process: ``{"stdout", "seconds", "rss_mb"}``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--rss", "--", *cmd], capture_output=True,
                         text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res['stderr']}")
    return res


def placement(*args: str) -> list[str]:
    return [sys.executable, "-m", "placement", *args]


def validate_once(plan: Path, trace: Path) -> dict[str, Any]:
    """One ``placement validate`` child: RSS, replay seconds, M assignments/s."""
    r = child(placement("validate", str(plan), str(trace), "--device", "cpu", "--json"))
    v = json.loads(r["stdout"])
    return {"rss_mb": r["rss_mb"], "seconds": r["seconds"], "replay_s": v["wall_time"],
            "assignments": v["assignments"], "imbalance": v["imbalance_static"],
            "sends": v.get("cross_node_sends_per_token"),
            "rate": v["assignments"] / v["wall_time"] / 1e6}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with the highest peak RSS of all."""
    best = min(runs, key=lambda r: r["replay_s"])
    return {**best, "rss_mb": max(r["rss_mb"] for r in runs)}


def _du_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Small sizes (under a minute).")
    ap.add_argument("--full", action="store_true", help="20M tokens x 20 layers x top-8.")
    ap.add_argument("--workdir", default=None, help="Where to write the traces [a temp dir].")
    ap.add_argument("--keep", action="store_true", help="Keep the work directory.")
    ap.add_argument("--no-sglang", action="store_true", help="Skip the SGLang convert part.")
    ap.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--synth", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sglang", default=None, help=argparse.SUPPRESS)
    ap.add_argument("cmd", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss:
        _rss_main(args.cmd)
        return
    if args.synth:
        _synth_main(args)
        return
    if args.sglang:
        _sglang_main(args)
        return
    mode = "full" if args.full else "quick" if args.quick else "default"
    sz = SIZES[mode]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_large."))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    try:
        # 1. the traces, and a plan (contiguous, DeepSeek prefill: 4 x 8 GPUs, 9 slots)
        from placement.solver.baselines import contiguous_phy2log

        big, small_npz, small_dir = work / "big", work / "small.npz", work / "small"
        c = Cluster(4, 8, 9, name="deepseek-prefill")
        plan_path = work / "plan.json"
        Plan(cluster=c, num_experts=E, layer_ids=np.arange(sz["layers"]),
             phy2log=contiguous_phy2log(E, c, sz["layers"]), method="contiguous"
             ).save(plan_path)
        spec = dict(tokens=sz["tokens"], inmem=sz["inmem"], layers=sz["layers"],
                    shard=sz["shard"], dir=str(big))
        w = child([sys.executable, __file__, "--synth", json.dumps(spec)])
        child([sys.executable, __file__, "--synth",
               json.dumps({**spec, "dir": None, "npz": str(small_npz)})])
        rows.append((f"synthesize + write sharded ({sz['tokens']:,} tokens)",
                     f"{w['rss_mb']:.0f}", f"{json.loads(w['stdout'])['seconds']:.1f}",
                     f"{_du_gb(big):.2f} GB on disk"))
        from placement.routing_traces.native import read_native
        from placement.routing_traces.sharded import write_sharded

        write_sharded(read_native(small_npz), small_dir, sz["shard"], verify=False)
        # 2. validate: sharded large, in memory small, sharded small
        # one after another in every round, so that the machine's load hits all alike
        runs: dict[str, list[dict[str, Any]]] = {"big": [], "npz": [], "small": []}
        for _ in range(sz["repeats"]):
            runs["big"].append(validate_once(plan_path, big))
            runs["npz"].append(validate_once(plan_path, small_npz))
            runs["small"].append(validate_once(plan_path, small_dir))
        vb, vm, vs = best_of(runs["big"]), best_of(runs["npz"]), best_of(runs["small"])
        for label, v in ((f"validate sharded, {sz['tokens']:,} tokens", vb),
                         (f"validate in memory (.npz), {sz['inmem']:,} tokens", vm),
                         (f"validate sharded, the same {sz['inmem']:,} tokens", vs)):
            rows.append((label, f"{v['rss_mb']:.0f}", f"{v['replay_s']:.1f}",
                         f"{v['rate']:.1f} M assignments/s"))
        same = (vm["imbalance"] == vs["imbalance"] and vm["sends"] == vs["sends"])
        rows.append(("sharded / in-memory throughput (large / small)", "", "",
                     f"{vb['rate'] / vm['rate']:.0%}"))
        rows.append(("sharded / in-memory throughput (same tokens)", "", "",
                     f"{vs['rate'] / vm['rate']:.0%}; figures identical: {same}"))
        # 3. SGLang per_token convert
        if not args.no_sglang:
            sg = work / "sglang"
            child([sys.executable, __file__, "--sglang",
                   json.dumps(dict(dir=str(sg), ranks=sz["sg_ranks"], tokens=sz["sg_tokens"],
                                   layers=sz["layers"]))])
            tot = sz["sg_ranks"] * sz["sg_tokens"]
            cs = child(placement("trace", "convert", str(sg), "-o", str(work / "sg_sharded"),
                                 "--sharded"))
            rows.append((f"convert SGLang per_token ({sz['sg_ranks']} ranks, {tot:,} tokens, "
                         f"{_du_gb(sg):.2f} GB) --sharded", f"{cs['rss_mb']:.0f}",
                         f"{cs['seconds']:.1f}", "streaming, one rank file at a time"))
            if tot <= 1_000_000:  # read whole, for comparison (some 6 GB per million tokens)
                cw = child(placement("trace", "convert", str(sg), "-o", str(work / "sg.npz")))
                rows.append(("convert the same to .npz (read whole)", f"{cw['rss_mb']:.0f}",
                             f"{cw['seconds']:.1f}", ""))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench_large ({mode}): {sz['layers']} MoE layers x top-{K} of {E} experts, "
          f"{RANKS} source ranks, {WINDOWS} windows, shards of {sz['shard']:,} tokens; "
          f"plan: contiguous on 4 x 8 GPUs x 9 slots; {os.cpu_count()} CPU(s)\n")
    print("| what | peak RSS MB | seconds | figure |")
    print("|---|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
