"""The optimizer: robust replica counts and placement, layer by layer, judged by one objective.

For every MoE layer (layers are independent and solved in parallel, ``options.jobs``; the plan
does not depend on how many):

1. Scale every scenario's shares so that the mean GPU load is 1 (loads ARE imbalances). With
   token-level traces the search plans on shares shrunk toward the pooled ones by each window's
   token count (:func:`shrunk_shares`: a short window's shares are mostly sampling noise); the
   figures, bound and status reported are those of the plain shares.
2. Balance-only placement (:func:`~placement.solver.layer.balance_layer`): bound, start points
   (robust counts packed by a multi-scenario LPT, and EPLB's global placement), iterated local
   search, and CP-SAT on small layers.
3. Token-level traces on several nodes: traffic-aware candidates
   (:func:`~placement.solver.traffic.traffic_candidates`): experts to nodes by Mt-KaHyPar on
   the planning tokens, replicas on every node for the experts that save the most sends, GPUs
   inside every node packed for balance. Node-limited routing keeps expert groups whole
   (:func:`~placement.solver.traffic.node_limited_candidates`).
4. Every candidate (EPLB's global placement among them), and EPLB's own placement of the
   layer, is scored in-sample
   (:class:`~placement.solver.objective.LayerScorer`) and the best by ``options.objective``
   wins (:func:`~placement.solver.objective.pick`). EPLB's layer is a candidate, so a layer is
   never worse than EPLB's on the objective: when the search does not beat it, the layer IS
   EPLB's ("fell back").
5. The drift rule (objective ``time``, token-level traces, several nodes, no explicit
   tolerance; :func:`_validate`): steps 2-4 also run on a fitting half of the planning tokens
   (:func:`validation_split`), every candidate is judged on drift scenarios of the unfitted
   half (:mod:`placement.solver.drift`: its blocks of whole sequences, their deviations
   amplified to the drift the model expects) against EPLB's placement of the fitting half,
   the best expected time whose worst scenario is within ``DRIFT_MARGIN`` of EPLB's is kept
   (:func:`~placement.solver.drift.robust_choice`), and that kind of plan
   (:func:`candidate_kinds`), re-fitted on all planning tokens, is the layer's.

The search is bounded by work (:class:`~placement.solver.layer.Effort`: rounds, moves,
V-cycles, CP-SAT deterministic limits), so the plan depends on the input and seed only.
``options.time_limit`` is a safety net: a layer still running when it fires returns what it has
(status ``TIME_LIMIT``), and such a plan may differ between machines.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from placement.cluster import Cluster
from placement.errors import InputError
from placement.parallel import Backend, backend_for_jobs, ordered_map
from placement.plan import Plan, static_dispatch
from placement.solver.balance import count_bound, scaled_loads
from placement.solver.drift import (
    DriftModel,
    amplification,
    block_ids,
    drift_scenarios,
    estimate_drift,
    ranked_choices,
)
from placement.solver.layer import (
    BalanceResult,
    Effort,
    LayerSolution,
    LayerTask,
    Validation,
    balance_layer,
    canonical,
    exact_model_applies,
    identical_gpus,
    spread_colocated,
)
from placement.solver.objective import (
    TIME_TIE,
    VALIDATION_MARGIN,
    LayerScore,
    LayerScorer,
    admissible,
    guard,
    pick,
    static_traffic,
    validated,
)
from placement.solver.problem import ProblemData, SolveOptions, resolve_model
from placement.solver.registry import Progress
from placement.solver.traffic import (
    NODE_CAPS,
    TokenData,
    build_token_data,
    node_limited_candidates,
    nodes_per_token,
    traffic_candidates,
)

__all__ = [
    "SHRINK_PER_EXPERT",
    "candidate_kinds",
    "optimize",
    "shrunk_shares",
    "solve_layer",
    "solve_optimizer",
    "split_tokens",
    "validation_split",
]


MAX_NODE_CAP = 0.10
"""The loosest node-load cap of the traffic-aware candidates (a node's pooled load per GPU at
most 1.1 x the mean)."""

SHRINK_PER_EXPERT = 20.0
"""Prior strength of :func:`shrunk_shares`, in routed tokens per expert."""


def shrunk_shares(counts: np.ndarray, per_expert: float) -> np.ndarray:
    """``counts [S, L, E]`` -> ``[S, L, E]`` shares, each scenario shrunk toward the pooled one.

    A scenario with ``n`` routed tokens in a layer keeps weight ``n / (n + per_expert * E)`` on
    its own shares and puts the rest on the shares pooled over all scenarios: a short window's
    shares are mostly sampling noise (a few tokens per expert), and planning for the worst
    window's noise does not balance the next tokens. Windows with many tokens per expert
    (aggregated counts) are left nearly as they are. Empty scenarios stay empty.
    """
    c = np.asarray(counts, dtype=np.float64)
    E = c.shape[-1]
    n = c.sum(axis=-1, keepdims=True)  # [S, L, 1]
    pooled = c.sum(axis=0, keepdims=True)
    ptot = pooled.sum(axis=-1, keepdims=True)
    pooled = np.divide(pooled, ptot, out=np.zeros_like(pooled), where=ptot > 0)
    prior = per_expert * E
    out = (c + prior * pooled) / np.maximum(n + prior, 1e-300)
    return np.where(n > 0, out, 0.0)


def _objective_value(score: LayerScore, objective: str) -> float:
    """The figure ``objective`` ranks by first: seconds, robust imbalance, or sends."""
    if objective == "time":
        return score.time
    return score.robust_even if objective == "balance" else score.sends


def _groups_whole(phy: np.ndarray, cluster: Cluster, num_experts: int, num_groups: int) -> bool:
    """Whether every expert group's replicas share one node (node-limited routing holds)."""
    row = np.asarray(phy).reshape(-1)
    E = num_experts
    node = np.arange(row.size) // (cluster.slots_per_gpu * cluster.gpus_per_node)
    grp = row // max(E // num_groups, 1)
    lo = np.full(num_groups, cluster.num_nodes)
    hi = np.full(num_groups, -1)
    np.minimum.at(lo, grp, node)
    np.maximum.at(hi, grp, node)
    return bool((lo == hi).all())


