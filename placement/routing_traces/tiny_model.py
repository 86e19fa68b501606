"""A tiny random Qwen3-MoE to try ``placement capture`` on, without downloading a model.

``placement capture --make-tiny-model DIR`` writes it (weights, config and a word-level
tokenizer) with :func:`make_tiny_model`: 3 decoder layers, all MoE, 8 experts, top-2, hidden size
32, random weights (seeded, so the same files every time). Its tokenizer knows the words ``w0``
... ``w95`` (anything else is ``[UNK]``). Routing from random weights says nothing about a real
model: it is for seeing the capture pipeline work end to end. Needs the ``capture`` extra.
"""

from __future__ import annotations

from pathlib import Path

from placement.routing_traces.capture import require_transformers

__all__ = ["TINY_MODEL", "make_tiny_model"]

TINY_MODEL = {
    "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_experts": 8,
    "num_experts_per_tok": 2, "moe_intermediate_size": 16, "pad_token_id": 0,
    "bos_token_id": 2, "eos_token_id": 3,
}
"""The tiny model's ``Qwen3MoeConfig``."""


def make_tiny_model(path: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny random Qwen3-MoE (see the module docstring) into directory ``path``
    (created; files in it are overwritten) and return it."""
    transformers = require_transformers()
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers.utils import logging as hf_logging

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = transformers.Qwen3MoeConfig(**TINY_MODEL)
    torch.manual_seed(seed)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 1-shard model
    try:
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    vocab.update({f"w{i}": i + 4 for i in range(TINY_MODEL["vocab_size"] - 4)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                         pad_token="[PAD]").save_pretrained(out)
    return out
