"""Capture routing from tiny random Hugging Face MoE models of every supported family.

The captured expert ids are compared with an independent numpy recomputation of each family's
router (softmax top-k; DeepSeek-V3: sigmoid + correction bias + group-limited top-k) from the
hidden states that enter the MoE block. Needs ``transformers`` (the ``capture`` extra): the
module is skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip(
    "transformers", reason="capture tests need transformers: pip install 'placement[capture]'"
)
import torch  # noqa: E402

from placement.errors import InputError  # noqa: E402
from placement.routing_traces import read_native, write_native  # noqa: E402
from placement.routing_traces.capture import (  # noqa: E402
    capture_model,
    capture_routing,
    find_moe_layers,
    make_batches,
    read_prompts,
    read_token_ids,
)

COMMON = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              num_experts_per_tok=2, pad_token_id=0, bos_token_id=2, eos_token_id=3)
MLA = dict(COMMON, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
           moe_intermediate_size=16, first_k_dense_replace=1, kv_lora_rank=16,
           qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)


def _config(family: str):
    t = transformers
    if family == "mixtral":
        return t.MixtralConfig(num_local_experts=8, **COMMON)
    if family == "qwen2_moe":  # layer 0 dense (mlp_only_layers)
        return t.Qwen2MoeConfig(num_experts=8, moe_intermediate_size=16,
                                shared_expert_intermediate_size=16, mlp_only_layers=[0],
                                norm_topk_prob=False, **COMMON)
    if family == "qwen3_moe":
        return t.Qwen3MoeConfig(num_experts=8, moe_intermediate_size=16, head_dim=8,
                                norm_topk_prob=True, **COMMON)
    if family == "olmoe":
        return t.OlmoeConfig(num_experts=8, norm_topk_prob=False, **COMMON)
    if family == "deepseek_v2":
        return t.DeepseekV2Config(q_lora_rank=None, topk_method="greedy", n_group=1,
                                  topk_group=1, routed_scaling_factor=1.0, **MLA)
    if family == "deepseek_v3":
        return t.DeepseekV3Config(q_lora_rank=16, n_group=4, topk_group=2, norm_topk_prob=True,
                                  routed_scaling_factor=2.5, **MLA)
    raise KeyError(family)


FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
MOE_LAYERS = {"qwen2_moe": [1, 2], "deepseek_v2": [1, 2], "deepseek_v3": [1, 2]}


def tiny_model(family: str):
    """A random model (seed 0) with routers drawn wide enough that top-k has no near ties."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(family)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in find_moe_layers(model):
            layer.gate.weight.copy_(torch.randn(layer.gate.weight.shape, generator=g))
            bias = getattr(layer.gate, "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.2)
    return model


def save_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    vocab.update({f"w{i}": i + 4 for i in range(96)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
        eos_token="[EOS]",
    )
    fast.save_pretrained(path)


@pytest.fixture(scope="module")
def models():
    return {f: tiny_model(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, models):
    """qwen3_moe and deepseek_v3 saved to disk with a tokenizer."""
    out = {}
    for family in ("qwen3_moe", "deepseek_v3"):
        d = tmp_path_factory.mktemp(family)
        models[family].save_pretrained(d)
        save_tokenizer(d)
        out[family] = d
    return out


def reference_topk(family, cfg, gate, h):
    """Independent numpy router: ``h [N, H]`` -> (ids [N, k], weights [N, k])."""
    W = gate.weight.detach().double().numpy()
    logits = h.astype(np.float64) @ W.T
    k = cfg.num_experts_per_tok
    if family == "deepseek_v3":
        s = 1.0 / (1.0 + np.exp(-logits))
        sc = s + gate.e_score_correction_bias.detach().double().numpy()
        G = cfg.n_group
        grouped = sc.reshape(len(sc), G, -1)
        gscore = np.sort(grouped, axis=2)[:, :, -2:].sum(axis=2)
        keep = np.argsort(-gscore, axis=1)[:, : cfg.topk_group]
        mask = np.zeros_like(gscore, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        sc = np.where(np.repeat(mask, grouped.shape[2], axis=1), sc, -np.inf)
        ids = np.argsort(-sc, axis=1)[:, :k]
        w = np.take_along_axis(s, ids, axis=1)
        w = w / (w.sum(axis=1, keepdims=True) + 1e-20)
        return ids, w * cfg.routed_scaling_factor
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ids = np.argsort(-p, axis=1)[:, :k]
    w = np.take_along_axis(p, ids, axis=1)
    if family == "mixtral" or getattr(cfg, "norm_topk_prob", False):
        w = w / w.sum(axis=1, keepdims=True)
    if family == "deepseek_v2":
        w = w * cfg.routed_scaling_factor
    return ids, w


def _sorted_by_id(ids, w):
    order = np.argsort(ids, axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(w, order, -1)


SEQS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 30, 40, 50, 60], [70]]


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_ids_equal_independent_router(models, family):
    model = models[family]
    moe = find_moe_layers(model)
    assert [m.layer_id for m in moe] == MOE_LAYERS.get(family, [0, 1, 2])
    seen: dict[int, list[np.ndarray]] = {m.layer_id: [] for m in moe}
    hooks = [m.block.register_forward_pre_hook(
        lambda _mod, args, lid=m.layer_id: seen[lid].append(
            args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy()))
        for m in moe]
    batches = list(make_batches(SEQS, 3))  # [3 padded sequences], [1 sequence]
    try:
        trace = capture_model(model, batches, model_name=family)
    finally:
        for h in hooks:
            h.remove()
    n_tokens = sum(map(len, SEQS))
    assert trace.topk_ids.shape == (n_tokens, len(moe), 2)
    assert trace.layer_ids.tolist() == [m.layer_id for m in moe]
    assert trace.num_experts == 8 and trace.model == family
    assert trace.num_hidden_layers == 3
    # window = batch index: 3 sequences (7 + 3 + 5 tokens) then 1 token
    assert trace.window.tolist() == [0] * 15 + [1]
    valid = np.concatenate([m.reshape(-1).astype(bool) for _, m in batches])
    for j, m in enumerate(moe):
        h = np.concatenate(seen[m.layer_id])[valid]
        ids, w = reference_topk(family, model.config, m.gate, h)
        got_ids, got_w = _sorted_by_id(trace.topk_ids[:, j].astype(np.int64),
                                       trace.topk_weights[:, j])
        want_ids, want_w = _sorted_by_id(ids, w)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_w, want_w, rtol=1e-4, atol=1e-5)


def test_padding_is_not_recorded_and_changes_nothing(models):
    model = models["mixtral"]
    padded = capture_model(model, list(make_batches(SEQS, 4)))
    alone = capture_model(model, list(make_batches(SEQS, 1)))
    assert padded.num_tokens == alone.num_tokens == sum(map(len, SEQS))
    np.testing.assert_array_equal(padded.topk_ids, alone.topk_ids)
    assert alone.num_windows == 4 and padded.num_windows == 1


def test_capture_from_disk_prompts_text_and_ids(saved, tmp_path):
    d = saved["qwen3_moe"]
    prompts = ["w1 w2 w3 w4", "w10 w11", "w50 w51 w52 w53 w54 w55"]
    t1 = capture_routing(d, prompts=prompts, batch_size=2, max_length=5)
    assert t1.num_tokens == 4 + 2 + 5 and t1.num_windows == 2
    assert t1.model == d.name and t1.layer_ids.tolist() == [0, 1, 2]
    # the same tokens as ids give the same routing
    ids = np.full((3, 6), -1)
    for i, p in enumerate(prompts):
        toks = [int(w[1:]) + 4 for w in p.split()][:5]
        ids[i, : len(toks)] = toks
    t2 = capture_routing(d, token_ids=ids, batch_size=2, max_length=5)
    np.testing.assert_array_equal(t1.topk_ids, t2.topk_ids)
    # a text cut into max_length pieces
    t3 = capture_routing(d, text=" ".join(f"w{i}" for i in range(12)), max_length=5,
                         batch_size=8, model_name="qwen-tiny")
    assert t3.num_tokens == 12 and t3.model == "qwen-tiny"
    path = tmp_path / "trace.npz"
    write_native(t3, path)
    back = read_native(path)
    np.testing.assert_array_equal(back.topk_ids, t3.topk_ids)
    assert back.layer_ids.tolist() == [0, 1, 2]


def test_capture_deepseek_v3_from_disk(saved):
    t = capture_routing(saved["deepseek_v3"], token_ids=np.arange(4, 40), max_length=16)
    assert t.layer_ids.tolist() == [1, 2] and t.num_tokens == 36 and t.num_windows == 1
    assert t.num_hidden_layers == 3


def test_capture_errors(saved, tmp_path):
    d = saved["qwen3_moe"]
    with pytest.raises(InputError, match="exactly one"):
        capture_routing(d, prompts=["w1"], text="w2")
    with pytest.raises(InputError, match=r"no config\.json"):
        capture_routing(tmp_path, token_ids=np.arange(4, 8))
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        capture_routing(d, token_ids=np.array([5, 500]))
    with pytest.raises(InputError, match="no tokens"):
        capture_routing(d, token_ids=np.full((2, 3), -1))
    with pytest.raises(InputError, match="no MoE router"):
        dense = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2))
        capture_model(dense, list(make_batches([[5, 6]], 1)))


