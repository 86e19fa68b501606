"""What a solve needs of a trace, gathered in one streaming pass: exact counts, co-activation
and a bounded, deterministic token sample.

A trace too big for memory (a sharded trace, :mod:`placement.routing_traces.sharded`) is read
once, piece by piece: the token chunks of an in-memory :class:`Trace`, or the shards of a
:class:`~placement.routing_traces.sharded.ShardedTrace`, each a task of
:func:`placement.parallel.ordered_map` on any backend (``Local``, ``Processes``, ``Ray``).
Every piece gives a :class:`StatisticsPart`; the parts are merged in piece order:

* ``window_counts [W, L, E]`` and ``window_tokens [W]``: integer sums, exact;
* ``coactivation [L, E, E]``: tokens routed to both experts i and j (the diagonal: each
  expert's tokens, a token counted once per expert), integer sums, exact;
* the sample: per window, the tokens with the smallest hash of their token index (bottom-k,
  ``k = ceil(sample_tokens / W)``). The hash depends on the index and the seed only, and the
  bottom-k of a union is the bottom-k of the parts' bottom-k, so the sample is the same
  whatever the chunking, the shard size, the backend and the number of workers.

A token's index is its position among the trace's (selected) tokens, so an in-memory trace
and its sharded copy, with the same window selection, give the same statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from placement._util import Progress
from placement.errors import CapabilityError, InputError
from placement.routing_traces.trace import Trace

if TYPE_CHECKING:
    from placement.parallel import Backend
    from placement.routing_traces.sharded import ShardedTrace, ShardRef

__all__ = [
    "DEFAULT_SAMPLE_TOKENS",
    "StatisticsPart",
    "TraceStatistics",
    "gather_statistics",
    "token_hash",
]

DEFAULT_SAMPLE_TOKENS = 65_536
"""Tokens the sample of :func:`gather_statistics` holds at most (about, spread over windows)."""

_CHUNK_ASSIGNMENTS = 1 << 22
"""Token-expert assignments per in-memory chunk (one task each)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def token_hash(index: np.ndarray, seed: int) -> np.ndarray:
    """``[n]`` uint64 hash of token indices ``[n]`` (SplitMix64 of ``index + seed * golden``):
    the order the sample takes tokens in, the same on every machine."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64(seed % (1 << 64)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class StatisticsPart:
    """The statistics of one piece of a trace (or of several, merged with ``+``).

    Attributes:
        window_counts: ``[W, L, E]`` int64 assignments per window, layer and expert.
        window_tokens: ``[W]`` int64 tokens per window.
        coactivation: ``[L, E, E]`` int64, or None when not gathered.
        key: ``[n]`` uint64 hashes of the sampled tokens.
        index: ``[n]`` int64 their token indices.
        window: ``[n]`` int32 their windows (``0..W-1``).
        ids: ``[n, L, k]`` their expert ids.
        source_rank: ``[n]`` their source ranks, or None when the trace has none.
        per_window: tokens the sample keeps per window at most.
    """

    window_counts: np.ndarray
    window_tokens: np.ndarray
    coactivation: np.ndarray | None
    key: np.ndarray
    index: np.ndarray
    window: np.ndarray
    ids: np.ndarray
    source_rank: np.ndarray | None
    per_window: int

    def __add__(self, other: StatisticsPart) -> StatisticsPart:
        co = (None if self.coactivation is None or other.coactivation is None
              else self.coactivation + other.coactivation)
        sr = (None if self.source_rank is None or other.source_rank is None
              else np.concatenate([self.source_rank, other.source_rank]))
        return _bottom_k(
            window_counts=self.window_counts + other.window_counts,
            window_tokens=self.window_tokens + other.window_tokens,
            coactivation=co,
            key=np.concatenate([self.key, other.key]),
            index=np.concatenate([self.index, other.index]),
            window=np.concatenate([self.window, other.window]),
            ids=np.concatenate([self.ids, other.ids]),
            source_rank=sr,
            per_window=self.per_window,
        )


def _bottom_k(**fields: object) -> StatisticsPart:
    """The part with only each window's ``per_window`` smallest ``(key, index)`` tokens, in
    token order."""
    key = np.asarray(fields["key"])
    index = np.asarray(fields["index"])
    window = np.asarray(fields["window"])
    k = int(fields["per_window"])  # type: ignore[call-overload]
    if key.size:
        # 1. rank every token inside its window by (hash, index)
        order = np.lexsort((index, key, window))
        w_sorted = window[order]
        first = np.searchsorted(w_sorted, w_sorted, side="left")
        rank = np.arange(order.size) - first
        keep = np.sort(order[rank < k])
        # 2. keep the winners in token order (ascending index)
        keep = keep[np.argsort(index[keep], kind="stable")]
        for name in ("key", "index", "window", "ids", "source_rank"):
            a = fields[name]
            if a is not None:
                fields[name] = np.asarray(a)[keep]
    return StatisticsPart(**fields)  # type: ignore[arg-type]


def _coactivation(ids: np.ndarray, E: int) -> np.ndarray:
    """``ids [t, L, k]`` -> ``[L, E, E]`` int64 co-activation counts of these tokens (the pair
    counts of :func:`placement.routing_traces.stats.pair_counts`, both ways)."""
    from placement.routing_traces.stats import pair_counts

    L = ids.shape[1]
    pairs, single = pair_counts(np.asarray(ids), E)  # [L, E*E] i < j, [L, E]
    m = pairs.reshape(L, E, E)
    out = m + m.transpose(0, 2, 1)
    idx = np.arange(E)
    out[:, idx, idx] = single
    return out


def _part(ids: np.ndarray, widx: np.ndarray, src: np.ndarray | None, index: np.ndarray,
          W: int, E: int, per_window: int, seed: int, coactivation: bool) -> StatisticsPart:
    """The statistics of one chunk: ``ids [t, L, k]``, windows ``[t]`` (``0..W-1``), source
    ranks ``[t]`` or None, token indices ``[t]``."""
    ids = np.asarray(ids)
    L = ids.shape[1]
    widx = np.asarray(widx, dtype=np.int64)
    # 1. counts: integer bincounts
    part = ids.astype(np.int64)
    flat = (widx[:, None, None] * L + np.arange(L, dtype=np.int64)[None, :, None]) * E + part
    counts = np.bincount(flat[part >= 0], minlength=W * L * E).reshape(W, L, E)
    tokens = np.bincount(widx, minlength=W)
    co = _coactivation(ids, E) if coactivation else None
    # 2. the chunk's own bottom-k per window
    return _bottom_k(
        window_counts=counts, window_tokens=tokens, coactivation=co,
        key=token_hash(index, seed), index=np.asarray(index, dtype=np.int64),
        window=widx.astype(np.int32), ids=ids,
        source_rank=None if src is None else np.asarray(src, dtype=np.int64),
        per_window=per_window,
    )


@dataclass(frozen=True)
class _ChunkTask:
    """Tokens of an in-memory trace (sent to the worker as they are)."""

    ids: np.ndarray
    window: np.ndarray
    source_rank: np.ndarray | None
    first: int
    W: int
    E: int
    per_window: int
    seed: int
    coactivation: bool


def _chunk_stats(task: _ChunkTask) -> StatisticsPart:
    t = task.ids.shape[0]
    return _part(task.ids, task.window, task.source_rank,
                 np.arange(task.first, task.first + t, dtype=np.int64), task.W, task.E,
                 task.per_window, task.seed, task.coactivation)


@dataclass(frozen=True)
class _ShardTask:
    """One shard of a sharded trace (a small description: the worker reads the files)."""

    ref: ShardRef
    first: int  # index of its first kept token
    windows: tuple[int, ...]  # global window index -> 0..W-1 (-1: not kept)
    W: int
    E: int
    L: int
    k: int
    per_window: int
    seed: int
    coactivation: bool
    ranks: bool


def _shard_stats(task: _ShardTask) -> StatisticsPart:
    from placement.routing_traces.sharded import iter_shard_arrays

    remap = np.asarray(task.windows, dtype=np.int64)
    total: StatisticsPart | None = None
    n = task.first
    for a in iter_shard_arrays(task.ref):
        ids = np.asarray(a["topk_ids"])
        t = ids.shape[0]
        src = np.asarray(a["source_rank"]) if task.ranks and "source_rank" in a else None
        p = _part(ids, remap[a["window_index"]], src, np.arange(n, n + t, dtype=np.int64),
                  task.W, task.E, task.per_window, task.seed, task.coactivation)
        n += t
        total = p if total is None else total + p
    if total is None:
        return _empty(task.W, task.L, task.E, task.k, task.per_window, task.coactivation,
                      task.ranks)
    return total


def _empty(W: int, L: int, E: int, k: int, per_window: int, coactivation: bool,
           ranks: bool) -> StatisticsPart:
    return StatisticsPart(
        window_counts=np.zeros((W, L, E), np.int64), window_tokens=np.zeros(W, np.int64),
        coactivation=np.zeros((L, E, E), np.int64) if coactivation else None,
        key=np.zeros(0, np.uint64), index=np.zeros(0, np.int64), window=np.zeros(0, np.int32),
        ids=np.zeros((0, L, k), np.int16), source_rank=np.zeros(0, np.int64) if ranks else None,
        per_window=per_window)


@dataclass(frozen=True)
class TraceStatistics:
    """What :func:`gather_statistics` gathered of a token-level trace (or took from a counts
    trace: counts only).

    Attributes:
        num_experts: E.
        layer_ids: ``[L]`` decoder-layer ids.
        window_names: ``[W]`` a name per window.
        top_k: experts per token, when known.
        model, num_hidden_layers: of the trace, when known.
        num_tokens: T, tokens of the trace (None for counts).
        has_source_rank: whether the trace records source ranks.
        window_counts: ``[W, L, E]`` int64 exact assignments (float for a counts trace).
        window_tokens: ``[W]`` int64 tokens per window (None for counts).
        coactivation: ``[L, E, E]`` int64 exact co-activation counts, or None.
        sample_index: ``[n]`` int64 token indices of the sample, ascending.
        sample_window: ``[n]`` int32 their windows.
        sample_ids: ``[n, L, k]`` their expert ids.
        sample_source_rank: ``[n]`` their source ranks, or None.
        sample_tokens: the sample's bound (``ceil(sample_tokens / W)`` per window).
        seed: the sample's seed.
    """

    num_experts: int
    layer_ids: np.ndarray
    window_names: tuple[str, ...]
    top_k: int | None
    model: str | None
    num_hidden_layers: int | None
    num_tokens: int | None
    has_source_rank: bool
    window_counts: np.ndarray
    window_tokens: np.ndarray | None
    coactivation: np.ndarray | None
    sample_index: np.ndarray | None
    sample_window: np.ndarray | None
    sample_ids: np.ndarray | None
    sample_source_rank: np.ndarray | None
    sample_tokens: int
    seed: int
    extras: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def num_windows(self) -> int:
        """W."""
        return len(self.window_names)

    @property
    def num_layers(self) -> int:
        """L."""
        return int(self.layer_ids.shape[0])

    @property
    def is_token_level(self) -> bool:
        """Whether there is a token sample (the trace was token-level)."""
        return self.sample_ids is not None

    @property
    def num_sampled(self) -> int:
        """Tokens in the sample."""
        return 0 if self.sample_index is None else int(self.sample_index.shape[0])

    def sample_trace(self, window: int | None = None) -> Trace:
        """The sampled tokens (of one window, ``0..W-1``, or all) as a token-level
        :class:`Trace`, in token order, with this trace's window names."""
        if self.sample_ids is None or self.sample_window is None:
            raise CapabilityError("a counts trace has no token sample.")
        mask = (np.ones(self.num_sampled, dtype=bool) if window is None
                else self.sample_window == window)
        win = self.sample_window[mask]
        present = np.unique(win) if window is None else np.asarray([window])
        return Trace(
            num_experts=self.num_experts, topk_ids=self.sample_ids[mask],
            layer_ids=self.layer_ids,
            source_rank=None if self.sample_source_rank is None else self.sample_source_rank[mask],
            window=win, window_names=[self.window_names[int(w)] for w in present],
            model=self.model, num_hidden_layers=self.num_hidden_layers,
        )


