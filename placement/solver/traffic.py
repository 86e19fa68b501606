"""Traffic-aware placement of one layer: which node holds which expert, then GPUs inside nodes.

Under the engines' static dispatch rule a token uses a replica on its own GPU, else on its node,
else elsewhere. So a token crosses to another node once per remote node among its experts'
chosen replicas (``cross-node sends``), and two levers cut that traffic:

* experts that fire together live on one node (a graph partition of the co-activation graph,
  by pymetis, with vertex weights = load so the nodes stay balanced, then local search);
* an expert with a replica on EVERY node keeps all its tokens at home; spare slots go to the
  experts whose replica everywhere saves the most sends (marginal gain from the planning tokens).

Plans here have that structure: every expert is either "homed" (all its replicas on one node) or
"everywhere" (the same number of replicas on every node). The sends of such a plan follow from
the experts' home nodes alone, which makes node-level search fast and exact; the GPUs inside a
node are then packed for balance (:mod:`placement.solver.balance`).

The trade-off (``balance_tolerance``): the balance-only plan (robust even-split imbalance
``b``, static-rule imbalance ``b_static`` on all planning tokens) is made first; a traffic plan is
taken only if its imbalance is at most ``(1 + tolerance) * b`` and its static-rule imbalance at
most ``(1 + tolerance) * b_static``, and among those the one with the fewest sends wins.

Node-limited routing (``max_nodes_per_token = M < num_nodes``): every expert GROUP (``E /
num_groups`` consecutive experts, DeepSeek-V3's ``n_group``) lives on one node, all replicas of
its experts included. A token that the router sends to at most M groups (DeepSeek-V3: top-4
groups) is then served by at most M nodes under the static rule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import csr_matrix

from placement.cluster import Cluster
from placement.metrics import imbalance, token_traffic
from placement.plan import static_dispatch
from placement.solver.balance import LayerState, improve, lpt_assign, robust_counts

if TYPE_CHECKING:
    from placement.solver.optimizer import LayerSolution, LayerTask

__all__ = [
    "TokenData",
    "build_token_data",
    "exact_traffic",
    "home_sends",
    "solve_traffic_layer",
]

EVERYWHERE = -1

_SWAP_BLOCKED = 16  # blocked moves tried as swaps per step
_SWAP_PARTNERS = 4  # partners tried per blocked move
_GROW_STEPS = (0.25, 0.5, 0.75, 1.0)  # checkpoints of the replication growth (share of spare)


@dataclass(frozen=True)
class TokenData:
    """The planning tokens of one layer, pooled over scenarios.

    Attributes:
        ids: ``[T, k]`` logical experts (``-1`` none).
        src: ``[T]`` source GPU.
        node: ``[T]`` source node.
        indptr, tokens: CSR lists of the tokens of every expert (``tokens[indptr[e]:indptr[e+1]]``).
        wsrc: ``[S, N, E]`` load of every expert from every source node per scenario, scaled
            like the balance loads (mean GPU load 1 per scenario).
    """

    ids: np.ndarray
    src: np.ndarray
    node: np.ndarray
    indptr: np.ndarray
    tokens: np.ndarray
    wsrc: np.ndarray

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
    wsrc_list = []
    ids_l, src_l = [], []
    for ids, src in tokens:
        ids = np.asarray(ids, dtype=np.int64)
        src = np.asarray(src, dtype=np.int64)
        valid = ids >= 0
        if not valid.any():
            continue
        node = src // gpus_per_node
        flat = (np.broadcast_to(node[:, None], ids.shape) * E + np.where(valid, ids, 0))[valid]
        c = np.bincount(flat, minlength=N * E).reshape(N, E).astype(np.float64)
        wsrc_list.append(c / c.sum() * G)
        keep = valid.any(axis=1)
        ids_l.append(ids[keep])
        src_l.append(src[keep])
    if not ids_l:
        k = tokens[0][0].shape[1] if tokens else 1
        return TokenData(np.zeros((0, k), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(E + 1, np.int64), np.zeros(0, np.int64), np.zeros((1, N, E)))
    ids = np.concatenate(ids_l)
    src = np.concatenate(src_l)
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
    return TokenData(ids, src, src // gpus_per_node, indptr, tok_u, np.stack(wsrc_list))


def home_sends(home: np.ndarray, ids: np.ndarray, node: np.ndarray) -> np.ndarray:
    """``[T]`` cross-node sends of every token when expert ``e`` lives on node ``home[e]``
    (``-1``: a replica on every node, never remote)."""
    h = np.where(ids >= 0, home[np.maximum(ids, 0)], EVERYWHERE)
    h = np.where(h == node[:, None], EVERYWHERE, h)
    h = np.sort(h, axis=1)
    first = np.ones_like(h, dtype=bool)
    first[:, 1:] = h[:, 1:] != h[:, :-1]
    return ((h >= 0) & first).sum(axis=1)


def coactivation(td: TokenData, num_experts: int) -> np.ndarray:
    """``[E, E]`` tokens routed to both experts (zero diagonal)."""
    T = td.num_tokens
    E = num_experts
    counts = np.diff(td.indptr)
    rows = td.tokens
    cols = np.repeat(np.arange(E), counts)
    m = csr_matrix((np.ones(rows.size), (rows, cols)), shape=(T, E))
    co = np.asarray((m.T @ m).toarray())
    np.fill_diagonal(co, 0.0)
    return co


def exact_traffic(phy: np.ndarray, cluster: Cluster, num_experts: int,
                  td: TokenData) -> tuple[float, float]:
    """In-sample ``(sends per token, static-rule imbalance)`` of ``phy [G, spg]``."""
    if td.num_tokens == 0:
        return 0.0, 1.0
    disp = static_dispatch(phy.reshape(1, -1), cluster, num_experts)
    sends, _, loads = token_traffic(disp, td.ids[:, None, :], td.src, cluster)
    return float(sends[0] / td.num_tokens), float(imbalance(loads)[0])


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


def _node_state(home: np.ndarray, w: np.ndarray, wsrc: np.ndarray | None, N: int,
                td: TokenData | None) -> NodeState:
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
        if wsrc is not None:
            load += wsrc[:, :, ev].sum(axis=2)
        else:
            load += w[:, ev].sum(axis=1, keepdims=True) / N
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
                   cap_slots: int, gpn: int, max_moves: int, deadline: float) -> None:
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
        if time.monotonic() > deadline:
            return
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


def _grow_everywhere(ns: NodeState, w: np.ndarray, wsrc: np.ndarray | None, td: TokenData, *,
                     cap_load: float, cap_slots: int, gpn: int,
                     checkpoints: tuple[int, ...]) -> list[np.ndarray]:
    """Greedy marginal-gain replication: turn homed experts into everywhere experts, the one
    that saves the most sends first (a token stops sending to node ``a`` when the expert was its
    only one homed on ``a``), while slots and every node's worst-scenario load allow.

    Every such expert costs ``N - 1`` slots, so the gain per slot is the savings / (N - 1), the
    same order. Returns copies of ``home`` after each of ``checkpoints`` growth steps (the
    packing decides which still balances), ending with the last one reached.

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
    S = w.shape[0]
    # [S, N, E] load every node serves of an everywhere expert
    local = wsrc if wsrc is not None else np.broadcast_to(w[:, None, :] / N, (S, N, E))
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
        ok = fits & (new.max(axis=(1, 2)) <= limit) & (sav >= 1.0)
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


