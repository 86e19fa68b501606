"""Trace readers for vLLM's routed experts, Megatron-Core's router trace and TensorRT-LLM's
co-occurrence statistics: each sample is written here from the engine's own schema (the source
file is cited on each maker), told by content, read into the tokens it holds, and a malformed
one is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from placement.errors import TraceFormatError
from placement.filekinds import identify
from placement.routing_traces import load_trace

RNG = np.random.default_rng(7)


def _routes(tokens: int, layers: int, k: int, E: int) -> np.ndarray:
    """``[tokens, layers, k]`` distinct expert ids per token and layer (a router's top-k)."""
    return np.argsort(RNG.random((tokens, layers, E)), axis=-1)[..., :k].astype(np.int32)


# -------------------------------------------------------------------------------------------
# vLLM
# -------------------------------------------------------------------------------------------
def _vllm_npz(path: Path, requests: list[np.ndarray], num_experts: int | None = 8) -> None:
    """What docs/traces.md's script saves: ``CompletionOutput.routed_experts`` of every request.

    vLLM ``vllm/outputs.py`` (``CompletionOutput``): ``routed_experts: np.ndarray | None  #
    [seq_len,layer_num,topk]``; ``vllm/model_executor/layers/fused_moe/routed_experts_capturer.py``
    (``RoutedExpertsCapturer.init_buffer``/``capture``): an int32 buffer of
    ``(tokens, hf_config.num_hidden_layers, num_experts_per_tok)``, zeroed, each MoE layer's
    ``topk_ids`` written at its layer index (a dense layer's rows stay 0).
    """
    arrays = {f"routed_experts_{i}": r for i, r in enumerate(requests)}
    if num_experts is not None:
        arrays["num_experts"] = np.array(num_experts)
    np.savez(path, **arrays)


def _vllm_request(tokens: int) -> np.ndarray:
    r = np.zeros((tokens, 4, 2), dtype=np.int32)  # layer 0 dense (DeepSeek's first_k_dense)
    r[:, 1:] = _routes(tokens, 3, 2, 8)
    return r


def test_vllm_routed_experts(tmp_path: Path) -> None:
    reqs = [_vllm_request(n) for n in (5, 3, 7)]
    _vllm_npz(tmp_path / "routes.npz", reqs)
    kind = identify(tmp_path / "routes.npz")
    assert kind is not None and kind.name == "vllm-routed-experts"
    t = load_trace(tmp_path / "routes.npz")
    np.testing.assert_array_equal(t.topk_ids, np.concatenate(reqs)[:, 1:])
    np.testing.assert_array_equal(t.layer_ids, [1, 2, 3])
    assert (t.num_experts, t.num_windows, t.window_names) == (8, 3, ("0", "1", "2"))
    assert t.dense_layer_ids == (0,)
    np.testing.assert_array_equal(t.window_index, np.repeat([0, 1, 2], [5, 3, 7]))


def test_vllm_without_num_experts_takes_the_largest_id(tmp_path: Path) -> None:
    r = _vllm_request(6)
    _vllm_npz(tmp_path / "r.npz", [r], num_experts=None)
    assert load_trace(tmp_path / "r.npz").num_experts == int(r.max()) + 1


def test_vllm_malformed_is_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", routed_experts_0=np.zeros((4, 2), dtype=np.int32))
    with pytest.raises(TraceFormatError, match=r"Expected routed_experts_0 to be an integer "
                                               r"array \[seq_len, layers, topk\]"):
        load_trace(tmp_path / "bad.npz")
    np.savez(tmp_path / "dense.npz", routed_experts_0=np.zeros((4, 3, 2), dtype=np.int32))
    with pytest.raises(TraceFormatError, match="no MoE layer was captured"):
        load_trace(tmp_path / "dense.npz")


# -------------------------------------------------------------------------------------------
# Megatron-Core
# -------------------------------------------------------------------------------------------
def _megatron_dir(path: Path, steps: int = 2, ranks: int = 2, layers: tuple[int, ...] = (1, 3),
                  k: int = 2, E: int = 6) -> dict[tuple[int, int], np.ndarray]:
    """``router_trace_rank{r}.jsonl`` as Megatron-Core's ``RouterTracer`` writes them.

    ``megatron/core/transformer/moe/router_trace.py``: ``_make_index_record`` (keys ``step``,
    ``stage`` = "pre_dispatch", ``block``, ``layer``, ``rank``, ``num_tokens``, ``topk``, and
    ``mtp_idx`` for MTP records) and ``_flush_records_to_disk`` (``top_indices`` =
    ``tensor.tolist()``, ``f.write(json.dumps(rec) + "\\n")``) into
    ``router_trace_rank{rank}.jsonl``. Returns ``{(step, rank): [tokens, layers, k]}``.
    """
    path.mkdir()
    out: dict[tuple[int, int], np.ndarray] = {}
    for rank in range(ranks):
        lines = []
        for step in range(steps):
            n = 3 + step + rank
            ids = _routes(n, len(layers), k, E)
            out[(step, rank)] = ids
            for j, layer in enumerate(layers):
                lines.append({"step": step, "stage": "pre_dispatch", "block": "decoder",
                              "layer": layer, "rank": rank, "num_tokens": n, "topk": k,
                              "top_indices": np.sort(ids[:, j], axis=1).tolist()})
            lines.append({"step": step, "stage": "pre_dispatch", "block": "mtp", "layer": 0,
                          "rank": rank, "num_tokens": n, "topk": k, "mtp_idx": 0,
                          "top_indices": _routes(n, 1, k, E)[:, 0].tolist()})
        (path / f"router_trace_rank{rank}.jsonl").write_text(
            "".join(json.dumps(rec) + "\n" for rec in lines))
    return out


def test_megatron_router_trace(tmp_path: Path) -> None:
    expected = _megatron_dir(tmp_path / "trace")
    for source in (tmp_path / "trace", tmp_path / "trace" / "router_trace_rank1.jsonl"):
        kind = identify(source)
        assert kind is not None and kind.name == "megatron-router-trace"
    t = load_trace(tmp_path / "trace")
    order = [(s, r) for s in range(2) for r in range(2)]  # step by step, ranks in order
    np.testing.assert_array_equal(t.topk_ids,
                                  np.sort(np.concatenate([expected[o] for o in order]), axis=2))
    np.testing.assert_array_equal(t.layer_ids, [1, 3])
    np.testing.assert_array_equal(t.source_rank,
                                  np.concatenate([np.full(len(expected[o]), o[1]) for o in order]))
    assert t.window_names == ("0", "1") and t.num_experts == 6
    one = load_trace(tmp_path / "trace" / "router_trace_rank1.jsonl")
    assert one.num_tokens == len(expected[(0, 1)]) + len(expected[(1, 1)])


def test_megatron_told_by_content_not_name(tmp_path: Path) -> None:
    _megatron_dir(tmp_path / "trace")
    (tmp_path / "trace" / "router_trace_rank0.jsonl").rename(tmp_path / "anything.txt")
    kind = identify(tmp_path / "anything.txt")
    assert kind is not None and kind.name == "megatron-router-trace"
    assert load_trace(tmp_path / "anything.txt").num_windows == 2


def test_megatron_malformed_is_one_line(tmp_path: Path) -> None:
    _megatron_dir(tmp_path / "trace")
    f = tmp_path / "trace" / "router_trace_rank1.jsonl"
    lines = f.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["layer"] = 7  # rank 1 traces other layers than rank 0
    f.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    with pytest.raises(TraceFormatError, match=r"step 0 rank 1 traces layers \[3, 7\], not "
                                               r"\[1, 3\]"):
        load_trace(tmp_path / "trace")
    f.write_text(lines[0] + "\n{\"step\": 1, \"stage\": broken\n")
    with pytest.raises(TraceFormatError, match="line 2 is not JSON"):
        load_trace(f)


# -------------------------------------------------------------------------------------------
# TensorRT-LLM co-occurrence statistics
# -------------------------------------------------------------------------------------------
def _trtllm_cooccurrence_dir(path: Path, iters: tuple[int, ...] = (10, 11), ranks: int = 2,
                             layers: tuple[int, ...] = (3, 4), k: int = 2, E: int = 6
                             ) -> dict[tuple[int, int, int], np.ndarray]:
    """A statistics directory as TensorRT-LLM's co-occurrence recorder writes it.

    ``ExpertStatistic`` (tensorrt_llm/_torch/expert_statistic.py, the variant read by
    examples/wide_ep/ep_load_balancer/generate_eplb_config_cooccurrence.py's
    ``load_expert_statistic``): ``_maybe_add_info`` keys ``f"{iter}_{layer}"``; ``rank{r}``
    holds ``token_selected_experts.flatten().bincount(minlength=E).to(int32)``,
    ``cooccurrence_rank{r}`` an ``[E, E]`` int32 with ``cooccurrence[rows, cols] += 1`` over
    ``meshgrid(ids[i], ids[i])`` for every token ``i``, ``token_selected_experts_rank{r}`` the
    ``[tokens, k]`` ids; ``_set_iter`` writes the three ``safetensors.torch.save_file`` files
    and rank 0's ``meta_info.json`` ``{"num_experts", "num_experts_per_token"}``.
    Returns ``{(iter, rank, layer): [tokens, k]}``.
    """
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "meta_info.json").write_text(json.dumps({"num_experts": E,
                                                     "num_experts_per_token": k}))
    out: dict[tuple[int, int, int], np.ndarray] = {}
    for r in range(ranks):
        counts, cooc, tokens = {}, {}, {}
        for it in iters:
            n = 4 + r + (it - iters[0])
            ids = _routes(n, len(layers), k, E)
            for j, layer in enumerate(layers):
                key = f"{it}_{layer}"
                x = ids[:, j]
                counts[key] = np.bincount(x.ravel(), minlength=E).astype(np.int32)
                c = np.zeros((E, E), dtype=np.int32)
                for row in x:
                    rows, cols = np.meshgrid(row, row, indexing="ij")
                    c[rows, cols] += 1
                cooc[key] = c
                tokens[key] = x.copy()
                out[(it, r, layer)] = x
        save_file(counts, str(path / f"rank{r}.safetensors"))
        save_file(cooc, str(path / f"cooccurrence_rank{r}.safetensors"))
        save_file(tokens, str(path / f"token_selected_experts_rank{r}.safetensors"))
    return out


