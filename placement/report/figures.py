"""The report's figures (matplotlib with the Agg backend, imported when they are drawn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from placement.errors import InputError
from placement.report.comparison import Comparison

__all__ = ["Figure", "make_figures", "traffic_layer", "traffic_per_token"]


@dataclass(frozen=True)
class Figure:
    """A rendered figure: file name, title, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


def _busiest_layer(cmp: Comparison, i: int) -> int:
    ns = cmp.node_sends(i)
    if ns is not None:
        return int(np.argmax(ns.sum(axis=(1, 2))))
    return int(np.argmax(cmp.loads(i).sum(axis=1)))


def _given_layer(cmp: Comparison, layer: int) -> int:
    ids = cmp.layer_ids.tolist()
    if layer not in ids:
        raise InputError(f"--layer {layer} was not replayed (replayed layers: "
                         f"{ids[0]}-{ids[-1]} of {len(ids)}).")
    return ids.index(layer)


def traffic_per_token(cmp: Comparison, i: int) -> np.ndarray | None:
    """``[L, G, G]`` plan i's expert-token copies from every source GPU to every destination
    GPU, per token of the layer (summed over the token-level held-out traces); None without
    token-level traces."""
    m = cmp.matrix(i)
    if m is None:
        return None
    tok = np.zeros(m.shape[0])
    for r in cmp.results[i]:
        if r.tokens is not None and r.matrix is not None:
            tok += np.asarray(r.tokens, dtype=float)
    return m / np.maximum(tok, 1.0)[:, None, None]


def traffic_layer(cmp: Comparison, shown: list[int], layer: int | None) -> tuple[int, str]:
    """``(index into cmp.layer_ids, why)`` of the traffic-matrix figure's layer: ``layer``
    when given; else, with two plans shown, the layer where their matrices differ most (sum
    of absolute differences per token), so the panels show what the plans change; else the
    busiest layer of the plan."""
    if layer is not None:
        return _given_layer(cmp, layer), "the layer asked for"
    mats = [m for i in shown if (m := traffic_per_token(cmp, i)) is not None]
    if len(mats) == 2:
        diff = np.abs(mats[0] - mats[1]).sum(axis=(1, 2))
        li = int(np.argmax(diff))
        if diff[li] > 0:
            return li, (f"the layer where {cmp.labels[shown[0]]} and {cmp.labels[shown[1]]} "
                        f"differ most ({diff[li]:.3f} copies per token moved)")
        return _busiest_layer(cmp, shown[0]), ("the busiest layer; the two plans route every "
                                               "layer the same")
    return _busiest_layer(cmp, shown[0]), "the busiest layer"


def _integer_ticks(ax: object, *axes: str) -> None:
    """Whole-number ticks only on the GPU axes (a 4-GPU axis has no GPU -0.5 or 0.5)."""
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        getattr(ax, f"{a}axis").set_major_locator(MaxNLocator(integer=True))


def _png(fig: object) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def _node_lines(ax: object, G: int, gpn: int, *, both: bool, color: str = "white") -> None:
    many = G // gpn > 8  # thin lines when there are many nodes
    kw = {"color": color, "linewidth": 0.5 if many else 1.2, "alpha": 0.6 if many else 1.0}
    for b in range(gpn, G, gpn):
        ax.axvline(b - 0.5, **kw)  # type: ignore[attr-defined]
        if both:
            ax.axhline(b - 0.5, **kw)  # type: ignore[attr-defined]


