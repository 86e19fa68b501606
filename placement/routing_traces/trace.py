"""The one in-memory trace type that every reader returns and every consumer reads.

A :class:`Trace` holds either

* token-level routing: ``topk_ids [T, L, k]`` logical expert ids (``-1`` = no expert), with
  optional ``source_rank [T]``, ``window [T]`` and ``topk_weights [T, L, k]``; or
* aggregated counts: ``counts [W, L, E]`` tokens routed to each expert per window, optionally
  split by source rank as ``[W, R, L, E]``,

plus the model's decoder-layer id of every traced MoE layer (``layer_ids [L]``) and the number of
experts. It is immutable (arrays are read-only) and validated once, at construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from placement._util import int_array
from placement.errors import CapabilityError, TraceFormatError

__all__ = ["Trace"]


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only contiguous array; writeable input is copied, so the caller's array is left
    as it was and later changes to it cannot reach the trace."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.copy()
    a.flags.writeable = False
    return a


def _int_array(name: str, value: Any, ndim: int) -> np.ndarray:
    return int_array(value, name, ndim, error=TraceFormatError)


class Trace:
    """Routing of tokens to logical experts, token by token or as counts.

    Args:
        num_experts: E, logical routed experts per MoE layer.
        topk_ids: ``[T, L, k]`` integer logical expert ids, ``-1`` for none (token-level).
        counts: ``[L, E]``, ``[W, L, E]`` or ``[W, R, L, E]`` non-negative tokens per expert
            (aggregated); ``R`` is the source rank axis where known.
        layer_ids: ``[L]`` decoder-layer index of each traced MoE layer (default ``0..L-1``).
        source_rank: ``[T]`` EP rank that holds each token's attention (token-level).
        window: ``[T]`` window (forward pass, time window, prompt) of each token (token-level).
        topk_weights: ``[T, L, k]`` gate weights (token-level).
        window_names: ``[W]`` a name per window.
        model: the model's name.
        num_hidden_layers: decoder layers of the model, dense ones included, when known.
        top_k: experts per token for aggregated traces, when known (token-level: from shape).
    """

    __slots__ = (
        "_counts",
        "_layer_ids",
        "_source_rank",
        "_topk_ids",
        "_topk_weights",
        "_window",
        "_window_index",
        "_window_names",
        "model",
        "num_experts",
        "num_hidden_layers",
        "top_k",
    )

    def __init__(
        self,
        *,
        num_experts: int,
        topk_ids: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        layer_ids: Sequence[int] | np.ndarray | None = None,
        source_rank: np.ndarray | None = None,
        window: np.ndarray | None = None,
        topk_weights: np.ndarray | None = None,
        window_names: Sequence[str] | None = None,
        model: str | None = None,
        num_hidden_layers: int | None = None,
        top_k: int | None = None,
    ) -> None:
        # 1. exactly one of the two kinds
        if (topk_ids is None) == (counts is None):
            raise TraceFormatError("A trace needs exactly one of topk_ids (tokens) or counts.")
        try:
            num_experts = int(num_experts)
        except (TypeError, ValueError):
            raise TraceFormatError(
                f"Expected num_experts to be an integer, got {num_experts!r}."
            ) from None
        if num_experts < 1:
            raise TraceFormatError(f"Expected num_experts >= 1, got {num_experts}.")
        self.num_experts = num_experts
        self.model = None if model is None else str(model)

        self._topk_ids: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._source_rank: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._window_index: np.ndarray | None = None
        self._topk_weights: np.ndarray | None = None

        # 2. the routing itself
        if topk_ids is not None:
            ids = _int_array("topk_ids", topk_ids, 3)
            T, L, k = ids.shape
            if L < 1 or k < 1:
                raise TraceFormatError(
                    f"Expected topk_ids [T, L, k] with L, k >= 1, got {ids.shape}."
                )
            if ids.size:
                lo, hi = int(ids.min()), int(ids.max())
                if lo < -1 or hi >= num_experts:
                    bad = lo if lo < -1 else hi
                    raise TraceFormatError(
                        f"Expected topk_ids in [-1, {num_experts}) (num_experts={num_experts}), "
                        f"found {bad}."
                    )
            small = np.int16 if num_experts < 2**15 else np.int32
            self._topk_ids = _readonly(ids.astype(small, copy=False))
            if top_k is not None and int(top_k) != k:
                raise TraceFormatError(f"top_k={top_k} disagrees with topk_ids' last axis ({k}).")
            self.top_k: int | None = k
            num_layers = L
            if source_rank is not None:
                sr = _int_array("source_rank", source_rank, 1)
                if sr.shape[0] != T:
                    raise TraceFormatError(
                        f"Expected source_rank of length {T}, got {sr.shape[0]}."
                    )
                if sr.size and sr.min() < 0:
                    raise TraceFormatError(f"Expected source_rank >= 0, found {int(sr.min())}.")
                self._source_rank = _readonly(sr.astype(np.int32, copy=False))
            if window is not None:
                w = _int_array("window", window, 1)
                if w.shape[0] != T:
                    raise TraceFormatError(f"Expected window of length {T}, got {w.shape[0]}.")
                self._window = _readonly(w.astype(np.int64, copy=False))
                uniq, inv = np.unique(self._window, return_inverse=True)
                self._window_index = _readonly(inv.astype(np.int32).reshape(-1))
                n_windows = len(uniq) if T else 1
            else:
                n_windows = 1
            if topk_weights is not None:
                tw = np.asarray(topk_weights)
                if not np.issubdtype(tw.dtype, np.floating):
                    raise TraceFormatError(
                        f"Expected topk_weights to be floats, got dtype {tw.dtype}."
                    )
                if tw.shape != ids.shape:
                    raise TraceFormatError(
                        f"Expected topk_weights of shape {ids.shape} like topk_ids, got {tw.shape}."
                    )
                if not np.isfinite(tw).all():
                    raise TraceFormatError("topk_weights holds NaN or infinite values.")
                self._topk_weights = _readonly(tw.astype(np.float32, copy=False))
        else:
            if source_rank is not None or window is not None or topk_weights is not None:
                raise TraceFormatError(
                    "source_rank, window and topk_weights belong to token-level traces, not counts."
                )
            c = np.asarray(counts)
            if c.dtype == bool or not (np.issubdtype(c.dtype, np.integer)
                                       or np.issubdtype(c.dtype, np.floating)):
                raise TraceFormatError(f"Expected counts to be numbers, got dtype {c.dtype}.")
            if c.ndim == 2:
                c = c[None, None]
            elif c.ndim == 3:
                c = c[:, None]
            elif c.ndim != 4:
                raise TraceFormatError(
                    f"Expected counts [L, E], [W, L, E] or [W, R, L, E], got shape {c.shape}."
                )
            if c.shape[-1] != num_experts:
                raise TraceFormatError(
                    f"Expected counts' last axis to be num_experts={num_experts}, "
                    f"got {c.shape[-1]}."
                )
            if min(c.shape) < 1:
                raise TraceFormatError(f"counts is empty (shape {c.shape}).")
            c = c.astype(np.float64, copy=False)
            if not np.isfinite(c).all():
                raise TraceFormatError("counts holds NaN or infinite values.")
            if (c < 0).any():
                raise TraceFormatError(f"counts holds negative values (min {c.min():g}).")
            self._counts = _readonly(c)
            self.top_k = None if top_k is None else int(top_k)
            if self.top_k is not None and self.top_k < 1:
                raise TraceFormatError(f"Expected top_k >= 1, got {top_k}.")
            num_layers = c.shape[2]
            n_windows = c.shape[0]

        # 3. layers
        if layer_ids is None:
            lids = np.arange(num_layers, dtype=np.int64)
        else:
            lids = _int_array("layer_ids", layer_ids, 1).astype(np.int64)
            if lids.shape[0] != num_layers:
                raise TraceFormatError(
                    f"Expected {num_layers} layer_ids (one per traced layer), got {lids.shape[0]}."
                )
            if lids.size and lids.min() < 0:
                raise TraceFormatError(f"Expected layer_ids >= 0, found {int(lids.min())}.")
            if len(np.unique(lids)) != len(lids):
                raise TraceFormatError("layer_ids has repeated values.")
        self._layer_ids = _readonly(lids)
        if num_hidden_layers is not None:
            num_hidden_layers = int(num_hidden_layers)
            if num_hidden_layers <= int(lids.max()):
                raise TraceFormatError(
                    f"num_hidden_layers={num_hidden_layers} but a traced layer id is "
                    f"{int(lids.max())}."
                )
        self.num_hidden_layers: int | None = num_hidden_layers

        # 4. window names
        if window_names is not None:
            names = tuple(str(n) for n in np.asarray(window_names).reshape(-1).tolist())
            if len(names) != n_windows:
                raise TraceFormatError(
                    f"Expected {n_windows} window_names (one per window), got {len(names)}."
                )
            self._window_names: tuple[str, ...] | None = names
        else:
            self._window_names = None

    # ---------------------------------------------------------------------------------------
    # shape
    # ---------------------------------------------------------------------------------------
    @property
    def is_token_level(self) -> bool:
        """True when the trace holds token-level routing, False for aggregated counts."""
        return self._topk_ids is not None

    @property
    def kind(self) -> str:
        """``"tokens"`` or ``"counts"``."""
        return "tokens" if self.is_token_level else "counts"

    @property
    def layer_ids(self) -> np.ndarray:
        """``[L]`` decoder-layer index of every traced MoE layer."""
        return self._layer_ids

    @property
    def num_layers(self) -> int:
        """L, traced MoE layers."""
        return int(self._layer_ids.shape[0])

    @property
    def num_tokens(self) -> int | None:
        """T for token-level traces, None for aggregated ones."""
        return None if self._topk_ids is None else int(self._topk_ids.shape[0])

    @property
    def num_windows(self) -> int:
        """W, windows (1 when the trace has no window axis)."""
        if self._counts is not None:
            return int(self._counts.shape[0])
        if self._window is None or self._topk_ids is None or self._topk_ids.shape[0] == 0:
            return 1
        assert self._window_index is not None
        return int(self._window_index.max()) + 1

    @property
    def has_source_rank(self) -> bool:
        """Whether the trace says which EP rank each token (or count) came from."""
        if self._counts is not None:
            return self._counts.shape[1] > 1
        return self._source_rank is not None

    @property
    def num_source_ranks(self) -> int | None:
        """R, the number of source ranks (max rank + 1), or None when unknown."""
        if self._counts is not None:
            return int(self._counts.shape[1]) if self._counts.shape[1] > 1 else None
        if self._source_rank is None:
            return None
        return int(self._source_rank.max()) + 1 if self._source_rank.size else 0

    @property
    def window_names(self) -> tuple[str, ...]:
        """A name per window (``"0"``, ``"1"``, ... when the trace gives none)."""
        if self._window_names is not None:
            return self._window_names
        if self._window is not None and self._topk_ids is not None and self._topk_ids.shape[0]:
            return tuple(str(int(v)) for v in np.unique(self._window))
        return tuple(str(i) for i in range(self.num_windows))

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        """Decoder layers without routed experts (known when ``num_hidden_layers`` is)."""
        if self.num_hidden_layers is None:
            return ()
        traced = set(self._layer_ids.tolist())
        return tuple(i for i in range(self.num_hidden_layers) if i not in traced)

    # raw token-level arrays ---------------------------------------------------------------
    def _require_tokens(self, what: str) -> np.ndarray:
        if self._topk_ids is None:
            raise CapabilityError(
                f"{what} needs a token-level trace; this trace holds aggregated counts only."
            )
        return self._topk_ids

    @property
    def topk_ids(self) -> np.ndarray:
        """``[T, L, k]`` logical expert ids, ``-1`` = none (token-level only)."""
        return self._require_tokens("topk_ids")

    @property
    def topk_weights(self) -> np.ndarray | None:
        """``[T, L, k]`` gate weights, when recorded."""
        return self._topk_weights

    @property
    def source_rank(self) -> np.ndarray | None:
        """``[T]`` source EP rank of every token, when recorded."""
        return self._source_rank

    @property
    def window(self) -> np.ndarray | None:
        """``[T]`` raw window value of every token, when recorded."""
        return self._window

    @property
    def window_index(self) -> np.ndarray:
        """``[T]`` window of every token as ``0..W-1`` (token-level only)."""
        ids = self._require_tokens("window_index")
        if self._window_index is None:
            return np.zeros(ids.shape[0], dtype=np.int32)
        return self._window_index

    @property
    def num_assignments(self) -> float:
        """Total token-expert assignments (sum of all counts)."""
        if self._counts is not None:
            return float(self._counts.sum())
        assert self._topk_ids is not None
        return float(np.count_nonzero(self._topk_ids >= 0))

    # ---------------------------------------------------------------------------------------
    # statistics
    # ---------------------------------------------------------------------------------------
    def window_rank_counts(self) -> np.ndarray:
        """``[W, R, L, E]`` counts per window and source rank (R = 1 when ranks are unknown)."""
        if self._counts is not None:
            return self._counts
        ids = self._topk_ids
        assert ids is not None
        T, L, k = ids.shape
        E = self.num_experts
        W = self.num_windows
        sr = self._source_rank
        R = 1 if sr is None or T == 0 else int(sr.max()) + 1
        out = np.zeros(W * R * L * E, dtype=np.float64)
        chunk = max(1, 4_000_000 // max(L * k, 1))
        layer_off = (np.arange(L, dtype=np.int64) * E)[None, :, None]
        for start in range(0, T, chunk):
            part = ids[start:start + chunk].astype(np.int64)
            row = self.window_index[start:start + chunk].astype(np.int64)
            if sr is not None:
                row = row * R + sr[start:start + chunk]
            else:
                row = row * R
            flat = row[:, None, None] * (L * E) + layer_off + part
            out += np.bincount(flat[part >= 0], minlength=out.size)[: out.size]
        return out.reshape(W, R, L, E)

    def window_counts(self) -> np.ndarray:
        """``[W, L, E]`` tokens routed to every expert, per window."""
        return self.window_rank_counts().sum(axis=1)

    def counts(self) -> np.ndarray:
        """``[L, E]`` tokens routed to every expert over the whole trace."""
        return self.window_rank_counts().sum(axis=(0, 1))

    def rank_counts(self) -> np.ndarray:
        """``[R, L, E]`` tokens routed to every expert from every source rank.

        Raises :class:`CapabilityError` when the trace does not record source ranks.
        """
        if not self.has_source_rank:
            raise CapabilityError("this trace does not record source ranks.")
        return self.window_rank_counts().sum(axis=0)

    def coactivation(self, layer: int) -> np.ndarray:
        """``[E, E]`` number of tokens routed to both experts i and j in traced layer ``layer``.

        The diagonal holds each expert's token count. Token-level traces only.
        """
        ids = self._require_tokens("co-activation")
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer index {layer} out of range [0, {self.num_layers}).")
        E = self.num_experts
        x = ids[:, layer, :].astype(np.int64)
        T, k = x.shape
        valid = x >= 0
        rows = np.repeat(np.arange(T), k)[valid.reshape(-1)]
        cols = x.reshape(-1)[valid.reshape(-1)]
        from scipy.sparse import csr_matrix

        m = csr_matrix((np.ones(rows.size, dtype=np.float64), (rows, cols)), shape=(T, E))
        m.sum_duplicates()
        m.data[:] = 1.0  # a token counts once per expert even if listed twice
        return np.asarray((m.T @ m).toarray())

    # ---------------------------------------------------------------------------------------
    # selection
    # ---------------------------------------------------------------------------------------
    def select_windows(self, windows: Sequence[int]) -> Trace:
        """A trace of the given windows (indices ``0..W-1``), in the given order for counts."""
        idx = [int(w) for w in windows]
        W = self.num_windows
        for w in idx:
            if not 0 <= w < W:
                raise IndexError(f"window index {w} out of range [0, {W}).")
        names = [self.window_names[w] for w in idx] if self._window_names is not None else None
        if self._counts is not None:
            return Trace(
                num_experts=self.num_experts,
                counts=self._counts[idx],
                layer_ids=self._layer_ids,
                window_names=names,
                model=self.model,
                num_hidden_layers=self.num_hidden_layers,
                top_k=self.top_k,
            )
        assert self._topk_ids is not None
        mask = np.isin(self.window_index, np.asarray(idx, dtype=np.int64))
        if names is not None:
            # token traces keep window order by value; names must follow the same order
            kept = sorted(set(idx))
            names = [self.window_names[w] for w in kept]
        return Trace(
            num_experts=self.num_experts,
            topk_ids=self._topk_ids[mask],
            layer_ids=self._layer_ids,
            source_rank=None if self._source_rank is None else self._source_rank[mask],
            window=None if self._window is None else self._window[mask],
            topk_weights=None if self._topk_weights is None else self._topk_weights[mask],
            window_names=names,
            model=self.model,
            num_hidden_layers=self.num_hidden_layers,
        )

    def select_layers(self, layers: Sequence[int]) -> Trace:
        """A trace of the given traced-layer indices (``0..L-1``)."""
        idx = [int(i) for i in layers]
        for i in idx:
            if not 0 <= i < self.num_layers:
                raise IndexError(f"layer index {i} out of range [0, {self.num_layers}).")
        common: dict[str, Any] = dict(
            num_experts=self.num_experts,
            layer_ids=self._layer_ids[idx],
            window_names=self._window_names,
            model=self.model,
            num_hidden_layers=self.num_hidden_layers,
        )
        if self._counts is not None:
            return Trace(counts=self._counts[:, :, idx], top_k=self.top_k, **common)
        assert self._topk_ids is not None
        return Trace(
            topk_ids=self._topk_ids[:, idx],
            source_rank=self._source_rank,
            window=self._window,
            topk_weights=None if self._topk_weights is None else self._topk_weights[:, idx],
            **common,
        )

    def iter_token_chunks(
        self, chunk_tokens: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(topk_ids [t, L, k], source_rank [t] or None)`` chunks of at most
        ``chunk_tokens`` tokens (token-level only)."""
        ids = self._require_tokens("iterating tokens")
        if chunk_tokens < 1:
            raise ValueError(f"Expected chunk_tokens >= 1, got {chunk_tokens}.")
        for start in range(0, ids.shape[0], chunk_tokens):
            sr = (None if self._source_rank is None
                  else self._source_rank[start:start + chunk_tokens])
            yield ids[start:start + chunk_tokens], sr

    def __repr__(self) -> str:
        what = (
            f"tokens={self.num_tokens}, top_k={self.top_k}"
            if self.is_token_level
            else f"counts, top_k={self.top_k}"
        )
        return (
            f"Trace({what}, layers={self.num_layers}, experts={self.num_experts}, "
            f"windows={self.num_windows}, model={self.model!r})"
        )
