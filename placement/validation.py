"""Replay a trace against a plan: tokens per GPU, imbalance and all-to-all traffic, per layer.

Definitions (``shared/docs/definitions.md``). A token lives on its source GPU ``r`` (the trace's
``source_rank % G``, or ``t % G`` for token ``t`` when the trace has none: spread evenly) and is
sent to the GPU of one replica of each of its top-k experts (dispatch); the results come back the
same way (combine). Which replica is chosen follows a *dispatch rule*:

* ``static``: the engines' static rule (:func:`placement.plan.static_dispatch`, recomputed from
  ``phy2log``): a replica on ``r`` itself, else on ``r``'s node, else elsewhere; fixed per
  (source GPU, expert).
* ``plan``: the plan's own dispatch table ``plan.dispatch [L, G, E]``.
* ``even``: every assignment is split ``1/r`` over the expert's ``r`` replicas (the dynamic rule,
  as if every token picked one replica uniformly at random, independently for each of its
  experts). Loads and copies are the exact expected values (fractional); cross-node sends are the
  exact expected number of distinct remote nodes, ``sum_n [1 - prod_j (1 - q[e_j, n])]`` where
  ``q[e, n]`` is the share of expert ``e``'s replicas that sit on node ``n``.

Figures per layer, for the layer's tokens (those with at least one expert in the layer):

* ``gpu_loads [L, G]``: expert-token assignments processed by each GPU;
* ``imbalance [L]``: max / mean of ``gpu_loads``;
* ``matrix [L, G, G]``: assignments sent from source GPU to destination GPU (one per expert, not
  deduplicated: DeepEP low-latency mode; the diagonal stays on its GPU). Column sums are the GPU
  loads; row sums are k per token;
* ``node_sends [L, G, N]``: tokens of source GPU ``g`` that cross to node ``n`` (once per token
  and node however many of its experts sit there: DeepEP normal mode); zero on ``g``'s own node;
* cross-node sends per token (``node_sends`` summed, per token), cross-node copies per token
  (off-node entries of ``matrix`` per token) and intra-node copies per token (entries of
  ``matrix`` between two GPUs of one node).

Bytes: a send or copy moves ``hidden_size x bytes_per_element`` bytes, for dispatch (FP8: 1) and
again for combine (BF16: 2).

Aggregated traces (counts) give GPU loads only: by the ``even`` rule (or by the dispatch table
when the counts are split by source rank); traffic needs token-level data and is ``None``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from placement.cluster import Cluster
from placement.errors import InputError
from placement.metrics import even_gpu_loads, imbalance, static_gpu_loads
from placement.plan import Plan, static_dispatch
from placement.routing_traces.trace import Trace

__all__ = [
    "DEFAULT_CHUNK_ASSIGNMENTS",
    "DEVICES",
    "RULES",
    "ValidationResult",
    "format_validation",
    "match_layers",
    "replay",
    "resolve_device",
]

RULES: tuple[str, ...] = ("static", "even", "plan")
"""Dispatch rules: the engines' static rule, an even split over replicas, the plan's table."""

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

DEFAULT_CHUNK_ASSIGNMENTS = 1 << 22
"""Token-expert assignments per chunk when ``chunk_tokens`` is not given (bounds memory)."""

PATTERN_BINS = 1 << 20
"""Bins of the node-pattern histogram: node masks are cut in groups of ``B`` nodes so that
``L * G * groups * 2^B`` stays below this (8 MB of int64 counts)."""

Progress = Callable[[int, int], None]
"""``progress(tokens_done, tokens_total)``."""


# -------------------------------------------------------------------------------------------
# the result
# -------------------------------------------------------------------------------------------
def _ro(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.array(a, dtype=np.float64 if a.dtype.kind == "f" else a.dtype, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class ValidationResult:
    """What a replay measured, per replayed layer (``L`` layers, ``G`` GPUs, ``N`` nodes).

    Attributes:
        cluster: the plan's cluster.
        layer_ids: ``[L]`` decoder-layer id of every replayed layer.
        dispatch: the dispatch rule used (``static``, ``even`` or ``plan``).
        gpu_loads: ``[L, G]`` expert-token assignments processed by every GPU.
        tokens: ``[L]`` tokens routed in every layer (token-level: tokens with at least one
            expert; counts: assignments / top-k when top-k is known), or None.
        matrix: ``[L, G, G]`` assignments from source GPU to destination GPU, or None
            (aggregated trace).
        node_sends: ``[L, G, N]`` tokens of source GPU g sent to remote node n (deduplicated per
            token and node), or None (aggregated trace).
        num_tokens: T, tokens in a token-level trace (None for counts).
        trace_kind: ``"tokens"`` or ``"counts"``.
        hidden_size: model hidden size for bytes (None: bytes unknown).
        dispatch_bytes_per_element: bytes per element sent in dispatch (FP8: 1).
        combine_bytes_per_element: bytes per element sent in combine (BF16: 2).
        skipped_layer_ids: plan layers the trace does not have (not replayed).
        messages: notes for the user.
        plan_name, trace_name: labels.
        device: where the replay ran.
        wall_time: seconds spent replaying.
        assignments: token-expert assignments replayed.
    """

    cluster: Cluster
    layer_ids: np.ndarray
    dispatch: str
    gpu_loads: np.ndarray
    tokens: np.ndarray | None = None
    matrix: np.ndarray | None = None
    node_sends: np.ndarray | None = None
    num_tokens: int | None = None
    trace_kind: str = "tokens"
    hidden_size: int | None = None
    dispatch_bytes_per_element: float = 1.0
    combine_bytes_per_element: float = 2.0
    skipped_layer_ids: tuple[int, ...] = ()
    messages: tuple[str, ...] = ()
    plan_name: str = ""
    trace_name: str = ""
    device: str = "cpu"
    wall_time: float = 0.0
    assignments: float = 0.0
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("layer_ids", "gpu_loads", "tokens", "matrix", "node_sends"):
            object.__setattr__(self, name, _ro(getattr(self, name)))
        L, G = self.gpu_loads.shape
        if self.layer_ids.shape != (L,):
            raise ValueError(f"Expected {L} layer_ids, got shape {self.layer_ids.shape}.")
        if G != self.cluster.num_gpus:
            raise ValueError(f"gpu_loads has {G} GPUs, cluster {self.cluster.num_gpus}.")
        if self.dispatch not in RULES:
            raise ValueError(f"Expected dispatch in {RULES}, got {self.dispatch!r}.")

    # -- shape -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, replayed layers."""
        return int(self.layer_ids.shape[0])

    @property
    def has_traffic(self) -> bool:
        """Whether traffic was measured (token-level traces only)."""
        return self.matrix is not None and self.node_sends is not None

    @property
    def has_bytes(self) -> bool:
        """Whether traffic can be given in bytes (token-level trace and a known hidden size)."""
        return self.has_traffic and self.hidden_size is not None

    # -- balance -----------------------------------------------------------------------------
    @property
    def imbalance(self) -> np.ndarray:
        """``[L]`` max / mean tokens per GPU (1.0 where a layer routes nothing)."""
        return imbalance(self.gpu_loads)

    @property
    def mean_imbalance(self) -> float:
        """Imbalance averaged over layers."""
        return float(self.imbalance.mean()) if self.num_layers else float("nan")

    # -- traffic, per layer ----------------------------------------------------------------------
    def _traffic(self) -> dict[str, np.ndarray]:
        if "traffic" not in self._cache:
            if self.matrix is None or self.node_sends is None:
                raise ValueError("no traffic: the trace holds aggregated counts")
            G = self.cluster.num_gpus
            node = self.cluster.node_of_gpu()
            same_node = node[:, None] == node[None, :]
            off = ~np.eye(G, dtype=bool)
            m = self.matrix
            self._cache["traffic"] = {
                "sends": self.node_sends.sum(axis=(1, 2)),
                "copies": np.where(~same_node[None], m, 0.0).sum(axis=(1, 2)),
                "intra": np.where((same_node & off)[None], m, 0.0).sum(axis=(1, 2)),
            }
        return self._cache["traffic"]

    def _per_token(self, total: np.ndarray) -> np.ndarray:
        tok = self.tokens if self.tokens is not None else np.zeros(self.num_layers)
        return np.divide(total, tok, out=np.zeros_like(total), where=tok > 0)

    @property
    def cross_node_sends(self) -> np.ndarray | None:
        """``[L]`` cross-node sends summed over tokens (distinct remote nodes per token)."""
        return self._traffic()["sends"] if self.has_traffic else None

    @property
    def cross_node_copies(self) -> np.ndarray | None:
        """``[L]`` cross-node copies summed over tokens (remote experts, not deduplicated)."""
        return self._traffic()["copies"] if self.has_traffic else None

    @property
    def intra_node_copies(self) -> np.ndarray | None:
        """``[L]`` copies to another GPU of the token's own node, summed over tokens."""
        return self._traffic()["intra"] if self.has_traffic else None

    @property
    def cross_node_sends_per_token(self) -> np.ndarray | None:
        """``[L]`` cross-node sends per token."""
        return None if not self.has_traffic else self._per_token(self._traffic()["sends"])

    @property
    def cross_node_copies_per_token(self) -> np.ndarray | None:
        """``[L]`` cross-node copies per token."""
        return None if not self.has_traffic else self._per_token(self._traffic()["copies"])

    @property
    def intra_node_copies_per_token(self) -> np.ndarray | None:
        """``[L]`` intra-node (NVLink) copies per token."""
        return None if not self.has_traffic else self._per_token(self._traffic()["intra"])

    def _mean(self, v: np.ndarray | None) -> float | None:
        return None if v is None or not v.size else float(v.mean())

    @property
    def mean_cross_node_sends_per_token(self) -> float | None:
        """Cross-node sends per token, averaged over layers (None: no traffic data)."""
        return self._mean(self.cross_node_sends_per_token)

    @property
    def mean_cross_node_copies_per_token(self) -> float | None:
        """Cross-node copies per token, averaged over layers (None: no traffic data)."""
        return self._mean(self.cross_node_copies_per_token)

    @property
    def mean_intra_node_copies_per_token(self) -> float | None:
        """Intra-node copies per token, averaged over layers (None: no traffic data)."""
        return self._mean(self.intra_node_copies_per_token)

    # -- bytes -------------------------------------------------------------------------------
    def bytes_per_element(self, phase: str) -> float:
        """Bytes per element of ``"dispatch"`` or ``"combine"``."""
        if phase == "dispatch":
            return self.dispatch_bytes_per_element
        if phase == "combine":
            return self.combine_bytes_per_element
        raise ValueError(f"Expected phase 'dispatch' or 'combine', got {phase!r}.")

    def matrix_bytes(self, phase: str = "dispatch") -> np.ndarray | None:
        """``[L, G, G]`` bytes from source GPU to destination GPU in ``phase``.

        Combine runs the other way: its bytes go from the destination GPU back to the source,
        so read the combine matrix as ``[L, from source's expert GPU ..]`` transposed.
        """
        if not self.has_bytes:
            return None
        assert self.matrix is not None and self.hidden_size is not None
        return self.matrix * (self.hidden_size * self.bytes_per_element(phase))

    def cross_node_bytes(self, phase: str = "dispatch") -> np.ndarray | None:
        """``[L]`` bytes over the inter-node network in ``phase`` (sends x hidden x bytes)."""
        if not self.has_bytes:
            return None
        assert self.hidden_size is not None
        return self._traffic()["sends"] * (self.hidden_size * self.bytes_per_element(phase))

    def intra_node_bytes(self, phase: str = "dispatch") -> np.ndarray | None:
        """``[L]`` bytes over NVLink in ``phase`` (intra-node copies x hidden x bytes)."""
        if not self.has_bytes:
            return None
        assert self.hidden_size is not None
        return self._traffic()["intra"] * (self.hidden_size * self.bytes_per_element(phase))

    # -- per GPU (for the cost model) ---------------------------------------------------------
    def per_gpu_traffic(self) -> dict[str, np.ndarray] | None:
        """Tokens every GPU sends over each kind of link in dispatch, ``[L, G]`` each.

        * ``intra_send``: copies to other GPUs of its node (NVLink);
        * ``intra_recv``: copies it receives from other GPUs of its node;
        * ``net_send``: cross-node sends of its tokens (deduplicated per node);
        * ``net_recv``: cross-node sends it receives; as in DeepEP, a token bound for node ``n``
          arrives at the GPU of node ``n`` with the same local index as its source GPU.

        In combine every GPU sends back what it received in dispatch (``*_recv``).
        None for aggregated traces.
        """
        if self.matrix is None or self.node_sends is None:
            return None
        c = self.cluster
        G, gpn, N = c.num_gpus, c.gpus_per_node, c.num_nodes
        node = c.node_of_gpu()
        same = (node[:, None] == node[None, :]) & ~np.eye(G, dtype=bool)
        intra = np.where(same[None], self.matrix, 0.0)
        ns = self.node_sends  # [L, G, N]
        L = ns.shape[0]
        # receiving GPU of (source g, node n) is n * gpn + g % gpn
        recv = ns.reshape(L, N, gpn, N).sum(axis=1)  # [L, local index, node]
        net_recv = recv.transpose(0, 2, 1).reshape(L, G)
        return {
            "intra_send": intra.sum(axis=2),
            "intra_recv": intra.sum(axis=1),
            "net_send": ns.sum(axis=2),
            "net_recv": net_recv,
        }

    # -- output ------------------------------------------------------------------------------
    def summary(self) -> str:
        """A readable summary (see :func:`format_validation`)."""
        return format_validation(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures: means over layers and a ``layers`` list with per-layer values."""
        imb = self.imbalance
        loads = self.gpu_loads
        sends = self.cross_node_sends_per_token
        copies = self.cross_node_copies_per_token
        intra = self.intra_node_copies_per_token
        xd, xc = self.cross_node_bytes("dispatch"), self.cross_node_bytes("combine")
        nd, nc = self.intra_node_bytes("dispatch"), self.intra_node_bytes("combine")

        def f(v: np.ndarray | None, i: int) -> float | None:
            return None if v is None else float(v[i])

        layers = []
        for i, lid in enumerate(self.layer_ids.tolist()):
            layers.append({
                "layer_id": int(lid),
                "tokens": f(self.tokens, i),
                "imbalance": float(imb[i]),
                "max_tokens_per_gpu": float(loads[i].max()),
                "mean_tokens_per_gpu": float(loads[i].mean()),
                "tokens_per_gpu": [float(x) for x in loads[i]],
                "cross_node_sends_per_token": f(sends, i),
                "cross_node_copies_per_token": f(copies, i),
                "intra_node_copies_per_token": f(intra, i),
                "cross_node_bytes": None if xd is None or xc is None
                else {"dispatch": float(xd[i]), "combine": float(xc[i])},
                "intra_node_bytes": None if nd is None or nc is None
                else {"dispatch": float(nd[i]), "combine": float(nc[i])},
            })
        return {
            "format": "placement-validation",
            "version": 1,
            "plan": self.plan_name,
            "trace": self.trace_name,
            "trace_kind": self.trace_kind,
            "dispatch": self.dispatch,
            "device": self.device,
            "cluster": self.cluster.to_dict(),
            "num_tokens": self.num_tokens,
            "layers_replayed": self.num_layers,
            "skipped_layer_ids": list(self.skipped_layer_ids),
            "imbalance": self.mean_imbalance,
            "max_imbalance": float(imb.max()) if imb.size else None,
            "balancedness": 1.0 / self.mean_imbalance if self.num_layers else None,
            "cross_node_sends_per_token": self.mean_cross_node_sends_per_token,
            "cross_node_copies_per_token": self.mean_cross_node_copies_per_token,
            "intra_node_copies_per_token": self.mean_intra_node_copies_per_token,
            "hidden_size": self.hidden_size,
            "dispatch_bytes_per_element": self.dispatch_bytes_per_element,
            "combine_bytes_per_element": self.combine_bytes_per_element,
            "traffic_note": None if self.has_traffic
            else f"traffic: {TRAFFIC_NA}; this trace holds aggregated counts",
            "messages": list(self.messages),
            "wall_time": self.wall_time,
            "assignments": self.assignments,
            "layers": layers,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)


TRAFFIC_NA = "n/a (needs token-level trace)"


def _fmt_bytes(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def format_validation(result: ValidationResult) -> str:
    """Text summary of a replay: balance, traffic (or why there is none), notes."""
    r = result
    c = r.cluster
    what = f"{r.num_tokens} tokens" if r.num_tokens is not None else "aggregated counts"
    head = f"replayed {r.num_layers} layer(s)"
    if r.trace_name or r.plan_name:
        head = f"replayed trace {r.trace_name or '?'} against plan {r.plan_name or '?'}: " \
               f"{r.num_layers} layer(s)"
    lines = [
        f"{head}, {what}, dispatch {r.dispatch}, device {r.device}",
        f"cluster: {c.summary()}",
    ]
    if r.num_layers:
        imb = r.imbalance
        worst = int(np.argmax(imb))
        lines.append(
            f"imbalance (max/mean tokens per GPU): mean {r.mean_imbalance:.4f}, "
            f"worst {imb[worst]:.4f} (layer {int(r.layer_ids[worst])})"
        )
    if r.has_traffic:
        lines.append(
            f"cross-node sends per token: {r.mean_cross_node_sends_per_token:.4f} "
            "(distinct remote nodes; DeepEP normal mode)"
        )
        lines.append(
            f"cross-node copies per token: {r.mean_cross_node_copies_per_token:.4f} "
            "(remote experts; DeepEP low-latency mode)"
        )
        lines.append(f"intra-node copies per token: {r.mean_intra_node_copies_per_token:.4f}")
        xd, xc = r.cross_node_bytes("dispatch"), r.cross_node_bytes("combine")
        if xd is not None and xc is not None and r.tokens is not None:
            tok = float(r.tokens.sum())
            if tok > 0:
                lines.append(
                    f"cross-node bytes per token per layer: dispatch {_fmt_bytes(xd.sum() / tok)}, "
                    f"combine {_fmt_bytes(xc.sum() / tok)} (hidden {r.hidden_size}, "
                    f"{r.dispatch_bytes_per_element:g}/{r.combine_bytes_per_element:g} "
                    "bytes per element)"
                )
    else:
        lines.append(f"traffic: {TRAFFIC_NA}; this trace holds aggregated counts")
    for m in r.messages:
        lines.append(f"note: {m}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# checks
# -------------------------------------------------------------------------------------------
def _span(ids: np.ndarray | list[int]) -> str:
    v = [int(x) for x in ids]
    if not v:
        return "none"
    if v == list(range(v[0], v[0] + len(v))) and len(v) > 2:
        return f"{v[0]}-{v[-1]}"
    return ", ".join(str(x) for x in v[:8]) + (", ..." if len(v) > 8 else "")


def match_layers(plan: Plan, trace: Trace) -> tuple[np.ndarray, tuple[int, ...]]:
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
            f"the trace has layer(s) {_span(missing)} that the plan lacks (plan layers "
            f"{_span(plan.layer_ids)}, trace layers {_span(trace.layer_ids)})."
        )
    idx = np.array([where[int(x)] for x in trace.layer_ids.tolist()], dtype=np.int64)
    traced = set(int(x) for x in trace.layer_ids.tolist())
    skipped = tuple(int(x) for x in plan.layer_ids.tolist() if int(x) not in traced)
    return idx, skipped


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. Raises InputError for unknown ones."""
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


# -------------------------------------------------------------------------------------------
# the replay kernels
# -------------------------------------------------------------------------------------------
def _replica_share(phy2log: np.ndarray, cluster: Cluster, num_experts: int) -> np.ndarray:
    """``[L, E, G]`` share of expert e's replicas on GPU g (rows sum to 1)."""
    L = phy2log.shape[0]
    G = cluster.num_gpus
    gpu = cluster.gpu_of_slot()
    flat = (np.arange(L)[:, None] * num_experts + phy2log) * G + gpu[None, :]
    cnt = np.bincount(flat.reshape(-1), minlength=L * num_experts * G).reshape(L, num_experts, G)
    return cnt / cnt.sum(axis=2, keepdims=True)


def _group_bits(num_nodes: int, rows: int) -> int:
    """Nodes per bitmask group: the most that keep ``rows * groups * 2^bits <= PATTERN_BINS``."""
    best = 1
    for bits in range(1, min(num_nodes, 16) + 1):
        groups = -(-num_nodes // bits)
        if rows * groups * (1 << bits) <= PATTERN_BINS:
            best = bits
    return best


class _Kernel:
    """Streams token chunks through one replay, accumulating integer (or expected) counts.

    Steps per chunk ``ids [t, L, k]`` (``-1`` = none), ``src [t]``:

    1. ``key [t, L, k]`` int32 ``= (src * L + l) * (E + 1) + e + 1``: padding lands in column 0
       of its (GPU, layer) row and is dropped at the end; one ``bincount`` gives the counts per
       (source GPU, layer, expert) from which GPU loads and the GPU x GPU matrix follow. Bins
       are ordered by source GPU first, so a token's L x k increments stay in one small region.
    2. cross-node sends need deduplication per token over nodes. A table gives every key the bit
       ``1 << node`` of its replica's node (0 for padding); a tree OR over the k experts gives
       one bitmask of reached nodes per (token, layer). The mask is cut into groups of ``B``
       nodes and each group's ``B``-bit pattern counted by one ``bincount`` per (layer, source
       GPU, group); per-node counts follow from the patterns at the end. No sort, integers only.
    3. under the ``even`` rule, step 2 is the expected number of distinct nodes instead:
       ``1 - prod_j (1 - q[e_j, n])`` per node (float64).
    """

    def __init__(
        self,
        rule: str,
        dispatch: np.ndarray | None,
        phy2log: np.ndarray,
        cluster: Cluster,
        num_experts: int,
        top_k: int,
        chunk_tokens: int,
        device: torch.device,
    ) -> None:
        L = phy2log.shape[0]
        G, N, E, k = cluster.num_gpus, cluster.num_nodes, num_experts, top_k
        self.rule, self.L, self.G, self.N, self.E, self.k = rule, L, G, N, E, k
        self.cluster = cluster
        self.device = device
        self.nkeys = L * G * (E + 1)
        if self.nkeys >= 2**31:
            raise InputError(f"too many (layer, GPU, expert) cells for one replay ({self.nkeys}).")
        self.lse = torch.zeros(self.nkeys, dtype=torch.int64, device=device)
        self.valid = torch.zeros(L, dtype=torch.int64, device=device)
        # bins are ordered (source GPU, layer, ...): a token's L layers hit one small region
        self.layer_off = torch.arange(L, dtype=torch.int32, device=device) * (E + 1) + 1
        self.layer_ar = torch.arange(L, dtype=torch.int32, device=device)
        n = chunk_tokens * L * k
        m = chunk_tokens * L
        self.key = torch.empty(n, dtype=torch.int32, device=device)
        if rule == "even":
            # [L*(E+1), N] probability that a random replica of e is NOT on node n
            share = _replica_share(phy2log, cluster, E)  # [L, E, G]
            q = share.reshape(L, E, N, cluster.gpus_per_node).sum(axis=3)  # [L, E, N]
            miss = np.ones((L, E + 1, N), dtype=np.float64)
            miss[:, 1:, :] = 1.0 - q
            self.miss = torch.from_numpy(miss.reshape(L * (E + 1), N)).to(device)
            self.node_acc = torch.zeros(L * G, N, dtype=torch.float64, device=device)
            return
        assert dispatch is not None
        if N > 62:
            raise InputError(f"replay supports at most 62 nodes, the cluster has {N}.")
        node = (dispatch // cluster.slots_per_gpu) // cluster.gpus_per_node  # [L, G, E]
        bits = np.zeros((L, G, E + 1), dtype=np.int64)
        bits[:, :, 1:] = np.left_shift(np.int64(1), node)
        self.mdtype = torch.int32 if N <= 30 else torch.int64
        bits = np.ascontiguousarray(bits.transpose(1, 0, 2))  # key order (GPU, layer, expert)
        self.bittab = torch.from_numpy(bits.reshape(-1)).to(device=device, dtype=self.mdtype)
        self.B = _group_bits(N, L * G)
        self.ngroups = -(-N // self.B)
        self.npat = L * G * self.ngroups * (1 << self.B)
        if self.npat >= 2**31:
            raise InputError(f"too many (layer, GPU, node) cells for one replay ({self.npat}).")
        self.phist = torch.zeros(self.npat, dtype=torch.int64, device=device)
        self.bits = torch.empty(n, dtype=self.mdtype, device=device)
        self.tree = torch.empty(m * ((k + 1) // 2), dtype=self.mdtype, device=device)
        self.pkey = torch.empty(self.ngroups * m, dtype=self.mdtype, device=device)

    def run(self, ids_np: np.ndarray, src_np: np.ndarray) -> None:
        """Add one chunk: ``ids_np [t, L, k]`` (-1 = none), ``src_np [t]`` source GPUs."""
        t = ids_np.shape[0]
        if t == 0:
            return
        L, k, dev = self.L, self.k, self.device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only numpy: never written
            ids = torch.from_numpy(ids_np)
        src = torch.from_numpy(np.ascontiguousarray(src_np, dtype=np.int32))
        if dev.type != "cpu":
            ids = ids.to(dev, non_blocking=True)
            src = src.to(dev, non_blocking=True)
        # 1. key [t, L, k] = (src * L + l) * (E + 1) + 1 + e; counts per (src, l, e)
        off = (src * (L * (self.E + 1)))[:, None] + self.layer_off[None, :]  # [t, L]
        key = self.key[: t * L * k].view(t, L, k)
        torch.add(ids, off[:, :, None], out=key)
        self.lse += torch.bincount(key.view(-1), minlength=self.nkeys)
        # 2. cross-node sends, deduplicated per token and node
        if self.rule == "even":
            self.valid += (ids.amax(dim=2) >= 0).sum(dim=0)
            self._even(ids, src)
        else:
            self._masks(key, src, t)

    def _masks(self, key: torch.Tensor, src: torch.Tensor, t: int) -> None:
        L, k, B, ng = self.L, self.k, self.B, self.ngroups
        m = t * L
        # a. bit of every assignment's node
        cur = self.bits[: m * k].view(m, k)
        torch.index_select(self.bittab, 0, key.view(-1), out=cur.view(-1))
        # b. tree OR over the k experts of every (token, layer); two scratch buffers alternate
        scratch = (self.tree, self.bits)
        turn = 0
        while cur.shape[1] > 1:
            w = cur.shape[1]
            h = w // 2
            nxt = scratch[turn][: m * (w - h)].view(m, w - h)
            torch.bitwise_or(cur[:, :h], cur[:, h:2 * h], out=nxt[:, :h])
            if w % 2:
                nxt[:, h].copy_(cur[:, 2 * h])
            cur = nxt
            turn = 1 - turn
        acc = cur.reshape(m)  # [t * L] bitmask of reached nodes, (token, layer) order
        self.valid += (acc.view(t, L) != 0).sum(dim=0)
        # c. one pattern bin per (layer, source GPU, group, B-bit pattern)
        base = (src[:, None] * L + self.layer_ar[None, :]).view(-1)  # [t * L] = src * L + l
        pk = self.pkey[: ng * m].view(ng, m)
        width = ng << B
        for g in range(ng):
            row = pk[g]
            if ng == 1:
                row.copy_(acc)
            else:
                torch.bitwise_right_shift(acc, g * B, out=row)
                row.bitwise_and_((1 << B) - 1)
            row.add_(base * width + (g << B))
        self.phist += torch.bincount(pk.view(-1), minlength=self.npat)

    def _even(self, ids: torch.Tensor, src: torch.Tensor) -> None:
        L, k, N, E, G = self.L, self.k, self.N, self.E, self.G
        t = ids.shape[0]
        # sub-chunks bound the float work tensor [tokens * L, N]
        step = max(1, (1 << 20) // max(L * N, 1))
        larange = torch.arange(L, device=self.device, dtype=torch.int64)
        for s in range(0, t, step):
            part = ids[s:s + step].to(torch.int64)  # [t', L, k]
            sp = src[s:s + step].to(torch.int64)
            tp = part.shape[0]
            rows = (larange[None, :] * (E + 1) + 1)[..., None] + part  # [t', L, k]
            notreach = torch.ones(tp * L, N, dtype=torch.float64, device=self.device)
            for j in range(k):
                notreach.mul_(self.miss.index_select(0, rows[:, :, j].reshape(-1)))
            reach = 1.0 - notreach
            dest = (larange[None, :] * G + sp[:, None]).reshape(-1)  # [t' * L]
            self.node_acc.index_add_(0, dest, reach)

    def finish(
        self, dispatch: np.ndarray | None, phy2log: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(gpu_loads [L, G], matrix [L, G, G], node_sends [L, G, N], tokens [L])``."""
        L, G, N, E = self.L, self.G, self.N, self.E
        c = self.cluster
        lse = self.lse.cpu().numpy().reshape(G, L, E + 1).transpose(1, 0, 2)
        lse = lse[:, :, 1:].astype(np.float64)  # [L, G, E]
        if self.rule == "even":
            share = _replica_share(phy2log, c, E)  # [L, E, G]
            matrix = np.einsum("lge,leh->lgh", lse, share)
            ns = self.node_acc.cpu().numpy().reshape(L, G, N).copy()
        else:
            assert dispatch is not None
            dest = dispatch // c.slots_per_gpu  # [L, G, E]
            cell = (np.arange(L * G).reshape(L, G, 1) * G + dest).reshape(-1)
            matrix = np.bincount(cell, weights=lse.reshape(-1), minlength=L * G * G)
            matrix = matrix.reshape(L, G, G)
            B, ng = self.B, self.ngroups
            ph = self.phist.cpu().numpy().reshape(G, L, ng, 1 << B).transpose(1, 0, 2, 3)
            ph = ph.astype(np.float64)  # [L, G, groups, patterns]
            has = ((np.arange(1 << B)[:, None] >> np.arange(B)[None, :]) & 1).astype(np.float64)
            ns = (ph @ has).reshape(L, G, ng * B)[:, :, :N].copy()  # [L, G, N]
        tokens = self.valid.cpu().numpy().astype(np.float64)
        own = c.node_of_gpu()
        ns[:, np.arange(G), own] = 0.0  # the token's own node is not a cross-node send
        loads = matrix.sum(axis=1)
        return loads, matrix, ns, tokens


def _auto_chunk(trace: Trace) -> int:
    L, k = trace.num_layers, trace.top_k or 1
    return max(1, DEFAULT_CHUNK_ASSIGNMENTS // max(L * k, 1))


def replay(
    plan: Plan,
    trace: Trace,
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
) -> ValidationResult:
    """Replay ``trace`` against ``plan`` under a dispatch rule.

    Args:
        plan: the plan (``phy2log [L_plan, P]``, ``layer_ids [L_plan]``).
        trace: token-level (``topk_ids [T, L, k]``) or aggregated (``counts [W, R, L, E]``);
            its layers must all be in the plan (matched by decoder-layer id).
        dispatch: ``"static"`` (engines' rule), ``"even"`` (split over replicas) or ``"plan"``
            (the plan's own dispatch table).
        chunk_tokens: tokens per chunk (memory is bounded by the chunk, not the trace); default:
            about 4 million assignments per chunk (some 50 MB of buffers).
        device: ``"cpu"``, ``"cuda"`` or None/``"auto"`` (CUDA when available).
        progress: called with ``(tokens_done, tokens_total)`` after each chunk.
        hidden_size, dispatch_bytes_per_element, combine_bytes_per_element: for bytes.
        plan_name, trace_name: labels for the summary.
        threads: CPU threads torch may use during the replay (default 1: the replay is memory
            bound, and on a shared machine a second thread waiting for a busy core slows every
            step down many times).
    Returns:
        A :class:`ValidationResult` over the trace's layers (in the trace's order).
    """
    start = time.perf_counter()
    # 1. inputs
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
    dev = resolve_device(device)
    c = plan.cluster
    E, G = plan.num_experts, c.num_gpus
    idx, skipped = match_layers(plan, trace)
    phy2log = np.asarray(plan.phy2log)[idx]
    messages: list[str] = []
    if skipped:
        messages.append(
            f"the plan has {len(skipped)} layer(s) the trace lacks ({_span(list(skipped))}); "
            f"replayed the {len(idx)} common layer(s)."
        )
    table: np.ndarray | None = None
    if dispatch == "static":
        table = static_dispatch(phy2log, c, E)
    elif dispatch == "plan":
        assert plan.dispatch is not None
        table = np.asarray(plan.dispatch)[idx]
    common: dict[str, Any] = dict(
        cluster=c, layer_ids=trace.layer_ids.copy(), hidden_size=hidden_size,
        dispatch_bytes_per_element=float(dispatch_bytes_per_element),
        combine_bytes_per_element=float(combine_bytes_per_element),
        skipped_layer_ids=skipped, plan_name=plan_name, trace_name=trace_name,
    )

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
    chunk = chunk_tokens or _auto_chunk(trace)
    chunk = max(1, min(chunk, max(T, 1)))
    if threads is not None and threads < 1:
        raise InputError(f"Expected threads >= 1, got {threads}.")
    prev_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        kern = _Kernel(dispatch, table, phy2log, c, E, k, chunk, dev)
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
