"""Traffic-aware placement of one layer: which node holds which expert, then GPUs inside nodes.

Under the engines' static dispatch rule a token uses a replica on its own GPU, else on its node,
else elsewhere. So a token crosses to another node once per remote node among its experts'
chosen replicas (``cross-node sends``), and two levers cut that traffic:

* experts that fire together live on one node: a hypergraph partition of the planning tokens
  (Mt-KaHyPar, :mod:`placement.solver.partition`; a token's sends are its hyperedge's
  connectivity minus one), with every node's load capped, then a local search that keeps every
  scenario's node loads under the cap;
* an expert with a replica on EVERY node keeps all its tokens at home; spare slots go to the
  experts whose replica everywhere saves the most sends (marginal gain on the planning tokens).

Plans here have that structure: every expert is either "homed" (all its replicas on one node) or
"everywhere" (a replica on every node). The sends of such a plan follow from the experts' home
nodes alone, which makes node-level search fast and exact; the GPUs inside a node are then
packed for balance (:mod:`placement.solver.balance`), every node with the local share of its
everywhere experts.

:func:`traffic_candidates` makes such plans at a few node-load caps and replication levels; the
optimizer scores them with the balance-only plan and EPLB's and keeps the best by the objective
(:mod:`placement.solver.objective`).

Node-limited routing (``max_nodes_per_token = M < num_nodes``): every expert GROUP (``E /
num_groups`` consecutive experts, DeepSeek-V3's ``n_group``) lives on one node, all replicas of
its experts included (:func:`node_limited_candidates`). A token that the router sends to at most
M groups (DeepSeek-V3: top-4 groups) is then served by at most M nodes under the static rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

from placement.cluster import Cluster
from placement.plan import static_dispatch
from placement.solver.balance import LayerState, improve, lpt_assign, robust_counts, scaled_loads
from placement.solver.layer import LayerTask
from placement.solver.objective import node_fractions
from placement.solver.partition import refine_homes

__all__ = [
    "EVERYWHERE",
    "NodeState",
    "TokenData",
    "build_token_data",
    "grow_everywhere",
    "home_sends",
    "node_limited_candidates",
    "node_state",
    "nodes_per_token",
    "routes_by_groups",
    "traffic_candidates",
]

EVERYWHERE = -1

_SWAP_BLOCKED = 16  # blocked moves tried as swaps per step
_SWAP_PARTNERS = 4  # partners tried per blocked move
_GROW_STEPS = (0.5, 1.0)  # checkpoints of the replication growth (share of spare)


@dataclass(frozen=True)
class TokenData:
    """The planning tokens of one layer, pooled over scenarios.

    Attributes:
        ids: ``[T, k]`` logical experts (``-1`` none).
        src: ``[T]`` source GPU.
        node: ``[T]`` source node.
        indptr, tokens: CSR lists of the tokens of every expert (``tokens[indptr[e]:indptr[e+1]]``).
        frac: ``[N, E]`` share of every expert's tokens from every source node
            (:func:`~placement.solver.objective.node_fractions`): a node's replica of an
            everywhere expert serves that share.
    """

    ids: np.ndarray
    src: np.ndarray
    node: np.ndarray
    indptr: np.ndarray
    tokens: np.ndarray
    frac: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    def of(self, e: int) -> np.ndarray:
        return self.tokens[self.indptr[e]:self.indptr[e + 1]]


def build_token_data(tokens: tuple[tuple[np.ndarray, np.ndarray], ...], num_experts: int,
                     num_gpus: int, gpus_per_node: int, *, max_tokens: int = 20000,
                     seed: int = 0) -> TokenData:
    """Pool the scenarios' tokens of one layer (a seeded sample of at most ``max_tokens``)."""
    E, G = num_experts, num_gpus
    N = G // gpus_per_node
    ids_l, src_l = [], []
    for ids, src in tokens:
        ids = np.asarray(ids, dtype=np.int64)
        src = np.asarray(src, dtype=np.int64)
        keep = (ids >= 0).any(axis=1)
        if keep.any():
            ids_l.append(ids[keep])
            src_l.append(src[keep])
    if not ids_l:
        k = tokens[0][0].shape[1] if tokens else 1
        return TokenData(np.zeros((0, k), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(E + 1, np.int64), np.zeros(0, np.int64), np.full((N, E), 1 / N))
    ids = np.concatenate(ids_l)
    src = np.concatenate(src_l)
    frac = node_fractions(ids, src, Cluster(N, gpus_per_node, 1), E)
    if ids.shape[0] > max_tokens:
        pick = np.sort(np.random.default_rng(seed).choice(ids.shape[0], max_tokens, replace=False))
        ids, src = ids[pick], src[pick]
    T, k = ids.shape
    valid = ids >= 0
    # a token listed once per expert even if the router repeated it
    tok = np.repeat(np.arange(T), k)[valid.reshape(-1)]
    exp = ids.reshape(-1)[valid.reshape(-1)]
    pair = np.unique(exp * T + tok)
    exp_u, tok_u = pair // T, pair % T
    indptr = np.zeros(E + 1, dtype=np.int64)
    np.cumsum(np.bincount(exp_u, minlength=E), out=indptr[1:])
    return TokenData(ids, src, src // gpus_per_node, indptr, tok_u, frac)


def local_loads(w: np.ndarray, frac: np.ndarray | None, num_nodes: int) -> np.ndarray:
    """``[S, N, E]`` the load a node's replica of every expert serves when the expert has one on
    every node: its tokens from the node's own GPUs (``frac [N, E]``; None: an even ``1/N``)."""
    if frac is None:
        frac = np.full((num_nodes, w.shape[1]), 1.0 / num_nodes)
    return w[:, None, :] * frac[None, :, :]


def home_sends(home: np.ndarray, ids: np.ndarray, node: np.ndarray) -> np.ndarray:
    """``[T]`` cross-node sends of every token when expert ``e`` lives on node ``home[e]``
    (``-1``: a replica on every node, never remote)."""
    h = np.where(ids >= 0, home[np.maximum(ids, 0)], EVERYWHERE)
    h = np.where(h == node[:, None], EVERYWHERE, h)
    h = np.sort(h, axis=1)
    first = np.ones_like(h, dtype=bool)
    first[:, 1:] = h[:, 1:] != h[:, :-1]
    return ((h >= 0) & first).sum(axis=1)


# ----------------------------------------------------------------------------------------------
# node level
# ----------------------------------------------------------------------------------------------
@dataclass
class NodeState:
    """Experts' home nodes with node loads and slot use kept in step.

    Attributes:
        home: ``[E]`` node of every homed expert, ``-1`` for everywhere experts.
        load: ``[S, N]`` load every node serves (homed experts whole, everywhere experts the
            share that comes from the node's own GPUs).
        used: ``[N]`` slots the node's experts need at least (one per homed or everywhere expert).
        sends: ``[T]`` sends of every planning token.
    """

    home: np.ndarray
    load: np.ndarray
    used: np.ndarray
    sends: np.ndarray


def node_state(home: np.ndarray, w: np.ndarray, local: np.ndarray, N: int,
               td: TokenData | None) -> NodeState:
    """The :class:`NodeState` of ``home [E]`` (``w [S, E]`` loads, ``local [S, N, E]`` what a
    node's replica of an everywhere expert serves, :func:`local_loads`)."""
    S, _E = w.shape
    load = np.zeros((S, N))
    used = np.zeros(N, dtype=np.int64)
    for n in range(N):
        on = home == n
        load[:, n] = w[:, on].sum(axis=1)
        used[n] = int(on.sum())
    ev = home == EVERYWHERE
    if ev.any():
        used += int(ev.sum())
        load += local[:, :, ev].sum(axis=2)
    sends = (home_sends(home, td.ids, td.node) if td is not None and td.num_tokens
             else np.zeros(0, dtype=np.int64))
    return NodeState(home.copy(), load, used, sends)


def _incidence(td: TokenData, num_experts: int) -> tuple[csr_matrix, csr_matrix]:
    """``X [T, E]`` token-expert incidence (CSR, each pair once) and its transpose."""
    T = td.num_tokens
    counts = np.diff(td.indptr)
    cols = np.repeat(np.arange(num_experts), counts)
    X = csr_matrix((np.ones(td.tokens.size), (td.tokens, cols)), shape=(T, num_experts))
    return X, X.T.tocsr()


def _homed_per_node(
    td: TokenData, ns: NodeState, num_experts: int
) -> tuple[csr_matrix, np.ndarray, np.ndarray]:
    """``X^T [E, T]`` (the token-expert incidence, transposed), ``c [T, N]`` the token's experts
    homed on every node, and ``own [T, N]`` the token's own node: the inputs of every send-gain
    computation."""
    X, XT = _incidence(td, num_experts)
    N = ns.load.shape[1]
    homed = ns.home >= 0
    H = np.zeros((num_experts, N))
    H[np.flatnonzero(homed), ns.home[homed]] = 1.0
    c = np.asarray(X @ H).round().astype(np.int64)
    own = np.zeros((td.num_tokens, N), dtype=bool)
    own[np.arange(td.num_tokens), td.node] = True
    return XT, c, own


def _improve_homes(ns: NodeState, w: np.ndarray, td: TokenData, *, cap_load: float,
                   cap_slots: int, gpn: int, max_moves: int) -> None:
    """Local search on home nodes (Fiduccia-Mattheyses style): the best move of one expert to
    another node, or when balance or slots forbid the good moves, the best swap, while sends
    drop; every node's worst-scenario load per GPU stays at most ``cap_load`` and its slots at
    most ``cap_slots``.

    Move gains for every (expert, node) at once: with ``c[t, n]`` the token's experts homed on
    node ``n``, moving ``e`` from ``a`` to ``b`` adds a send for its tokens with ``c[t, b] = 0``
    and saves one for its tokens with ``c[t, a] = 1`` (neither counts on the token's own node):
    two sparse products ``X^T Z``.
    """
    E = w.shape[1]
    N = ns.load.shape[1]
    T = td.num_tokens
    if T == 0 or N == 1:
        return
    XT, c, own = _homed_per_node(td, ns, E)
    homed_mask = ns.home >= 0
    limit = cap_load * gpn + 1e-12
    ev_ok = homed_mask
    rows_all = np.arange(E)

    def apply(e: int, b: int) -> None:
        a = int(ns.home[e])
        t = td.of(e)
        c[t, a] -= 1
        c[t, b] += 1
        ns.home[e] = b
        ns.load[:, a] -= w[:, e]
        ns.load[:, b] += w[:, e]
        ns.used[a] -= 1
        ns.used[b] += 1

    def exact_delta(t: np.ndarray, cc: np.ndarray) -> int:
        before = ((c[t] > 0) & ~own[t]).sum()
        after = ((cc > 0) & ~own[t]).sum()
        return int(after - before)

    for _ in range(max_moves):
        Z0 = ((c == 0) & ~own).astype(np.float64)
        Z1 = ((c == 1) & ~own).astype(np.float64)
        A = np.asarray(XT @ Z0)  # [E, N] sends added by moving e to n
        B = np.asarray(XT @ Z1)  # [E, N] sends saved by moving e off n
        cur = np.where(ev_ok, ns.home, 0)
        D = A - B[rows_all, cur][:, None]
        D[~ev_ok] = np.inf
        D[rows_all, cur] = np.inf
        # feasibility of plain moves
        fits = ns.used[None, :] < cap_slots
        over = (ns.load[:, None, :] + w[:, :, None]).max(axis=0) > limit  # [E, N]
        Dm = np.where(fits & ~over, D, np.inf)
        k = int(np.argmin(Dm))
        e, b = divmod(k, N)
        if Dm[e, b] < -0.5:
            apply(e, b)
            continue
        # swaps for the best blocked moves
        done = False
        blocked = np.argsort(D, axis=None, kind="stable")[:_SWAP_BLOCKED]
        for kk in blocked.tolist():
            e1, b = divmod(kk, N)
            if not D[e1, b] < -0.5:
                break
            a = int(ns.home[e1])
            on_b = np.flatnonzero(ns.home == b)
            if on_b.size == 0:
                continue
            la = ns.load[:, a][:, None] - w[:, [e1]] + w[:, on_b]  # [S, nb]
            lb = ns.load[:, b][:, None] + w[:, [e1]] - w[:, on_b]
            ok = (la.max(axis=0) <= limit) & (lb.max(axis=0) <= limit)
            if not ok.any():
                continue
            approx = D[e1, b] + D[on_b, a]
            approx = np.where(ok, approx, np.inf)
            for j in np.argsort(approx, kind="stable")[:_SWAP_PARTNERS].tolist():
                if not approx[j] < -0.5:
                    break
                e2 = int(on_b[j])
                t = np.union1d(td.of(e1), td.of(e2))
                cc = c[t].copy()
                in1 = np.isin(t, td.of(e1))
                in2 = np.isin(t, td.of(e2))
                cc[in1, a] -= 1
                cc[in1, b] += 1
                cc[in2, b] -= 1
                cc[in2, a] += 1
                if exact_delta(t, cc) < 0:
                    apply(e1, b)
                    apply(e2, a)
                    done = True
                    break
            if done:
                break
        if not done:
            break
    ns.sends = ((c > 0) & ~own).sum(axis=1)


def grow_everywhere(ns: NodeState, w: np.ndarray, local: np.ndarray, td: TokenData, *,
                    cap_load: float, cap_slots: int, gpn: int,
                    checkpoints: tuple[int, ...]) -> list[np.ndarray]:
    """Greedy marginal-gain replication: turn homed experts into everywhere experts, the one
    that saves the most sends first (a token stops sending to node ``a`` when the expert was its
    only one homed on ``a``), while slots and every node's worst-scenario load allow.

    Every such expert costs ``N - 1`` slots, so the gain per slot is the savings / (N - 1), the
    same order. While some node is over the cap, the expert whose replicas lower the peak node
    load most goes first (replication is how a start that keeps groups whole gets balanced).
    Returns copies of ``home`` after each of ``checkpoints`` growth steps (the packing decides
    which still balances), ending with the last one reached.

    Savings of every expert at once: with ``c[t, n]`` the token's homed experts on node ``n``,
    ``savings[e] = #{t in tokens(e): node(t) != home(e), c[t, home(e)] = 1}`` = ``X^T Z1``.
    """
    E = w.shape[1]
    N = ns.load.shape[1]
    T = td.num_tokens
    out: list[np.ndarray] = []
    if T == 0 or N == 1 or not checkpoints:
        return out
    XT, c, own = _homed_per_node(td, ns, E)
    homed = ns.home >= 0
    limit = cap_load * gpn + 1e-12
    steps = 0
    last = max(checkpoints)
    while steps < last:
        Z1 = ((c == 1) & ~own).astype(np.float64)
        B = np.asarray(XT @ Z1)  # [E, N]
        cur = np.where(homed, ns.home, 0)
        sav = np.where(homed, B[np.arange(E), cur], -np.inf)
        # slots: every node but the home needs one more
        free = ns.used < cap_slots  # [N]
        need_free = np.ones((E, N), dtype=bool)
        need_free[np.arange(E), cur] = False
        fits = ~(need_free & ~free[None, :]).any(axis=1)
        # load: home node keeps only its local share, the others gain theirs
        add = local.transpose(2, 0, 1)  # [E, S, N]
        new = ns.load[None, :, :] + add  # [E, S, N]
        new[np.arange(E), :, cur] = (ns.load[:, cur].T - w.T + add[np.arange(E), :, cur])
        peak = new.max(axis=(1, 2))  # [E]
        now = float(ns.load.max())
        if now > limit:
            # over the cap: the replica that lowers the peak node load most (then saves most)
            ok = fits & homed & (peak < now - 1e-12)
            if not ok.any():
                break
            e = int(np.lexsort((-np.where(ok, sav, -np.inf), np.where(ok, peak, np.inf)))[0])
        else:
            ok = fits & (peak <= limit) & (sav >= 1.0)
            if not ok.any():
                break
            e = int(np.argmax(np.where(ok, sav, -np.inf)))
        a = int(ns.home[e])
        t = td.of(e)
        c[t, a] -= 1
        ns.load = new[e].copy()
        ns.used[np.arange(N) != a] += 1
        ns.home[e] = EVERYWHERE
        homed[e] = False
        steps += 1
        if steps in checkpoints:
            out.append(ns.home.copy())
    if steps and (not out or not np.array_equal(out[-1], ns.home)):
        out.append(ns.home.copy())
    ns.sends = ((c > 0) & ~own).sum(axis=1)
    return out


def _balance_homes(ns: NodeState, w: np.ndarray, td: TokenData, *, cap_load: float,
                   cap_slots: int, gpn: int, max_steps: int) -> bool:
    """Moves and swaps of homed experts until every node's worst-scenario load per GPU is at most
    ``cap_load`` (fewest extra sends among equally good fixes). False if it cannot get there."""
    N = ns.load.shape[1]
    limit = cap_load * gpn
    for _ in range(max_steps):
        peak_n = ns.load.max(axis=0)  # [N]
        a = int(np.argmax(peak_n))
        if peak_n[a] <= limit + 1e-12:
            return True
        on_a = np.flatnonzero(ns.home == a)
        if on_a.size == 0:
            return False
        best: tuple[float, float, int, int, int] | None = None  # (peak, sends, e, b, e2)
        for b in range(N):
            if b == a:
                continue
            cur = max(peak_n[a], peak_n[b])
            # moves a -> b
            if ns.used[b] < cap_slots:
                la = ns.load[:, a:a + 1] - w[:, on_a]
                lb = ns.load[:, b:b + 1] + w[:, on_a]
                pk = np.maximum(la.max(axis=0), lb.max(axis=0))
                for i in np.argsort(pk, kind="stable")[:3].tolist():
                    if pk[i] < cur - 1e-12:
                        cand = (float(pk[i]), 0.0, int(on_a[i]), b, -1)
                        if best is None or cand[:2] < best[:2]:
                            best = cand
            # swaps
            on_b = np.flatnonzero(ns.home == b)
            if on_b.size:
                d = w[:, on_a][:, :, None] - w[:, on_b][:, None, :]  # [S, na, nb]
                la = ns.load[:, a][:, None, None] - d
                lb = ns.load[:, b][:, None, None] + d
                pk = np.maximum(la.max(axis=0), lb.max(axis=0))  # [na, nb]
                flat = np.argsort(pk, axis=None, kind="stable")[:3]
                for f in flat.tolist():
                    i, j = divmod(f, on_b.size)
                    if pk[i, j] < cur - 1e-12:
                        cand = (float(pk[i, j]), 0.0, int(on_a[i]), b, int(on_b[j]))
                        if best is None or cand[:2] < best[:2]:
                            best = cand
        if best is None:
            return False
        _, _, e, b, e2 = best
        ns.home[e] = b
        ns.load[:, a] -= w[:, e]
        ns.load[:, b] += w[:, e]
        ns.used[a] -= 1
        ns.used[b] += 1
        touched = td.of(e)
        if e2 >= 0:
            ns.home[e2] = a
            ns.load[:, b] -= w[:, e2]
            ns.load[:, a] += w[:, e2]
            ns.used[b] -= 1
            ns.used[a] += 1
            touched = np.union1d(touched, td.of(e2))
        if touched.size:
            ns.sends[touched] = home_sends(ns.home, td.ids[touched], td.node[touched])
    return bool(ns.load.max() <= limit + 1e-12)


def _repair_homes(ns: NodeState, w: np.ndarray, cap_slots: int) -> bool:
    """Move experts off nodes that need more slots than they have; False if impossible."""
    N = ns.used.shape[0]
    for _ in range(int(ns.used.sum()) + 1):
        over = np.flatnonzero(ns.used > cap_slots)
        if over.size == 0:
            return True
        a = int(over[0])
        on = np.flatnonzero(ns.home == a)
        e = int(on[np.argmin(w[:, on].max(axis=0))])
        tgt = [b for b in range(N) if ns.used[b] < cap_slots]
        if not tgt:
            return False
        b = min(tgt, key=lambda n: ns.load[:, n].max())
        ns.home[e] = b
        ns.load[:, a] -= w[:, e]
        ns.load[:, b] += w[:, e]
        ns.used[a] -= 1
        ns.used[b] += 1
    return bool((ns.used <= cap_slots).all())


def _greedy_homes(w: np.ndarray, N: int, cap_slots: int) -> np.ndarray:
    """``[E]`` a balanced start: heaviest expert first to the node with the least worst-scenario
    load that has a slot left."""
    S, E = w.shape
    load = np.zeros((S, N))
    used = np.zeros(N, dtype=np.int64)
    home = np.zeros(E, dtype=np.int64)
    for e in np.argsort(-w.max(axis=0), kind="stable").tolist():
        free = [n for n in range(N) if used[n] < cap_slots] or list(range(N))
        n = min(free, key=lambda x: ((load[:, x] + w[:, e]).max(), x))
        home[e] = n
        used[n] += 1
        load[:, n] += w[:, e]
    return home


def _homes_of(row: np.ndarray | None, cluster: Cluster, num_experts: int) -> np.ndarray | None:
    """``[E]`` node of every expert of a placement row ``[P]`` when all its replicas share one
    node (EPLB's hierarchical policy), else None."""
    if row is None:
        return None
    node = np.arange(cluster.num_slots) // (cluster.slots_per_gpu * cluster.gpus_per_node)
    lo = np.full(num_experts, cluster.num_nodes, dtype=np.int64)
    hi = np.full(num_experts, -1, dtype=np.int64)
    np.minimum.at(lo, row, node)
    np.maximum.at(hi, row, node)
    return lo if bool((lo == hi).all()) else None


def _pack_nodes(home: np.ndarray, w: np.ndarray, local: np.ndarray, N: int, gpn: int,
                spg: int, robust: str, seed: int, rounds: int, max_moves: int,
                deadline: float) -> np.ndarray | None:
    """GPUs inside every node: ``phy [G, spg]`` for the homes, or None when a node cannot hold
    its experts. Every node packs its homed experts with its local share of the everywhere
    experts (``local``, :func:`local_loads`): robust replica counts
    inside the node, a multi-scenario LPT, then iterated local search."""
    C = gpn * spg
    ev = np.flatnonzero(home == EVERYWHERE)
    rows = []
    for n in range(N):
        mine = np.flatnonzero(home == n)
        items = np.concatenate([mine, ev])
        if items.size > C or items.size == 0 or items.size * gpn < C:
            return None  # too many experts for the node's slots, or too few to fill them
        wn = np.concatenate([w[:, mine], local[:, n, ev]], axis=1)
        if not (wn.sum(axis=1) > 0).all():
            wn = wn + 1e-9
        wn = wn * (gpn / wn.sum(axis=1, keepdims=True))  # mean GPU load 1 inside the node
        max_count = min(gpn, C - items.size + 1)
        cnt = robust_counts(wn, C, max_count, robust)
        st = LayerState.build(wn, lpt_assign(wn, cnt, gpn, spg, robust), robust,
                              max_count=max_count)
        st = improve(st, rounds=rounds, max_moves=max_moves, seed=seed + 7919 * n,
                     deadline=deadline)
        rows.append(items[st.phy])
    return np.concatenate(rows, axis=0)


_MIN_CAP = 0.002  # the tightest node cap: a node's pooled load per GPU at most 1.002

NODE_CAPS: tuple[float, ...] = (0.0, 0.03)
"""Node-load caps of the partitions (with the loosest cap the objective allows): every node's
pooled load per GPU at most ``1 + cap`` (mean GPU load 1)."""

def routes_by_groups(ids: np.ndarray, num_experts: int, num_groups: int) -> bool:
    """Whether the router is group-limited (DeepSeek-V3: every token within 4 of 8 groups of
    ``E / num_groups`` consecutive experts): no planning token spans as many groups as it could
    (``min(k, num_groups)``)."""
    if num_groups <= 1 or num_experts % num_groups or ids.shape[0] == 0:
        return False
    k = ids.shape[1]
    grp = np.where(ids >= 0, ids // (num_experts // num_groups), -1)
    srt = np.sort(grp, axis=1)
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    span = ((srt >= 0) & first).sum(axis=1)
    return bool(span.max() < min(k, num_groups))


GROUP_CAPS: tuple[float, ...] = (0.0, 0.02, 0.05)
"""Group packings of group-limited routers: the best balanced one, and the one with the fewest
sends among those whose node peak is at most ``(1 + cap) x`` the best."""


def _group_starts(w: np.ndarray, td: TokenData, num_groups: int,
                  N: int) -> list[tuple[str, np.ndarray]]:
    """Homes that keep whole groups per node: every packing of groups to nodes when there are
    few (else one LPT packing), picked by node peak and sends (:data:`GROUP_CAPS`)."""
    S, E = w.shape
    size = E // num_groups
    gw = w.reshape(S, num_groups, size).sum(axis=2)
    assignments, _ = _group_assignments(gw, N, num_groups // N, limit=20000)
    rows = []
    for assign in assignments:
        home = np.repeat(np.asarray(assign, dtype=np.int64), size)
        nl = np.zeros((S, N))
        np.add.at(nl.T, np.asarray(assign), gw.T)
        rows.append((float(nl.max()), float(home_sends(home, td.ids, td.node).mean()), home))
    best_peak = min(r[0] for r in rows)
    out: list[tuple[str, np.ndarray]] = []
    seen: list[np.ndarray] = []
    for f in GROUP_CAPS:
        ok = [r for r in rows if r[0] <= best_peak * (1.0 + f) + 1e-12]
        peak, _, home = min(ok, key=lambda r: (r[1], r[0])) if f > 0 else min(ok, key=lambda r: r[:2])
        if not any(np.array_equal(home, h) for h in seen):
            seen.append(home)
            out.append((f"groups, node peak +{(peak / best_peak - 1) * 100:.1f} %", home))
    return out


def traffic_candidates(task: LayerTask, w: np.ndarray, td: TokenData, *,
                       max_cap: float = 0.05) -> list[tuple[str, np.ndarray]]:
    """Homed/everywhere placements of one layer, ``(label, phy [G, spg])`` each.

    Nodes are balanced on the layer's pooled loads: a node's load per GPU at most ``1 + cap``
    (mean 1), for the caps of :data:`NODE_CAPS` below ``max_cap`` and ``max_cap`` itself (what
    the objective lets a plan give up of balance). Homes: for group-limited routers
    (:func:`routes_by_groups`), whole groups per node (a token's groups then bound its nodes,
    on any tokens), the packings of :func:`_group_starts`; otherwise a partition per cap:
    Mt-KaHyPar refines a balanced start (EPLB's nodes when its layer keeps every expert on one
    node, else a greedy by load) on the planning tokens ``td``, moves repair slots, and a
    bounded local search cuts sends further. Then, from each:

    1. replication: the experts whose replica on every node saves the most sends (or, while a
       node is over the cap, lowers the peak most) turn "everywhere", at checkpoints of the
       spare slots;
    2. a partition's node still over the cap sheds experts (fewest extra sends);
    3. in-node packing of every checkpoint (:func:`_pack_nodes`) on every scenario of
       ``w [S, E]``.
    """
    c = task.cluster
    N, gpn, spg = c.num_nodes, c.gpus_per_node, c.slots_per_gpu
    G = N * gpn
    E = w.shape[1]
    C = gpn * spg
    eff = task.effort
    # nodes are balanced on the pooled loads (a node spans many GPUs: its load is the sum of
    # many experts, and a short window's worst case is noise); GPUs inside a node on every
    # scenario of w
    pooled = np.asarray(task.pooled, dtype=np.float64)[None, :]
    wn = scaled_loads(pooled if pooled.sum() > 0 else w.mean(axis=0, keepdims=True), G)
    local_n = local_loads(wn, td.frac, N)
    local = local_loads(w, td.frac, N)
    starts: list[tuple[str, float, NodeState]] = []
    ng = task.num_groups
    if ng % N == 0 and routes_by_groups(td.ids, E, ng):
        for name, home in _group_starts(wn, td, ng, N):
            ns = node_state(home, wn, local_n, N, td)
            if _repair_homes(ns, wn, C):
                starts.append((name, 1.0 + max(max_cap, _MIN_CAP), ns))
    else:
        eplb_homes = _homes_of(task.eplb, c, E)
        start = eplb_homes if eplb_homes is not None else _greedy_homes(wn, N, C)
        scale = 100_000.0 / max(float(wn.sum()), 1e-12)
        weight = np.maximum(np.rint(wn[0] * scale), 1).astype(np.int64)
        floor = float(weight.sum()) / N
        for f in sorted({*(x for x in NODE_CAPS if x < max_cap), max(max_cap, 0.0)}):
            if task.timed_out():
                break
            node_cap = 1.0 + max(f, _MIN_CAP)
            caps = np.full(N, max(node_cap * gpn * scale, floor * (1.0 + 1e-3)) + 1.0)
            home = refine_homes(td.ids, td.node, np.arange(E), weight, start, caps,
                                num_nodes=N, seed=task.seed, vcycles=eff.vcycles)
            ns = node_state(home, wn, local_n, N, td)
            if not _repair_homes(ns, wn, C):
                continue
            _improve_homes(ns, wn, td, cap_load=node_cap, cap_slots=C, gpn=gpn,
                           max_moves=eff.home_moves)
            starts.append((f"partition, cap {f:g}", node_cap, ns))
    out: list[tuple[str, np.ndarray]] = []
    spare = (G * spg - E) // max(N - 1, 1)
    for name, node_cap, ns in starts:
        homes = [ns.home.copy()]
        if spare > 0:
            marks = tuple(sorted({max(1, round(spare * q)) for q in _GROW_STEPS}))
            homes += grow_everywhere(ns, wn, local_n, td, cap_load=node_cap, cap_slots=C,
                                     gpn=gpn, checkpoints=marks)
        for hm in homes:
            if task.timed_out():
                break
            if name.startswith("partition"):
                # a node still over the cap after replication sheds experts (fewest extra sends)
                nsh = node_state(hm, wn, local_n, N, td)
                if nsh.load.max() > node_cap * gpn + 1e-12:
                    _balance_homes(nsh, wn, td, cap_load=node_cap, cap_slots=C, gpn=gpn,
                                   max_steps=4 * E)
                    hm = nsh.home
            phy = _pack_nodes(hm, w, local, N, gpn, spg, task.robust, task.seed,
                              eff.pack_rounds, eff.max_moves, task.deadline)
            if phy is not None:
                out.append((f"{name}, {int((hm == EVERYWHERE).sum())} everywhere", phy))
    return out


def node_limited_candidates(task: LayerTask, w: np.ndarray, td: TokenData | None, *,
                            bound_loads: np.ndarray) -> tuple[list[tuple[str, np.ndarray]], float]:
    """Node-limited routing: whole expert groups to nodes (every packing when there are few,
    else one LPT packing), then GPUs inside nodes.

    Returns ``(candidates, bound)``: placements of the best group packings of ``w [S, E]``
    (the best balanced one first, then the one with the fewest sends within the tolerance of
    it), and a valid bound of the robust imbalance of ``bound_loads [S, E]`` for every plan that
    keeps groups whole (the best packing's node peak when every packing was tried, else 1).
    """
    from placement.errors import InputError

    c = task.cluster
    N, gpn, spg = c.num_nodes, c.gpus_per_node, c.slots_per_gpu
    S, E = w.shape
    ng = task.num_groups
    size = E // ng
    per_node = ng // N
    gw = w.reshape(S, ng, size).sum(axis=2)  # [S, groups]
    assignments, exhaustive = _group_assignments(gw, N, per_node, limit=20000)
    scored: list[tuple[float, tuple[int, ...]]] = []
    for assign in assignments:
        nl = np.zeros((S, N))
        for grp, n in enumerate(assign):
            nl[:, n] += gw[:, grp]
        peak = float(nl.max(axis=1).max() if task.robust == "max" else nl.max(axis=1).mean())
        scored.append((peak / gpn, assign))
    scored.sort(key=lambda x: x[0])
    best_peak = scored[0][0]
    bound = 1.0
    if exhaustive:
        bw = bound_loads.reshape(S, ng, size).sum(axis=2)
        peaks = []
        for assign in assignments:
            nl = np.zeros((S, N))
            np.add.at(nl.T, np.asarray(assign), bw.T)
            per = nl.max(axis=1)
            peaks.append(float(per.max() if task.robust == "max" else per.mean()) / gpn)
        bound = max(1.0, min(peaks))
    tol = 0.05 if task.balance_tolerance is None else task.balance_tolerance
    cap = (1.0 + tol) * best_peak
    picks: list[tuple[str, np.ndarray]] = []
    chosen = [scored[0]]
    if td is not None:
        within = [(p, a) for p, a in scored if p <= cap + 1e-12][:64]
        by_sends = sorted(
            within, key=lambda pa: (float(home_sends(np.repeat(np.asarray(pa[1]), size),
                                                     td.ids, td.node).mean()), pa[0]))
        chosen = list(dict.fromkeys([scored[0], by_sends[0]]))
    for peak, assign in chosen:
        home = np.repeat(np.asarray(assign, dtype=np.int64), size)
        phy = _pack_nodes(home, w, local_loads(w, None if td is None else td.frac, N), N, gpn,
                          spg, task.robust, task.seed,
                          max(2, task.effort.rounds // 2), task.effort.max_moves, task.deadline)
        if phy is None:
            raise InputError(
                f"a node's {size * per_node} experts do not fit its {gpn * spg} slots."
            )
        picks.append((f"groups, node peak {peak:.4f}", phy))
    return picks, bound


def nodes_per_token(phy: np.ndarray, cluster: Cluster, E: int, td: TokenData) -> np.ndarray:
    """``[T]`` distinct nodes of the replicas the static rule picks for every planning token."""
    disp = static_dispatch(phy.reshape(1, -1), cluster, E)[0]  # [G, E]
    node = disp[td.src[:, None], np.maximum(td.ids, 0)] // cluster.slots_per_gpu \
        // cluster.gpus_per_node
    node = np.where(td.ids >= 0, node, -1)
    srt = np.sort(node, axis=1)
    first = np.ones_like(srt, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    return ((srt >= 0) & first).sum(axis=1)


def _group_assignments(gw: np.ndarray, N: int, per_node: int,
                       limit: int) -> tuple[list[tuple[int, ...]], bool]:
    """Ways to put ``groups`` onto ``N`` nodes, ``per_node`` each: all of them when there are at
    most ``limit`` (nodes unlabelled: node ids in order of first use; exhaustive = True), else
    one LPT packing (False)."""
    ng = gw.shape[1]
    total = 1.0
    rest = ng
    for _ in range(N):
        total *= _comb(rest, per_node)
        rest -= per_node
    total /= float(np.prod(np.arange(1, N + 1)))
    if total <= limit:
        out: list[tuple[int, ...]] = []

        def rec(assign: list[int], counts: list[int], used: int) -> None:
            i = len(assign)
            if i == ng:
                out.append(tuple(assign))
                return
            for n in range(min(used + 1, N)):
                if counts[n] < per_node:
                    assign.append(n)
                    counts[n] += 1
                    rec(assign, counts, max(used, n + 1))
                    counts[n] -= 1
                    assign.pop()

        rec([], [0] * N, 0)
        return out, True
    key = gw.max(axis=0)
    order = np.argsort(-key, kind="stable")
    load = np.zeros((gw.shape[0], N))
    cnt = np.zeros(N, dtype=np.int64)
    assign = [0] * ng
    for grp in order.tolist():
        free = [n for n in range(N) if cnt[n] < per_node]
        n = min(free, key=lambda x: (load[:, x] + gw[:, grp]).max())
        assign[grp] = n
        cnt[n] += 1
        load[:, n] += gw[:, grp]
    return [tuple(assign)], False


def _comb(n: int, k: int) -> float:
    return float(math.comb(n, k))