def _per_window(sample_tokens: int, W: int) -> int:
    return max(1, -(-sample_tokens // max(W, 1)))


def _finish(part: StatisticsPart, *, E: int, layer_ids: np.ndarray, names: Sequence[str],
            top_k: int | None, model: str | None, nhl: int | None, ranks: bool,
            sample_tokens: int, seed: int) -> TraceStatistics:
    return TraceStatistics(
        num_experts=E, layer_ids=np.asarray(layer_ids), window_names=tuple(names), top_k=top_k,
        model=model, num_hidden_layers=nhl, num_tokens=int(part.window_tokens.sum()),
        has_source_rank=ranks, window_counts=part.window_counts,
        window_tokens=part.window_tokens, coactivation=part.coactivation,
        sample_index=part.index, sample_window=part.window.astype(np.int32),
        sample_ids=part.ids, sample_source_rank=part.source_rank if ranks else None,
        sample_tokens=sample_tokens, seed=seed,
    )


def gather_statistics(
    source: Trace | ShardedTrace,
    backend: Backend | None = None,
    sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
    seed: int = 0,
    *,
    coactivation: bool = True,
    chunk_tokens: int | None = None,
    progress: Progress | None = None,
) -> TraceStatistics:
    """The statistics of ``source`` in one streaming pass (see the module docstring).

    Args:
        source: an in-memory :class:`Trace` (token chunks as tasks; a counts trace gives its
            counts only) or a :class:`~placement.routing_traces.sharded.ShardedTrace` (a task
            per shard, read by the worker).
        backend: where the pieces run (:mod:`placement.parallel`; default: this process).
        sample_tokens: the sample's bound, ``ceil(sample_tokens / W)`` tokens per window.
        seed: the sample's seed.
        coactivation: gather the ``[L, E, E]`` co-activation counts.
        chunk_tokens: tokens per in-memory chunk (default: about 4 million assignments).
        progress: ``progress(pieces_done, pieces)``.

    Returns: the :class:`TraceStatistics`; the same on every backend and chunking.
    """
    from placement.parallel import ordered_map
    from placement.routing_traces.sharded import ShardedTrace

    if sample_tokens < 1:
        raise InputError(f"Expected sample_tokens >= 1, got {sample_tokens}.")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise InputError(f"Expected chunk_tokens >= 1, got {chunk_tokens}.")
    E, L, W = source.num_experts, source.num_layers, source.num_windows
    per_window = _per_window(sample_tokens, W)
    common = dict(E=E, layer_ids=np.asarray(source.layer_ids), names=source.window_names,
                  top_k=source.top_k, model=source.model, nhl=source.num_hidden_layers,
                  sample_tokens=sample_tokens, seed=seed)

    # 1. a counts trace: its counts are the statistics
    if isinstance(source, Trace) and not source.is_token_level:
        return TraceStatistics(
            num_experts=E, layer_ids=np.asarray(source.layer_ids),
            window_names=tuple(source.window_names), top_k=source.top_k, model=source.model,
            num_hidden_layers=source.num_hidden_layers, num_tokens=None,
            has_source_rank=source.has_source_rank, window_counts=source.window_counts(),
            window_tokens=None, coactivation=None, sample_index=None, sample_window=None,
            sample_ids=None, sample_source_rank=None, sample_tokens=sample_tokens, seed=seed)
    k = int(source.top_k or 1)
    ranks = bool(source.has_source_rank)

    # 2. the pieces: token chunks, or shards
    parts: list[StatisticsPart]
    if isinstance(source, ShardedTrace):
        tasks = _shard_tasks(source, per_window, seed, coactivation)
        parts = ordered_map(_shard_stats, tasks, backend, progress)
    else:
        T = int(source.num_tokens or 0)
        chunk = chunk_tokens or max(1, _CHUNK_ASSIGNMENTS // max(L * k, 1))
        ids, widx, sr = source.topk_ids, source.window_index, source.source_rank
        chunks = [_ChunkTask(ids[s:s + chunk], widx[s:s + chunk],
                             None if sr is None else sr[s:s + chunk], s, W, E, per_window,
                             seed, coactivation) for s in range(0, T, chunk)]
        parts = ordered_map(_chunk_stats, chunks, backend, progress)

    # 3. merged in piece order
    total = _empty(W, L, E, k, per_window, coactivation, ranks)
    for p in parts:
        total = total + p
    return _finish(total, ranks=ranks, **common)  # type: ignore[arg-type]


def _shard_tasks(trace: ShardedTrace, per_window: int, seed: int,
                 coactivation: bool) -> list[_ShardTask]:
    """A task per shard that may hold kept tokens, each with the index of its first kept
    token (the window arrays of the shards are read when a selection filters them)."""
    refs = trace.refs()
    W_all = len(trace.manifest.window_values)
    remap = [-1] * W_all
    for j, w in enumerate(trace.selected_windows):
        remap[w] = j
    out: list[_ShardTask] = []
    n = 0
    for ref in refs:
        out.append(_ShardTask(ref, n, tuple(remap), trace.num_windows, trace.num_experts,
                              trace.num_layers, trace.top_k, per_window, seed, coactivation,
                              trace.has_source_rank))
        if ref.keep is None:
            n += ref.tokens
        else:
            win = ref.load("window")
            assert win is not None
            n += int(np.count_nonzero(np.isin(np.asarray(win), np.asarray(ref.keep))))
    return out
