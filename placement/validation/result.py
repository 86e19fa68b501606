"""The figures of one replay: :class:`ValidationResult` (per layer: loads, traffic, bytes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement.cluster import Cluster
from placement.metrics import imbalance

__all__ = ["DEVICES", "RULES", "TRAFFIC_NA", "ValidationResult"]

RULES: tuple[str, ...] = ("static", "even", "plan", "sglang-static", "dynamic", "lp")
"""Dispatch rules: the engines' static rule (ours: the same-node and fair choices spread
round-robin), an even split over replicas, the plan's table, SGLang's exact static table
(``random.Random(42)``), SGLang's per-token ``dynamic`` choice and SGLang's per-batch ``lp``
(LPLB) split (:mod:`placement.validation.engine_rules`)."""

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""Where a replay may run (auto: CUDA when available)."""

TRAFFIC_NA = "n/a (needs token-level trace)"


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
        dispatch: the dispatch rule used (one of :data:`RULES`).
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
        batch_imbalance: ``[L]`` (``lp`` only) the imbalance per batch, the LP's objective:
            sum over batches of the busiest GPU's load / sum over batches of the mean load
            (``imbalance`` is that of the whole trace's loads, where the batches' splits add
            up); None for the other rules.
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
    batch_imbalance: np.ndarray | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("layer_ids", "gpu_loads", "tokens", "matrix", "node_sends",
                     "batch_imbalance"):
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

    @property
    def mean_batch_imbalance(self) -> float | None:
        """``batch_imbalance`` averaged over layers (``lp`` only), else None."""
        if self.batch_imbalance is None or not self.num_layers:
            return None
        return float(self.batch_imbalance.mean())

    @property
    def imbalance_label(self) -> str:
        """The figure's name in every command: ``"imbalance (static)"``, ``"imbalance (even)"``
        (``"imbalance (plan)"`` for the plan's own table): the rule that made the loads."""
        return f"imbalance ({self.dispatch})"

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
        """A readable summary (see :func:`~placement.validation.text.format_validation`)."""
        from placement.validation.text import format_validation

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

        key = f"imbalance_{self.dispatch}"
        layers = []
        for i, lid in enumerate(self.layer_ids.tolist()):
            layers.append({
                "layer_id": int(lid),
                "tokens": f(self.tokens, i),
                key: float(imb[i]),
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
            key: self.mean_imbalance if self.num_layers else None,
            f"worst_layer_{key}": float(imb.max()) if imb.size else None,
            f"balancedness_{self.dispatch}": float(np.mean(1.0 / imb)) if imb.size else None,
            "cross_node_sends_per_token": self.mean_cross_node_sends_per_token,
            "cross_node_copies_per_token": self.mean_cross_node_copies_per_token,
            "intra_node_copies_per_token": self.mean_intra_node_copies_per_token,
            **({} if self.batch_imbalance is None
               else {f"batch_imbalance_{self.dispatch}": self.mean_batch_imbalance}),
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
