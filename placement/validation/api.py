"""Replay a trace against a plan: :func:`replay` and its checks.

The counts path (aggregated traces) is numpy (:mod:`placement.metrics`); token-level traces go
through :class:`~placement.validation.token_stream.TokenStream` (torch, imported here only when a
replay runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from placement._util import Progress, format_ids
from placement.errors import InputError
from placement.metrics import even_gpu_loads, static_gpu_loads
from placement.plan import Plan, static_dispatch
from placement.routing_traces.sharded import ShardedTrace
from placement.routing_traces.trace import Trace
from placement.validation.result import DEVICES, RULES, ValidationResult

if TYPE_CHECKING:
    import torch

    from placement.parallel import Backend

__all__ = [
    "DEFAULT_CHUNK_ASSIGNMENTS",
    "ReplaySetup",
    "match_layers",
    "prepare_replay",
    "replay",
    "resolve_device",
]

DEFAULT_CHUNK_ASSIGNMENTS = 1 << 22
"""Token-expert assignments per chunk when ``chunk_tokens`` is not given (bounds memory)."""


def match_layers(plan: Plan, trace: Trace | ShardedTrace) -> tuple[np.ndarray, tuple[int, ...]]:
    """Match the trace's layers to the plan's by decoder-layer id.

    Returns ``(plan_index [L_trace], skipped plan layer ids)``. Raises :class:`InputError` when
    the expert counts differ or the trace has a layer the plan lacks.
    """
    if trace.num_experts != plan.num_experts:
        raise InputError(
            f"the trace has {trace.num_experts} experts per layer but the plan has "
            f"{plan.num_experts}: they are for different models."
        )
    where = {int(lid): i for i, lid in enumerate(plan.layer_ids.tolist())}
    missing = [int(x) for x in trace.layer_ids.tolist() if int(x) not in where]
    if missing:
        raise InputError(
            f"the trace has layer(s) {format_ids(missing)} that the plan lacks (plan layers "
            f"{format_ids(plan.layer_ids, 40)}, trace layers {format_ids(trace.layer_ids, 40)})."
        )
    idx = np.array([where[int(x)] for x in trace.layer_ids.tolist()], dtype=np.int64)
    traced = set(int(x) for x in trace.layer_ids.tolist())
    skipped = tuple(int(x) for x in plan.layer_ids.tolist() if int(x) not in traced)
    return idx, skipped


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. Raises InputError for unknown ones."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"Expected device in {DEVICES}, got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda asked for but no CUDA device is available (use --device cpu).")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Expected device in {DEVICES}, got {device!r}.")
    return dev


@dataclass(frozen=True)
class ReplaySetup:
    """What every replay path derives from its inputs, checked: ``phy2log [L, P]`` and the
    dispatch table ``[L, G, E]`` (None for ``even``) of the trace's layers in the trace's
    order, the notes so far and the :class:`ValidationResult` fields common to every path."""

    phy2log: np.ndarray
    table: np.ndarray | None
    messages: list[str]
    common: dict[str, Any]


def prepare_replay(
    plan: Plan,
    trace: Trace | ShardedTrace,
    *,
    dispatch: str,
    chunk_tokens: int | None,
    hidden_size: int | None,
    dispatch_bytes_per_element: float,
    combine_bytes_per_element: float,
    plan_name: str,
    trace_name: str,
) -> ReplaySetup:
    """Check a replay's options and match the trace's layers to the plan's (see
    :func:`replay`); :class:`InputError` for anything wrong."""
    if dispatch not in RULES:
        raise InputError(f"Expected dispatch in {', '.join(RULES)}, got {dispatch!r}.")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise InputError(f"Expected chunk_tokens >= 1, got {chunk_tokens}.")
    if hidden_size is not None and hidden_size < 1:
        raise InputError(f"Expected hidden_size >= 1, got {hidden_size}.")
    for name, val in (("dispatch_bytes_per_element", dispatch_bytes_per_element),
                      ("combine_bytes_per_element", combine_bytes_per_element)):
        if not (math.isfinite(val) and val > 0):
            raise InputError(f"Expected {name} > 0, got {val}.")
    c = plan.cluster
    E = plan.num_experts
    idx, skipped = match_layers(plan, trace)
    phy2log = np.asarray(plan.phy2log)[idx]
    messages: list[str] = []
    if skipped:
        messages.append(
            f"the plan has {len(skipped)} layer(s) the trace lacks ({format_ids(skipped)}); "
            f"replayed the {len(idx)} common layer(s)."
        )
    table: np.ndarray | None = None
    if dispatch == "static":
        table = static_dispatch(phy2log, c, E)
    elif dispatch == "plan":
        assert plan.dispatch is not None
        table = np.asarray(plan.dispatch)[idx]
    elif dispatch == "sglang-static":
        from placement.validation.engine_rules import sglang_static_dispatch

        table = sglang_static_dispatch(phy2log, c, E, same_node=c.num_nodes > 1)
    common: dict[str, Any] = dict(
        cluster=c, layer_ids=trace.layer_ids.copy(), hidden_size=hidden_size,
        dispatch_bytes_per_element=float(dispatch_bytes_per_element),
        combine_bytes_per_element=float(combine_bytes_per_element),
        skipped_layer_ids=skipped, plan_name=plan_name, trace_name=trace_name,
    )
    return ReplaySetup(phy2log, table, messages, common)


def auto_chunk(trace: Trace | ShardedTrace) -> int:
    L, k = trace.num_layers, trace.top_k or 1
    return max(1, DEFAULT_CHUNK_ASSIGNMENTS // max(L * k, 1))


def replay(
    plan: Plan,
    trace: Trace | ShardedTrace,
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
    batch_tokens: int | None = None,
    seed: int = 0,
) -> ValidationResult:
    """Replay ``trace`` against ``plan`` under a dispatch rule.

    Args:
        plan: the plan (``phy2log [L_plan, P]``, ``layer_ids [L_plan]``).
        trace: token-level (``topk_ids [T, L, k]``) or aggregated (``counts [W, R, L, E]``);
            its layers must all be in the plan (matched by decoder-layer id). A
            :class:`~placement.routing_traces.sharded.ShardedTrace` is replayed shard by shard
            (:func:`placement.validation.sharded.replay_sharded`).
        dispatch: ``"static"`` (engines' rule), ``"even"`` (split over replicas), ``"plan"``
            (the plan's own dispatch table), ``"sglang-static"`` (SGLang's exact static table),
            ``"dynamic"`` (SGLang's per-token draw, token-level traces) or ``"lp"`` (SGLang's
            LPLB: one LP per batch and layer; :mod:`placement.validation.engine_replay`).
        chunk_tokens: tokens per chunk (memory is bounded by the chunk, not the trace); default:
            about 4 million assignments per chunk (some 50 MB of buffers).
        device: ``"cpu"``, ``"cuda"`` or None/``"auto"`` (CUDA when available).
        progress: called with ``(tokens_done, tokens_total)`` after each chunk.
        hidden_size, dispatch_bytes_per_element, combine_bytes_per_element: for bytes.
        plan_name, trace_name: labels for the summary.
        threads: CPU threads torch may use during the replay (default 1: the replay is memory
            bound, and on a shared machine a second thread waiting for a busy core slows every
            step down many times).
        backend: where a sharded trace's shards are replayed (default: this process, one
            after another); unused for in-memory traces.
        batch_tokens: ``lp`` only: tokens per batch (default 4,096; aggregated traces: each
            window is a batch).
        seed: ``dynamic`` only: seed of the per-token draws.
    Returns:
        A :class:`ValidationResult` over the trace's layers (in the trace's order).
    """
    import torch

    from placement.validation.token_stream import TokenStream

    start = time.perf_counter()
    # 1. inputs
    if isinstance(trace, ShardedTrace):
        from placement.validation.sharded import replay_sharded

        if dispatch in ("lp", "dynamic"):
            raise InputError(f"dispatch {dispatch} replays in-memory traces only; load the "
                             "trace whole (or use static, sglang-static or even).")

        return replay_sharded(
            plan, trace, dispatch=dispatch, chunk_tokens=chunk_tokens, device=device,
            progress=progress, hidden_size=hidden_size,
            dispatch_bytes_per_element=dispatch_bytes_per_element,
            combine_bytes_per_element=combine_bytes_per_element, plan_name=plan_name,
            trace_name=trace_name, threads=threads, backend=backend,
        )
    routed = trace.num_tokens if trace.is_token_level else float(trace.window_rank_counts().sum())
    if not routed:  # as solve: no figure would mean anything
        raise InputError("The trace routes no tokens: nothing to replay.")
    setup = prepare_replay(plan, trace, dispatch=dispatch, chunk_tokens=chunk_tokens,
                           hidden_size=hidden_size,
                           dispatch_bytes_per_element=dispatch_bytes_per_element,
                           combine_bytes_per_element=combine_bytes_per_element,
                           plan_name=plan_name, trace_name=trace_name)
    dev = resolve_device(device)
    c = plan.cluster
    E, G = plan.num_experts, c.num_gpus
    phy2log, table, messages, common = setup.phy2log, setup.table, setup.messages, setup.common
    if dispatch in ("lp", "dynamic"):
        from placement.validation.engine_replay import replay_dynamic, replay_lp

        if dispatch == "lp":
            return replay_lp(phy2log, trace, c, batch_tokens=batch_tokens, common=common,
                             messages=messages, progress=progress)
        return replay_dynamic(phy2log, trace, c, seed=seed, common=common, messages=messages,
                              progress=progress)

    # 2. aggregated counts: loads only
    if not trace.is_token_level:
        wrc = trace.window_rank_counts()  # [W, R, L, E]
        R = wrc.shape[1]
        rule = dispatch
        if table is not None and trace.has_source_rank:
            rc = np.zeros((G, trace.num_layers, E))
            np.add.at(rc, np.arange(R) % G, wrc.sum(axis=0))
            loads = static_gpu_loads(table, rc, c)
        else:
            if dispatch != "even":
                messages.append(
                    "the trace has no source ranks: loads use the even rule (each expert's tokens "
                    "split evenly over its replicas)."
                )
            rule = "even"
            loads = even_gpu_loads(phy2log, wrc.sum(axis=(0, 1)), c)
        tot = wrc.sum(axis=(0, 1, 3))
        tokens = tot / trace.top_k if trace.top_k else None
        if progress is not None:
            progress(1, 1)
        return ValidationResult(
            dispatch=rule, gpu_loads=loads, tokens=tokens, trace_kind="counts",
            messages=tuple(messages), device="cpu", wall_time=time.perf_counter() - start,
            assignments=float(tot.sum()), **common,
        )

    # 3. token-level: stream chunks through the kernel
    T = int(trace.num_tokens or 0)
    k = int(trace.top_k or 1)
    chunk = chunk_tokens or auto_chunk(trace)
    chunk = max(1, min(chunk, max(T, 1)))
    if threads is not None and threads < 1:
        raise InputError(f"Expected threads >= 1, got {threads}.")
    prev_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        kern = TokenStream(dispatch, table, phy2log, c, E, k, chunk, dev)
        done = 0
        for ids, sr in trace.iter_token_chunks(chunk):
            t = ids.shape[0]
            if sr is None:
                src = (np.arange(done, done + t, dtype=np.int64) % G).astype(np.int32)
            else:
                src = (sr.astype(np.int64) % G).astype(np.int32)
            kern.run(ids, src)
            done += t
            if progress is not None:
                progress(done, T)
    finally:
        torch.set_num_threads(prev_threads)
    if not trace.has_source_rank:
        messages.append("the trace has no source ranks: tokens are spread evenly over GPUs (t % G).")
    loads, matrix, ns, tokens = kern.finish(table, phy2log)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return ValidationResult(
        dispatch=dispatch, gpu_loads=loads, tokens=tokens, matrix=matrix, node_sends=ns,
        num_tokens=T, trace_kind="tokens", messages=tuple(messages), device=dev.type,
        wall_time=time.perf_counter() - start, assignments=float(loads.sum()), **common,
    )