def _partition(w: np.ndarray, experts: np.ndarray, co: np.ndarray, N: int,
               ufactor: int, seed: int) -> np.ndarray:
    """pymetis partition of ``experts`` into ``N`` parts: vertex weight = worst-scenario load,
    edge weight = co-activation. Returns the part of every listed expert."""
    import warnings

    import pymetis

    n = experts.size
    if N == 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    sub = co[np.ix_(experts, experts)]
    scale = 1000.0 / max(sub.max(), 1.0)
    ew = np.rint(sub * scale).astype(np.int64)
    xadj = [0]
    adj: list[int] = []
    wts: list[int] = []
    for i in range(n):
        nb = np.flatnonzero(ew[i] > 0)
        nb = nb[nb != i]
        adj.extend(nb.tolist())
        wts.extend(ew[i, nb].tolist())
        xadj.append(len(adj))
    load = w[:, experts].max(axis=0)
    vw = np.maximum(np.rint(load / max(load.max(), 1e-12) * 1000), 1).astype(np.int64)
    if not adj:  # no co-activation at all: balance by load only
        order = np.argsort(-load, kind="stable")
        part = np.zeros(n, dtype=np.int64)
        tot = np.zeros(N)
        for i in order.tolist():
            p = int(np.argmin(tot))
            part[i] = p
            tot[p] += load[i]
        return part
    opts = pymetis.Options(seed=int(seed) % (2**31 - 1), ufactor=int(ufactor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pymetis.part_graph(N, adjacency=pymetis.CSRAdjacency(xadj, adj),
                                 vweights=vw.tolist(), eweights=wts, options=opts)
    return np.asarray(res.vertex_part, dtype=np.int64)


def _group_homes(w: np.ndarray, num_groups: int, N: int) -> np.ndarray:
    """``[E]`` node of every expert when whole groups (``E / num_groups`` consecutive experts)
    go to nodes, ``num_groups / N`` per node, heaviest group first to the least loaded node."""
    S, E = w.shape
    size = E // num_groups
    gw = w.reshape(S, num_groups, size).sum(axis=2)
    per_node = num_groups // N
    load = np.zeros((S, N))
    cnt = np.zeros(N, dtype=np.int64)
    node_of = np.zeros(num_groups, dtype=np.int64)
    for grp in np.argsort(-gw.max(axis=0), kind="stable").tolist():
        free = [n for n in range(N) if cnt[n] < per_node]
        n = min(free, key=lambda x: ((load[:, x] + gw[:, grp]).max(), x))
        node_of[grp] = n
        cnt[n] += 1
        load[:, n] += gw[:, grp]
    return np.repeat(node_of, size)


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


def _pack_nodes(home: np.ndarray, w: np.ndarray, N: int, gpn: int, spg: int, robust: str,
                seed: int, rounds: int, max_moves: int, deadline: float) -> np.ndarray | None:
    """GPUs inside every node: ``phy [G, spg]`` for the homes, or None when a node cannot hold
    its experts. Everywhere experts get the same replicas on every node (their local load is
    an even ``1/N`` of their tokens); homed experts split their slots by robust greedy."""
    _S, _E = w.shape
    C = gpn * spg
    ev = np.flatnonzero(home == EVERYWHERE)
    # replicas per node of everywhere experts: decided once, on the mean node
    rows = []
    for n in range(N):
        mine = np.flatnonzero(home == n)
        items = np.concatenate([mine, ev])
        if items.size > C or items.size == 0 or items.size * gpn < C:
            return None  # too many experts for the node's slots, or too few to fill them
        wn = np.concatenate([w[:, mine], w[:, ev] / N], axis=1)
        cnt = robust_counts(wn, C, min(gpn, C - items.size + 1), robust)
        phy_local = lpt_assign(wn, cnt, gpn, spg, robust)
        st = LayerState.build(wn, phy_local, robust, max_count=gpn)
        st = improve(st, rounds=rounds, max_moves=max_moves, seed=seed + 7919 * n,
                     deadline=deadline)
        rows.append(items[st.phy])
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------------
def solve_traffic_layer(task: LayerTask, w: np.ndarray) -> LayerSolution:
    """Balance first, then traffic-aware candidates within the tolerance; see module docs.

    With ``task.plan_shares`` the search plans on those (shrunk) loads; the objective, bound and
    status returned are those of the plain shares ``w``.
    """
    from placement.solver.balance import count_bound, scaled_loads
    from placement.solver.optimizer import LayerSolution, balance_layer, exact_model_applies

    G = task.num_gpus
    if task.plan_shares is None:
        return _traffic_layer(task, w)
    sol = _traffic_layer(task, scaled_loads(task.plan_shares, G))
    phy = sol.phy2log.reshape(G, task.slots_per_gpu)
    val = LayerState.build(w, phy, task.robust).objective()
    bound, source = count_bound(w, phy.size, G, task.robust), "counts"
    if exact_model_applies(task, w.shape[1]):
        # small layer: the exact model's bound holds for the plain shares too
        plain = balance_layer(task, w)
        if plain.bound > bound:
            bound, source = plain.bound, plain.bound_source
    bound = min(bound, val)
    status = "OPTIMAL" if val <= bound + 1e-9 else "FEASIBLE"
    if sol.status == "TIME_LIMIT":
        status = "TIME_LIMIT"
    return LayerSolution(sol.index, sol.phy2log, bound, status, val, source, sol.info)


def _traffic_layer(task: LayerTask, w: np.ndarray) -> LayerSolution:
    from placement.solver.optimizer import LayerSolution, _canonical, balance_layer

    N, gpn, spg = task.num_nodes, task.gpus_per_node, task.slots_per_gpu
    G = N * gpn
    S, E = w.shape
    cluster = Cluster(N, gpn, spg)
    node_limited = task.max_nodes_per_token is not None and task.max_nodes_per_token < N
    td = None
    if task.tokens is not None:
        td = build_token_data(task.tokens, E, G, gpn, seed=task.seed)
        if td.num_tokens == 0:
            td = None
    info: dict[str, float] = {}

    if node_limited:
        return _node_limited_layer(task, w, td, cluster)

    # 1. balance only: the reference the tolerance is measured from
    bal = balance_layer(task, w)
    best_phy, best_val = bal.phy, bal.value
    if td is None or N == 1:
        return LayerSolution(task.index, _canonical(best_phy).reshape(-1), bal.bound, bal.status,
                             best_val, bal.bound_source, info)
    cap = (1.0 + task.balance_tolerance) * bal.value
    best_sends, best_static = exact_traffic(best_phy, cluster, E, td)
    # the engines dispatch by the static rule: its imbalance (all planning tokens) is held to the
    # same tolerance around the balance-only plan's
    static_cap = (1.0 + task.balance_tolerance) * best_static
    info["balance_only_sends"] = best_sends

    # 2. traffic candidates: R hottest experts everywhere, the rest homed by graph partition
    co = coactivation(td, E)
    wsrc = td.wsrc if td.wsrc.shape[0] == S else None
    C = gpn * spg
    order = np.argsort(-w.max(axis=0), kind="stable")
    r_max = min((G * spg - E) // max(N - 1, 1), E, C)
    r_values = sorted({round(x) for x in np.linspace(0, r_max, 5)})
    fracs = (0.3, 0.6, 0.9)
    rounds = max(2, task.effort.rounds // 3)
    for r in r_values:
        order[:r]
        homed = order[r:]
        if homed.size + r * N > G * spg or homed.size > N * (C - r):
            continue
        starts = ["graph"]
        ng = task.num_groups
        if ng > 1 and ng % N == 0 and E % ng == 0:
            starts.append("groups")  # group-limited routers: whole groups per node (as EPLB)
        for start, f in [(s0, f0) for s0 in starts for f0 in fracs]:
            if time.monotonic() > task.deadline:
                break
            node_cap = 1.0 + (cap - 1.0) * f
            home = np.full(E, EVERYWHERE, dtype=np.int64)
            if start == "graph":
                home[homed] = _partition(w, homed, co, N,
                                         ufactor=max(1, int(1000 * (node_cap - 1.0))),
                                         seed=task.seed)
            else:
                home[homed] = _group_homes(w, ng, N)[homed]
            ns = _node_state(home, w, wsrc, N, td)
            if not _repair_homes(ns, w, C):
                continue
            _balance_homes(ns, w, td, cap_load=node_cap, cap_slots=C, gpn=gpn,
                           max_steps=4 * E)
            _improve_homes(ns, w, td, cap_load=node_cap, cap_slots=C, gpn=gpn,
                           max_moves=4 * E, deadline=task.deadline)
            homes = [ns.home.copy()]
            # 3. marginal-gain replication: spare slots to the experts that save most sends
            spare = (G * spg - E - int((ns.home == EVERYWHERE).sum()) * (N - 1)) // (N - 1)
            if spare > 0:
                marks = tuple(sorted({max(1, round(spare * q)) for q in _GROW_STEPS}))
                homes += _grow_everywhere(ns, w, wsrc, td, cap_load=node_cap, cap_slots=C,
                                          gpn=gpn, checkpoints=marks)
            for hm in homes:
                phy = _pack_nodes(hm, w, N, gpn, spg, task.robust, task.seed, rounds,
                                  task.effort.max_moves, task.deadline)
                if phy is None:
                    continue
                val = LayerState.build(w, phy, task.robust).objective()
                if val > cap + 1e-12:
                    continue
                sends, static = exact_traffic(phy, cluster, E, td)
                if static > static_cap + 1e-12:
                    continue
                if (sends, val) < (best_sends, best_val):
                    best_phy, best_val, best_sends, best_static = phy, val, sends, static
                    info["everywhere_experts"] = float((hm == EVERYWHERE).sum())
    info["sends_per_token"] = best_sends
    info["imbalance_static_in_sample"] = best_static
    status = bal.status if best_phy is bal.phy else "FEASIBLE"
    if best_val <= bal.bound + 1e-9:
        status = "OPTIMAL"  # the traffic plan matches the balance bound: optimal for balance
    if time.monotonic() > task.deadline:
        status = "TIME_LIMIT"
    return LayerSolution(task.index, _canonical(best_phy).reshape(-1), min(bal.bound, best_val),
                         status, best_val, bal.bound_source, info)


def _node_limited_layer(task: LayerTask, w: np.ndarray, td: TokenData | None,
                        cluster: Cluster) -> LayerSolution:
    """Groups to nodes (exhaustive when few), then GPUs inside nodes; see module docs."""
    from placement.solver.balance import count_bound
    from placement.solver.optimizer import LayerSolution, _canonical

    N, gpn, spg = task.num_nodes, task.gpus_per_node, task.slots_per_gpu
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
    cap = (1.0 + task.balance_tolerance) * best_peak
    cands = [(p, a) for p, a in scored if p <= cap + 1e-12][:64] if td is not None else scored[:1]
    best: tuple[tuple[float, float], np.ndarray] | None = None
    rounds = max(2, task.effort.rounds // 2)
    for peak, assign in cands:
        home = np.repeat(np.asarray(assign, dtype=np.int64), size)
        sends = float(home_sends(home, td.ids, td.node).mean()) if td is not None else 0.0
        if best is None or (sends, peak) < best[0]:
            best = ((sends, peak), home)
    assert best is not None
    home = best[1]
    phy = _pack_nodes(home, w, N, gpn, spg, task.robust, task.seed, rounds,
                      task.effort.max_moves, task.deadline)
    if phy is None:
        from placement.errors import InputError

        raise InputError(
            f"a node's {size * per_node} experts do not fit its {gpn * spg} slots."
        )
    val = LayerState.build(w, phy, task.robust).objective()
    # bound: every node holds whole groups, so the best group packing's node peak binds too
    #        (only when every group packing was tried)
    bound = count_bound(w, N * gpn * spg, gpn, task.robust)
    if exhaustive:
        bound = max(bound, best_peak)
    info: dict[str, float] = {}
    if td is not None:
        s, st = exact_traffic(phy, cluster, E, td)
        info["sends_per_token"] = s
        info["imbalance_static_in_sample"] = st
        nodes_used = _nodes_per_token(phy, cluster, E, td)
        info["tokens_over_node_limit"] = float((nodes_used > task.max_nodes_per_token).mean())
    status = "FEASIBLE"
    if val <= bound + 1e-9:
        status = "OPTIMAL"  # no plan that keeps groups on nodes balances better
    elif time.monotonic() > task.deadline:
        status = "TIME_LIMIT"
    return LayerSolution(task.index, _canonical(phy).reshape(-1), min(bound, val), status, val,
                         "counts", info)


def _nodes_per_token(phy: np.ndarray, cluster: Cluster, E: int, td: TokenData) -> np.ndarray:
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
