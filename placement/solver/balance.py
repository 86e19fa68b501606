"""Balance one MoE layer over several scenarios: replica counts, packing and local search.

Vocabulary: ``S`` scenarios, ``E`` logical experts, ``G`` GPUs, ``spg`` slots per GPU,
``P = G * spg`` slots. Loads are scaled so that the mean GPU load of every active scenario is 1:
``w [S, E] = G * share``, so a GPU's load IS its imbalance contribution (max / mean).

A placement of one layer is ``phy [G, spg]``: the logical expert in every slot of every GPU. No GPU
holds two replicas of one expert, so an expert has between 1 and G replicas.

The objective is robust over scenarios: ``F = agg_s max_g load[s, g]`` with ``agg`` the maximum
(``"max"``, worst case) or the mean (``"mean"``). Local search minimises ``(F, Q)``
lexicographically, ``Q = sum_{s,g} load[s, g]^2`` (ties in ``F`` go to the placement that is
better balanced everywhere, which is what holds up on held-out traffic).

Everything here is deterministic: fixed iteration counts and a seeded generator.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "LayerState",
    "count_bound",
    "descend",
    "enumerate_placements",
    "improve",
    "lpt_assign",
    "multiset_count",
    "pair_counts",
    "pair_value",
    "robust_counts",
    "scaled_loads",
]

_EPS = 1e-12


def scaled_loads(shares: np.ndarray, num_gpus: int) -> np.ndarray:
    """``shares [S, E]`` (rows sum to 1, or 0 for an empty scenario) -> ``w [S', E]``.

    Empty scenarios are dropped; the rest are scaled so that the mean GPU load is 1.
    """
    shares = np.asarray(shares, dtype=np.float64)
    tot = shares.sum(axis=1)
    keep = tot > 0
    if not keep.any():
        return np.zeros((1, shares.shape[1]))
    s = shares[keep] / tot[keep, None]
    return s * num_gpus


def _q(loads: np.ndarray) -> np.ndarray:
    """The secondary objective's term of every load: ``L^2``."""
    return loads * loads


def _agg(values: np.ndarray, robust: str, axis: int = 0) -> np.ndarray:
    return values.max(axis=axis) if robust == "max" else values.mean(axis=axis)


def robust_counts(w: np.ndarray, num_slots: int, max_count: int, robust: str = "max",
                  min_count: np.ndarray | None = None) -> np.ndarray:
    """Replica counts ``[E]`` (sum ``num_slots``, each in ``[1, max_count]``).

    Greedy as EPLB's ``replicate_experts``, but on the worst scenario: each redundant slot goes to
    the expert whose heaviest replica (over scenarios, ``max_s w[s, e] / count_e``) is heaviest.
    This minimises ``max_{s,e} w[s, e] / count_e`` exactly (a separable min-max). With ``"mean"``
    the key is the mean over scenarios.
    """
    _S, E = w.shape
    key = _agg(w, robust)
    cnt = np.ones(E, dtype=np.int64) if min_count is None else np.asarray(min_count).astype(np.int64)
    left = num_slots - int(cnt.sum())
    if left < 0 or E * max_count < num_slots:
        raise ValueError("replica counts cannot fill the slots")
    heap = [(-key[e] / cnt[e], e) for e in range(E) if cnt[e] < max_count]
    heapq.heapify(heap)
    while left > 0:
        _, e = heapq.heappop(heap)
        cnt[e] += 1
        left -= 1
        if cnt[e] < max_count:
            heapq.heappush(heap, (-key[e] / cnt[e], e))
    return cnt


def count_bound(w: np.ndarray, num_slots: int, max_count: int, robust: str = "max") -> float:
    """A valid lower bound of ``F`` over every placement of ``num_slots`` replicas.

    Every scenario's peak is at least its mean (1) and at least its heaviest replica. With
    ``"max"``: ``min over counts of max_{s,e} w[s,e] / c_e`` is solved exactly by the greedy of
    :func:`robust_counts`. With ``"mean"``: the mean over scenarios of each scenario's own bound
    (counts chosen per scenario, which can only help).
    """
    if robust == "max":
        cnt = robust_counts(w, num_slots, max_count, "max")
        return float(max(1.0, (w / cnt[None, :]).max()))
    vals = []
    for s in range(w.shape[0]):
        cnt = robust_counts(w[s:s + 1], num_slots, max_count, "max")
        vals.append(max(1.0, float((w[s] / cnt).max())))
    return float(np.mean(vals))


def lpt_assign(w: np.ndarray, cnt: np.ndarray, num_gpus: int, spg: int,
               robust: str = "max") -> np.ndarray:
    """Vector LPT: ``phy [G, spg]``, replicas in decreasing load to the GPU where the scenario
    aggregate of its new load is least; no GPU takes two replicas of one expert."""
    S, E = w.shape
    G = num_gpus
    per = w / cnt[None, :]  # [S, E] load of one replica
    key = per.max(axis=0) + 1e-9 * per.mean(axis=0)
    experts = np.repeat(np.arange(E), cnt)
    order = np.lexsort((experts, -key[experts]))
    experts = experts[order]
    loads = np.zeros((S, G))
    fill = np.zeros(G, dtype=np.int64)
    holds = np.zeros((G, E), dtype=bool)
    phy = np.full((G, spg), -1, dtype=np.int64)
    big = np.inf
    for e in experts.tolist():
        cand = _agg(loads + per[:, e:e + 1], robust) + 1e-9 * loads.sum(0)
        cand = np.where((fill < spg) & ~holds[:, e], cand, big)
        g = int(np.argmin(cand))
        if cand[g] == big:  # every GPU with room already holds e: swap with a placed replica
            g = _make_room(phy, holds, fill, e, spg)
        phy[g, fill[g]] = e
        fill[g] += 1
        holds[g, e] = True
        loads[:, g] += per[:, e]
    return phy


def _make_room(phy: np.ndarray, holds: np.ndarray, fill: np.ndarray, e: int, spg: int) -> int:
    """A GPU ``g`` with room holds ``e`` already: move one of ``h``'s replicas ``x`` (``h`` lacks
    ``e``, ``g`` lacks ``x``) to ``g``, and return ``h`` (which now has room for ``e``)."""
    G = phy.shape[0]
    for g in range(G):
        if fill[g] >= spg:
            continue
        for h in range(G):
            if holds[h, e] or fill[h] == 0:
                continue
            for j in range(fill[h]):
                x = int(phy[h, j])
                if not holds[g, x]:
                    phy[g, fill[g]] = x
                    fill[g] += 1
                    holds[g, x] = True
                    phy[h, j] = phy[h, fill[h] - 1]
                    phy[h, fill[h] - 1] = -1
                    fill[h] -= 1
                    holds[h, x] = False
                    return h
    raise RuntimeError("no feasible placement for the replica counts")  # pragma: no cover


@dataclass
class LayerState:
    """A placement of one layer with its loads, kept in step by the moves.

    Attributes:
        w: ``[S, E]`` scaled loads (mean GPU load 1 per scenario).
        phy: ``[G, spg]`` expert in every slot.
        cnt: ``[E]`` replicas per expert.
        holds: ``[G, E]`` whether a GPU holds the expert.
        loads: ``[S, G]`` GPU loads.
        max_count: most replicas one expert may have.
        robust: ``"max"`` or ``"mean"``.
    """

    w: np.ndarray
    phy: np.ndarray
    cnt: np.ndarray
    holds: np.ndarray
    loads: np.ndarray
    max_count: int
    robust: str

    @classmethod
    def build(cls, w: np.ndarray, phy: np.ndarray, robust: str = "max",
              max_count: int | None = None) -> LayerState:
        G, spg = phy.shape
        E = w.shape[1]
        cnt = np.bincount(phy.reshape(-1), minlength=E).astype(np.int64)
        holds = np.zeros((G, E), dtype=bool)
        holds[np.repeat(np.arange(G), spg), phy.reshape(-1)] = True
        st = cls(w=w, phy=phy.copy(), cnt=cnt, holds=holds, loads=np.zeros((w.shape[0], G)),
                 max_count=G if max_count is None else max_count, robust=robust)
        st.recompute()
        return st

    def copy(self) -> LayerState:
        return LayerState(self.w, self.phy.copy(), self.cnt.copy(), self.holds.copy(),
                          self.loads.copy(), self.max_count, self.robust)

    def recompute(self) -> None:
        per = self.w / np.maximum(self.cnt, 1)[None, :]  # [S, E]
        self.loads = per[:, self.phy].sum(axis=2)

    @property
    def num_gpus(self) -> int:
        return int(self.phy.shape[0])

    @property
    def spg(self) -> int:
        return int(self.phy.shape[1])

    def objective(self) -> float:
        return float(_agg(self.loads.max(axis=1), self.robust))

    def secondary(self) -> float:
        return float(_q(self.loads).sum())

    def key(self) -> tuple[float, float]:
        return (self.objective(), self.secondary())

    # ------------------------------------------------------------------------------------
    # moves
    # ------------------------------------------------------------------------------------
    def _critical_gpus(self) -> list[int]:
        """GPUs that carry a scenario's peak, heaviest first."""
        arg = self.loads.argmax(axis=1)
        peak = self.loads.max(axis=1)
        order = np.argsort(-peak, kind="stable")
        seen: list[int] = []
        for s in order.tolist():
            g = int(arg[s])
            if g not in seen:
                seen.append(g)
        return seen

    def best_swap(self, g: int) -> tuple[float, float, int, int, int] | None:
        """Best lexicographic ``(F, Q)`` swap of a replica on GPU ``g`` with one elsewhere.

        Returns ``(F, Q, i, h, j)``: swap slot ``i`` of ``g`` with slot ``j`` of GPU ``h``.
        """
        S, G = self.loads.shape
        spg = self.spg
        per = self.w / self.cnt[None, :]
        vg = per[:, self.phy[g]]  # [S, spg]
        flat = self.phy.reshape(-1)  # [G*spg]
        vall = per[:, flat]  # [S, GP]
        hof = np.repeat(np.arange(G), spg)
        # feasibility: other GPU, the incoming expert is new to g, the outgoing one new to h
        ok = (hof != g)[None, :] & ~self.holds[g, flat][None, :] & ~self.holds[hof][:, self.phy[g]].T
        if not ok.any():
            return None
        Lg = self.loads[:, g]
        new_g = Lg[:, None, None] - vg[:, :, None] + vall[:, None, :]  # [S, spg, GP]
        new_h = self.loads[:, hof][:, None, :] + vg[:, :, None] - vall[:, None, :]
        # max over the GPUs other than g and h, per scenario
        L2 = self.loads.copy()
        L2[:, g] = -np.inf
        a1 = L2.argmax(axis=1)
        m1 = L2[np.arange(S), a1]
        L2[np.arange(S), a1] = -np.inf
        m2 = L2.max(axis=1)
        mx = np.where(hof[None, :] == a1[:, None], m2[:, None], m1[:, None])  # [S, GP]
        peak = np.maximum(np.maximum(new_g, new_h), mx[:, None, :])  # [S, spg, GP]
        F = _agg(peak, self.robust)
        Q0 = _q(self.loads).sum()
        dQ = (_q(new_g) + _q(new_h) - _q(Lg)[:, None, None]
              - _q(self.loads[:, hof])[:, None, :]).sum(axis=0)
        Q = Q0 + dQ
        F = np.where(ok, F, np.inf)
        fmin = F.min()
        if not np.isfinite(fmin):
            return None
        tie = F <= fmin + 1e-12
        Qm = np.where(tie, Q, np.inf)
        flat_idx = int(np.argmin(Qm))
        i, jj = divmod(flat_idx, G * spg)
        h, j = divmod(jj, spg)
        return float(F[i, jj]), float(Q[i, jj]), i, h, j

    def apply_swap(self, g: int, i: int, h: int, j: int) -> None:
        a = int(self.phy[g, i])
        b = int(self.phy[h, j])
        per_a = self.w[:, a] / self.cnt[a]
        per_b = self.w[:, b] / self.cnt[b]
        self.phy[g, i] = b
        self.phy[h, j] = a
        self.holds[g, a] = False
        self.holds[g, b] = True
        self.holds[h, b] = False
        self.holds[h, a] = True
        self.loads[:, g] += per_b - per_a
        self.loads[:, h] += per_a - per_b

    def best_replace(self, g: int) -> tuple[float, float, int, int, int] | None:
        """Best change of replica counts touching the peak GPU ``g``.

        Two kinds: (1) slot ``i`` of ``g`` (expert ``x``, ``cnt[x] >= 2``) takes a new replica
        of an expert ``b`` not on ``g``; (2) an expert ``b`` on ``g`` gains a replica in slot
        ``j`` of another GPU ``h`` whose expert has ``cnt >= 2``. Returns ``(F, Q, h, j, b)``:
        slot ``j`` of GPU ``h`` now holds ``b``.
        """
        G, spg = self.phy.shape
        E = self.w.shape[1]
        cnt = self.cnt
        # (1) slot i of g -> any expert b
        hs1 = np.full(spg * E, g)
        js1 = np.repeat(np.arange(spg), E)
        bs1 = np.tile(np.arange(E), spg)
        # (2) expert b on g -> slot (h, j) elsewhere
        b_on_g = self.phy[g]
        hof = np.repeat(np.arange(G), spg)
        jof = np.tile(np.arange(spg), G)
        hs2 = np.tile(hof, spg)
        js2 = np.tile(jof, spg)
        bs2 = np.repeat(b_on_g, G * spg)
        hs = np.concatenate([hs1, hs2])
        js = np.concatenate([js1, js2])
        bs = np.concatenate([bs1, bs2])
        xs = self.phy[hs, js]
        ok = (cnt[xs] >= 2) & ~self.holds[hs, bs] & (cnt[bs] < self.max_count)
        hs, js, bs, xs = hs[ok], js[ok], bs[ok], xs[ok]
        if hs.size == 0:
            return None
        F, Q = self.eval_replace(hs, xs, bs)
        k = int(np.lexsort((Q, F))[0])
        return float(F[k]), float(Q[k]), int(hs[k]), int(js[k]), int(bs[k])

    def eval_replace(self, hs: np.ndarray, xs: np.ndarray, bs: np.ndarray,
                     chunk_floats: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
        """``(F [n], Q [n])`` after each move "GPU ``hs[k]`` swaps its replica of ``xs[k]`` for
        a new replica of ``bs[k]``" (counts change: ``x`` loses one, ``b`` gains one)."""
        S, G = self.loads.shape
        w = self.w
        c = self.cnt.astype(np.float64)
        hf = self.holds.astype(np.float64)  # [G, E]
        lose = 1.0 / np.maximum(c - 1, 1) - 1.0 / c
        gain = 1.0 / (c + 1) - 1.0 / c
        n = hs.size
        Fo = np.empty(n)
        Qo = np.empty(n)
        step = max(1, chunk_floats // (S * G))
        for a in range(0, n, step):
            h, x, b = hs[a:a + step], xs[a:a + step], bs[a:a + step]
            m = h.size
            new = np.broadcast_to(self.loads, (m, S, G)).copy()
            new += (w[:, x] * lose[x]).T[:, :, None] * hf[:, x].T[:, None, :]
            new += (w[:, b] * gain[b]).T[:, :, None] * hf[:, b].T[:, None, :]
            rows = np.arange(m)
            new[rows, :, h] += (w[:, b] / (c[b] + 1) - w[:, x] / np.maximum(c[x] - 1, 1)).T
            Fo[a:a + m] = _agg(new.max(axis=2), self.robust, axis=1)
            Qo[a:a + m] = _q(new).sum(axis=(1, 2))
        return Fo, Qo

    def apply_replace(self, h: int, j: int, b: int) -> None:
        x = int(self.phy[h, j])
        self.phy[h, j] = b
        self.holds[h, x] = False
        self.holds[h, b] = True
        self.cnt[x] -= 1
        self.cnt[b] += 1
        self.recompute()


def _better(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Lexicographic ``(F, Q)`` improvement with a small tolerance."""
    return a[0] < b[0] - 1e-12 or (a[0] <= b[0] + 1e-12 and a[1] < b[1] - 1e-9 * max(1.0, b[1]))


def descend(st: LayerState, max_moves: int, *, replace: bool = True,
            deadline: float | None = None) -> int:
    """Best-improvement descent from the peak GPUs: swaps first, count changes when swaps
    stall. Returns the number of moves made (at most ``max_moves``)."""
    import time

    moves = 0
    while moves < max_moves:
        if deadline is not None and time.time() > deadline:
            break
        cur = st.key()
        done = False
        crit = st._critical_gpus()
        for g in crit:
            res = st.best_swap(g)
            if res is not None and _better(res[:2], cur):
                st.apply_swap(g, res[2], res[3], res[4])
                done = True
                break
        if not done and replace:
            for g in crit:
                rr = st.best_replace(g)
                if rr is not None and _better(rr[:2], cur):
                    st.apply_replace(rr[2], rr[3], rr[4])
                    done = True
                    break
        if not done:
            break
        moves += 1
        if moves % 64 == 0:
            st.recompute()
    st.recompute()
    return moves


def perturb(st: LayerState, rng: np.random.Generator, strength: int) -> None:
    """``strength`` random feasible changes around the peak GPUs: mostly swaps between a peak
    GPU and a random GPU, sometimes a replica moved from one expert to another (counts change)."""
    G, spg = st.phy.shape
    E = st.w.shape[1]
    for _ in range(strength):
        crit = st._critical_gpus()
        g = crit[int(rng.integers(len(crit)))] if rng.random() < 0.5 else int(rng.integers(G))
        if rng.random() < 0.3:
            # a slot of g changes expert: its expert must have another replica
            for _try in range(20):
                i = int(rng.integers(spg))
                x = int(st.phy[g, i])
                b = int(rng.integers(E))
                if st.cnt[x] >= 2 and not st.holds[g, b] and st.cnt[b] < st.max_count:
                    st.apply_replace(g, i, b)
                    break
            continue
        for _try in range(20):
            h = int(rng.integers(G))
            i = int(rng.integers(spg))
            j = int(rng.integers(spg))
            a, b = int(st.phy[g, i]), int(st.phy[h, j])
            if h != g and not st.holds[g, b] and not st.holds[h, a]:
                st.apply_swap(g, i, h, j)
                break
    st.recompute()


def improve(st: LayerState, *, rounds: int, max_moves: int, seed: int, replace: bool = True,
            deadline: float | None = None) -> LayerState:
    """Iterated local search: descend, then ``rounds`` times perturb the best and descend again,
    keeping the best ``(F, Q)``. Deterministic for a given ``seed`` (unless ``deadline`` hits)."""
    import time

    rng = np.random.default_rng(seed)
    descend(st, max_moves, replace=replace, deadline=deadline)
    best = st.copy()
    for r in range(rounds):
        if deadline is not None and time.time() > deadline:
            break
        cand = best.copy()
        perturb(cand, rng, 2 + r % 4)
        descend(cand, max_moves, replace=replace, deadline=deadline)
        if _better(cand.key(), best.key()):
            best = cand
    return best


def pair_value(w: np.ndarray, cnt: np.ndarray, robust: str = "max") -> float:
    """With two slots per GPU: ``agg_s max_i (v_(i) + v_(P+1-i))`` over the sorted replica loads
    ``v`` of scenario ``s``: the best pairing of each scenario on its own, hence a lower bound of
    every placement with these replica counts (and the value when one pairing suits all)."""
    v = np.sort(np.repeat(w / cnt[None, :], cnt, axis=1), axis=1)
    per = (v + v[:, ::-1]).max(axis=1)
    return float(_agg(per, robust))


def pair_counts(w: np.ndarray, cnt: np.ndarray, max_count: int, robust: str = "max",
                max_steps: int = 200) -> np.ndarray:
    """Replica counts for two slots per GPU: move one replica at a time from an expert with
    several to the expert whose replica sets the worst pair, while :func:`pair_value` drops."""
    cnt = cnt.copy()
    _S, _E = w.shape
    cur = pair_value(w, cnt, robust)
    for _ in range(max_steps):
        per = w / cnt[None, :]
        # experts of the heaviest replicas in the worst scenario: the ones worth a replica
        s = int(np.argmax(per.max(axis=1)))
        takers = [int(e) for e in np.argsort(-per[s], kind="stable")[:8] if cnt[e] < max_count]
        givers = [int(e) for e in np.flatnonzero(cnt >= 2)]
        best = (cur, -1, -1)
        for y in takers:
            for x in givers:
                if x == y:
                    continue
                cnt[x] -= 1
                cnt[y] += 1
                val = pair_value(w, cnt, robust)
                cnt[x] += 1
                cnt[y] -= 1
                if val < best[0] - 1e-12:
                    best = (val, x, y)
        if best[1] < 0:
            break
        cur, x, y = best
        cnt[x] -= 1
        cnt[y] += 1
    return cnt


def multiset_count(num_experts: int, num_gpus: int, spg: int) -> int:
    """Placements of one layer up to the order of GPUs that :func:`enumerate_placements` lists:
    multisets of ``G`` GPU configurations (sets of ``spg`` distinct experts),
    ``C(C(E, spg) + G - 1, G)``."""
    import math

    return math.comb(math.comb(num_experts, spg) + num_gpus - 1, num_gpus)


@dataclass(frozen=True)
class _Listing:
    """Every placement of a tiny layer (:func:`_multisets`): ``configs [C, spg]`` the GPU
    configurations, ``member [C, E]`` their experts, ``ms [N, G]`` every placement as its GPUs'
    configurations (lexicographic order), ``kid [N]`` its replica counts' row of
    ``counts [K, E]``."""

    configs: np.ndarray
    member: np.ndarray
    ms: np.ndarray
    kid: np.ndarray
    counts: np.ndarray


@lru_cache(maxsize=8)
def _multisets(num_experts: int, num_gpus: int, spg: int, max_count: int) -> _Listing:
    """Every placement (multiset of GPU configurations) in which every expert has 1 to
    ``max_count`` replicas."""
    import itertools

    configs = np.array(list(itertools.combinations(range(num_experts), spg)), dtype=np.int64)
    ms = np.array(list(itertools.combinations_with_replacement(range(configs.shape[0]),
                                                               num_gpus)), dtype=np.int64)
    member = np.zeros((configs.shape[0], num_experts), dtype=np.int64)
    member[np.repeat(np.arange(configs.shape[0]), spg), configs.reshape(-1)] = 1
    cnt = member[ms].sum(axis=1)  # [N, E]
    ok = (cnt.min(axis=1) >= 1) & (cnt.max(axis=1) <= max_count)
    counts, kid = np.unique(cnt[ok], axis=0, return_inverse=True)
    out = _Listing(configs, member.astype(np.float64), ms[ok], kid.reshape(-1), counts)
    for x in (out.configs, out.member, out.ms, out.kid, out.counts):
        x.setflags(write=False)
    return out


ENUM_CHUNK = 65536
"""Placements scored at once by :func:`enumerate_placements` (bounds its memory)."""


def enumerate_placements(w: np.ndarray, num_gpus: int, spg: int, *, robust: str = "max",
                         max_count: int | None = None) -> np.ndarray | None:
    """The exact balance optimum of a tiny layer by listing every placement: ``phy [G, spg]``
    minimising ``(F, Q)`` lexicographically (the local search's key, module docstring; ties:
    the first in lexicographic order of GPU configurations), or None when no placement gives
    every expert a replica within ``max_count``.

    ``w [S, E]`` scaled loads. Lists :func:`multiset_count` placements, numpy-vectorised in
    chunks of :data:`ENUM_CHUNK` (every configuration's load is computed once per distinct
    replica counts): the cheaper exact route where CP-SAT's set-up and proof would cost more
    than the listing.
    """
    E = w.shape[1]
    G = num_gpus
    lst = _multisets(E, G, spg, G if max_count is None else max_count)
    N = lst.ms.shape[0]
    if N == 0:
        return None
    # [S, K, C]: a configuration's load under every distinct replica counts
    cfg = (np.asarray(w, dtype=np.float64)[:, None, :] / lst.counts[None]) @ lst.member.T
    best: tuple[float, float, int] | None = None
    for a in range(0, N, ENUM_CHUNK):  # over chunks of placements, not tokens
        ms, kid = lst.ms[a:a + ENUM_CHUNK], lst.kid[a:a + ENUM_CHUNK]
        loads = cfg[:, kid[:, None], ms]  # [S, n, G]
        f = _agg(loads.max(axis=2), robust, axis=0)  # [n]
        q = _q(loads).sum(axis=(0, 2))  # [n]
        fmin = float(f.min())
        tie = np.flatnonzero(f <= fmin + _EPS)
        j = int(tie[np.argmin(q[tie])])
        cand = (float(f[j]), float(q[j]), a + j)
        if best is None or cand[0] < best[0] - _EPS or (
                cand[0] <= best[0] + _EPS and cand[1] < best[1] - _EPS):
            best = cand
    assert best is not None
    return np.sort(lst.configs[lst.ms[best[2]]], axis=1)
