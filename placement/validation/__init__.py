"""Replay a trace against a plan: tokens per GPU, imbalance and all-to-all traffic, per layer.

Definitions (``docs/definitions.md``). A token lives on its source GPU ``r`` (the trace's
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

Modules: :mod:`~placement.validation.result` (:class:`ValidationResult`, the figures of one
replay), :mod:`~placement.validation.text` (:func:`format_validation`),
:mod:`~placement.validation.api` (:func:`replay`: checks, the counts path, chunking) and
:mod:`~placement.validation.token_stream` (the torch kernel that streams token chunks through
``bincount``). torch is imported when a replay runs, not with this package.
"""

from placement.validation.api import (
    DEFAULT_CHUNK_ASSIGNMENTS,
    match_layers,
    replay,
    resolve_device,
)
from placement.validation.result import DEVICES, RULES, TRAFFIC_NA, ValidationResult
from placement.validation.text import format_validation

__all__ = [
    "DEFAULT_CHUNK_ASSIGNMENTS",
    "DEVICES",
    "RULES",
    "TRAFFIC_NA",
    "ValidationResult",
    "format_validation",
    "match_layers",
    "replay",
    "resolve_device",
]
