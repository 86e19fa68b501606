"""Benchmark of the validator's replay: assignments per second and peak memory.

Usage::

    python benchmarks/bench_replay.py [--tokens 100000] [--repeats 3] [--chunk-tokens N]

A synthetic DeepSeek-V3-shaped trace (256 experts, top-8, 58 MoE layers, skewed per-layer expert
popularity, source ranks) is replayed against a plan on DeepSeek's prefill (4 x 8 GPUs, 9 slots)
and decode (18 x 8 GPUs, 2 slots) clusters. Figures, best of ``--repeats`` runs:

* ``replay``: :func:`placement.validation.replay` with the plan's dispatch table (the streaming
  replay itself: chunks, kernels, final reductions);
* ``end to end``: the same with ``dispatch="static"``, which also recomputes the engines' static
  dispatch table from ``phy2log`` (:func:`placement.plan.static_dispatch`);
* ``numpy``: the plain numpy reference, :func:`placement.metrics.token_traffic` over the same
  chunks (gather and bincount, sort for the per-node deduplication): the same figures;
* peak memory: the growth of the peak resident set during one call, measured in a fresh
  interpreter (``--probe``) that first builds the same trace, then resets the peak (Linux:
  ``/proc/self/clear_refs``) and replays once. Run it with two ``--tokens`` values to see that
  it follows the chunk size (and the cluster's histograms), not the trace.

On CUDA (when available) the replay runs again with ``device="cuda"``. The machine's other load
changes every figure: compare the ratio to numpy measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from placement.cluster import Cluster  # noqa: E402
from placement.metrics import source_gpus, token_traffic  # noqa: E402
from placement.plan import Plan  # noqa: E402
from placement.routing_traces.trace import Trace  # noqa: E402
from placement.solver.baselines import contiguous_phy2log  # noqa: E402
from placement.validation import replay  # noqa: E402

E, L, K = 256, 58, 8


def synthetic_trace(tokens: int, num_gpus: int, seed: int = 0) -> Trace:
    """``topk_ids [T, 58, 8]``: skewed per-layer popularity, distinct experts per token.

    Experts are drawn one after another from the layer's popularity without replacement
    (Plackett-Luce, as a softmax router's top-k of noisy scores): draw k with replacement, then
    redraw the repeated ones until every row is distinct.
    """
    rng = np.random.default_rng(seed)
    ids = np.empty((tokens, L, K), dtype=np.int16)
    for layer in range(L):
        pop = np.exp(rng.normal(size=E) * 1.2)
        cdf = np.cumsum(pop / pop.sum())
        cdf[-1] = 1.0
        x = np.searchsorted(cdf, rng.random((tokens, K)), side="right")
        earlier = np.tril(np.ones((K, K), dtype=bool), -1)  # [j, j'] with j' < j
        while True:
            dup = ((x[:, :, None] == x[:, None, :]) & earlier[None]).any(axis=2)
            if not dup.any():
                break
            x[dup] = np.searchsorted(cdf, rng.random(int(dup.sum())), side="right")
        ids[:, layer] = x
    return Trace(num_experts=E, topk_ids=ids, source_rank=rng.integers(0, num_gpus, tokens))


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _hwm_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_growth_mb(fn: Callable[[], object]) -> float:
    """Growth of peak RSS during ``fn()`` in MB (Linux; NaN where the peak cannot be reset)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return float("nan")
    before = _rss_kb()
    fn()
    return (_hwm_kb() - before) / 1024.0


def probe_memory(what: str, nodes: int, spg: int, trace_file: Path, chunk: int | None) -> float:
    """Peak RSS growth in MB of one call, in a fresh interpreter (see the module docstring)."""
    cmd = [sys.executable, __file__, "--probe", what, str(nodes), str(spg), "--trace-file",
           str(trace_file)] + ([] if chunk is None else ["--chunk-tokens", str(chunk)])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _probe(args: argparse.Namespace) -> None:
    what, nodes, spg = args.probe
    c = Cluster(int(nodes), 8, int(spg))
    with np.load(args.trace_file) as z:  # into memory, before the peak is reset
        trace = Trace(num_experts=E, topk_ids=z["topk_ids"], source_rank=z["source_rank"])
    plan = Plan(cluster=c, num_experts=E, layer_ids=np.arange(L),
                phy2log=contiguous_phy2log(E, c, L))
    chunk = args.chunk_tokens or max(1, (1 << 22) // (L * K))
    if what == "numpy":
        print(peak_growth_mb(lambda: numpy_reference(plan, trace, chunk)))
    else:
        print(peak_growth_mb(lambda: replay(plan, trace, dispatch=what, device="cpu",
                                            chunk_tokens=args.chunk_tokens)))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch of buffers, torch start-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_reference(plan: Plan, trace: Trace, chunk: int) -> None:
    assert plan.dispatch is not None
    G = plan.cluster.num_gpus
    done = 0
    for ids, sr in trace.iter_token_chunks(chunk):
        src = source_gpus(ids.shape[0], sr, G) if sr is not None else \
            np.arange(done, done + ids.shape[0]) % G
        token_traffic(plan.dispatch, ids, src, plan.cluster)
        done += ids.shape[0]


def measure(
    tokens: int = 100_000,
    repeats: int = 3,
    chunk_tokens: int | None = None,
    skip_numpy: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Time the replay on DeepSeek's prefill and decode clusters; one dict per measurement:
    ``cluster``, ``what``, ``seconds``, ``assignments_per_s``, ``peak_mb`` (and, per cluster,
    a ``ratio`` row: numpy seconds / replay seconds)."""
    clusters = [Cluster(4, 8, 9, name="deepseek-prefill"), Cluster(18, 8, 2, name="deepseek-decode")]
    echo(f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPU(s), "
         f"load average {os.getloadavg()[0]:.2f}")
    trace = synthetic_trace(tokens, 144)
    tmp = tempfile.TemporaryDirectory()
    trace_file = Path(tmp.name) / "trace.npz"
    np.savez(trace_file, topk_ids=trace.topk_ids, source_rank=np.asarray(trace.source_rank))
    n = float(np.count_nonzero(trace.topk_ids >= 0))
    echo(f"trace: {tokens} tokens x {L} layers x top-{K} = {n / 1e6:.1f} M assignments "
         f"({trace.topk_ids.nbytes / 1e6:.0f} MB of int16 ids)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    chunk = chunk_tokens or max(1, (1 << 22) // (L * K))
    echo(f"chunk: {chunk} tokens; best of {repeats} runs")
    header = f"{'cluster':<18}{'what':<24}{'seconds':>9}{'M assign/s':>12}{'peak MB':>9}"
    echo(header)
    echo("-" * len(header))
    out: list[dict[str, object]] = []
    for c in clusters:
        plan = Plan(cluster=c, num_experts=E, layer_ids=np.arange(L),
                    phy2log=contiguous_phy2log(E, c, L))
        rows: list[tuple[str, float, float]] = []
        shape = (c.num_nodes, c.slots_per_gpu, trace_file, chunk_tokens)
        for dev in devices:
            def run_plan(dev: str = dev, plan: Plan = plan) -> object:
                return replay(plan, trace, dispatch="plan", device=dev, chunk_tokens=chunk_tokens)

            def run_static(dev: str = dev, plan: Plan = plan) -> object:
                return replay(plan, trace, dispatch="static", device=dev, chunk_tokens=chunk_tokens)

            cpu = dev == "cpu"
            rows.append((f"replay ({dev})", best_time(run_plan, repeats),
                         probe_memory("plan", *shape) if cpu else float("nan")))
            rows.append((f"end to end ({dev})", best_time(run_static, repeats),
                         probe_memory("static", *shape) if cpu else float("nan")))
        if not skip_numpy:
            def run_np(plan: Plan = plan) -> None:
                numpy_reference(plan, trace, chunk)

            rows.append(("numpy token_traffic", best_time(run_np, max(1, repeats - 1)),
                         probe_memory("numpy", *shape)))
        for what, sec, mb in rows:
            echo(f"{c.name:<18}{what:<24}{sec:>9.3f}{n / sec / 1e6:>12.1f}{mb:>9.0f}")
            out.append({"cluster": c.name, "what": what, "seconds": sec,
                        "assignments_per_s": n / sec, "peak_mb": mb})
        if not skip_numpy:
            ratio = rows[-1][1] / rows[0][1]
            echo(f"{c.name:<18}ratio replay (cpu) / numpy: {ratio:.1f}x")
            out.append({"cluster": c.name, "what": "ratio replay/numpy", "ratio": ratio})
    tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-tokens", type=int, default=None)
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--probe", nargs=3, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--trace-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        _probe(args)
        return
    measure(args.tokens, args.repeats, args.chunk_tokens, args.skip_numpy)


if __name__ == "__main__":
    main()
