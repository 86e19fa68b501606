"""A placement plan: which logical expert every physical slot holds, and how tokens are routed.

Vocabulary (DeepSeek EPLB / SGLang): for every traced MoE layer,

* ``phy2log [L, P]``: logical expert held by physical slot ``p`` (slot ``p`` on GPU
  ``p // slots_per_gpu``);
* ``logcnt [L, E]``: replicas of every logical expert;
* ``log2phy [L, E, max_replicas]``: the slots of every logical expert, padded with ``-1``;
* ``dispatch [L, G, E]``: the slot that tokens on source GPU ``g`` use for expert ``e``.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from placement._io import atomic_write_text, json_loads, read_limit, too_large
from placement._util import int_array
from placement.cluster import Cluster
from placement.errors import ClusterError, InputError, PlanError
from placement.filekinds import Probe

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "Plan",
    "compute_log2phy",
    "compute_logcnt",
    "static_dispatch",
]

PLAN_FORMAT = "placement-plan"
PLAN_VERSION = 1


def compute_logcnt(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``phy2log [L, P]`` -> ``logcnt [L, E]`` replicas per logical expert."""
    L = phy2log.shape[0]
    flat = phy2log.astype(np.int64) + (np.arange(L, dtype=np.int64) * num_experts)[:, None]
    return np.bincount(flat.reshape(-1), minlength=L * num_experts).reshape(L, num_experts)


