"""The drift model: how far a layer's expert shares move from the planning data to the traffic a
plan will serve, and the scenarios a candidate placement is judged on.

A layer's drift is the total-variation distance between its expert shares in two workloads
(``0.5 * sum_e |p_e - q_e|``: the fraction of the routed assignments that land on other experts),
with the part that sampling noise explains removed (:func:`share_drift`). It is estimated

* from the trace's own windows when it has two or more that route tokens (window to window:
  each window against the next), shrunk toward the prior by how many window pairs back it;
* from :data:`DRIFT_PRIOR` when it has one window (the data cannot tell how the next workload
  differs from this one; the within-window drift between blocks of sequences is reported beside
  it).

:data:`DRIFT_PRIOR` is calibrated on the real multi-window data of the project's shared traces
(``benchmarks/bench_drift.py --calibrate`` prints the figures): the median over layers of the
noise-corrected drift between consecutive workloads/domains/datasets/sequences was

=======================================  ======================
DeepSeek-V3, 12 SGLang workloads          0.073 (0.034-0.085)
FLAME-MoE-290M, 32 sequences              0.080 (0.043-0.092)
Mixtral-8x7B, 4 prompts                   0.123 (0.029-0.209)
MoE-Lens Qwen1.5-MoE, 7 domains           0.162 (0.146-0.235)
MoE-Lens DeepSeek-MoE-16B chat, 7 dom.    0.228 (0.199-0.245)
MoE-Lens DeepSeek-MoE-16B base, 7 dom.    0.237 (0.209-0.253)
Qwen3-30B-A3B, 12 datasets (en/he)        0.352 (0.271-0.804)
MoE-Lens OLMoE, 7 domains                 0.427 (0.302-0.538)
=======================================  ======================

(range: over layers). Serving workloads of one kind move 0.07-0.12, text domains 0.16-0.43; the
prior is 0.15, between the two (the median of the serving-like cases and the domain-shift ones'
lowest): a sixth of the assignments land on other experts in the next workload.

The scenarios (:func:`drift_scenarios`): the judged tokens cut into contiguous blocks (whole
sequences), each block's deviation from their pool amplified so that it is as large as the drift
model says the next traffic's is (``amplification``, at least 1, at most
:data:`MAX_AMPLIFICATION`). Every per-GPU figure of a placement is linear in the tokens' weights,
so a scenario's loads and traffic are ``pool + a * (block - pool)``.

Shapes: ``S`` scenarios/windows, ``L`` layers, ``E`` experts, ``B`` blocks, ``G`` GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from placement.cluster import Cluster
from placement.models import ModelShape
from placement.moe_time import layer_times

__all__ = [
    "DRIFT_MARGIN",
    "DRIFT_PRIOR",
    "IMBALANCE_MARGIN",
    "MAX_AMPLIFICATION",
    "MIN_BLOCK_TOKENS",
    "PRIOR_PAIRS",
    "DriftModel",
    "ScenarioFigures",
    "amplification",
    "block_ids",
    "drift_scenarios",
    "estimate_drift",
    "noise_tv",
    "ranked_choices",
    "robust_choice",
    "share_drift",
]

DRIFT_PRIOR = 0.15
"""Drift (total-variation distance of a layer's expert shares between workloads) assumed when the
trace cannot tell: calibrated on the shared real multi-window traces (module docstring)."""

PRIOR_PAIRS = 2.0
"""Weight of :data:`DRIFT_PRIOR`, in window pairs, when the drift is estimated from windows."""

MAX_AMPLIFICATION = 3.0
"""A block's deviation from the judged pool is amplified at most this many times."""


def noise_tv(p: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Expected total-variation distance between two samples of ``n1`` and ``n2`` assignments
    drawn from the same shares ``p [..., E]`` (normal approximation of every expert's
    difference of proportions): ``0.5 * sqrt(2 / pi) * sum_e sqrt(p_e (1 - p_e) (1/n1 + 1/n2))``.
    """
    p = np.asarray(p, dtype=np.float64)
    inv = (1.0 / np.maximum(n1, 1.0) + 1.0 / np.maximum(n2, 1.0))[..., None]
    return 0.5 * np.sqrt(2.0 / np.pi) * np.sqrt(np.clip(p * (1.0 - p), 0.0, None) * inv).sum(-1)


def _tv_excess(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(drift, ok)``: noise-corrected TV distance between count vectors ``a, b [..., E]``."""
    na, nb = a.sum(-1), b.sum(-1)
    ok = (na > 0) & (nb > 0)
    pa = a / np.maximum(na, 1e-300)[..., None]
    pb = b / np.maximum(nb, 1e-300)[..., None]
    tv = 0.5 * np.abs(pa - pb).sum(-1)
    noise = noise_tv(0.5 * (pa + pb), na, nb)
    return np.sqrt(np.maximum(tv ** 2 - noise ** 2, 0.0)), ok


def share_drift(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``counts [S, L, E]`` -> ``(drift [L], pairs [L])``: the mean over consecutive pairs of
    windows that both route tokens in a layer of their noise-corrected total-variation distance
    (nan where no pair does), and how many pairs that is."""
    c = np.asarray(counts, dtype=np.float64)
    S, L, _ = c.shape
    total = np.zeros(L)
    pairs = np.zeros(L)
    for i in range(S - 1):  # over windows, not tokens
        d, ok = _tv_excess(c[i], c[i + 1])
        total += np.where(ok, d, 0.0)
        pairs += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, total / np.maximum(pairs, 1), np.nan), pairs


@dataclass(frozen=True)
class DriftModel:
    """How far every layer's expert shares are expected to move between the planning data and
    the traffic the plan serves.

    Attributes:
        drift: ``[L]`` total-variation distance of the expert shares (the model's figure).
        measured: ``[L]`` window-to-window drift of the trace (nan: one window).
        pairs: ``[L]`` window pairs behind ``measured``.
        source: ``"windows"`` (estimated from the trace's windows, shrunk toward the prior) or
            ``"prior"`` (:data:`DRIFT_PRIOR`).
    """

    drift: np.ndarray
    measured: np.ndarray
    pairs: np.ndarray
    source: str

    def describe(self) -> str:
        """One line for the solve summary (after ``drift: ``)."""
        d = self.drift
        if self.source == "prior":
            return (f"{float(np.median(d)):.3f} of the assignments move between workloads "
                    f"(prior: one planning window; calibrated on the shared real traces)")
        m = self.measured[np.isfinite(self.measured)]
        return (f"{float(np.median(d)):.3f} of the assignments move between workloads "
                f"(median over layers, {float(d.min()):.3f}-{float(d.max()):.3f}; measured "
                f"window to window {float(np.median(m)) if m.size else float('nan'):.3f} over "
                f"{int(self.pairs.max())} pair(s), shrunk toward the prior {DRIFT_PRIOR:g})")

    def settings(self) -> dict[str, object]:
        """The plan settings' record of the model."""
        return {"drift": [float(x) for x in self.drift],
                "drift_source": self.source,
                "drift_measured": [float(x) for x in self.measured],
                "drift_prior": DRIFT_PRIOR}


def estimate_drift(counts: np.ndarray) -> DriftModel:
    """The drift model of a trace's windows ``counts [S, L, E]`` (module docstring)."""
    measured, pairs = share_drift(counts)
    L = measured.shape[0]
    if not (pairs > 0).any():
        return DriftModel(np.full(L, DRIFT_PRIOR), measured, pairs, "prior")
    m = np.where(pairs > 0, measured, DRIFT_PRIOR)
    drift = (pairs * m + PRIOR_PAIRS * DRIFT_PRIOR) / (pairs + PRIOR_PAIRS)
    return DriftModel(drift, measured, pairs, "windows")


def amplification(drift: float, block_counts: np.ndarray, pool_counts: np.ndarray) -> float:
    """How many times the blocks' deviations from their pool must be scaled for their drift to
    be ``drift``: ``drift / mean_b TV(block_b, pool)``, within ``[1, MAX_AMPLIFICATION]``.

    ``block_counts [B, E]``, ``pool_counts [E]`` (assignments per expert). The blocks' own TV
    (noise included: a batch's mix of sequences is off the pool's by that much too) is the
    scale of the scenarios before amplification.
    """
    b = np.asarray(block_counts, dtype=np.float64)
    p = np.asarray(pool_counts, dtype=np.float64)
    nb = b.sum(-1)
    npool = p.sum()
    if npool <= 0 or not (nb > 0).any():
        return 1.0
    pb = b[nb > 0] / nb[nb > 0, None]
    tv = float((0.5 * np.abs(pb - p / npool).sum(-1)).mean())
    if tv <= 1e-12:
        return MAX_AMPLIFICATION
    return float(np.clip(drift / tv, 1.0, MAX_AMPLIFICATION))


DRIFT_MARGIN = 0.02
"""Selection rule (:func:`robust_choice`): a candidate's predicted time may exceed EPLB's in its
worst drift scenario by at most this fraction."""

IMBALANCE_MARGIN = 0.02
"""Selection rule: a candidate's expected static imbalance over the drift scenarios may exceed
the better of EPLB's and EPLB-global's by at most this fraction (2 %: FLAME-MoE's faster
partitions, 0.80-0.90 x EPLB's time in every scenario, sit at 1.01-1.02 x its imbalance)."""

MAX_BLOCKS = 8
"""The judged tokens are cut into at most this many contiguous blocks (scenarios)."""

MIN_BLOCK_TOKENS = 64
"""A block holds at least this many tokens (fewer judged tokens: one block)."""


def block_ids(num_tokens: int) -> np.ndarray:
    """``[T]`` the block (scenario) of every judged token: contiguous runs (whole sequences)."""
    B = int(max(1, min(MAX_BLOCKS, num_tokens // MIN_BLOCK_TOKENS)))
    return (np.arange(num_tokens) * B) // max(num_tokens, 1)


@dataclass(frozen=True)
class ScenarioFigures:
    """One candidate's figures on the drift scenarios.

    Attributes:
        time: ``[B]`` predicted MoE layer time per scenario, seconds.
        imbalance: ``[B]`` static-rule max/mean tokens per GPU per scenario.
        sends: cross-node sends per judged token (pooled; the scenarios' mean).
    """

    time: np.ndarray
    imbalance: np.ndarray
    sends: float


def drift_scenarios(loads: np.ndarray, traffic: dict[str, np.ndarray], sends: np.ndarray,
                    sizes: np.ndarray, amp: float, cluster: Cluster, model: ModelShape,
                    overlap: str) -> ScenarioFigures:
    """Figures of one placement on the drift scenarios.

    Args:
        loads: ``[B, G]`` static-rule assignments per GPU of every block of judged tokens.
        traffic: ``intra_send``, ``intra_recv``, ``net_send``, ``net_recv`` ``[B, G]`` per block.
        sends: ``[B]`` cross-node sends per block.
        sizes: ``[B]`` tokens per block.
        amp: :func:`amplification` of the blocks' deviations from their pool.
    Every block is scaled to the mean block size; scenario ``b`` is
    ``pool + amp * (block_b - pool)`` (clipped at 0), ``pool`` the blocks' mean.
    """
    n = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
    scale = (n.mean() / n)[:, None]

    def scen(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64) * scale
        pool = x.mean(axis=0, keepdims=True)
        return np.maximum(pool + amp * (x - pool), 0.0)

    lo = scen(loads)
    tr = {k: scen(v) for k, v in traffic.items()}
    _, _, _, t = layer_times(lo, cluster, model, traffic=tr, overlap=overlap)
    mean = lo.mean(axis=1)
    imb = np.where(mean > 0, lo.max(axis=1) / np.maximum(mean, 1e-300), 1.0)
    return ScenarioFigures(np.asarray(t, dtype=np.float64), imb,
                           float(np.asarray(sends).sum() / n.sum()))


def robust_choice(figs: Sequence[ScenarioFigures], plain: Sequence[bool], eplb: int,
                  refs: Sequence[int], tie: float, among: Sequence[int] | None = None
                  ) -> tuple[int, list[int]]:
    """The selection rule over the drift scenarios: ``(winner, admitted)``.

    A candidate is admitted when (1) its worst scenario's time is at most ``1 + DRIFT_MARGIN``
    of EPLB's worst scenario's (worst against worst: a scenario's ratio of two plans is mostly
    the noise of its few tokens), (2) its expected (mean over scenarios) static imbalance is at
    most ``1 + IMBALANCE_MARGIN`` of the better of ``refs`` (EPLB's and EPLB-global's), and (3)
    it sends no more across nodes than EPLB's, and (4) it gains at least ``tie`` on EPLB's in a
    part of the objective: expected time, expected static imbalance or sends. EPLB's layer
    (index ``eplb``) is always admitted. Among the admitted, the best expected time wins; those
    within ``tie`` of it (and no slower than EPLB's) count as equally fast and the fewest sends
    wins, then the time, then a traffic-aware kind (``plain`` False) over a plain one, then the
    index. ``among``: only these candidates compete (EPLB's layer always does).
    """
    e = figs[eplb]
    ref_imb = min(float(figs[r].imbalance.mean()) for r in refs)
    ok = [eplb]
    pool = set(range(len(figs)) if among is None else among)
    for i, f in enumerate(figs):
        if i == eplb or i not in pool:
            continue
        worst = float(f.time.max() / max(float(e.time.max()), 1e-30))
        if (worst <= 1.0 + DRIFT_MARGIN + 1e-12
                and float(f.imbalance.mean()) <= (1.0 + IMBALANCE_MARGIN) * ref_imb + 1e-12
                and f.sends <= e.sends + 1e-12):
            ok.append(i)
    exp = [float(f.time.mean()) for f in figs]
    # a change from EPLB's layer must be worth the cost model's resolution (``tie``) in a part
    # of the objective: that much faster, better balanced or fewer sends (a gain below it is
    # noise, and the re-fit of a kind is not the very plan judged)
    e_imb = float(e.imbalance.mean())
    ok = [i for i in ok if i == eplb or exp[i] < (1.0 - tie) * exp[eplb]
          or float(figs[i].imbalance.mean()) < (1.0 - tie) * e_imb
          or figs[i].sends < (1.0 - tie) * e.sends]
    best = min(exp[i] for i in ok)
    limit = min(best * (1.0 + tie), exp[eplb])
    near = [i for i in ok if exp[i] <= limit + 1e-18]
    win = min(near, key=lambda i: (figs[i].sends, exp[i], plain[i], i))
    return win, sorted(ok)


def ranked_choices(figs: Sequence[ScenarioFigures], plain: Sequence[bool], eplb: int,
                   refs: Sequence[int], tie: float) -> list[int]:
    """The admitted candidates of :func:`robust_choice` in the rule's order of preference: its
    winner, then the winner among the rest, and so on; EPLB's layer (``eplb``) closes it."""
    _, ok = robust_choice(figs, plain, eplb, refs, tie)
    left = [i for i in ok if i != eplb]
    order: list[int] = []
    while left:
        win, _ = robust_choice(figs, plain, eplb, refs, tie, among=left)
        if win == eplb:
            break
        order.append(win)
        left.remove(win)
    return [*order, eplb]
