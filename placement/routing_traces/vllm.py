"""vLLM routed experts (``--enable-return-routed-experts``), read into a :class:`Trace`.

vLLM started with ``enable_return_routed_experts=True`` returns, on every completion,
``CompletionOutput.routed_experts``: ``[seq_len, layer_num, topk]`` int32 expert ids of every
token of the sequence (prompt and generated tokens; ``vllm/outputs.py``). Its capturer
(``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``) sizes ``layer_num`` as the
model's ``num_hidden_layers`` and writes each MoE layer's ``topk_ids`` at the layer's index into a
zeroed buffer: the rows of dense layers stay 0.

vLLM keeps the arrays in memory; a run is saved as one ``.npz`` (docs/traces.md has the script):

* ``routed_experts_<request>``: ``[seq_len, num_hidden_layers, topk]`` integer, one per request
  (any suffix; arrays named ``routed_experts`` alone also count);
* ``num_experts`` (optional scalar): routed experts per MoE layer (without it: the largest id
  + 1, which misses experts no token chose at the end of the range);
* ``model`` (optional string).

The trace: one window per request (in key order), every token of it; the MoE layers are the
layers with a non-zero id (a dense layer's rows are all 0; a MoE layer routes every token to
``topk`` distinct experts, so some id is non-zero).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from placement.errors import TraceFormatError
from placement.filekinds import FileKind, Probe
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

__all__ = ["READER", "read_vllm_routed_experts"]

PREFIX = "routed_experts"
_EXTRA = {"num_experts", "model"}


def is_vllm_routed_experts(probe: Probe) -> bool:
    """An ``.npz`` of ``routed_experts*`` arrays (and optionally ``num_experts``, ``model``)."""
    if probe.container != "npz":
        return False
    keys = set(probe.npz_keys)
    routed = {k for k in keys if k.startswith(PREFIX)}
    return bool(routed) and keys - routed <= _EXTRA


def _natural(key: str) -> tuple[object, ...]:
    """Sort ``routed_experts_2`` before ``routed_experts_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def read_vllm_routed_experts(path: str | Path) -> Trace:
    """Read an ``.npz`` of vLLM ``routed_experts`` arrays (see the module docstring)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise TraceFormatError(f"not a readable .npz ({exc}).", path) from None
    with z:
        keys = sorted((k for k in z.files if k.startswith(PREFIX)), key=_natural)
        if not keys:
            raise TraceFormatError("no routed_experts arrays.", path)
        # 1. every request: [seq_len, layers, topk] integer ids, one shape of layers and topk
        arrays: list[np.ndarray] = []
        for key in keys:
            a = z[key]
            if a.ndim != 3 or not np.issubdtype(a.dtype, np.integer):
                raise TraceFormatError(
                    f"Expected {key} to be an integer array [seq_len, layers, topk], got "
                    f"{a.dtype} {a.shape}.", path)
            if arrays and a.shape[1:] != arrays[0].shape[1:]:
                raise TraceFormatError(
                    f"Expected {key} to have {arrays[0].shape[1]} layers and top-k "
                    f"{arrays[0].shape[2]} like {keys[0]}, got {a.shape[1:]}.", path)
            arrays.append(a)
        num_experts = None
        if "num_experts" in z.files:
            v = z["num_experts"]
            if v.shape != () or not np.issubdtype(v.dtype, np.integer) or int(v) < 1:
                raise TraceFormatError(f"Expected num_experts to be an integer >= 1, got {v!r}.",
                                       path)
            num_experts = int(v)
        model = str(z["model"]) if "model" in z.files and z["model"].shape == () else None
    ids = np.concatenate(arrays).astype(np.int64)
    if ids.shape[0] == 0:
        raise TraceFormatError("the routed_experts arrays hold no tokens.", path)
    if ids.min() < 0:
        raise TraceFormatError(f"negative expert id {int(ids.min())}.", path)
    # 2. the MoE layers: a dense layer's rows stay 0 in vLLM's buffer
    moe = np.flatnonzero((ids != 0).any(axis=(0, 2)))
    if moe.size == 0:
        raise TraceFormatError("every expert id is 0: no MoE layer was captured.", path)
    E = num_experts if num_experts is not None else int(ids.max()) + 1
    window = np.repeat(np.arange(len(arrays)), [a.shape[0] for a in arrays])
    names = [k[len(PREFIX):].lstrip("_.") or k for k in keys]
    try:
        return Trace(num_experts=E, topk_ids=ids[:, moe, :], layer_ids=moe, window=window,
                     window_names=names, model=model, num_hidden_layers=ids.shape[1])
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, path) from None


READER = Reader(
    kind=FileKind("vllm-routed-experts", "trace",
                  "a routing trace (vLLM routed_experts .npz)"),
    sniff=is_vllm_routed_experts,
    read=lambda p: read_vllm_routed_experts(p.path),
)
"""The vLLM ``--enable-return-routed-experts`` reader."""