def make_figures(cmp: Comparison, *, layer: int | None = None) -> list[Figure]:
    """The report's figures (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    figs: list[Figure] = []
    lids = cmp.layer_ids
    c = cmp.cluster
    G, gpn = c.num_gpus, c.gpus_per_node
    styles = ["-", "--", "-.", ":"]

    # 1. per-layer imbalance
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, lab in enumerate(cmp.labels):
        v = cmp.mean_layer_values(i, "imbalance")
        assert v is not None
        ax.plot(lids, v, styles[i % 4], marker="o", markersize=3, linewidth=1.5,
                label=f"{lab} (mean {v.mean():.3f})")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"{cmp.imbalance_label}: max / mean tokens per GPU")
    ax.set_title("Per-layer imbalance on the held-out traces (lower is better, 1 = perfect)")
    ax.grid(alpha=0.3)
    ax.legend()
    figs.append(Figure("imbalance.png", "Per-layer imbalance",
                       "Max / mean tokens per GPU in every replayed layer, averaged over the "
                       "held-out traces.", _png(fig)))

    # 2. per-layer cross-node sends
    if cmp.has_traffic:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        for i, lab in enumerate(cmp.labels):
            v = cmp.mean_layer_values(i, "sends")
            if v is not None:
                ax.plot(lids, v, styles[i % 4], marker="o", markersize=3, linewidth=1.5,
                        label=f"{lab} (mean {v.mean():.3f})")
        top = max((float(np.max(v)) for i in range(len(cmp.labels))
                   if (v := cmp.mean_layer_values(i, "sends")) is not None), default=1.0)
        ax.set_ylim(0, max(top, 1e-9) * 1.3)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("cross-node sends per token\n(distinct remote nodes)")
        ax.set_title(f"Per-layer cross-node sends per token ({c.num_nodes} nodes; lower is "
                     "better)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", ncol=min(3, len(cmp.labels)))
        figs.append(Figure("cross_node_sends.png", "Per-layer cross-node sends",
                           "Distinct remote nodes a token is sent to, per layer, on the "
                           "token-level held-out traces.", _png(fig)))

    # 3. heat map of tokens per GPU per layer: best plan and the reference
    show = [cmp.best] + ([cmp.reference] if cmp.reference not in (None, cmp.best) else [])
    rel = []
    for i in show:
        ld = cmp.loads(i)
        mean = ld.mean(axis=1, keepdims=True)
        rel.append(np.divide(ld, mean, out=np.ones_like(ld), where=mean > 0))
    # diverging scale centred on 1 (an even share): red GPUs are overloaded, blue ones idle
    dev = max(float(np.max(np.abs(r - 1.0))) for r in rel) or 0.1
    fig, axes = plt.subplots(1, len(show), figsize=(6.2 * len(show), 5.4), squeeze=False,
                             layout="constrained")
    im = None
    for ax, i, r in zip(axes[0], show, rel, strict=True):
        norm = TwoSlopeNorm(vmin=max(0.0, 1.0 - dev), vcenter=1.0, vmax=1.0 + dev)
        im = ax.imshow(r, aspect="auto", cmap="RdBu_r", norm=norm, origin="lower",
                       extent=(-0.5, G - 0.5, -0.5, len(lids) - 0.5), interpolation="nearest")
        _node_lines(ax, G, gpn, both=False, color="black")
        _integer_ticks(ax, "x")
        ticks = np.linspace(0, len(lids) - 1, min(len(lids), 8)).round().astype(int)
        ax.set_yticks(ticks)
        ax.set_yticklabels([str(int(lids[t])) for t in ticks])
        ax.set_xlabel("GPU (EP rank)")
        ax.set_ylabel("decoder layer")
        ax.set_title(f"{cmp.labels[i]} (hottest GPU {r.max():.2f}x the mean)")
    assert im is not None
    fig.colorbar(im, ax=axes[0].tolist(), label="tokens per GPU / layer mean (1 = even share)")
    fig.suptitle(f"Tokens per GPU per layer on the held-out traces (red = overloaded; black "
                 f"lines: node boundaries, {gpn} GPUs per node)")
    figs.append(Figure("tokens_per_gpu.png", "Tokens per GPU per layer",
                       "Expert-token assignments per GPU, divided by the layer's mean: the "
                       "reddest cell is the GPU every other GPU waits for in its layer.", _png(fig)))

    # 4. GPU x GPU traffic of one layer: where the plans shown differ most
    if cmp.has_traffic:
        mats = [(i, m) for i in show if (m := traffic_per_token(cmp, i)) is not None]
        li, why = traffic_layer(cmp, [i for i, _ in mats], layer)
        per_tok = [m[li] for _, m in mats]
        vmax = max(float(np.max(m)) for m in per_tok) or 1.0
        fig, axes = plt.subplots(1, len(mats), figsize=(6.2 * len(mats), 5.6), squeeze=False,
                                 layout="constrained")
        for ax, (i, _), m in zip(axes[0], mats, per_tok, strict=True):
            im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            _node_lines(ax, G, gpn, both=True)
            _integer_ticks(ax, "x", "y")
            sends = cmp.mean_layer_values(i, "sends")
            s = float(sends[li]) if sends is not None else float("nan")
            ax.set_xlabel("destination GPU (holds the expert)")
            ax.set_ylabel("source GPU (holds the token)")
            ax.set_title(f"{cmp.labels[i]}: cross-node sends per token {s:.3f}")
        fig.colorbar(im, ax=axes[0].tolist(), label="expert copies per token (dispatch)")
        fig.suptitle(f"GPU x GPU all-to-all of decoder layer {int(lids[li])}; white lines: "
                     "node blocks (off-block = cross-node)")
        figs.append(Figure("traffic_matrix.png", f"Traffic matrix of layer {int(lids[li])}",
                           f"Decoder layer {int(lids[li])}: {why}. "
                           "Expert-token copies from every source GPU to every destination GPU "
                           "per token of the layer (dispatch; combine sends the same back, the "
                           "transpose). Diagonal blocks stay inside a node (NVLink), the rest "
                           "crosses the network.", _png(fig)))
    return figs
