"""Re-planning under a migration budget: the best plan reachable from a deployed one.

Changing a deployed placement moves expert weights between GPUs and stalls serving while it
does (:mod:`placement.moves` defines a move: an expert's weights a GPU must receive because it
did not hold that expert before). :func:`replan` takes the deployed plan, the traces of the
traffic now, and a budget of moves (in total, or per layer), and returns the plan within the
budget with the lowest mean over layers of the layer objective: the solver's robust imbalance
(``imbalance``: max / mean tokens per GPU with an expert's tokens split evenly over its
replicas, the worst scenario (``robust="max"``) or the mean over scenarios).

The search, layer by layer (layers are independent and searched in parallel, ``jobs``):

1. Loads are scaled so that the mean GPU load of every scenario is 1 (loads ARE imbalances).
2. Greedy descent from the deployed placement. A step is the candidate with the largest drop of
   ``F + 0.1 * mean_s peak_s + 0.01 * mean_{s,g} relu(load - 1)^2 + 0.1 * C`` per weight
   moved, never raising ``F`` (the objective; ``peak_s`` the scenario's busiest GPU, so ties
   and plateaus go to the placement that is better balanced everywhere; ``C`` the cross-node
   copies per token under the static rule, token-level traces only: an assignment from node
   ``n`` to expert ``e`` crosses nodes exactly when ``n`` holds no replica of ``e``, so among
   moves that balance alike the one that keeps tokens on their node wins). Candidates:

   a. replace an expert in a slot of one of the busiest GPUs by any other expert (1 move; the
      removed expert keeps at least one replica);
   b. give a hot expert (one held by the busiest GPUs) another replica in any slot of any GPU,
      in place of an expert with a replica to spare (1 move);
   c. swap an expert of a busiest GPU with one of another GPU (2 moves, replica counts kept);
   d. the slot changes that lead to the target of step 3 (1 move each).

   The descent stops when no candidate helps, or after ``max_steps`` steps.
3. Target (``target=True``): the unconstrained optimizer's plan (:func:`placement.solver.solve`
   on the same traces), its GPUs relabelled to overlap the deployed ones the most (Hungarian
   assignment on shared experts; for token-level traces only GPUs of one node are relabelled, so
   node-level traffic is unchanged), and experts that stay on a GPU kept in their slots. Then a
   second greedy path from the deployed placement toward it, one of its slot changes at a time
   (best first), ending at the target itself.
4. Every placement visited is a candidate point (moves from the deployed one, counted exactly;
   objective); each layer keeps the points no other point beats with as few moves.
5. Budget split across layers: an exact dynamic programme over the layers' points (a
   multiple-choice knapsack) picks one point per layer, the lowest total objective within the
   budget, and among those the fewest moves. With ``per_layer`` every layer takes its best
   point within the budget.

Since a layer's points always include the deployed placement (0 moves) and, with ``target``, the
optimizer's plan, the result is the deployed plan at budget 0, improves monotonically (never
worsens) as the budget grows, and reaches the optimizer's objective once the budget covers the
moves to its plan (with aggregated counts its figures are the optimizer's; with token-level
traces the optimizer gives up some balance for fewer cross-node sends, so a large budget reaches
at least its balance, not necessarily its traffic). Deterministic: no random step and no time
limit inside the search (the target's solve gets ``target_options``, by default without a binding
time limit), so the same input gives the same plan on any machine and with any ``jobs``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from placement._util import Progress
from placement.errors import InputError, PlanError
from placement.metrics import source_gpus
from placement.moves import MoveCount, count_moves
from placement.parallel import Backend, backend_for_jobs, ordered_map
from placement.plan import Plan, static_dispatch
from placement.routing_traces.trace import Trace
from placement.solver import ProblemData, SolveOptions, solve
from placement.solver.evaluate import evaluate_phy2log, robust_key

__all__ = [
    "ReplanOptions",
    "ReplanResult",
    "format_replan_result",
    "plan_objectives",
    "replan",
]


_EPS = 1e-12
_ALPHA = 0.1  # weight of the mean scenario peak in the descent's score
_BETA = 0.01  # weight of the mean squared overload in the descent's score
_TOP_GPUS = 3  # busiest GPUs (of every scenario) whose slots the descent changes
_LIGHT = 48  # light experts tried in a busiest GPU's slot
_HOT = 16  # hot experts offered another replica
_GAMMA = 0.1  # weight of the cross-node copies per token in the descent's score (token-level)
_TARGET_TIME_LIMIT = 24 * 3600.0


# -------------------------------------------------------------------------------------------
# options and result
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplanOptions:
    """Settings of :func:`replan`.

    Args:
        max_moves: the budget in expert weights moved (in total, or per layer with
            ``per_layer``); exactly one of ``max_moves`` and ``max_bytes``.
        max_bytes: the budget in bytes; it buys ``floor(max_bytes / bytes_per_expert)`` moves.
        bytes_per_expert: bytes of one expert's weights (``3 * hidden * moe_intermediate *
            bytes_per_param``); needed with ``max_bytes``, reported otherwise.
        per_layer: the budget holds for every layer on its own, not for all layers together.
        robust: how scenarios (windows, traces) combine in the objective: ``"max"`` or
            ``"mean"``.
        target: also search toward the unconstrained optimizer's plan (step 3); without it only
            the greedy descent runs (faster, but a large budget may not reach the optimizer).
        target_options: options of the target's solve (default: the optimizer with this
            ``robust`` and a time limit of a day, so that it never binds).
        max_steps: greedy steps per layer (default: the slots per layer, capped by the budget).
        jobs: layers searched in parallel (default: CPU cores; the plan does not depend on it).
        backend: where the per-layer searches (and the target's solves) run
            (:mod:`placement.parallel`); None: ``jobs`` processes. The plan does not depend on
            it.
    """

    max_moves: int | None = None
    max_bytes: float | None = None
    bytes_per_expert: float | None = None
    per_layer: bool = False
    robust: str = "max"
    target: bool = True
    target_options: SolveOptions | None = None
    max_steps: int | None = None
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    backend: Backend | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.max_moves is None) == (self.max_bytes is None):
            raise InputError("Give the budget as exactly one of max_moves or max_bytes.")
        if self.max_moves is not None and (isinstance(self.max_moves, bool)
                                           or not isinstance(self.max_moves, int | np.integer)
                                           or self.max_moves < 0):
            raise InputError(f"Expected max_moves >= 0 (an integer), got {self.max_moves!r}.")
        if self.max_bytes is not None and not (math.isfinite(self.max_bytes)
                                               and self.max_bytes >= 0):
            raise InputError(f"Expected max_bytes >= 0, got {self.max_bytes!r}.")
        if self.bytes_per_expert is not None and not (math.isfinite(self.bytes_per_expert)
                                                      and self.bytes_per_expert > 0):
            raise InputError(f"Expected bytes_per_expert > 0, got {self.bytes_per_expert!r}.")
        if self.max_bytes is not None and self.bytes_per_expert is None:
            raise InputError("max_bytes needs bytes_per_expert (the size of one expert's "
                             "weights; give the model).")
        if self.robust not in ("max", "mean"):
            raise InputError(f"Expected robust in ('max', 'mean'), got {self.robust!r}.")
        if self.max_steps is not None and self.max_steps < 0:
            raise InputError(f"Expected max_steps >= 0, got {self.max_steps}.")
        if self.jobs < 1:
            raise InputError(f"Expected jobs >= 1, got {self.jobs}.")

    @property
    def budget_moves(self) -> int:
        """The budget in moves."""
        if self.max_moves is not None:
            return int(self.max_moves)
        assert self.max_bytes is not None and self.bytes_per_expert is not None
        return math.floor(self.max_bytes / self.bytes_per_expert + 1e-9)


@dataclass(frozen=True)
class ReplanResult:
    """A re-plan: the new plan, what it costs to reach and what it gains, in-sample.

    Attributes:
        plan: the new plan (the deployed plan itself when nothing moves).
        deployed: the deployed plan.
        moves: moves from ``deployed`` to ``plan`` per layer (:class:`~placement.moves.MoveCount`).
        options: the settings.
        layer_ids: ``[L]`` the re-planned layers (the traces' layers).
        objective_before, objective_after: ``[L]`` the layer objective of the deployed and the
            new plan on the traces (in-sample).
        objective_target: ``[L]`` the optimizer's plan's, when ``options.target``.
        target_moves: ``[L]`` moves from the deployed plan to the optimizer's (aligned), when
            ``options.target``.
        points: ``[L]`` candidate points each layer kept.
        wall_time: seconds.
        messages: notes for the user.
    """

    plan: Plan
    deployed: Plan
    moves: MoveCount
    options: ReplanOptions
    layer_ids: np.ndarray
    objective_before: np.ndarray
    objective_after: np.ndarray
    objective_target: np.ndarray | None = None
    target_moves: np.ndarray | None = None
    points: np.ndarray | None = None
    wall_time: float = 0.0
    messages: tuple[str, ...] = ()

    @property
    def budget(self) -> int:
        """The budget in moves (per layer when ``options.per_layer``)."""
        return self.options.budget_moves

    @property
    def total_moves(self) -> int:
        """Moves over all layers."""
        return self.moves.total

    @property
    def bytes_moved(self) -> float | None:
        """Bytes moved, when the size of an expert is known."""
        b = self.options.bytes_per_expert
        return None if b is None else self.total_moves * b

    @property
    def unchanged(self) -> bool:
        """True when the new plan is the deployed one."""
        return self.total_moves == 0 and np.array_equal(self.plan.phy2log,
                                                         self.deployed.phy2log)

    def summary(self) -> str:
        """A readable summary (see :func:`format_replan_result`)."""
        return format_replan_result(self)


def _size(x: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def format_replan_result(result: ReplanResult) -> str:
    """Text summary: budget, moves and bytes, the in-sample objective before and after."""
    r = result
    o = r.options
    scope = "per layer" if o.per_layer else "in total"
    budget = f"{r.budget} move(s) {scope}"
    if o.max_bytes is not None:
        budget += f" ({_size(o.max_bytes)} at {_size(o.bytes_per_expert or 0)} per expert)"
    P = r.deployed.num_slots
    L = int(r.layer_ids.size)
    lines = [
        f"re-planned {L} layer(s) of the deployed plan (method {r.deployed.method}) on "
        f"{r.deployed.cluster.summary()}",
        f"budget: {budget}",
    ]
    moved = (f"moves: {r.total_moves} expert weight(s) "
             f"({r.total_moves / max(P * L, 1):.1%} of {P * L} slots), "
             f"{r.moves.total_cross_node} cross-node, in {int((r.moves.moves > 0).sum())} "
             f"layer(s)")
    if r.bytes_moved is not None:
        moved += f"; {_size(r.bytes_moved)}"
    lines.append(moved)
    label = f"in-sample imbalance (even), {'worst' if o.robust == 'max' else 'mean'} scenario"
    before = float(np.mean(r.objective_before)) if L else float("nan")
    after = float(np.mean(r.objective_after)) if L else float("nan")
    lines.append(f"{label}: {before:.4f} -> {after:.4f}")
    if r.objective_target is not None and r.target_moves is not None:
        lines.append(f"unconstrained optimizer: {float(np.mean(r.objective_target)):.4f} with "
                     f"{int(r.target_moves.sum())} move(s)")
        target = float(np.mean(r.objective_target))
        gain = before - target
        if after <= target + 1e-12:
            lines.append("the re-plan's in-sample imbalance is at or below the optimizer's (on "
                         "token-level traces the optimizer trades balance for traffic)")
        elif gain > 1e-12:
            lines.append(f"share of the optimizer's in-sample gain: {(before - after) / gain:.1%}")
    lines.extend(f"note: {m}" for m in r.messages)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# objectives of a placement (the solver's definitions)
# -------------------------------------------------------------------------------------------
def plan_objectives(phy2log: np.ndarray, problem: ProblemData,
                    robust: str = "max") -> dict[str, list[float]]:
    """Per-layer in-sample figures of ``phy2log [L, P]`` on ``problem``, as the solver reports
    them (:func:`placement.solver.evaluate.evaluate_phy2log`: ``imbalance_even``,
    ``worst_window_imbalance_even``, ``mean_window_imbalance_even``; with token-level scenarios
    ``imbalance_static``, ``cross_node_sends_per_token``, ``cross_node_copies_per_token``).
    The re-plan minimises the robust one, ``robust_key(robust)``."""
    return evaluate_phy2log(phy2log, None, problem)


# -------------------------------------------------------------------------------------------
# one layer: the search
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerTask:
    index: int
    row: np.ndarray  # [P] deployed placement of the layer
    w: np.ndarray  # [S, E] scaled loads (mean GPU load 1 in every scenario)
    num_gpus: int
    slots_per_gpu: int
    robust: str
    max_steps: int
    target: np.ndarray | None  # [P] the target placement, aligned to ``row``
    node_share: np.ndarray | None = None  # [N, E] assignments per token from node n to e
    gpus_per_node: int = 1


@dataclass(frozen=True)
class _LayerPoints:
    index: int
    moves: np.ndarray  # [n] increasing, moves[0] == 0
    values: np.ndarray  # [n] decreasing objective
    rows: np.ndarray  # [n, P] placements


class _State:
    """One layer's placement and loads: ``phy [G, spg]``, ``H [G, E]`` replicas per GPU,
    ``cnt [E]`` replicas per expert, ``loads [S, G]``; with token-level traces also ``Hn [N, E]``
    replicas per node and ``copies``, the cross-node copies per token under the static rule
    (an assignment from node ``n`` to expert ``e`` crosses nodes iff ``n`` holds no ``e``)."""

    def __init__(self, row: np.ndarray, w: np.ndarray, G: int, spg: int, robust: str,
                 node_share: np.ndarray | None = None, gpus_per_node: int = 1) -> None:
        self.G, self.spg, self.robust = G, spg, robust
        self.w = w
        self.E = w.shape[1]
        self.phy = np.asarray(row, dtype=np.int64).reshape(G, spg).copy()
        self.H = np.zeros((G, self.E), dtype=np.int64)
        np.add.at(self.H, (np.repeat(np.arange(G), spg), self.phy.reshape(-1)), 1)
        self.cnt = self.H.sum(axis=0)
        self.loads = self._loads()
        self.node_share = node_share
        self.gpn = gpus_per_node
        self.Hn = self.H.reshape(G // gpus_per_node, gpus_per_node, self.E).sum(axis=1)
        self.copies = (0.0 if node_share is None
                       else float((node_share * (self.Hn == 0)).sum()))

    def copies_after_replace(self, gs: np.ndarray, xs: np.ndarray, ys: np.ndarray
                             ) -> np.ndarray | float:
        """Cross-node copies per token after replacing ``xs`` by ``ys`` on GPUs ``gs``."""
        A = self.node_share
        if A is None:
            return 0.0
        n = gs // self.gpn
        return (self.copies + A[n, xs] * (self.Hn[n, xs] == 1)
                - A[n, ys] * (self.Hn[n, ys] == 0))

    def copies_after_swap(self, g: np.ndarray, x: np.ndarray, h: np.ndarray, y: np.ndarray
                          ) -> np.ndarray | float:
        """Cross-node copies per token after swapping ``x`` on ``g`` with ``y`` on ``h``."""
        A = self.node_share
        if A is None:
            return 0.0
        n1, n2 = g // self.gpn, h // self.gpn
        d = (A[n1, x] * (self.Hn[n1, x] == 1) - A[n1, y] * (self.Hn[n1, y] == 0)
             + A[n2, y] * (self.Hn[n2, y] == 1) - A[n2, x] * (self.Hn[n2, x] == 0))
        return self.copies + np.where(n1 == n2, 0.0, d)

    def _loads(self) -> np.ndarray:
        per = self.w / np.maximum(self.cnt, 1)[None, :]  # [S, E]
        return per[:, self.phy].sum(axis=2)  # [S, G]

    def score(self, loads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``loads [..., S, G]`` -> ``(objective [...], descent score [...])``."""
        peaks = loads.max(axis=-1)  # [..., S]
        f = peaks.max(axis=-1) if self.robust == "max" else peaks.mean(axis=-1)
        over = np.maximum(loads - 1.0, 0.0)
        q = (over * over).mean(axis=(-2, -1))
        return f, f + _ALPHA * peaks.mean(axis=-1) + _BETA * q

    def objective(self) -> float:
        return float(self.score(self.loads)[0])

    def replace(self, g: int, j: int, y: int) -> None:
        x = int(self.phy[g, j])
        if self.node_share is not None:
            after = self.copies_after_replace(np.array([g]), np.array([x]), np.array([y]))
            self.copies = float(np.asarray(after).reshape(-1)[0])
        self.phy[g, j] = y
        self.H[g, x] -= 1
        self.H[g, y] += 1
        self.Hn[g // self.gpn, x] -= 1
        self.Hn[g // self.gpn, y] += 1
        self.cnt[x] -= 1
        self.cnt[y] += 1
        self.loads = self._loads()

    def full_score(self) -> tuple[float, float]:
        """``(objective, descent score)`` of the current placement."""
        f, s = self.score(self.loads)
        return float(f), float(s) + _GAMMA * self.copies

    # -- candidate evaluation ------------------------------------------------------------------
    def eval_replace(self, gs: np.ndarray, js: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Loads ``[n, S, G]`` after replacing slot ``(gs[i], js[i])``'s expert by ``ys[i]``."""
        w, H, c = self.w, self.H, self.cnt.astype(np.float64)
        xs = self.phy[gs, js]
        G = self.G
        onehot = np.zeros((gs.size, G))
        onehot[np.arange(gs.size), gs] = 1.0
        hx = H[:, xs].T.astype(np.float64)  # [n, G]
        hy = H[:, ys].T.astype(np.float64)
        cx, cy = c[xs][:, None], c[ys][:, None]
        fx = (hx - onehot) / np.maximum(cx - 1.0, 1.0) - hx / cx  # [n, G]
        fy = hy * (1.0 / (cy + 1.0) - 1.0 / np.maximum(cy, 1.0)) + onehot / (cy + 1.0)
        wx = w[:, xs].T[:, :, None]  # [n, S, 1]
        wy = w[:, ys].T[:, :, None]
        return self.loads[None] + wx * fx[:, None, :] + wy * fy[:, None, :]


def _replace_candidates(st: _State, top: np.ndarray, extra: list[tuple[int, int, int]]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-slot changes (steps 2a, 2b, 2d): ``(gpus, slots, new experts)``."""
    G, spg = st.G, st.spg
    gs: list[np.ndarray] = []
    js: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    spare = st.cnt >= 2
    # a. a light expert into a slot of a busiest GPU: the experts whose extra replica would be
    #    the lightest (worst scenario), the _LIGHT of them
    per_new = (st.w / (st.cnt + 1.0)[None, :]).max(axis=0)  # [E]
    light = np.argsort(per_new, kind="stable")[:_LIGHT]
    for g in top.tolist():
        cand = light[st.H[g, light] == 0]
        for j in range(spg):
            if not spare[st.phy[g, j]]:
                continue
            gs.append(np.full(cand.size, g))
            js.append(np.full(cand.size, j))
            ys.append(cand)
    # b. another replica of a hot expert (the _HOT heaviest replicas on the busiest GPUs), in
    #    place of an expert with a replica to spare
    on_top = np.unique(st.phy[top].reshape(-1))
    per_rep = (st.w[:, on_top] / st.cnt[on_top][None, :]).max(axis=0)
    hot = np.sort(on_top[np.argsort(-per_rep, kind="stable")[:_HOT]])
    slot_g = np.repeat(np.arange(G), spg)
    slot_j = np.tile(np.arange(spg), G)
    ok = spare[st.phy.reshape(-1)] & ~np.isin(slot_g, top)
    sg, sj = slot_g[ok], slot_j[ok]
    if sg.size and hot.size:
        gg = np.repeat(sg, hot.size)
        jj = np.repeat(sj, hot.size)
        yy = np.tile(hot, sg.size)
        keep = st.H[gg, yy] == 0
        gs.append(gg[keep])
        js.append(jj[keep])
        ys.append(yy[keep])
    # d. the target's slot changes
    if extra:
        arr = np.asarray(extra, dtype=np.int64)
        keep = spare[st.phy[arr[:, 0], arr[:, 1]]] & (st.H[arr[:, 0], arr[:, 2]] == 0)
        gs.append(arr[keep, 0])
        js.append(arr[keep, 1])
        ys.append(arr[keep, 2])
    if not gs:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    return np.concatenate(gs), np.concatenate(js), np.concatenate(ys)


_CHUNK = 1 << 21  # floats per candidate block


def _best_replace(st: _State, gs: np.ndarray, js: np.ndarray, ys: np.ndarray, f0: float,
                  s0: float) -> tuple[float, int]:
    """Best single-slot change by score drop: ``(drop, index)`` (drop <= 0: none helps)."""
    best, arg = 0.0, -1
    per = max(1, _CHUNK // max(st.loads.size, 1))
    for a in range(0, gs.size, per):
        b = min(gs.size, a + per)
        f, s = st.score(st.eval_replace(gs[a:b], js[a:b], ys[a:b]))
        s = s + _GAMMA * st.copies_after_replace(gs[a:b], st.phy[gs[a:b], js[a:b]], ys[a:b])
        drop = np.where(f <= f0 + _EPS, s0 - s, -np.inf)
        i = int(np.argmax(drop))
        if drop[i] > best + _EPS:
            best, arg = float(drop[i]), a + i
    return best, arg


def _best_swap(st: _State, top: np.ndarray, f0: float, s0: float
               ) -> tuple[float, tuple[int, int, int, int] | None]:
    """Best swap of a busiest GPU's expert with another GPU's, by score drop per move.

    Only the two GPUs' loads change, so every candidate is scored from the loads of those two
    columns and the three busiest GPUs of every scenario (vectorised over all candidates)."""
    G, spg = st.G, st.spg
    S = st.loads.shape[0]
    slot_g = np.repeat(np.arange(G), spg)
    flat = st.phy.reshape(-1)
    # 1. candidate pairs: slot a on a busiest GPU, slot b on another GPU
    a_slots = (top[:, None] * spg + np.arange(spg)[None, :]).reshape(-1)
    aa = np.repeat(a_slots, flat.size)
    bb = np.tile(np.arange(flat.size), a_slots.size)
    g, h = slot_g[aa], slot_g[bb]
    x, y = flat[aa], flat[bb]
    ok = (g != h) & (st.H[g, y] == 0) & (st.H[h, x] == 0)
    aa, bb, g, h, x, y = aa[ok], bb[ok], g[ok], h[ok], x[ok], y[ok]
    if not aa.size:
        return 0.0, None
    # 2. the two new columns [n, S]
    c = st.cnt.astype(np.float64)
    d = st.w[:, y].T / c[y][:, None] - st.w[:, x].T / c[x][:, None]
    lt = st.loads.T  # [G, S]
    new_g = lt[g] + d
    new_h = lt[h] - d
    # 3. the busiest other GPU of every scenario: among the three busiest
    k = min(3, G)
    order = np.argsort(-st.loads, axis=1, kind="stable")[:, :k]  # [S, k]
    vals = np.take_along_axis(st.loads, order, axis=1)  # [S, k]
    rest = np.full((aa.size, S), -np.inf)
    for r in range(k - 1, -1, -1):  # the first busiest GPU that is neither g nor h
        idx = order[:, r][None, :]
        free = (idx != g[:, None]) & (idx != h[:, None])
        rest = np.where(free, vals[:, r][None, :], rest)
    peaks = np.maximum(rest, np.maximum(new_g, new_h))  # [n, S]
    f = peaks.max(axis=1) if st.robust == "max" else peaks.mean(axis=1)
    over = np.maximum(st.loads - 1.0, 0.0)
    q_cols = (over * over).T  # [G, S]
    q = ((over * over).sum() - q_cols[g].sum(1) - q_cols[h].sum(1)
         + (np.maximum(new_g - 1.0, 0.0) ** 2).sum(1)
         + (np.maximum(new_h - 1.0, 0.0) ** 2).sum(1)) / (S * G)
    s = f + _ALPHA * peaks.mean(axis=1) + _BETA * q + _GAMMA * st.copies_after_swap(g, x, h, y)
    drop = np.where(f <= f0 + _EPS, (s0 - s) / 2.0, -np.inf)
    i = int(np.argmax(drop))
    if drop[i] <= _EPS:
        return 0.0, None
    return float(drop[i]), (int(g[i]), int(aa[i] % spg), int(h[i]), int(bb[i] % spg))


def _busiest(loads: np.ndarray) -> np.ndarray:
    """GPUs among the ``_TOP_GPUS`` busiest of some scenario (``loads [S, G]``), ascending."""
    k = min(_TOP_GPUS, loads.shape[1])
    order = np.argsort(-loads, axis=1, kind="stable")[:, :k]
    return np.unique(order)


def _moves_from(deployed_H: np.ndarray, st: _State) -> int:
    return int(np.maximum(st.H - deployed_H, 0).sum())


def _target_ops(st: _State, target: np.ndarray) -> list[tuple[int, int, int]]:
    """Slot changes ``(g, j, y)`` that lead ``st`` toward ``target [G, spg]``: on every GPU,
    every slot whose expert the target drops, paired with every expert the target brings."""
    ops: list[tuple[int, int, int]] = []
    for g in range(st.G):
        have = st.H[g]
        want = np.bincount(target[g], minlength=st.E)
        out = np.flatnonzero(have > want)
        inn = np.flatnonzero(want > have)
        if not out.size or not inn.size:
            continue
        for j in range(st.spg):
            if (have > want)[st.phy[g, j]]:
                for y in inn.tolist():
                    ops.append((g, j, int(y)))
    return ops


class _Frontier:
    """Points ``(moves, objective, row)``; keeps the best objective per move count."""

    def __init__(self) -> None:
        self.best: dict[int, tuple[float, np.ndarray]] = {}

    def add(self, moves: int, value: float, row: np.ndarray) -> None:
        cur = self.best.get(moves)
        if cur is None or value < cur[0] - _EPS:
            self.best[moves] = (value, row.copy())

    def points(self, index: int) -> _LayerPoints:
        ms: list[int] = []
        vs: list[float] = []
        rows: list[np.ndarray] = []
        for m in sorted(self.best):
            v, r = self.best[m]
            if not vs or v < vs[-1] - _EPS:
                ms.append(m)
                vs.append(v)
                rows.append(r)
        return _LayerPoints(index, np.asarray(ms, dtype=np.int64), np.asarray(vs),
                            np.stack(rows))


def _descend(task: _LayerTask, frontier: _Frontier, dep_H: np.ndarray,
             target: np.ndarray | None) -> None:
    """Step 2: greedy descent from the deployed placement."""
    st = _state(task, task.row)
    for _ in range(task.max_steps):
        f0, s0 = st.full_score()
        top = _busiest(st.loads)
        extra = _target_ops(st, target) if target is not None else []
        gs, js, ys = _replace_candidates(st, top, extra)
        d1, i1 = _best_replace(st, gs, js, ys, f0, s0)
        d2, sw = _best_swap(st, top, f0, s0)
        if i1 < 0 and sw is None:
            break
        if sw is not None and d2 > d1 + _EPS:
            g, j, h, k = sw
            x, y = int(st.phy[g, j]), int(st.phy[h, k])
            st.replace(g, j, y)
            st.replace(h, k, x)
        else:
            st.replace(int(gs[i1]), int(js[i1]), int(ys[i1]))
        frontier.add(_moves_from(dep_H, st), st.objective(), st.phy.reshape(-1))


def _toward(task: _LayerTask, frontier: _Frontier, dep_H: np.ndarray,
            target: np.ndarray) -> None:
    """Step 3: from the deployed placement to the target, best slot change first."""
    st = _state(task, task.row)
    while True:
        ops = _target_ops(st, target)
        if not ops:
            break
        arr = np.asarray(ops, dtype=np.int64)
        ok = st.cnt[st.phy[arr[:, 0], arr[:, 1]]] >= 2
        if not ok.any():
            break
        arr = arr[ok]
        _f, s = st.score(st.eval_replace(arr[:, 0], arr[:, 1], arr[:, 2]))
        s = s + _GAMMA * st.copies_after_replace(arr[:, 0], st.phy[arr[:, 0], arr[:, 1]],
                                                  arr[:, 2])
        i = int(np.argmin(s))
        st.replace(int(arr[i, 0]), int(arr[i, 1]), int(arr[i, 2]))
        frontier.add(_moves_from(dep_H, st), st.objective(), st.phy.reshape(-1))
    end = _state(task, target.reshape(-1))
    frontier.add(_moves_from(dep_H, end), end.objective(), end.phy.reshape(-1))


def _state(task: _LayerTask, row: np.ndarray) -> _State:
    return _State(row, task.w, task.num_gpus, task.slots_per_gpu, task.robust,
                  task.node_share, task.gpus_per_node)


def _search_layer(task: _LayerTask) -> _LayerPoints:
    """Steps 2-4 for one layer."""
    st = _state(task, task.row)
    frontier = _Frontier()
    frontier.add(0, st.objective(), st.phy.reshape(-1))
    dep_H = st.H.copy()
    target = None if task.target is None else task.target.reshape(task.num_gpus,
                                                                   task.slots_per_gpu)
    if task.max_steps > 0:
        _descend(task, frontier, dep_H, target)
        if target is not None:
            _toward(task, frontier, dep_H, target)
    return frontier.points(task.index)


# -------------------------------------------------------------------------------------------
# the target, aligned to the deployed placement
# -------------------------------------------------------------------------------------------
def _align(deployed: np.ndarray, target: np.ndarray, G: int, spg: int, E: int,
           gpus_per_node: int | None) -> np.ndarray:
    """``target [P]`` with its GPUs relabelled to share the most experts with ``deployed [P]``
    (within nodes of ``gpus_per_node`` GPUs when given, else freely), and experts that stay on a
    GPU kept in their deployed slots."""
    from scipy.optimize import linear_sum_assignment  # imported here: 0.6 s at CLI start-up

    d = deployed.reshape(G, spg)
    t = target.reshape(G, spg)
    hd = np.zeros((G, E), dtype=np.int64)
    ht = np.zeros((G, E), dtype=np.int64)
    np.add.at(hd, (np.repeat(np.arange(G), spg), d.reshape(-1)), 1)
    np.add.at(ht, (np.repeat(np.arange(G), spg), t.reshape(-1)), 1)
    overlap = np.minimum(hd[:, None, :], ht[None, :, :]).sum(axis=2)  # [G dep, G target]
    perm = np.empty(G, dtype=np.int64)
    blocks = [np.arange(G)] if gpus_per_node is None else [
        np.arange(n, n + gpus_per_node) for n in range(0, G, gpus_per_node)]
    for blk in blocks:
        r, c = linear_sum_assignment(-overlap[np.ix_(blk, blk)])
        perm[blk[r]] = blk[c]
    out = np.empty_like(d)
    for g in range(G):
        want = list(t[perm[g]])
        row = [-1] * spg
        for j in range(spg):  # keep the slots of experts that stay
            e = int(d[g, j])
            if e in want:
                want.remove(e)
                row[j] = e
        rest = sorted(int(x) for x in want)
        for j in range(spg):
            if row[j] < 0:
                row[j] = rest.pop(0)
        out[g] = row
    return out.reshape(-1)


# -------------------------------------------------------------------------------------------
# the budget split
# -------------------------------------------------------------------------------------------
def _split_budget(points: list[_LayerPoints], budget: int, per_layer: bool) -> list[int]:
    """Step 5: one point per layer; the lowest sum of objectives within the budget, then the
    fewest moves."""
    if per_layer:
        return [int(np.flatnonzero(p.moves <= budget)[-1]) for p in points]
    cap = min(budget, int(sum(int(p.moves[-1]) for p in points)))
    inf = np.inf
    dp = np.zeros(cap + 1)  # dp[b]: best sum with at most b moves (layers so far)
    choice = np.zeros((len(points), cap + 1), dtype=np.int32)
    for li, p in enumerate(points):
        new = np.full(cap + 1, inf)
        arg = np.zeros(cap + 1, dtype=np.int32)
        for k in range(p.moves.size):
            m = int(p.moves[k])
            if m > cap:
                break
            cand = np.full(cap + 1, inf)
            cand[m:] = dp[:cap + 1 - m] + p.values[k]
            better = cand < new - _EPS
            new = np.where(better, cand, new)
            arg = np.where(better, k, arg)
        dp = new
        choice[li] = arg
    # the fewest moves that reach the best value
    best = float(dp[cap])
    b = int(np.flatnonzero(dp <= best + _EPS * max(len(points), 1))[0])
    picks = [0] * len(points)
    for li in range(len(points) - 1, -1, -1):
        k = int(choice[li, b])
        picks[li] = k
        b -= int(points[li].moves[k])
    return picks


# -------------------------------------------------------------------------------------------
# replan
# -------------------------------------------------------------------------------------------
def _problem(deployed: Plan, traces: Trace | Sequence[Trace] | ProblemData) -> ProblemData:
    if isinstance(traces, ProblemData):
        problem = traces
        if problem.cluster != deployed.cluster and (
            problem.cluster.shape != deployed.cluster.shape
        ):
            raise InputError(f"the problem is for cluster {problem.cluster.shape} but the "
                             f"deployed plan for {deployed.cluster.shape}.")
    else:
        problem = ProblemData.from_traces(traces, deployed.cluster)
    if problem.num_experts != deployed.num_experts:
        raise InputError(f"the traces have {problem.num_experts} experts per layer but the "
                         f"deployed plan has {deployed.num_experts}.")
    missing = sorted(set(problem.layer_ids.tolist()) - set(deployed.layer_ids.tolist()))
    if missing:
        raise InputError(f"the traces have layer(s) {', '.join(map(str, missing[:8]))} that the "
                         "deployed plan does not place.")
    return problem


def _node_shares(problem: ProblemData) -> np.ndarray:
    """``[L, N, E]`` expert assignments per token from tokens whose source GPU is on node ``n``
    (all token-level scenarios together)."""
    c = problem.cluster
    L, N, E = problem.num_layers, c.num_nodes, problem.num_experts
    acc = np.zeros((L, N * E))
    tokens = 0
    assert problem.token_traces is not None
    for t in problem.token_traces:
        ids = np.asarray(t.topk_ids, dtype=np.int64)  # [T, L, k]
        node = source_gpus(ids.shape[0], t.source_rank, c.num_gpus) // c.gpus_per_node
        key = node[:, None, None] * E + ids
        for i in range(L):
            k = key[:, i, :][ids[:, i, :] >= 0]
            acc[i] += np.bincount(k, minlength=N * E)
        tokens += ids.shape[0]
    return (acc / max(tokens, 1)).reshape(L, N, E)


def _target_rows(target: Plan, problem: ProblemData, deployed: Plan) -> np.ndarray:
    """``[L, P]`` the target plan's rows for the problem's layers; :class:`InputError` when it
    does not fit."""
    if target.cluster.shape != deployed.cluster.shape or target.num_experts != deployed.num_experts:
        raise InputError(f"the target plan is for cluster {target.cluster.shape} with "
                         f"{target.num_experts} experts, the deployed plan for "
                         f"{deployed.cluster.shape} with {deployed.num_experts}.")
    pos = {int(x): i for i, x in enumerate(target.layer_ids.tolist())}
    missing = [int(x) for x in problem.layer_ids.tolist() if int(x) not in pos]
    if missing:
        raise InputError(f"the target plan lacks layer(s) {', '.join(map(str, missing[:8]))}.")
    return np.asarray(target.phy2log)[[pos[int(x)] for x in problem.layer_ids.tolist()]]


def _run(tasks: list[_LayerTask], jobs: int, progress: Progress | None,
         backend: Backend | None = None) -> list[_LayerPoints]:
    """Search the layers on ``backend`` (default: ``jobs`` processes); results in layer order."""
    pts = ordered_map(_search_layer, tasks, backend or backend_for_jobs(jobs, len(tasks)),
                      progress)
    return sorted(pts, key=lambda p: p.index)


def replan(
    deployed: Plan,
    traces: Trace | Sequence[Trace] | ProblemData,
    options: ReplanOptions,
    *,
    progress: Progress | None = None,
    target_plan: Plan | None = None,
) -> ReplanResult:
    """The best plan reachable from ``deployed`` within ``options``' move budget, for the
    traffic of ``traces`` (see the module docstring).

    Args:
        deployed: the plan that runs now (from a plan file or an imported engine file).
        traces: the traffic to plan for; every window of every trace is a scenario. Their layers
            must be layers of ``deployed`` (the plan's other layers stay as they are).
        options: the budget and search settings.
        progress: called as ``progress(layers done, layers)``.
        target_plan: the unconstrained plan to search toward (``options.target``), when already
            made (it must place the traces' layers on the same cluster); default: solved here.
    Returns:
        A :class:`ReplanResult`; its ``plan`` is ``deployed`` itself when nothing moves.
    """
    start = time.perf_counter()
    problem = _problem(deployed, traces)
    c = deployed.cluster
    G, spg, P, E = c.num_gpus, c.slots_per_gpu, c.num_slots, deployed.num_experts
    budget = options.budget_moves
    rows_of = {int(lid): i for i, lid in enumerate(deployed.layer_ids.tolist())}
    idx = np.asarray([rows_of[int(lid)] for lid in problem.layer_ids.tolist()], dtype=np.int64)
    dep_rows = np.asarray(deployed.phy2log)[idx]  # [L, P]
    L = idx.size
    messages: list[str] = []

    # 1. the target: the unconstrained optimizer's plan, aligned to the deployed one
    target_rows: np.ndarray | None = None
    if options.target and budget > 0:
        if target_plan is None:
            topts = options.target_options or SolveOptions(
                robust=options.robust, time_limit=_TARGET_TIME_LIMIT, jobs=options.jobs,
                backend=options.backend)
            target_plan = solve(problem, options=topts).plan
        t_rows = _target_rows(target_plan, problem, deployed)
        gpn = c.gpus_per_node if problem.is_token_level else None
        target_rows = np.stack([_align(dep_rows[i], t_rows[i], G, spg, E, gpn)
                                for i in range(L)])

    # 2. per-layer search
    shares = problem.scenario_shares()  # [S, L, E]
    if options.max_steps is not None:
        max_steps = min(options.max_steps, budget)
    elif options.per_layer:
        max_steps = min(P, budget)
    else:  # three times the even share of the budget, at least 16 steps, at most P
        max_steps = min(P, budget, max(16, -(-3 * budget // max(L, 1))))
    node_share = _node_shares(problem) if problem.is_token_level else None
    tasks = []
    for i in range(L):
        sh = shares[:, i, :]
        active = sh.sum(axis=1) > 0
        w = sh[active] * G if active.any() else np.zeros((1, E))
        tasks.append(_LayerTask(
            index=i, row=dep_rows[i], w=w, num_gpus=G, slots_per_gpu=spg,
            robust=options.robust, max_steps=max_steps if active.any() else 0,
            target=None if target_rows is None or not active.any() else target_rows[i],
            node_share=None if node_share is None else node_share[i],
            gpus_per_node=c.gpus_per_node,
        ))
    points = _run(tasks, options.jobs, progress, options.backend)

    # 3. the budget split
    picks = _split_budget(points, budget, options.per_layer)
    new_rows = np.stack([points[i].rows[picks[i]] for i in range(L)]) if L else dep_rows
    full = np.asarray(deployed.phy2log).copy()
    full[idx] = new_rows
    moves = count_moves(np.asarray(deployed.phy2log), full, c, E)

    key = robust_key(options.robust)
    before = np.asarray(plan_objectives(dep_rows, problem, options.robust)[key])
    if moves.total == 0:
        plan = deployed
        after = before
    else:
        changed = (full != np.asarray(deployed.phy2log)).any(axis=1)
        disp = static_dispatch(full, c, E)
        if deployed.dispatch is not None:
            disp[~changed] = np.asarray(deployed.dispatch)[~changed]
        objectives = plan_objectives(new_rows, problem, options.robust)
        after = np.asarray(objectives[key])
        full_obj: dict[str, list[float]] = {}
        if L == deployed.num_layers:
            order = np.argsort(idx)
            full_obj = {k: [v[i] for i in order] for k, v in objectives.items()}
        else:
            messages.append(f"{deployed.num_layers - L} layer(s) of the deployed plan are not in "
                            "the traces and stay as they are.")
        settings: dict[str, Any] = {
            "deployed_method": deployed.method,
            "budget_moves": budget,
            "per_layer_budget": options.per_layer,
            "robust": options.robust,
            "bound_of": key,
            "moves": moves.total,
            "cross_node_moves": moves.total_cross_node,
        }
        if options.bytes_per_expert is not None:
            settings["bytes_per_expert"] = options.bytes_per_expert
        plan = dataclasses.replace(
            deployed, phy2log=full, dispatch=disp, method="replan", settings=settings,
            objectives=full_obj, lower_bound=None, status="REPLANNED",
            wall_time=time.perf_counter() - start,
        )
        try:  # a plan of ours never co-locates replicas; the deployed one may have
            plan = dataclasses.replace(plan, allow_colocated_replicas=False)
        except PlanError:
            pass
    t_obj = None
    t_moves = None
    if target_rows is not None:
        t_obj = np.asarray(plan_objectives(target_rows, problem, options.robust)[key])
        t_moves = count_moves(dep_rows, target_rows, c, E).moves
    return ReplanResult(
        plan=plan, deployed=deployed, moves=moves, options=options,
        layer_ids=np.asarray(problem.layer_ids), objective_before=before,
        objective_after=np.asarray(after), objective_target=t_obj, target_moves=t_moves,
        points=np.asarray([p.moves.size for p in points]),
        wall_time=time.perf_counter() - start, messages=tuple(messages),
    )
