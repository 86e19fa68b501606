"""Text of a replay for people: :func:`format_validation` (pure: result in, lines out)."""

from __future__ import annotations

import numpy as np

from placement.validation.result import TRAFFIC_NA, ValidationResult

__all__ = ["format_validation"]


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
            f"{r.imbalance_label}: {r.mean_imbalance:.4f} (max/mean tokens per GPU, mean over "
            f"layers; worst layer {int(r.layer_ids[worst])}: {imb[worst]:.4f})"
        )
    if r.mean_batch_imbalance is not None:
        lines.append(f"imbalance per batch ({r.dispatch}): {r.mean_batch_imbalance:.4f} (busiest "
                     "GPU / mean, summed over batches, mean over layers: what the LP minimises)")
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
