"""The replay kernel: token chunks streamed through torch ``bincount`` on the CPU or a GPU.

:class:`TokenStream` accumulates, chunk by chunk, the counts one replay needs: assignments per
(source GPU, layer, expert), from which GPU loads and the GPU x GPU matrix follow, and the
cross-node sends deduplicated per token and node (bitmask patterns, or expected values under the
even rule). Memory follows the chunk, not the trace.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from placement.cluster import Cluster
from placement.errors import InputError

__all__ = ["PATTERN_BINS", "TokenStream", "replica_share"]

PATTERN_BINS = 1 << 20
"""Bins of the node-pattern histogram: node masks are cut in groups of ``B`` nodes so that
``L * G * groups * 2^B`` stays below this (8 MB of int64 counts)."""


def replica_share(phy2log: np.ndarray, cluster: Cluster, num_experts: int) -> np.ndarray:
    """``[L, E, G]`` share of expert e's replicas on GPU g (rows sum to 1)."""
    L = phy2log.shape[0]
    G = cluster.num_gpus
    gpu = cluster.gpu_of_slot()
    flat = (np.arange(L)[:, None] * num_experts + phy2log) * G + gpu[None, :]
    cnt = np.bincount(flat.reshape(-1), minlength=L * num_experts * G).reshape(L, num_experts, G)
    return cnt / cnt.sum(axis=2, keepdims=True)