def test_read_prompts_and_ids(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps("b") + "\n")
    assert read_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    (tmp_path / "p.json").write_text('["one", "", "two"]')
    assert read_prompts(tmp_path / "p.json") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")
    np.save(tmp_path / "ids.npy", np.array([[4, 5, -1]]))
    assert read_token_ids(tmp_path / "ids.npy").tolist() == [[4, 5, -1]]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"not a plain \.npy"):
        read_token_ids(tmp_path / "obj.npy")
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(InputError, match="integer array"):
        read_token_ids(tmp_path / "f.npy")


def test_router_outputs_of_older_transformers():
    """transformers 4.x routers: an nn.Linear gate returns logits only (top-k recomputed as the
    block did); DeepSeek's returns (topk_indices, topk_weights)."""
    from placement.routing_traces.capture import _parse_router_output

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 8, generator=g)
    ids, w = _parse_router_output(logits, 2, renormalise=True)
    p = torch.softmax(logits.double(), -1).numpy()
    want = np.argsort(-p, axis=1)[:, :2]
    np.testing.assert_array_equal(np.sort(ids.numpy(), 1), np.sort(want, 1))
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, rtol=1e-6)
    ids2, w2 = _parse_router_output((ids, w), 2, renormalise=False)
    assert ids2 is ids and w2 is w
    ids3, w3 = _parse_router_output((logits, w, ids), 2, renormalise=False)
    assert ids3 is ids and w3 is w
