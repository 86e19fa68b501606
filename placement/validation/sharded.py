"""Replay a sharded trace shard by shard: memory follows one shard and the plan, not the trace.

The per-shard work is a module-level function over picklable tasks, so any
:class:`~placement.parallel.Backend` runs it (this process by default; a process pool or Ray):

1. :func:`replay_tasks`: a :class:`ReplayTask` per shard: the shard's :class:`ShardRef`, the
   plan's arrays for the trace's layers (``phy2log [L, P]``, dispatch table ``[L, G, E]``) and
   the options;
2. :func:`replay_shard` streams one shard's chunks through the replay kernel
   (:class:`~placement.validation.token_stream.TokenStream`) and returns its raw accumulators,
   a :class:`ReplayPartial`;
3. partials are summed in shard order (integer sums under ``static`` and ``plan``: exactly the
   in-memory replay's counts whatever the chunking; the ``even`` rule's expected node sends are
   float sums, equal to rounding);
4. :func:`finish_replay` turns the sum into the same :class:`ValidationResult` as
   :func:`placement.validation.replay` on the whole trace in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from placement._util import Progress
from placement.cluster import Cluster
from placement.errors import InputError, TraceFormatError
from placement.parallel import ordered_map
from placement.plan import Plan
from placement.routing_traces.sharded import ShardedTrace, ShardRef, iter_shard_arrays
from placement.validation.result import ValidationResult

if TYPE_CHECKING:
    import torch

    from placement.parallel import Backend

__all__ = [
    "ReplayPartial",
    "ReplayTask",
    "finish_replay",
    "replay_shard",
    "replay_sharded",
    "replay_tasks",
]


@dataclass(frozen=True)
class ReplayTask:
    """One shard's replay, as a small picklable description (no routing data).

    Attributes:
        ref: the shard.
        rule: ``static``, ``even`` or ``plan``.
        table: ``[L, G, E]`` dispatch table (None for ``even``).
        phy2log: ``[L, P]`` the plan's slots for the trace's layers, in the trace's order.
        cluster: the plan's cluster.
        num_experts: E.
        top_k: k.
        chunk_tokens: tokens per chunk through the kernel.
        device: ``"cpu"`` or ``"cuda"``.
        threads: CPU threads torch may use.
        spread_offset: tokens kept before this shard, when the trace has no source ranks (token
            ``t`` of the kept tokens lives on GPU ``t % G``, as in memory); None otherwise.
    """

    ref: ShardRef
    rule: str
    table: np.ndarray | None
    phy2log: np.ndarray
    cluster: Cluster
    num_experts: int
    top_k: int
    chunk_tokens: int
    device: str
    threads: int = 1
    spread_offset: int | None = None


@dataclass(frozen=True)
class ReplayPartial:
    """The raw accumulators of a replay of some tokens (see
    :class:`~placement.validation.token_stream.TokenStream`): ``lse`` int64 assignments per
    (source GPU, layer, expert + 1), ``valid [L]`` int64 tokens per layer, ``phist`` int64
    node-pattern histogram (``static``/``plan``) or ``node_acc [L * G, N]`` float64 expected
    node reaches (``even``), and the tokens replayed."""

    tokens: int
    lse: np.ndarray
    valid: np.ndarray
    phist: np.ndarray | None
    node_acc: np.ndarray | None

    def __add__(self, other: ReplayPartial) -> ReplayPartial:
        def add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        return ReplayPartial(self.tokens + other.tokens, self.lse + other.lse,
                             self.valid + other.valid, add(self.phist, other.phist),
                             add(self.node_acc, other.node_acc))


def _kernel(task: ReplayTask, chunk: int, device: torch.device) -> object:
    from placement.validation.token_stream import TokenStream

    return TokenStream(task.rule, task.table, task.phy2log, task.cluster, task.num_experts,
                       task.top_k, chunk, device)


def replay_shard(task: ReplayTask) -> ReplayPartial:
    """Replay one shard's kept tokens: its chunks streamed through the kernel."""
    import torch

    from placement.validation.token_stream import TokenStream

    dev = torch.device(task.device)
    G, E = task.cluster.num_gpus, task.num_experts
    prev = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(task.threads)
    try:
        kern = _kernel(task, task.chunk_tokens, dev)
        assert isinstance(kern, TokenStream)
        done = 0
        for a in iter_shard_arrays(task.ref, task.chunk_tokens):
            ids = a["topk_ids"]
            t = ids.shape[0]
            # 1. the shard's ids in range (a file changed after writing must not count elsewhere)
            lo_t, hi_t = torch.aminmax(torch.from_numpy(ids))  # one pass
            lo, hi = int(lo_t), int(hi_t)
            if lo < -1 or hi >= E:
                raise TraceFormatError(
                    f"shard {task.ref.index} holds expert id {lo if lo < -1 else hi}, outside "
                    f"[-1, {E}).", task.ref.root)
            # 2. source GPUs: the recorded rank, else spread t % G over the kept tokens
            if "source_rank" in a and task.spread_offset is None:
                src = (np.asarray(a["source_rank"]).astype(np.int64) % G).astype(np.int32)
            else:
                off = (task.spread_offset or 0) + done
                src = (np.arange(off, off + t, dtype=np.int64) % G).astype(np.int32)
            kern.run(ids, src)
            done += t
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return ReplayPartial(
            tokens=done,
            lse=kern.lse.cpu().numpy().copy(),
            valid=kern.valid.cpu().numpy().copy(),
            phist=kern.phist.cpu().numpy().copy() if task.rule != "even" else None,
            node_acc=kern.node_acc.cpu().numpy().copy() if task.rule == "even" else None,
        )
    finally:
        torch.set_num_threads(prev)