def compute_log2phy(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``phy2log [L, P]`` -> ``log2phy [L, E, max_replicas]`` slots per expert, -1 padded.

    Replicas are listed in slot order.
    """
    L, P = phy2log.shape
    logcnt = compute_logcnt(phy2log, num_experts)
    R = max(int(logcnt.max()), 1)
    out = np.full((L, num_experts, R), -1, dtype=np.int64)
    p64 = phy2log.astype(np.int64)
    # rank of every slot among the slots of its expert (stable in slot order)
    order = np.argsort(p64, axis=1, kind="stable")
    sorted_e = np.take_along_axis(p64, order, axis=1)
    starts = np.zeros((L, num_experts), dtype=np.int64)
    starts[:, 1:] = np.cumsum(logcnt, axis=1)[:, :-1]
    rank_sorted = np.arange(P)[None, :] - np.take_along_axis(starts, sorted_e, axis=1)
    li = np.repeat(np.arange(L), P)
    out[li, sorted_e.reshape(-1), rank_sorted.reshape(-1)] = order.reshape(-1)
    return out


def static_dispatch(phy2log: np.ndarray, cluster: Cluster, num_experts: int) -> np.ndarray:
    """The engines' static dispatch rule: ``phy2log [L, P]`` -> ``dispatch [L, G, E]`` slots.

    A token on GPU ``r`` uses (1) the first replica on ``r`` itself, else (2) a replica on ``r``'s
    node, else (3) any replica; in (2) and (3) the source GPUs that need a choice are spread
    round-robin over the candidates (the j-th such GPU, in GPU order, takes candidate
    ``(j + e) mod n`` of expert ``e``'s ``n`` candidates in slot order), so every replica receives
    an even share of the source GPUs. Deterministic; vectorised over GPUs and experts.
    """
    p2l = np.asarray(phy2log, dtype=np.int64)
    L, P = p2l.shape
    E = num_experts
    G, spg, gpn = cluster.num_gpus, cluster.slots_per_gpu, cluster.gpus_per_node
    N = cluster.num_nodes
    slots = np.arange(P)
    slot_gpu = slots // spg
    slot_node = slot_gpu // gpn
    gpu_node = np.arange(G) // gpn
    e_idx = np.arange(E)
    out = np.empty((L, G, E), dtype=np.int64)
    for layer in range(L):
        row = p2l[layer]
        # 1. same GPU: the first replica in slot order
        first = np.full(G * E, P, dtype=np.int64)
        np.minimum.at(first, slot_gpu * E + row, slots)
        tab = np.where(first < P, first, -1).reshape(G, E)
        # candidates per (node, expert) and per expert, in slot order
        order = np.lexsort((slots, row, slot_node))  # by node, then expert, then slot
        key = slot_node[order] * E + row[order]
        node_cnt = np.bincount(key, minlength=N * E).reshape(N, E)
        node_start = np.concatenate(([0], np.cumsum(node_cnt.reshape(-1))[:-1])).reshape(N, E)
        order_all = np.lexsort((slots, row))  # by expert, then slot
        cnt = np.bincount(row, minlength=E)
        start = np.concatenate(([0], np.cumsum(cnt)[:-1]))
        # 2. same node: the j-th needing GPU of the node takes candidate (j + e) mod n
        need = tab < 0
        n_node = node_cnt[gpu_node]  # [G, E]
        use_node = need & (n_node > 0)
        j = np.zeros((G, E), dtype=np.int64)
        for node in range(N):
            rows = slice(node * gpn, (node + 1) * gpn)
            j[rows] = np.cumsum(use_node[rows], axis=0) - 1
        pick = node_start[gpu_node] + (j + e_idx[None, :]) % np.maximum(n_node, 1)
        tab = np.where(use_node, order[np.where(use_node, pick, 0)], tab)
        # 3. elsewhere: the j-th remaining GPU takes candidate (j + e) mod n of all replicas
        rest = tab < 0
        j = np.cumsum(rest, axis=0) - 1
        pick = start[None, :] + (j + e_idx[None, :]) % np.maximum(cnt, 1)[None, :]
        tab = np.where(rest, order_all[np.where(rest, pick, 0)], tab)
        out[layer] = tab
    return out


def _as_int_array(name: str, value: Any, ndim: int) -> np.ndarray:
    return int_array(value, name, ndim, error=PlanError).astype(np.int64)


@dataclass(frozen=True)
class Plan:
    """A placement for every traced MoE layer, with how it was made and what it achieved.

    Args:
        cluster: the cluster the plan is for.
        num_experts: E, logical experts per layer.
        layer_ids: ``[L]`` decoder-layer index of every planned MoE layer.
        phy2log: ``[L, P]`` logical expert of every physical slot, ``P = cluster.num_slots``.
        dispatch: ``[L, G, E]`` slot that tokens on source GPU g use for expert e; default: the
            engines' static rule (:func:`static_dispatch`).
        num_hidden_layers: decoder layers of the model, dense ones included, when known.
        model: model name, when known.
        method: the method that made the plan (``"optimizer"``, ``"eplb"``, ...).
        settings: the method's settings.
        objectives: per-layer objective values by name (each a list of L floats).
        lower_bound: ``[L]`` a valid lower bound of the primary objective, where the method has one.
        status: solver status (``"OPTIMAL"``, ``"FEASIBLE"``, ``"HEURISTIC"``, ...).
        wall_time: seconds spent making the plan.
        allow_colocated_replicas: accept two replicas of one expert on one GPU. Off by default (a
            plan of ours never does it); on for EPLB's and imported plans, since DeepSeek's EPLB
            does co-locate replicas and the engines accept such placements.
    """

    cluster: Cluster
    num_experts: int
    layer_ids: np.ndarray
    phy2log: np.ndarray
    dispatch: np.ndarray | None = None
    num_hidden_layers: int | None = None
    model: str | None = None
    method: str = "unknown"
    settings: dict[str, Any] = field(default_factory=dict)
    objectives: dict[str, list[float]] = field(default_factory=dict)
    lower_bound: list[float] | None = None
    status: str = "UNKNOWN"
    wall_time: float = 0.0
    allow_colocated_replicas: bool = False

    def __post_init__(self) -> None:
        E = int(self.num_experts)
        if E < 1:
            raise PlanError(f"Expected num_experts >= 1, got {self.num_experts}.")
        object.__setattr__(self, "num_experts", E)
        c = self.cluster
        try:
            c.check_fits(E)
        except ClusterError as exc:
            raise PlanError(str(exc)) from None
        p2l = _as_int_array("phy2log", self.phy2log, 2)
        L, P = p2l.shape
        if P != c.num_slots:
            raise PlanError(
                f"phy2log has {P} slots per layer but cluster {c.shape} has {c.num_slots}."
            )
        lids = _as_int_array("layer_ids", self.layer_ids, 1)
        if lids.shape[0] != L:
            raise PlanError(f"Expected {L} layer_ids (one per phy2log row), got {lids.shape[0]}.")
        if len(np.unique(lids)) != L or (lids < 0).any():
            raise PlanError("layer_ids must be distinct and >= 0.")
        if self.num_hidden_layers is not None and L and self.num_hidden_layers <= lids.max():
            raise PlanError(
                f"num_hidden_layers={self.num_hidden_layers} but a planned layer id is {lids.max()}."
            )
        # 1. ids in range
        if p2l.size and (p2l.min() < 0 or p2l.max() >= E):
            bad = int(p2l.min()) if p2l.min() < 0 else int(p2l.max())
            raise PlanError(f"Expected phy2log values in [0, {E}), found {bad}.")
        # 2. every logical expert has a replica
        logcnt = compute_logcnt(p2l, E)
        missing = np.argwhere(logcnt == 0)
        if missing.size:
            layer, e = missing[0]
            raise PlanError(
                f"expert {e} has no replica in layer {lids[layer]} "
                f"({len(missing)} expert-layer pair(s) without a slot)."
            )
        # 3. no GPU holds two replicas of one expert
        per_gpu = p2l.reshape(L, c.num_gpus, c.slots_per_gpu)
        srt = np.sort(per_gpu, axis=2)
        dup = np.argwhere(srt[:, :, 1:] == srt[:, :, :-1])
        if dup.size and not self.allow_colocated_replicas:
            layer, g, j = dup[0]
            raise PlanError(
                f"GPU {g} holds two replicas of expert {srt[layer, g, j]} in layer {lids[layer]}."
            )
        # 4. dispatch table
        if self.dispatch is None:
            disp = static_dispatch(p2l, c, E)
        else:
            disp = _as_int_array("dispatch", self.dispatch, 3)
            if disp.shape != (L, c.num_gpus, E):
                raise PlanError(
                    f"Expected dispatch of shape {(L, c.num_gpus, E)} [layers, GPUs, experts], "
                    f"got {disp.shape}."
                )
            if disp.min() < 0 or disp.max() >= P:
                raise PlanError(f"Expected dispatch slots in [0, {P}).")
            held = np.take_along_axis(p2l[:, None, :].repeat(c.num_gpus, 1), disp, axis=2)
            wrong = np.argwhere(held != np.arange(E)[None, None, :])
            if wrong.size:
                layer, g, e = wrong[0]
                raise PlanError(
                    f"dispatch sends expert {e} from GPU {g} in layer {lids[layer]} to slot "
                    f"{disp[layer, g, e]}, which holds expert {held[layer, g, e]}."
                )
        for name, arr in (("phy2log", p2l), ("layer_ids", lids), ("dispatch", disp)):
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if self.lower_bound is not None and len(self.lower_bound) != L:
            raise PlanError(f"Expected {L} lower_bound values, got {len(self.lower_bound)}.")
        for key, vals in self.objectives.items():
            if len(vals) != L:
                raise PlanError(f"Expected {L} values of objective {key!r}, got {len(vals)}.")

    # -- derived -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, planned MoE layers."""
        return int(self.phy2log.shape[0])

    @property
    def num_slots(self) -> int:
        """P, physical slots per layer."""
        return int(self.phy2log.shape[1])

    @property
    def num_redundant(self) -> int:
        """P - E redundant slots."""
        return self.num_slots - self.num_experts

    @property
    def logcnt(self) -> np.ndarray:
        """``[L, E]`` replicas of every logical expert."""
        return compute_logcnt(self.phy2log, self.num_experts)

    @property
    def log2phy(self) -> np.ndarray:
        """``[L, E, max_replicas]`` slots of every logical expert, -1 padded."""
        return compute_log2phy(self.phy2log, self.num_experts)

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        """Decoder layers not in the plan (known when ``num_hidden_layers`` is)."""
        if self.num_hidden_layers is None:
            return ()
        planned = set(self.layer_ids.tolist())
        return tuple(i for i in range(self.num_hidden_layers) if i not in planned)

    @property
    def gap(self) -> list[float] | None:
        """Per layer relative gap ``(primary - bound) / primary`` where a bound is known (the
        primary figure is ``settings["bound_of"]``, else ``imbalance``)."""
        primary = self.objectives.get(str(self.settings.get("bound_of", "imbalance")))
        if self.lower_bound is None or primary is None:
            return None
        return [
            (p - b) / p if (p > 0 and math.isfinite(b)) else float("nan")
            for p, b in zip(primary, self.lower_bound, strict=True)
        ]

    def with_dispatch(self, dispatch: np.ndarray | None) -> Plan:
        """A copy with another dispatch table (None: the static rule)."""
        from dataclasses import replace

        return replace(self, dispatch=dispatch)

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"plan: method {self.method}, status {self.status}, {self.num_layers} layer(s), "
            f"{self.num_experts} experts, {self.num_slots} slots ({self.num_redundant} redundant)",
            f"cluster: {self.cluster.summary()}",
            f"max replicas of one expert: {int(self.logcnt.max())}",
        ]
        for key, vals in sorted(self.objectives.items()):
            if vals:
                lines.append(f"{key}: mean {float(np.mean(vals)):.4f}, max {float(np.max(vals)):.4f}")
        if self.lower_bound is not None:
            lines.append(f"lower bound (mean over layers): {float(np.mean(self.lower_bound)):.4f}")
        lines.append(f"wall time: {self.wall_time:.2f} s")
        return "\n".join(lines)

    # -- file --------------------------------------------------------------------------------
    def content_digest(self) -> str:
        """SHA-256 of the plan without its timing (``wall_time``): two runs that make the same
        plan (same inputs, seed and options: solves are deterministic) have the same digest,
        whereas their files differ by the seconds they took (docs/reliability.md)."""
        import hashlib

        body = self.to_dict()
        del body["wall_time"]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (format ``placement-plan`` version 1)."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "num_experts": self.num_experts,
            "num_hidden_layers": self.num_hidden_layers,
            "layer_ids": self.layer_ids.tolist(),
            "cluster": self.cluster.to_dict(),
            "method": self.method,
            "settings": self.settings,
            "status": self.status,
            "wall_time": self.wall_time,
            "allow_colocated_replicas": self.allow_colocated_replicas,
            "objectives": self.objectives,
            "lower_bound": self.lower_bound,
            "phy2log": self.phy2log.tolist(),
            "dispatch": self.dispatch.tolist() if self.dispatch is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Build from :meth:`to_dict`'s layout; raises :class:`PlanError` on anything malformed."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a placement plan (expected \"format\": \"{PLAN_FORMAT}\").")
        version = data.get("version")
        if version != PLAN_VERSION:
            raise PlanError(f"plan file version {version!r} is not supported (expected {PLAN_VERSION}).")
        for key in ("num_experts", "layer_ids", "cluster", "phy2log"):
            if key not in data:
                raise PlanError(f"plan file lacks {key!r}.")
        try:
            cluster = Cluster.from_dict(data["cluster"])
        except (InputError, TypeError) as exc:
            raise PlanError(f"bad cluster in plan: {exc}") from None
        try:
            phy2log = np.asarray(data["phy2log"])
            dispatch = None if data.get("dispatch") is None else np.asarray(data["dispatch"])
            layer_ids = np.asarray(data["layer_ids"])
        except (ValueError, TypeError) as exc:
            raise PlanError(f"plan arrays are ragged or not numbers ({exc}).") from None
        return cls(
            cluster=cluster,
            num_experts=int(data["num_experts"]),
            layer_ids=layer_ids if layer_ids.size else np.zeros(0, dtype=np.int64),
            phy2log=phy2log,
            dispatch=dispatch,
            num_hidden_layers=data.get("num_hidden_layers"),
            model=data.get("model"),
            method=str(data.get("method", "unknown")),
            settings=dict(data.get("settings") or {}),
            objectives={k: [float(x) for x in v] for k, v in (data.get("objectives") or {}).items()},
            lower_bound=None if data.get("lower_bound") is None
            else [float(x) for x in data["lower_bound"]],
            status=str(data.get("status", "UNKNOWN")),
            wall_time=float(data.get("wall_time", 0.0)),
            allow_colocated_replicas=bool(data.get("allow_colocated_replicas", False)),
        )

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan JSON file. A file of another kind (a trace, an engine file; told by
        content, see :mod:`placement.filekinds`) is refused with one line that says what it is
        and what to do with it."""
        path = Path(path)
        special = Probe(path).special
        if special is not None:  # /dev/zero would be read forever, a FIFO would hang
            raise PlanError(f"{special}, not a plan file.", path)
        with contextlib.suppress(OSError):
            if path.stat().st_size > read_limit():
                raise PlanError(too_large("the file", path.stat().st_size, read_limit()), path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _not_a_plan(path, "no such file.") from None
        except IsADirectoryError:
            raise _not_a_plan(path, "is a directory, not a plan file.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _not_a_plan(path, f"cannot read ({exc}).") from None
        try:
            data = json_loads(text)
        except json.JSONDecodeError as exc:
            raise _not_a_plan(path, f"not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        try:
            return cls.from_dict(data)
        except PlanError as exc:
            if not (isinstance(data, dict) and data.get("format") == PLAN_FORMAT):
                raise _not_a_plan(path, exc.reason) from None
            raise PlanError(exc.reason, path) from None


def _not_a_plan(path: Path, reason: str) -> PlanError:
    """The error for a file that is no plan: what it is instead when its content says (a trace
    file, with or without a ``#windows`` spec; an engine file), else ``reason``."""
    from placement.filekinds import identify, mismatch, split_spec

    base, _spec = split_spec(str(path))
    if Path(base).exists():
        kind = identify(base)
        if kind is not None and kind.role != "plan":
            return PlanError(mismatch(kind, "plan", path), path)
    return PlanError(reason, path)
