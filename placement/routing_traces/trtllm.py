"""TensorRT-LLM expert-statistic directories, read into a :class:`Trace`.

TensorRT-LLM (``tensorrt_llm/_torch/expert_statistic.py``) records, for iterations
``EXPERT_STATISTIC_ITER_RANGE="start-stop"``, into ``EXPERT_STATISTIC_PATH``:

* ``meta_info.json``: ``{"num_experts": E, "num_experts_per_token": k}`` (written by rank 0);
* ``rank{r}.safetensors``: keys ``"{iter}_{layer}"`` -> ``[E]`` tokens of rank ``r`` routed to
  each expert (``torch.bincount`` of the selected ids), ``layer`` being the decoder-layer index.

The trace holds counts ``[W = iterations, R = ranks, L = layers, E]``, ``top_k`` from the meta
file. With TensorRT-LLM's online load balancer on, the recorder counts expert SLOTS (``E`` is
then ``num_slots``): the trace describes slots, not logical experts.

The recorder of TensorRT-LLM's co-occurrence placement
(``examples/wide_ep/ep_load_balancer/generate_eplb_config_cooccurrence.py`` reads its output
with ``load_expert_statistic``) writes two more files per rank beside ``rank{r}.safetensors``:

* ``cooccurrence_rank{r}.safetensors``: ``"{iter}_{layer}"`` -> ``[E, E]`` int32, tokens that
  chose both experts (the diagonal: tokens per expert);
* ``token_selected_experts_rank{r}.safetensors``: ``"{iter}_{layer}"`` -> ``[tokens, k]`` the
  expert ids every token of rank ``r`` chose (the rows of every layer are the same tokens).

With the token files of every rank the trace is token-level: ``topk_ids [T, L, k]``, one window
per iteration, ``source_rank`` the rank, tokens in rank order as the example concatenates them
(its co-occurrence is then the trace's co-activation); their per-expert counts must equal the
rank files'. The co-occurrence files alone add nothing to the counts and are not read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from placement._io import json_loads
from placement.errors import TraceFormatError
from placement.filekinds import FileKind
from placement.routing_traces.registry import Reader
from placement.routing_traces.trace import Trace

__all__ = ["READER", "is_trtllm_dir", "read_trtllm_dir"]

_RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")
_TOKEN_FILE = re.compile(r"^token_selected_experts_rank(\d+)\.safetensors$")
_KEY = re.compile(r"^(\d+)_(\d+)$")


def is_trtllm_dir(path: Path) -> bool:
    """Whether ``path`` looks like an expert-statistic directory (has ``meta_info.json``)."""
    return path.is_dir() and (path / "meta_info.json").is_file()


def _meta_int(meta: dict[str, object], key: str, path: Path) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise TraceFormatError(f"Expected {key} to be an integer >= 1, got {v!r}.", path)
    return v


def read_trtllm_dir(path: str | Path) -> Trace:
    """Read a TensorRT-LLM statistics directory (``meta_info.json``, ``rank*.safetensors``)."""
    path = Path(path)
    meta_path = path / "meta_info.json"
    # 1. meta_info.json
    try:
        meta = json_loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TraceFormatError("no meta_info.json: not a TensorRT-LLM statistics directory.",
                               path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"not valid JSON ({exc}).", meta_path) from None
    if not isinstance(meta, dict):
        raise TraceFormatError(
            f"Expected an object with num_experts and num_experts_per_token, got {meta!r:.40}.",
            meta_path,
        )
    E = _meta_int(meta, "num_experts", meta_path)
    k = _meta_int(meta, "num_experts_per_token", meta_path)

    # 2. the rank files must be rank0 .. rank{R-1}
    files: dict[int, Path] = {}
    for f in path.iterdir():
        m = _RANK_FILE.match(f.name)
        if m:
            files[int(m.group(1))] = f
    if not files:
        raise TraceFormatError("no rank*.safetensors files next to meta_info.json.", path)
    R = max(files) + 1
    missing = [r for r in range(R) if r not in files]
    if missing:
        raise TraceFormatError(
            f"missing rank{missing[0]}.safetensors (found ranks {sorted(files)}).", path
        )

    # 3. every key "{iter}_{layer}" -> [E] counts
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    per_rank: list[dict[tuple[int, int], np.ndarray]] = []
    for r in range(R):
        f = files[r]
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TraceFormatError(f"not a readable safetensors file ({exc}).", f) from None
        got: dict[tuple[int, int], np.ndarray] = {}
        for key, value in tensors.items():
            m = _KEY.match(key)
            if not m:
                raise TraceFormatError(
                    f"unexpected key {key!r} (expected '{{iter}}_{{layer}}').", f
                )
            a = np.asarray(value)
            if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer)
                                       or np.issubdtype(a.dtype, np.floating)):
                raise TraceFormatError(f"{key} holds dtype {a.dtype}, not counts.", f)
            if a.shape != (E,):
                raise TraceFormatError(
                    f"Expected {key} of shape ({E},) (num_experts={E}), got {a.shape}.", f
                )
            a = a.astype(np.float64)
            if not np.isfinite(a).all():
                raise TraceFormatError(f"{key} holds NaN or infinite values.", f)
            if a.min() < 0:
                raise TraceFormatError(f"{key} holds negative counts (min {a.min():g}).", f)
            got[(int(m.group(1)), int(m.group(2)))] = a
        per_rank.append(got)
    keys = sorted({key for got in per_rank for key in got})
    if not keys:
        raise TraceFormatError("the rank files hold no statistics.", path)
    iters = sorted({i for i, _ in keys})
    layers = sorted({layer for _, layer in keys})
    w_of = {it: n for n, it in enumerate(iters)}
    l_of = {layer: n for n, layer in enumerate(layers)}

    # 4. [W, R, L, E]; an (iteration, layer) a rank did not record counts zero
    counts = np.zeros((len(iters), R, len(layers), E), dtype=np.float64)
    for r, got in enumerate(per_rank):
        for (it, layer), a in got.items():
            counts[w_of[it], r, l_of[layer]] = a
    # 5. the tokens themselves, where the co-occurrence recorder wrote them
    token_files = {int(m.group(1)): f for f in path.iterdir() if (m := _TOKEN_FILE.match(f.name))}
    if token_files:
        return _token_trace(path, token_files, R, iters, layers, counts, k)
    try:
        return Trace(
            num_experts=E,
            counts=counts,
            layer_ids=layers,
            window_names=[str(it) for it in iters],
            top_k=k,
        )
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, path) from None


def _token_trace(path: Path, files: dict[int, Path], R: int, iters: list[int],
                 layers: list[int], counts: np.ndarray, k: int) -> Trace:
    """The token-level trace of ``token_selected_experts_rank{r}.safetensors`` (``counts
    [W, R, L, E]``: the rank files', which the tokens must reproduce)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    missing = [r for r in range(R) if r not in files]
    if missing or len(files) != R:
        raise TraceFormatError(
            f"token_selected_experts files for ranks {sorted(files)}, rank files for ranks "
            f"0-{R - 1}: one of each per rank.", path)
    L, E = len(layers), counts.shape[-1]
    w_of = {it: n for n, it in enumerate(iters)}
    l_of = {layer: n for n, layer in enumerate(layers)}
    chunks: list[tuple[int, int, np.ndarray]] = []
    for r in range(R):
        f = files[r]
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TraceFormatError(f"not a readable safetensors file ({exc}).", f) from None
        # 1. [tokens, k] per (iteration, layer); one token count across a step's layers
        per_iter: dict[int, dict[int, np.ndarray]] = {}
        for key, value in tensors.items():
            m = _KEY.match(key)
            a = np.asarray(value)
            if not m or int(m.group(1)) not in w_of or int(m.group(2)) not in l_of:
                raise TraceFormatError(
                    f"unexpected key {key!r} (expected '{{iter}}_{{layer}}' of the rank files).",
                    f)
            if a.ndim != 2 or a.shape[1] != k or not np.issubdtype(a.dtype, np.integer):
                raise TraceFormatError(
                    f"Expected {key} to be integer [tokens, {k}] (num_experts_per_token={k}), "
                    f"got {a.dtype} {a.shape}.", f)
            if a.size and (a.min() < 0 or a.max() >= E):
                raise TraceFormatError(f"{key} holds expert ids outside [0, {E}).", f)
            per_iter.setdefault(int(m.group(1)), {})[int(m.group(2))] = a.astype(np.int64)
        counted = {iters[w] for w in np.flatnonzero(counts[:, r].sum(axis=(1, 2)))}
        if counted - set(per_iter):
            raise TraceFormatError(
                f"no tokens for iteration {min(counted - set(per_iter))}, which "
                f"rank{r}.safetensors counts.", f)
        for it in sorted(per_iter):
            got = per_iter[it]
            sizes = {a.shape[0] for a in got.values()}
            if len(got) != L or len(sizes) != 1:
                raise TraceFormatError(
                    f"iteration {it}: Expected the same tokens at all {L} layers, got "
                    f"{len(got)} layers of {sorted(sizes)} tokens.", f)
            ids = np.stack([got[layer] for layer in layers], axis=1)  # [n, L, k]
            # 2. the tokens must give the counts the rank file holds
            w = w_of[it]
            seen = np.stack([np.bincount(ids[:, j].ravel(), minlength=E) for j in range(L)])
            if not np.array_equal(seen, counts[w, r]):
                raise TraceFormatError(
                    f"iteration {it}: the tokens' expert counts differ from "
                    f"rank{r}.safetensors.", f)
            chunks.append((w, r, ids))
    chunks.sort(key=lambda c: (c[0], c[1]))
    if not chunks:
        raise TraceFormatError("the token_selected_experts files hold no tokens.", path)
    ids = np.concatenate([c[2] for c in chunks])
    lengths = [c[2].shape[0] for c in chunks]
    try:
        return Trace(num_experts=E, topk_ids=ids, layer_ids=layers,
                     source_rank=np.repeat([c[1] for c in chunks], lengths),
                     window=np.repeat([c[0] for c in chunks], lengths),
                     window_names=[str(it) for it in iters])
    except TraceFormatError as exc:
        raise TraceFormatError(exc.reason, path) from None


READER = Reader(
    kind=FileKind("trtllm-stats", "trace",
                  "a routing trace (TensorRT-LLM expert-statistic directory)"),
    sniff=lambda p: p.is_dir and "meta_info.json" in p.entries,
    read=lambda p: read_trtllm_dir(p.path),
)
"""The TensorRT-LLM statistics directory reader."""