def _colocated(phy: np.ndarray) -> bool:
    srt = np.sort(phy, axis=1)
    return bool((srt[:, 1:] == srt[:, :-1]).any())


def _eplb_refs(task: LayerTask, eplb: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """EPLB's placement of the layer (and, when it co-locates replicas, the same spread over
    GPUs): the candidates no layer may be worse than."""
    c = task.cluster
    G, spg = c.num_gpus, c.slots_per_gpu
    E = task.shares.shape[1]
    refs: list[tuple[str, np.ndarray]] = []
    if eplb is not None and (not task.node_limited
                             or _groups_whole(eplb, c, E, task.num_groups)):
        row = np.asarray(eplb).reshape(G, spg)
        spread = spread_colocated(row.reshape(-1), G, spg)
        if task.node_limited and spread.size and not _groups_whole(spread, c, E,
                                                                   task.num_groups):
            spread = spread[:0]
        if spread.size and not np.array_equal(np.sort(spread, axis=1), np.sort(row, axis=1)):
            refs.append(("eplb, co-located replicas spread", spread))
        refs.append(("eplb", row))
    return refs


def _search(task: LayerTask, wp: np.ndarray, td_fit: TokenData | None, scorer: LayerScorer,
            refs: list[tuple[str, np.ndarray]], ref_scores: list[LayerScore], traffic: bool
            ) -> tuple[list[tuple[str, np.ndarray]], BalanceResult]:
    """The balance-only plan (first), the traffic-aware plans fitted to ``td_fit`` (when
    ``traffic``) and EPLB's global placement (``task.warm``); not node-limited routing."""
    c = task.cluster
    G, spg = c.num_gpus, c.slots_per_gpu
    bal = balance_layer(task, wp)
    cands: list[tuple[str, np.ndarray]] = [("balance", bal.phy)]
    if traffic and td_fit is not None:
        # node caps up to what the objective lets a plan give up of balance
        bal_score = scorer.score(bal.phy)
        cap_r, cap_s = guard(task.objective, task.balance_tolerance, bal_score,
                             ref_scores[-1] if ref_scores else None)
        room = min(cap_r / max(bal_score.robust_even, 1e-12),
                   cap_s / max(bal_score.expected, 1e-12)) - 1.0
        room = max(0.0, room)
        cands += traffic_candidates(task, wp, td_fit, max_cap=min(room, MAX_NODE_CAP))
    if task.warm is not None:  # EPLB's global policy, co-located replicas spread
        glob = spread_colocated(np.asarray(task.warm), G, spg)
        if glob.size:
            cands.append(("eplb-global", glob))
    return cands, bal


def candidate_kinds(labels: list[str]) -> list[str]:
    """What every candidate is, independent of the tokens it was fitted to: ``"eplb"`` (EPLB's
    layer), ``"eplb-spread"`` (its co-located replicas spread), ``"balance"``,
    ``"eplb-global"``, or a traffic-aware plan's homes and replication stage (``"partition,
    cap 0.03 #1"``: the label without its count of everywhere experts, and the how-many-th
    plan of those homes; the loosest node cap, which follows the objective's room, is
    ``"cap room"``; group packings are numbered in order)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    groups: dict[str, int] = {}
    for lab in labels:
        if lab == "eplb":
            out.append("eplb")
        elif lab.startswith("eplb,"):
            out.append("eplb-spread")
        elif lab in ("balance", "eplb-global"):
            out.append(lab)
        else:
            prefix = lab.rsplit(", ", 1)[0]
            j = seen.get(prefix, 0)
            seen[prefix] = j + 1
            if prefix.startswith("partition, cap "):
                try:
                    cap = float(prefix.removeprefix("partition, cap "))
                except ValueError:
                    cap = -1.0
                name = prefix if cap in NODE_CAPS else "partition, cap room"
            else:
                name = f"groups {groups.setdefault(prefix, len(groups))}"
            out.append(f"{name} #{j}")
    return out


_PLAIN = ("eplb", "eplb-spread", "balance", "eplb-global")


SELECTION_RULE = "guard"
"""Which rule judges the candidates on the planning tokens they were not fitted to (objective
``time``, token-level traces, several nodes, no explicit tolerance): ``"drift"`` (the drift rule,
:func:`_validate`) or ``"guard"`` (the balance-first validation guard, :func:`_guard`)."""


def _kept_kind(label: str) -> str:
    """``"eplb"``, ``"eplb-spread"``, ``"balance"``, ``"eplb-global"`` or ``"traffic-aware"``
    for a kept candidate's label."""
    if label.startswith("eplb,"):
        return "eplb-spread"
    return label if label in _PLAIN else "traffic-aware"


def _block_figures(phy: np.ndarray, cluster: Cluster, num_experts: int,
                   tokens: tuple[np.ndarray, np.ndarray], blk: np.ndarray
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``(loads [B, G], traffic {name: [B, G]}, sends [B])`` of ``phy`` under the static rule on
    every block ``blk [T]`` of ``tokens`` (``ids [T, k]``, ``src [T]``)."""
    disp = static_dispatch(np.asarray(phy).reshape(1, -1), cluster, num_experts)[0]  # [G, E]
    B = int(blk.max()) + 1 if blk.size else 0
    loads, sends = [], []
    traffic: dict[str, list[np.ndarray]] = {}
    for b in range(B):  # over blocks (at most MAX_BLOCKS), not tokens
        m = blk == b
        lo, tr, sn, _ = static_traffic(phy, cluster, num_experts, tokens[0][m], tokens[1][m],
                                       dispatch=disp)
        loads.append(lo)
        sends.append(sn)
        for k, v in tr.items():
            traffic.setdefault(k, []).append(v)
    return (np.stack(loads), {k: np.stack(v) for k, v in traffic.items()},
            np.asarray(sends, dtype=np.float64))


GUARD_SUBBLOCKS = 8
"""The unfitted tokens of the validation guard are judged in this many contiguous sub-blocks
(:func:`_block_static`)."""

GUARD_MIN_BLOCK_TOKENS = 256
"""A sub-block of :func:`_block_static` holds at least this many tokens (fewer: the max over
GPUs of a block is mostly sampling noise)."""


def _block_static(phy: np.ndarray, cluster: Cluster, num_experts: int,
                  tokens: tuple[np.ndarray, np.ndarray], *, per_node: bool = False) -> float:
    """Mean over :data:`GUARD_SUBBLOCKS` contiguous blocks of ``tokens`` (``ids [T, k]``,
    ``src [T]``) of the static-rule imbalance of ``phy [G, spg]`` (``per_node``: of the nodes'
    loads).

    A block holds a few dozen sequences, so its mix of topics is off the whole's by about as
    much as the next windows' is (drift): a plan that puts the experts of one topic on one
    node or GPU, balanced only for the planning mix, shows it here.
    """
    G, spg = cluster.num_gpus, cluster.slots_per_gpu
    ids = np.asarray(tokens[0], dtype=np.int64)
    src = np.asarray(tokens[1], dtype=np.int64)
    T = ids.shape[0]
    B = max(1, min(GUARD_SUBBLOCKS, T // GUARD_MIN_BLOCK_TOKENS))
    disp = static_dispatch(np.asarray(phy).reshape(1, -1), cluster, num_experts)[0]  # [G, E]
    dest = disp[src[:, None], np.maximum(ids, 0)] // spg  # [T, k]
    blk = np.broadcast_to(((np.arange(T) * B) // max(T, 1))[:, None], ids.shape)
    valid = ids >= 0
    loads = np.bincount((blk * G + dest)[valid], minlength=B * G).reshape(B, G)
    if per_node:
        loads = loads.reshape(B, cluster.num_nodes, cluster.gpus_per_node).sum(axis=2)
    mean = loads.mean(axis=1)
    ok = mean > 0
    if not ok.any():
        return 1.0
    return float((loads.max(axis=1)[ok] / mean[ok]).mean())


def _guard(task: LayerTask, traffic: bool) -> tuple[str, dict[str, float]] | None:
    """The validation guard: the whole search on the fitting half of the planning tokens, every
    candidate scored on the unfitted half; a candidate other than EPLB's layer is trusted only
    when it passes :func:`~placement.solver.objective.validated` against EPLB's placement of
    the same half. Returns the kind (:func:`candidate_kinds`) the objective picks among those
    and EPLB's on the unfitted half, and figures for the plan's settings; None without a
    split or without EPLB's layer."""
    v = task.validation
    if v is None or v.eplb is None:
        return None
    c = task.cluster
    G, gpn = c.num_gpus, c.gpus_per_node
    E = task.shares.shape[1]
    sub = replace(task, shares=v.shares, plan_shares=v.plan_shares, pooled=v.pooled,
                  tokens=v.tokens, eplb=v.eplb, warm=v.warm, validation=None)
    td_f = build_token_data(v.tokens, E, G, gpn, max_tokens=task.effort.max_tokens,
                            seed=task.seed)
    if td_f.num_tokens == 0 or v.held[0].shape[0] == 0:
        return None
    w_f = scaled_loads(v.shares, G)
    scorer = LayerScorer(w_f, c, task.model, task.robust, tokens=v.held, rate_tokens=v.held,
                         pooled=v.pooled, overlap=task.overlap)
    refs = _eplb_refs(sub, v.eplb)
    ref_scores = [scorer.score(phy) for _, phy in refs]
    cands, _ = _search(sub, scaled_loads(v.plan_shares, G), td_f, scorer, refs, ref_scores,
                       traffic)
    # static imbalance: the mean over sub-blocks of the unfitted tokens (a block's mix of
    # topics differs from the whole's, as the next tokens' does: see _block_static)
    scores = [replace(sc, static=_block_static(phy, c, E, v.held))
              for sc, (_, phy) in zip([scorer.score(phy) for _, phy in cands] + ref_scores,
                                      cands + refs, strict=True)]
    ref_scores = scores[len(cands):]
    labels = [lab for lab, _ in cands] + [lab for lab, _ in refs]
    kinds = candidate_kinds(labels)
    ref = ref_scores[-1]
    # node loads too: a node that homes one topic's experts drifts with that topic
    node = [_block_static(phy, c, E, v.held, per_node=True) for _, phy in cands + refs]
    ok = [i for i, k in enumerate(kinds) if k == "eplb" or (
        validated(scores[i], ref) and node[i] <= (1.0 + VALIDATION_MARGIN) * node[-1] + 1e-9)]
    # the objective's pick among the trusted candidates, EPLB's layer the reference
    best = min(scores[i].time for i in ok)
    limit = min(best * (1.0 + TIME_TIE), ref.time)
    near = [i for i in ok if scores[i].time <= limit]
    # ties (the same placement found twice) go to a traffic-aware kind: its re-fit on all
    # planning tokens looks for that structure again, a balance-only one does not
    win = min(near, key=lambda i: (scores[i].sends, scores[i].time, kinds[i] in _PLAIN, i))
    trf = [i for i, k in enumerate(kinds) if k not in _PLAIN]
    info = {"guard_fell_back": float(kinds[win] in _PLAIN and bool(trf))}
    if trf:
        t = min(trf, key=lambda i: (scores[i].time, i))
        info["validation_time_ratio"] = scores[t].time / max(ref.time, 1e-30)
        info["validation_imbalance_ratio"] = scores[t].static / max(ref.static, 1e-30)
    return kinds[win], info


def _validate(task: LayerTask, traffic: bool) -> dict[str, dict[str, float]] | None:
    """The drift rule: the whole search on the fitting half of the planning tokens, every
    candidate judged on drift scenarios of the unfitted half
    (:func:`~placement.solver.drift.drift_scenarios`: its blocks of whole sequences, their
    deviations amplified to the layer's drift) by
    :func:`~placement.solver.drift.robust_choice` against EPLB's placement of the same half.
    Returns the kinds (:func:`candidate_kinds`) it admits, in its order of preference
    (:func:`~placement.solver.drift.ranked_choices`; ``"eplb"`` last), each with its figures
    for the plan's settings; None without a split or without EPLB's layer."""
    v = task.validation
    if v is None or v.eplb is None:
        return None
    c = task.cluster
    G, gpn = c.num_gpus, c.gpus_per_node
    E = task.shares.shape[1]
    sub = replace(task, shares=v.shares, plan_shares=v.plan_shares, pooled=v.pooled,
                  tokens=v.tokens, eplb=v.eplb, warm=v.warm, validation=None)
    td_f = build_token_data(v.tokens, E, G, gpn, max_tokens=task.effort.max_tokens,
                            seed=task.seed)
    T = v.held[0].shape[0]
    if td_f.num_tokens == 0 or T == 0:
        return None
    w_f = scaled_loads(v.shares, G)
    scorer = LayerScorer(w_f, c, task.model, task.robust, tokens=v.held, rate_tokens=v.held,
                         pooled=v.pooled, overlap=task.overlap)
    refs = _eplb_refs(sub, v.eplb)
    ref_scores = [scorer.score(phy) for _, phy in refs]
    cands, _ = _search(sub, scaled_loads(v.plan_shares, G), td_f, scorer, refs, ref_scores,
                       traffic)
    # 1. the drift scenarios: blocks of the unfitted tokens, amplified to the layer's drift
    ids, src = np.asarray(v.held[0], dtype=np.int64), np.asarray(v.held[1], dtype=np.int64)
    blk = block_ids(T)
    B = int(blk.max()) + 1
    valid = ids >= 0
    bc = np.bincount((np.broadcast_to(blk[:, None], ids.shape) * E + np.maximum(ids, 0))[valid],
                     minlength=B * E).reshape(B, E)
    amp = amplification(v.drift, bc, bc.sum(axis=0)) if B > 1 else 1.0
    sizes = np.bincount(blk, minlength=B)
    # 2. every candidate (and EPLB's layer, last) on every scenario
    allc = cands + refs
    figs = []
    for _, phy in allc:
        lo, tr, sn = _block_figures(phy, c, E, (ids, src), blk)
        figs.append(drift_scenarios(lo, tr, sn, sizes, amp, c, task.model, task.overlap))
    kinds = candidate_kinds([lab for lab, _ in allc])
    eplb_i = len(allc) - 1
    ref_is = [i for i, k in enumerate(kinds) if k in ("eplb", "eplb-global")]
    # 3. the selection rule
    order = ranked_choices(figs, [k in _PLAIN for k in kinds], eplb_i, ref_is, TIME_TIE)
    e = figs[eplb_i]
    any_trf = any(k not in _PLAIN for k in kinds)
    trf = [i for i, k in enumerate(kinds) if k not in _PLAIN]
    common: dict[str, float] = {"drift_amplification": amp, "drift_scenarios": float(B)}
    if trf:
        t = min(trf, key=lambda i: (figs[i].time.mean(), i))
        common["validation_time_ratio"] = float(figs[t].time.mean() / max(e.time.mean(), 1e-30))
        common["validation_imbalance_ratio"] = float(figs[t].imbalance.mean()
                                                     / max(e.imbalance.mean(), 1e-30))
    # 4. every admitted kind (its best-ranked candidate) with its figures, in the rule's order
    ranked: dict[str, dict[str, float]] = {}
    for i in order:
        if kinds[i] in ranked:
            continue
        ranked[kinds[i]] = {
            **common,
            "guard_fell_back": float(kinds[i] in _PLAIN and any_trf),
            "drift_expected_time_ratio": float(figs[i].time.mean() / max(e.time.mean(), 1e-30)),
            "drift_worst_time_ratio": float(figs[i].time.max()
                                            / max(float(e.time.max()), 1e-30)),
            "drift_expected_imbalance_ratio": float(figs[i].imbalance.mean()
                                                    / max(e.imbalance.mean(), 1e-30)),
            "drift_sends_ratio": float(figs[i].sends / max(e.sends, 1e-30)),
        }
    return ranked


def solve_layer(task: LayerTask) -> LayerSolution:
    """Place one layer (steps 1-5 of the module docstring)."""
    c = task.cluster
    G, spg, gpn = c.num_gpus, c.slots_per_gpu, c.gpus_per_node
    P = G * spg
    E = task.shares.shape[1]
    w = scaled_loads(task.shares, G)

    # more slots per GPU than experts: identical GPUs are optimal (no choice worth searching)
    if spg >= E:
        phy = identical_gpus(w, G, spg)
        return LayerSolution(task.index, phy.reshape(-1), 1.0, "OPTIMAL", 1.0, "counts",
                             colocated=spg > E, choice="identical GPUs")

    # 1. the loads the search plans on
    wp = w if task.plan_shares is None else scaled_loads(task.plan_shares, G)
    td = None
    if task.tokens is not None:
        td = build_token_data(task.tokens, E, G, gpn, max_tokens=task.effort.max_tokens,
                              seed=task.seed)
        if td.num_tokens == 0:
            td = None
    max_count = gpn if task.node_limited else G
    traffic = td is not None and c.num_nodes > 1 and not task.node_limited \
        and task.objective != "balance"
    # 2. the drift rule (objective time): which kind of candidate the drift scenarios keep
    ranked: dict[str, dict[str, float]] | None = None
    guard_kind: str | None = None
    vinfo: dict[str, float] = {}
    if traffic and task.objective == "time" and task.balance_tolerance is None:
        if SELECTION_RULE == "guard":
            got = _guard(task, traffic)
            if got is not None:
                guard_kind, vinfo = got
                ranked = {guard_kind: vinfo}
        else:
            ranked = _validate(task, traffic)
    # the traffic-aware candidates are fitted to all planning tokens when the guard judged
    # them, else to some and scored on the others
    td_fit = td
    scored_tokens = None if td is None else (td.ids, td.src)
    if traffic and td is not None and ranked is None:
        fit, scored_tokens = split_tokens(td.ids, td.src)
        if fit is not None:
            td_fit = build_token_data((fit,), E, G, gpn, max_tokens=task.effort.max_tokens,
                                      seed=task.seed)
    scorer = LayerScorer(
        w, c, task.model, task.robust, tokens=scored_tokens,
        rate_tokens=None if td is None else (td.ids, td.src),
        pooled=task.pooled, overlap=task.overlap,
    )

    # 3. EPLB's layer: a candidate, and what no layer may be worse than
    refs = _eplb_refs(task, task.eplb)
    ref_scores = [scorer.score(phy) for _, phy in refs]

    # 4. the balance-only plan first (the reference of the tolerances), then traffic-aware ones
    cands: list[tuple[str, np.ndarray]] = []
    if task.node_limited:
        cands, bound = node_limited_candidates(task, wp, td, bound_loads=w)
        bound = max(bound, count_bound(w, P, max_count, task.robust))
        bound_source = "groups" if bound > 1.0 else "counts"
        if task.warm is not None:  # EPLB's global policy, co-located replicas spread
            glob = spread_colocated(np.asarray(task.warm), G, spg)
            if glob.size and _groups_whole(glob, c, E, task.num_groups):
                cands.append(("eplb-global", glob))
    else:
        want_traffic = traffic and (ranked is None or next(iter(ranked)) not in _PLAIN)
        cands, bal = _search(task, wp, td_fit, scorer, refs, ref_scores, want_traffic)
        if task.plan_shares is None:
            bound, bound_source = bal.bound, bal.bound_source
        else:
            bound, bound_source = count_bound(w, P, max_count, task.robust), "counts"
            if exact_model_applies(task, E):
                plain = balance_layer(task, w)  # small layer: its exact bound holds for w
                if plain.bound > bound:
                    bound, bound_source = plain.bound, plain.bound_source

    # 5. score and pick (with the guard: the trusted kind, re-fitted, or EPLB's layer)
    scores = [scorer.score(phy) for _, phy in cands] + ref_scores
    eplb_rows = set(range(len(cands), len(cands) + len(refs)))
    eplb_index = len(cands) + len(refs) - 1 if refs else None
    cands += refs
    kinds = candidate_kinds([lab for lab, _ in cands])
    if guard_kind is not None and eplb_index is not None:
        # the validation guard: the trusted kind, re-fitted, or EPLB's layer (in-sample pick)
        allowed = [i for i, k in enumerate(kinds) if k == guard_kind and i != eplb_index]
        if not allowed and guard_kind not in _PLAIN:
            # the re-fit has other node caps (the objective's room moved): the same family's
            # plans of the same replication stage
            fam, stage = guard_kind.split(" ", 1)[0], guard_kind.rsplit(" #", 1)[-1]
            allowed = [i for i, k in enumerate(kinds) if k not in _PLAIN
                       and k.split(" ", 1)[0] == fam and k.rsplit(" #", 1)[-1] == stage]
        allowed.append(eplb_index)
        sub = [scores[i] for i in allowed]
        j = pick(sub, task.objective, balance=0, eplb=len(sub) - 1, tokens=True)
        best = allowed[j]
    elif ranked is not None and eplb_index is not None:
        # the first kind the drift rule admitted that the re-fit on all planning tokens has
        # exactly (it was judged held out; another kind's plan was not: a group packing or a
        # node cap of the re-fit may differ from the half's), down to EPLB's layer
        best = eplb_index
        for kd in ranked:
            allowed = [i for i, k in enumerate(kinds) if k == kd and i != eplb_index]
            if kd == "eplb" or allowed:
                if allowed:
                    best = min(allowed, key=lambda i: (scores[i].time, scores[i].sends, i))
                vinfo = ranked[kd]
                break
    else:
        best = pick(scores, task.objective, balance=0, eplb=eplb_index,
                    tolerance=task.balance_tolerance, tokens=td is not None)
    label, phy = cands[best]
    s = scores[best]
    fell_back = best in eplb_rows
    colocated = _colocated(phy)
    bound = min(bound, s.robust_even)
    if task.timed_out():
        status = "TIME_LIMIT"
    elif (task.objective == "balance" or td is None) and s.robust_even <= bound + 1e-9:
        status = "OPTIMAL"  # proven: no placement balances better
    else:
        status = "FEASIBLE"
    info = {
        "objective_value": _objective_value(s, task.objective),
        "candidates": float(len(cands)),
        "imbalance_static_in_sample": s.static,
        "expected_imbalance": s.expected,
        "balance_only_expected_imbalance": scores[0].expected,
        "predicted_time_in_sample": s.time,
        **vinfo,
    }
    if eplb_index is not None:
        info["eplb_objective_value"] = _objective_value(scores[eplb_index], task.objective)
        info["eplb_admissible"] = float(eplb_index in admissible(
            scores, task.objective, balance=0, eplb=eplb_index,
            tolerance=task.balance_tolerance, tokens=td is not None))
    if td is not None:
        info["sends_per_token_in_sample"] = s.sends
        info["balance_only_sends"] = scores[0].sends
        if task.node_limited:
            assert task.max_nodes_per_token is not None
            reach = nodes_per_token(phy, c, E, td)
            info["tokens_over_node_limit"] = float((reach > task.max_nodes_per_token).mean())
    out = phy if colocated else canonical(phy)
    return LayerSolution(task.index, out.reshape(-1), bound, status, s.robust_even, bound_source,
                         fell_back=fell_back, colocated=colocated, choice=label, info=info)


VALIDATION_BLOCKS = 64
"""The planning tokens of a layer fall in this many contiguous blocks; the traffic-aware
candidates are fitted to the even blocks and their traffic is scored on the odd ones."""

MIN_SPLIT_TOKENS = 256
"""Fewer planning tokens than this: candidates are fitted and scored on all of them."""


def split_tokens(ids: np.ndarray, src: np.ndarray) -> tuple[
        tuple[np.ndarray, np.ndarray] | None, tuple[np.ndarray, np.ndarray]]:
    """``((ids, src) to fit, (ids, src) to score)``: alternating contiguous blocks of the
    planning tokens (:data:`VALIDATION_BLOCKS`; tokens of one sequence sit together, so a block
    holds whole sequences), or ``(None, all)`` for few tokens.

    Fitting the homes of experts to tokens and scoring them on the same tokens rewards noise (a
    partition of one sample's co-activations is optimistic about the next tokens); scoring on
    other tokens makes the comparison with EPLB's and the balance-only plan honest.
    """
    T = ids.shape[0]
    if T < MIN_SPLIT_TOKENS:
        return None, (ids, src)
    block = (np.arange(T) * VALIDATION_BLOCKS) // T
    fit = block % 2 == 0
    return (ids[fit], src[fit]), (ids[~fit], src[~fit])


def validation_split(problem: ProblemData) -> list[np.ndarray] | None:
    """Per scenario, ``[T_s]`` whether each planning token is in the fitting half of the
    drift rule, or None (aggregated counts, or fewer than :data:`MIN_SPLIT_TOKENS`).

    With two or more scenarios (windows) that route tokens, the first half of them fit and the
    later ones are held out: a plan meets the windows after those it was made from, with
    another mix of topics. With one, alternating contiguous blocks of its tokens
    (:data:`VALIDATION_BLOCKS`; a block holds whole sequences).
    """
    if problem.token_traces is None:
        return None
    sizes = [int(t.topk_ids.shape[0]) for t in problem.token_traces]
    if sum(sizes) < MIN_SPLIT_TOKENS:
        return None
    used = [i for i, n in enumerate(sizes) if n > 0]
    if len(used) >= 2:
        fit = set(used[:(len(used) + 1) // 2])
        return [np.full(n, i in fit) for i, n in enumerate(sizes)]
    out = []
    for n in sizes:
        block = (np.arange(n) * VALIDATION_BLOCKS) // max(n, 1)
        out.append(block % 2 == 0)
    return out


def _validations(problem: ProblemData, options: SolveOptions,
                 masks: list[np.ndarray], drift: DriftModel) -> list[Validation] | None:
    """Every layer's :class:`~placement.solver.layer.Validation` for the split ``masks``
    (:func:`validation_split`): the fitting half's shares, tokens and EPLB placements, and the
    unfitted tokens; None when EPLB cannot plan the fitting half."""
    from placement.solver.baselines import eplb_phy2log

    assert problem.token_traces is not None
    L, E = problem.num_layers, problem.num_experts
    srcs = problem.token_sources()
    fit_counts, fit_tok, held_tok = [], [], []
    for t, src, m in zip(problem.token_traces, srcs, masks, strict=True):
        ids = np.asarray(t.topk_ids, dtype=np.int64)  # [T, L, k]
        if m.any():
            f = ids[m]
            valid = f >= 0
            lay = np.broadcast_to(np.arange(L)[None, :, None], f.shape)
            cnt = np.bincount((lay * E + np.maximum(f, 0))[valid], minlength=L * E)
            fit_counts.append(cnt.reshape(L, E).astype(np.float64))
            fit_tok.append((f, np.asarray(src)[m]))
        if (~m).any():
            held_tok.append((ids[~m], np.asarray(src)[~m]))
    if not fit_counts or not held_tok:
        return None
    counts = np.stack(fit_counts)  # [S_f, L, E]
    if not (counts.sum(axis=-1) > 0).any():
        return None
    fit_problem = replace(problem, scenario_counts=counts,
                          scenario_names=tuple(f"fit {i}" for i in range(len(fit_counts))),
                          token_traces=None, source_gpus=None)
    try:
        eplb = eplb_phy2log(fit_problem, options, global_policy=False)
    except InputError:
        return None
    try:
        warm: np.ndarray | None = eplb_phy2log(fit_problem, options, global_policy=True)
    except InputError:
        warm = None
    shares = fit_problem.scenario_shares()
    plan = shrunk_shares(counts, SHRINK_PER_EXPERT)
    held_ids = np.concatenate([h[0] for h in held_tok])
    held_src = np.concatenate([h[1] for h in held_tok])
    return [
        Validation(shares=shares[:, i, :], plan_shares=plan[:, i, :],
                   pooled=counts[:, i, :].sum(axis=0),
                   tokens=tuple((f[:, i, :], fs) for f, fs in fit_tok),
                   held=(held_ids[:, i, :], held_src),
                   eplb=eplb[i], warm=None if warm is None else warm[i],
                   drift=float(drift.drift[i]))
        for i in range(L)
    ]


def _token_data(problem: ProblemData, layer: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    assert problem.token_traces is not None
    srcs = problem.token_sources()
    return tuple((np.asarray(t.topk_ids[:, layer, :]), src)
                 for t, src in zip(problem.token_traces, srcs, strict=True))


def _check_node_limits(problem: ProblemData, options: SolveOptions, groups: int) -> None:
    c = problem.cluster
    E = problem.num_experts
    M = options.max_nodes_per_token
    if groups % c.num_nodes != 0 or E % groups != 0:
        raise InputError(
            f"--max-nodes-per-token {M} keeps every expert group on one node, so num_groups "
            f"({groups}) must be a multiple of the {c.num_nodes} nodes and divide the {E} "
            f"experts; set --groups."
        )
    per_node = E // c.num_nodes
    slots = c.gpus_per_node * c.slots_per_gpu
    if per_node > slots:
        raise InputError(
            f"--max-nodes-per-token {M}: a node's {per_node} experts need more than its "
            f"{slots} slots (short by {per_node - slots})."
        )
    if per_node * c.gpus_per_node < slots:
        raise InputError(
            f"--max-nodes-per-token {M}: a node's {per_node} experts, at most one replica "
            f"per GPU, fill only {per_node * c.gpus_per_node} of its {slots} slots; use "
            f"fewer slots per GPU or more GPUs per node."
        )


def optimize(problem: ProblemData, options: SolveOptions, progress: Progress | None = None,
             *, effort: Effort | None = None) -> Plan:
    """Place every layer of ``problem`` (see the module docstring); returns the :class:`Plan`."""
    from placement.solver.baselines import eplb_phy2log
    from placement.solver.evaluate import make_plan

    start = time.perf_counter()
    deadline = time.time() + options.time_limit  # wall clock: shared by every worker
    effort = effort or Effort()
    c = problem.cluster
    L = problem.num_layers
    E = problem.num_experts
    c.check_fits(E)
    groups = options.groups_for(E)
    node_limited = options.max_nodes_per_token is not None \
        and options.max_nodes_per_token < c.num_nodes
    if node_limited:
        _check_node_limits(problem, options, groups)
    model, model_source = resolve_model(options, problem)
    shares = problem.scenario_shares()  # [S, L, E]
    pooled = problem.scenario_counts.sum(axis=0)  # [L, E]
    # token-level windows are short: plan on shares shrunk toward the pool (reported figures
    # and bounds stay on the plain shares)
    plan_shares = (shrunk_shares(problem.scenario_counts, SHRINK_PER_EXPERT)
                   if problem.is_token_level else None)
    try:
        warm = eplb_phy2log(problem, options, global_policy=True)
    except InputError:
        warm = None
    try:
        eplb = eplb_phy2log(problem, options, global_policy=False)
    except InputError:
        eplb = None
    # the drift rule (objective time, no explicit tolerance, several nodes): the search
    # is also run on half of the planning tokens and judged on the other half
    drift = estimate_drift(problem.scenario_counts)
    vals = None
    if (problem.is_token_level and c.num_nodes > 1 and not node_limited
            and options.objective == "time" and options.balance_tolerance is None):
        masks = validation_split(problem)
        if masks is not None:
            vals = _validations(problem, options, masks, drift)
    tasks = [
        LayerTask(
            index=i,
            shares=shares[:, i, :],
            plan_shares=None if plan_shares is None else plan_shares[:, i, :],
            cluster=c,
            robust=options.robust,
            seed=options.seed * 1_000_003 + i,
            warm=None if warm is None else warm[i],
            eplb=None if eplb is None else eplb[i],
            deadline=deadline,
            effort=effort,
            model=model,
            pooled=pooled[i],
            tokens=_token_data(problem, i) if problem.is_token_level else None,
            objective=options.objective,
            balance_tolerance=options.balance_tolerance,
            max_nodes_per_token=options.max_nodes_per_token,
            num_groups=groups,
            overlap=options.overlap,
            validation=None if vals is None else vals[i],
        )
        for i in range(L)
    ]
    sols = _run(tasks, options.jobs, progress, options.backend)
    phy2log = np.stack([s.phy2log for s in sols]).astype(np.int64)
    statuses = [s.status for s in sols]
    if all(s == "OPTIMAL" for s in statuses):
        status = "OPTIMAL"
    elif any(s == "TIME_LIMIT" for s in statuses):
        status = "TIME_LIMIT"
    else:
        status = "FEASIBLE"
    settings: dict = {
        "objective": options.objective,
        "overlap": options.overlap,
        "model": model.name,
        "model_source": model_source,
        "robust": options.robust,
        "token_level": problem.is_token_level,
        "seed": options.seed,
        "balance_tolerance": options.balance_tolerance,
        "max_nodes_per_token": options.max_nodes_per_token,
        "num_groups": groups,
        "time_limit": options.time_limit,
        "layer_status": statuses,
        "bound_source": [s.bound_source for s in sols],
        "fell_back": [bool(s.fell_back) for s in sols],
        "choice": [s.choice for s in sols],
        **drift.settings(),
        "drift_summary": drift.describe(),
    }
    extra = {k for s in sols for k in s.info}
    for k in sorted(extra):
        settings[k] = [float(s.info.get(k, float("nan"))) for s in sols]
    if "guard_fell_back" in settings:  # the kind of plan the drift rule kept, per judged layer
        settings["drift_kept_kind"] = [
            _kept_kind(s.choice) if "guard_fell_back" in s.info else None for s in sols]
    return make_plan(problem, phy2log, options, "optimizer", start,
                     lower_bound=[float(s.bound) for s in sols], status=status,
                     settings=settings, allow_colocated=any(s.colocated for s in sols),
                     model=model)


def solve_optimizer(problem: ProblemData, options: SolveOptions,
                    progress: Progress | None = None) -> Plan:
    """The registry's entry point: :func:`optimize` with the default effort."""
    return optimize(problem, options, progress)


def _run(tasks: list[LayerTask], jobs: int, progress: Progress | None,
         backend: Backend | None = None) -> list[LayerSolution]:
    """Solve the layers on ``backend`` (default: ``jobs`` processes); results in layer order."""
    sols = ordered_map(solve_layer, tasks, backend or backend_for_jobs(jobs, len(tasks)),
                       progress)
    return sorted(sols, key=lambda sol: sol.index)