def test_trtllm_cooccurrence_statistics_are_token_level(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    expected = _trtllm_cooccurrence_dir(tmp_path / "stats")
    kind = identify(tmp_path / "stats")
    assert kind is not None and kind.name == "trtllm-stats"
    t = load_trace(tmp_path / "stats")
    assert t.is_token_level and t.window_names == ("10", "11") and t.num_experts == 6
    np.testing.assert_array_equal(t.layer_ids, [3, 4])
    order = [(it, r) for it in (10, 11) for r in range(2)]
    np.testing.assert_array_equal(
        t.topk_ids, np.concatenate([np.stack([expected[(it, r, la)] for la in (3, 4)], axis=1)
                                    for it, r in order]))
    np.testing.assert_array_equal(t.source_rank, np.concatenate(
        [np.full(len(expected[(it, r, 3)]), r) for it, r in order]))
    # the recorder's co-occurrence, summed as the example sums it, is the trace's co-activation
    for j, layer in enumerate((3, 4)):
        total = sum(load_file(str(tmp_path / "stats" / f"cooccurrence_rank{r}.safetensors"))
                    [f"{it}_{layer}"].astype(np.int64) for it in (10, 11) for r in range(2))
        np.testing.assert_array_equal(t.coactivation(j), total)


def test_trtllm_tokens_that_contradict_the_counts_are_one_line(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    _trtllm_cooccurrence_dir(tmp_path / "stats")
    f = tmp_path / "stats" / "token_selected_experts_rank1.safetensors"
    tensors = load_file(str(f))
    tensors["11_4"] = (tensors["11_4"] + 1) % 6
    save_file(tensors, str(f))
    with pytest.raises(TraceFormatError, match=r"iteration 11: the tokens' expert counts differ "
                                               r"from rank1\.safetensors\."):
        load_trace(tmp_path / "stats")


def test_trtllm_counts_only_without_token_files(tmp_path: Path) -> None:
    _trtllm_cooccurrence_dir(tmp_path / "stats")
    for r in range(2):
        (tmp_path / "stats" / f"token_selected_experts_rank{r}.safetensors").unlink()
    t = load_trace(tmp_path / "stats")
    assert not t.is_token_level and t.num_source_ranks == 2


@pytest.mark.parametrize("maker", ["vllm", "megatron", "trtllm"])
def test_trace_inspect_reads_each(tmp_path: Path, maker: str) -> None:
    from click.testing import CliRunner

    from placement.cli import main

    if maker == "vllm":
        _vllm_npz(tmp_path / "t.npz", [_vllm_request(9)])
        src = tmp_path / "t.npz"
    elif maker == "megatron":
        _megatron_dir(tmp_path / "t")
        src = tmp_path / "t"
    else:
        _trtllm_cooccurrence_dir(tmp_path / "t")
        src = tmp_path / "t"
    r = CliRunner().invoke(main, ["trace", "inspect", str(src), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "tokens" and d["num_tokens"] == load_trace(src).num_tokens