def _group_bits(num_nodes: int, rows: int) -> int:
    """Nodes per bitmask group: the most that keep ``rows * groups * 2^bits <= PATTERN_BINS``."""
    best = 1
    for bits in range(1, min(num_nodes, 16) + 1):
        groups = -(-num_nodes // bits)
        if rows * groups * (1 << bits) <= PATTERN_BINS:
            best = bits
    return best


class TokenStream:
    """Streams token chunks through one replay, accumulating integer (or expected) counts.

    Steps per chunk ``ids [t, L, k]`` (``-1`` = none), ``src [t]``:

    1. ``key [t, L, k]`` int32 ``= (src * L + l) * (E + 1) + e + 1``: padding lands in column 0
       of its (GPU, layer) row and is dropped at the end; one ``bincount`` gives the counts per
       (source GPU, layer, expert) from which GPU loads and the GPU x GPU matrix follow. Bins
       are ordered by source GPU first, so a token's L x k increments stay in one small region.
    2. cross-node sends need deduplication per token over nodes. A table gives every key the bit
       ``1 << node`` of its replica's node (0 for padding); a tree OR over the k experts gives
       one bitmask of reached nodes per (token, layer). The mask is cut into groups of ``B``
       nodes and each group's ``B``-bit pattern counted by one ``bincount`` per (layer, source
       GPU, group); per-node counts follow from the patterns at the end. No sort, integers only.
    3. under the ``even`` rule, step 2 is the expected number of distinct nodes instead:
       ``1 - prod_j (1 - q[e_j, n])`` per node (float64).
    """

    def __init__(
        self,
        rule: str,
        dispatch: np.ndarray | None,
        phy2log: np.ndarray,
        cluster: Cluster,
        num_experts: int,
        top_k: int,
        chunk_tokens: int,
        device: torch.device,
    ) -> None:
        L = phy2log.shape[0]
        G, N, E, k = cluster.num_gpus, cluster.num_nodes, num_experts, top_k
        self.rule, self.L, self.G, self.N, self.E, self.k = rule, L, G, N, E, k
        self.cluster = cluster
        self.device = device
        self.nkeys = L * G * (E + 1)
        if self.nkeys >= 2**31:
            raise InputError(f"too many (layer, GPU, expert) cells for one replay ({self.nkeys}).")
        self.lse = torch.zeros(self.nkeys, dtype=torch.int64, device=device)
        self.valid = torch.zeros(L, dtype=torch.int64, device=device)
        # bins are ordered (source GPU, layer, ...): a token's L layers hit one small region
        self.layer_off = torch.arange(L, dtype=torch.int32, device=device) * (E + 1) + 1
        self.layer_ar = torch.arange(L, dtype=torch.int32, device=device)
        n = chunk_tokens * L * k
        m = chunk_tokens * L
        self.key = torch.empty(n, dtype=torch.int32, device=device)
        if rule == "even":
            # [L*(E+1), N] probability that a random replica of e is NOT on node n
            share = replica_share(phy2log, cluster, E)  # [L, E, G]
            q = share.reshape(L, E, N, cluster.gpus_per_node).sum(axis=3)  # [L, E, N]
            miss = np.ones((L, E + 1, N), dtype=np.float64)
            miss[:, 1:, :] = 1.0 - q
            self.miss = torch.from_numpy(miss.reshape(L * (E + 1), N)).to(device)
            self.node_acc = torch.zeros(L * G, N, dtype=torch.float64, device=device)
            return
        assert dispatch is not None
        if N > 62:
            raise InputError(f"replay supports at most 62 nodes, the cluster has {N}.")
        node = (dispatch // cluster.slots_per_gpu) // cluster.gpus_per_node  # [L, G, E]
        bits = np.zeros((L, G, E + 1), dtype=np.int64)
        bits[:, :, 1:] = np.left_shift(np.int64(1), node)
        self.mdtype = torch.int32 if N <= 30 else torch.int64
        bits = np.ascontiguousarray(bits.transpose(1, 0, 2))  # key order (GPU, layer, expert)
        self.bittab = torch.from_numpy(bits.reshape(-1)).to(device=device, dtype=self.mdtype)
        self.B = _group_bits(N, L * G)
        self.ngroups = -(-N // self.B)
        self.npat = L * G * self.ngroups * (1 << self.B)
        if self.npat >= 2**31:
            raise InputError(f"too many (layer, GPU, node) cells for one replay ({self.npat}).")
        self.phist = torch.zeros(self.npat, dtype=torch.int64, device=device)
        self.bits = torch.empty(n, dtype=self.mdtype, device=device)
        self.tree = torch.empty(m * ((k + 1) // 2), dtype=self.mdtype, device=device)
        self.pkey = torch.empty(self.ngroups * m, dtype=self.mdtype, device=device)

    def run(self, ids_np: np.ndarray, src_np: np.ndarray) -> None:
        """Add one chunk: ``ids_np [t, L, k]`` (-1 = none), ``src_np [t]`` source GPUs."""
        t = ids_np.shape[0]
        if t == 0:
            return
        L, k, dev = self.L, self.k, self.device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only numpy: never written
            ids = torch.from_numpy(ids_np)
        src = torch.from_numpy(np.ascontiguousarray(src_np, dtype=np.int32))
        if dev.type != "cpu":
            ids = ids.to(dev, non_blocking=True)
            src = src.to(dev, non_blocking=True)
        # 1. key [t, L, k] = (src * L + l) * (E + 1) + 1 + e; counts per (src, l, e)
        off = (src * (L * (self.E + 1)))[:, None] + self.layer_off[None, :]  # [t, L]
        key = self.key[: t * L * k].view(t, L, k)
        torch.add(ids, off[:, :, None], out=key)
        self.lse += torch.bincount(key.view(-1), minlength=self.nkeys)
        # 2. cross-node sends, deduplicated per token and node
        if self.rule == "even":
            self.valid += (ids.amax(dim=2) >= 0).sum(dim=0)
            self._even(ids, src)
        else:
            self._masks(key, src, t)

    def _masks(self, key: torch.Tensor, src: torch.Tensor, t: int) -> None:
        L, k, B, ng = self.L, self.k, self.B, self.ngroups
        m = t * L
        # a. bit of every assignment's node
        cur = self.bits[: m * k].view(m, k)
        torch.index_select(self.bittab, 0, key.view(-1), out=cur.view(-1))
        # b. tree OR over the k experts of every (token, layer); two scratch buffers alternate
        scratch = (self.tree, self.bits)
        turn = 0
        while cur.shape[1] > 1:
            w = cur.shape[1]
            h = w // 2
            nxt = scratch[turn][: m * (w - h)].view(m, w - h)
            torch.bitwise_or(cur[:, :h], cur[:, h:2 * h], out=nxt[:, :h])
            if w % 2:
                nxt[:, h].copy_(cur[:, 2 * h])
            cur = nxt
            turn = 1 - turn
        acc = cur.reshape(m)  # [t * L] bitmask of reached nodes, (token, layer) order
        self.valid += (acc.view(t, L) != 0).sum(dim=0)
        # c. one pattern bin per (layer, source GPU, group, B-bit pattern)
        base = (src[:, None] * L + self.layer_ar[None, :]).view(-1)  # [t * L] = src * L + l
        pk = self.pkey[: ng * m].view(ng, m)
        width = ng << B
        for g in range(ng):
            row = pk[g]
            if ng == 1:
                row.copy_(acc)
            else:
                torch.bitwise_right_shift(acc, g * B, out=row)
                row.bitwise_and_((1 << B) - 1)
            row.add_(base * width + (g << B))
        self.phist += torch.bincount(pk.view(-1), minlength=self.npat)

    def _even(self, ids: torch.Tensor, src: torch.Tensor) -> None:
        L, k, N, E, G = self.L, self.k, self.N, self.E, self.G
        t = ids.shape[0]
        # sub-chunks bound the float work tensor [tokens * L, N]
        step = max(1, (1 << 20) // max(L * N, 1))
        larange = torch.arange(L, device=self.device, dtype=torch.int64)
        for s in range(0, t, step):
            part = ids[s:s + step].to(torch.int64)  # [t', L, k]
            sp = src[s:s + step].to(torch.int64)
            tp = part.shape[0]
            rows = (larange[None, :] * (E + 1) + 1)[..., None] + part  # [t', L, k]
            notreach = torch.ones(tp * L, N, dtype=torch.float64, device=self.device)
            for j in range(k):
                notreach.mul_(self.miss.index_select(0, rows[:, :, j].reshape(-1)))
            reach = 1.0 - notreach
            dest = (larange[None, :] * G + sp[:, None]).reshape(-1)  # [t' * L]
            self.node_acc.index_add_(0, dest, reach)

    def finish(
        self, dispatch: np.ndarray | None, phy2log: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(gpu_loads [L, G], matrix [L, G, G], node_sends [L, G, N], tokens [L])``."""
        L, G, N, E = self.L, self.G, self.N, self.E
        c = self.cluster
        lse = self.lse.cpu().numpy().reshape(G, L, E + 1).transpose(1, 0, 2)
        lse = lse[:, :, 1:].astype(np.float64)  # [L, G, E]
        if self.rule == "even":
            share = replica_share(phy2log, c, E)  # [L, E, G]
            matrix = np.einsum("lge,leh->lgh", lse, share)
            ns = self.node_acc.cpu().numpy().reshape(L, G, N).copy()
        else:
            assert dispatch is not None
            dest = dispatch // c.slots_per_gpu  # [L, G, E]
            cell = (np.arange(L * G).reshape(L, G, 1) * G + dest).reshape(-1)
            matrix = np.bincount(cell, weights=lse.reshape(-1), minlength=L * G * G)
            matrix = matrix.reshape(L, G, G)
            B, ng = self.B, self.ngroups
            ph = self.phist.cpu().numpy().reshape(G, L, ng, 1 << B).transpose(1, 0, 2, 3)
            ph = ph.astype(np.float64)  # [L, G, groups, patterns]
            has = ((np.arange(1 << B)[:, None] >> np.arange(B)[None, :]) & 1).astype(np.float64)
            ns = (ph @ has).reshape(L, G, ng * B)[:, :, :N].copy()  # [L, G, N]
        tokens = self.valid.cpu().numpy().astype(np.float64)
        own = c.node_of_gpu()
        ns[:, np.arange(G), own] = 0.0  # the token's own node is not a cross-node send
        loads = matrix.sum(axis=1)
        return loads, matrix, ns, tokens