def _kept_before(trace: ShardedTrace, refs: list[ShardRef]) -> list[int]:
    """Tokens kept before each shard (window arrays only are read)."""
    out: list[int] = []
    n = 0
    for ref in refs:
        out.append(n)
        if ref.keep is None:
            n += ref.tokens
        else:
            w = ref.load("window")
            assert w is not None
            n += int(np.count_nonzero(np.isin(np.asarray(w), np.asarray(ref.keep))))
    return out


def replay_tasks(plan: Plan, trace: ShardedTrace, *, rule: str, table: np.ndarray | None,
                 phy2log: np.ndarray, chunk_tokens: int, device: str,
                 threads: int = 1) -> list[ReplayTask]:
    """A :class:`ReplayTask` per shard that holds kept tokens, in shard order."""
    refs = trace.refs()
    spread = None if trace.has_source_rank else _kept_before(trace, refs)
    return [
        ReplayTask(ref=r, rule=rule, table=table, phy2log=phy2log, cluster=plan.cluster,
                   num_experts=plan.num_experts, top_k=trace.top_k, chunk_tokens=chunk_tokens,
                   device=device, threads=threads,
                   spread_offset=None if spread is None else spread[i])
        for i, r in enumerate(refs)
    ]


def _writable(a: np.ndarray) -> torch.Tensor:
    """A tensor over ``a``, copied when ``a`` is read-only (a result that came back from a Ray
    worker is a read-only view of its object store)."""
    import torch

    return torch.from_numpy(np.require(a, requirements=["W"]))


def finish_replay(total: ReplayPartial, task: ReplayTask
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(gpu_loads [L, G], matrix [L, G, G], node_sends [L, G, N], tokens [L])`` from the
    summed accumulators (the kernel's own finish, on the CPU)."""
    import torch

    from placement.validation.token_stream import TokenStream

    kern = _kernel(task, 1, torch.device("cpu"))
    assert isinstance(kern, TokenStream)
    kern.lse = _writable(total.lse)
    kern.valid = _writable(total.valid)
    if total.phist is not None:
        kern.phist = _writable(total.phist)
    if total.node_acc is not None:
        kern.node_acc = _writable(total.node_acc)
    return kern.finish(task.table, task.phy2log)


def replay_sharded(
    plan: Plan,
    trace: ShardedTrace,
    *,
    dispatch: str = "static",
    chunk_tokens: int | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    hidden_size: int | None = None,
    dispatch_bytes_per_element: float = 1.0,
    combine_bytes_per_element: float = 2.0,
    plan_name: str = "",
    trace_name: str = "",
    threads: int | None = None,
    backend: Backend | None = None,
) -> ValidationResult:
    """:func:`placement.validation.replay` of a sharded trace, shard by shard on ``backend``
    (default: this process). Same arguments; ``progress(tokens_done, tokens_total)`` after each
    shard. The result is the in-memory replay's (see the module docstring)."""
    from placement.validation.api import auto_chunk, prepare_replay, resolve_device

    start = time.perf_counter()
    # 1. inputs, as in memory
    setup = prepare_replay(plan, trace, dispatch=dispatch, chunk_tokens=chunk_tokens,
                           hidden_size=hidden_size,
                           dispatch_bytes_per_element=dispatch_bytes_per_element,
                           combine_bytes_per_element=combine_bytes_per_element,
                           plan_name=plan_name, trace_name=trace_name)
    if threads is not None and threads < 1:
        raise InputError(f"Expected threads >= 1, got {threads}.")
    dev = resolve_device(device)
    T = trace.num_tokens
    chunk = max(1, min(chunk_tokens or auto_chunk(trace), max(T, 1)))
    tasks = replay_tasks(plan, trace, rule=dispatch, table=setup.table, phy2log=setup.phy2log,
                         chunk_tokens=chunk, device=dev.type, threads=threads or 1)
    if not tasks:
        raise InputError("the window selection keeps no token of the sharded trace.")
    # 2. shards, then their sum in shard order
    tokens_at = np.cumsum([0] + [t.ref.tokens for t in tasks])
    shown = None
    if progress is not None:
        def shown(done: int, total: int) -> None:
            progress(min(int(tokens_at[done]), T), T)

    parts = ordered_map(replay_shard, tasks, backend, shown)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    # 3. the figures, as in memory
    loads, matrix, ns, tokens = finish_replay(total, tasks[0])
    messages = list(setup.messages)
    if not trace.has_source_rank:
        messages.append("the trace has no source ranks: tokens are spread evenly over GPUs (t % G).")
    return ValidationResult(
        dispatch=dispatch, gpu_loads=loads, tokens=tokens, matrix=matrix, node_sends=ns,
        num_tokens=total.tokens, trace_kind="tokens", messages=tuple(messages),
        device=dev.type, wall_time=time.perf_counter() - start,
        assignments=float(loads.sum()), **setup.common,
    )
