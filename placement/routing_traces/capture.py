"""Capture routing from a Hugging Face ``transformers`` MoE model into a token-level trace.

For users without an engine's recorder: load a model from a local directory
(``local_files_only=True``; nothing is downloaded), run it over prompts, a text file or token ids,
and record, for every non-padding token and every MoE layer, the top-k experts the router chose
and their gate weights.

How the choice is read (``transformers`` 5.x source, ``models/*/modeling_*.py``): every supported
family's sparse-MoE block (``MixtralSparseMoeBlock``, ``Qwen2MoeSparseMoeBlock``,
``Qwen3MoeSparseMoeBlock``, ``OlmoeSparseMoeBlock``, ``DeepseekV2Moe``, ``DeepseekV3MoE``) holds
its router as ``.gate`` and its experts as ``.experts``; the router returns
``(router_logits, topk_weights, topk_indices)`` and the block feeds exactly those indices to the
experts, so a forward hook on ``.gate`` records the engine-independent choice itself, including
DeepSeek-V3's sigmoid + ``e_score_correction_bias`` + group-limited top-k. Routers that return an
integer tensor in another position (``transformers`` 4.x ``DeepseekV3TopkRouter`` returns
``(topk_indices, topk_weights)``) are read the same way; routers that return only logits
(``transformers`` 4.x ``nn.Linear`` gates of Mixtral/Qwen/OLMoE) get top-k recomputed as those
blocks do: softmax in float32, ``topk``, renormalised when ``norm_topk_prob`` (always for Mixtral).

Every forward pass sees one batch; the batch index is the token's ``window``. Padding positions
are dropped (``attention_mask == 0``), so the trace holds only real tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from placement._util import Progress
from placement.errors import CapabilityError, InputError
from placement.routing_traces.trace import Trace

__all__ = [
    "INSTALL_HINT",
    "SUPPORTED_FAMILIES",
    "MoELayer",
    "capture_model",
    "capture_routing",
    "find_moe_layers",
    "make_batches",
    "read_prompts",
    "read_token_ids",
    "require_transformers",
]

INSTALL_HINT = "pip install 'placement[capture]'"
SUPPORTED_FAMILIES = "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2, DeepSeek-V3"
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def require_transformers() -> Any:
    """Import ``transformers`` or raise :class:`CapabilityError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise CapabilityError(
            f"capture needs the transformers package: {INSTALL_HINT}"
        ) from None
    return transformers


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: a JSON list of strings, JSONL (objects with ``prompt`` or ``text``, or
    JSON strings) or plain text with one prompt per line. Empty lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc}).") from None
    if text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        if not isinstance(whole, list) or not all(isinstance(p, str) for p in whole):
            raise InputError(f"{path}: expected a JSON list of prompt strings.")
        whole = [p for p in whole if p.strip()]
        if not whole:
            raise InputError(f"{path}: holds no prompts.")
        return whole
    lines = [ln for ln in text.splitlines() if ln.strip()]
    jsonl = path.suffix.lower() in (".jsonl", ".json") or (
        bool(lines) and lines[0].lstrip().startswith(("{", '"'))
    )
    prompts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not jsonl:
            prompts.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg}).") from None
        if isinstance(obj, str):
            prompts.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("prompt", obj.get("text")), str):
            prompts.append(str(obj.get("prompt", obj.get("text"))))
        else:
            raise InputError(f"{path}:{n}: expected a string or an object with \"prompt\".")
    if not prompts:
        raise InputError(f"{path}: holds no prompts.")
    return prompts


def read_token_ids(path: str | Path) -> np.ndarray:
    """Token ids from a ``.npy`` file: ``[N, S]`` sequences (``-1`` = padding) or ``[T]`` one
    stream (cut into ``max_length`` pieces later). Refuses pickled objects."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a plain .npy array ({exc}).") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc}).") from None
    if not isinstance(a, np.ndarray) or a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{path}: expected an integer array of token ids.")
    if a.ndim not in (1, 2) or a.size == 0:
        raise InputError(f"{path}: expected token ids [N, S] or [T], got shape {a.shape}.")
    if a.min() < -1:
        raise InputError(f"{path}: token ids must be >= 0 (-1 for padding).")
    return a.astype(np.int64)


def make_batches(sequences: Sequence[Sequence[int]], batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(input_ids [B, S], attention_mask [B, S])`` batches, padded on the right (pad id 0,
    masked). Right padding keeps every real token's causal context unchanged."""
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        S = max(len(s) for s in chunk)
        ids = np.zeros((len(chunk), S), dtype=np.int64)
        mask = np.zeros((len(chunk), S), dtype=np.int64)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        yield ids, mask


def _split_stream(stream: Sequence[int], max_length: int) -> list[list[int]]:
    return [list(stream[i:i + max_length]) for i in range(0, len(stream), max_length)]


# ---------------------------------------------------------------------------------------------
# the model's MoE layers
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoELayer:
    """One MoE layer of a loaded model.

    Args:
        layer_id: decoder-layer index.
        block: the sparse-MoE module (has ``.gate`` and ``.experts``).
        gate: its router.
        num_experts: routed experts.
    """

    layer_id: int
    block: Any
    gate: Any
    num_experts: int


def _decoder_layers(model: Any) -> Any:
    import torch

    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    if dec is not None and isinstance(getattr(dec, "layers", None), torch.nn.ModuleList):
        return dec.layers
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.split(".")[-1] == "layers":
            if best is None or len(mod) > len(best):
                best = mod
    return best


def find_moe_layers(model: Any) -> list[MoELayer]:
    """Every decoder layer whose MLP is a sparse-MoE block (a child with ``.gate`` and
    ``.experts``), in order. Dense layers (DeepSeek's first ``first_k_dense_replace``, Qwen's
    ``mlp_only_layers``) have no such child and are skipped."""
    layers = _decoder_layers(model)
    if layers is None:
        raise InputError("the model has no decoder layer list (model.layers) to hook.")
    cfg = getattr(model, "config", None)
    out: list[MoELayer] = []
    for i, layer in enumerate(layers):
        for child in layer.children():
            gate = getattr(child, "gate", None)
            if gate is None or getattr(child, "experts", None) is None:
                continue
            w = getattr(gate, "weight", None)
            if w is not None and getattr(w, "ndim", 0) == 2:
                E = int(w.shape[0])
            else:
                E = int(getattr(gate, "num_experts", 0) or _config_experts(cfg))
            out.append(MoELayer(layer_id=i, block=child, gate=gate, num_experts=E))
            break
    return out


def _config_experts(cfg: Any) -> int:
    for name in ("n_routed_experts", "num_local_experts", "num_experts"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return 0


def _top_k(model: Any) -> int:
    k = getattr(getattr(model, "config", None), "num_experts_per_tok", None)
    if not isinstance(k, int) or k < 1:
        raise InputError("the model's config lacks num_experts_per_tok (top-k).")
    return k


def _from_logits(logits: Any, top_k: int, renormalise: bool) -> tuple[Any, Any]:
    """Mixtral/Qwen/OLMoE routing from logits: softmax (float32), top-k, optional renormalise."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        w = w / w.sum(dim=-1, keepdim=True)
    return ids, w


def _parse_router_output(out: Any, top_k: int, renormalise: bool) -> tuple[Any, Any]:
    """``(ids [N, k], weights [N, k])`` from what a router returned."""
    import torch

    tensors = [t for t in (out if isinstance(out, (tuple, list)) else (out,))
               if isinstance(t, torch.Tensor)]
    ids = next((t for t in tensors if not t.is_floating_point() and t.ndim == 2
                and t.shape[-1] == top_k), None)
    if ids is not None:
        w = next((t for t in tensors if t.is_floating_point() and t.shape == ids.shape), None)
        if w is None:
            w = torch.full(ids.shape, float("nan"))
        return ids, w
    logits = next((t for t in tensors if t.is_floating_point()), None)
    if logits is None:
        raise InputError("a router returned neither expert ids nor logits; unsupported model.")
    return _from_logits(logits.reshape(-1, logits.shape[-1]), top_k, renormalise)


# ---------------------------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------------------------
def capture_model(
    model: Any,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    model_name: str | None = None,
    progress: Progress | None = None,
) -> Trace:
    """Run ``model`` over ``(input_ids [B, S], attention_mask [B, S])`` batches and return the
    token-level :class:`Trace`: ``topk_ids [T, L, k]``, ``topk_weights [T, L, k]``,
    ``window [T]`` (batch index), ``layer_ids [L]`` (decoder-layer index of each MoE layer).
    ``progress(batches_done, batches)`` is called after each batch.
    """
    import torch

    moe = find_moe_layers(model)
    if not moe:
        raise InputError(f"no MoE router found in the model (supported: {SUPPORTED_FAMILIES}).")
    Es = {m.num_experts for m in moe}
    if len(Es) != 1:
        raise InputError(f"MoE layers have different expert counts {sorted(Es)}.")
    E = Es.pop()
    k = _top_k(model)
    cfg = model.config
    renorm = bool(getattr(cfg, "norm_topk_prob", getattr(cfg, "model_type", "") == "mixtral"))
    got: dict[int, tuple[Any, Any]] = {}

    def hook(idx: int) -> Any:
        def fn(_module: Any, _inputs: Any, out: Any) -> None:
            got[idx] = _parse_router_output(out, k, renorm)
        return fn

    handles = [m.gate.register_forward_hook(hook(i)) for i, m in enumerate(moe)]
    device = next(model.parameters()).device
    ids_parts: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    win_parts: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for b, (input_ids, mask) in enumerate(batches):
                got.clear()
                model(input_ids=torch.as_tensor(input_ids, device=device),
                      attention_mask=torch.as_tensor(mask, device=device), use_cache=False)
                B, S = input_ids.shape
                valid = mask.reshape(-1).astype(bool)
                layer_ids, layer_w = [], []
                for i, m in enumerate(moe):
                    if i not in got:
                        raise InputError(f"the router of layer {m.layer_id} did not run.")
                    ids_t, w_t = got[i]
                    if ids_t.shape[0] != B * S:
                        raise InputError(
                            f"the router of layer {m.layer_id} saw {ids_t.shape[0]} tokens, "
                            f"expected {B * S}; unsupported model."
                        )
                    layer_ids.append(ids_t.detach().to("cpu", torch.int64).numpy()[valid])
                    layer_w.append(w_t.detach().to("cpu", torch.float32).numpy()[valid])
                ids_parts.append(np.stack(layer_ids, axis=1))
                w_parts.append(np.stack(layer_w, axis=1))
                win_parts.append(np.full(int(valid.sum()), b, dtype=np.int64))
                if progress is not None:
                    progress(b + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
    if not ids_parts or sum(p.shape[0] for p in ids_parts) == 0:
        raise InputError("no tokens to capture (all inputs empty).")
    weights = np.concatenate(w_parts)
    return Trace(
        num_experts=E,
        topk_ids=np.concatenate(ids_parts),
        topk_weights=weights if np.isfinite(weights).all() else None,
        window=np.concatenate(win_parts),
        layer_ids=[m.layer_id for m in moe],
        model=model_name,
        num_hidden_layers=getattr(cfg, "num_hidden_layers", None),
    )


def load_model(model_path: str | Path, *, device: str = "cpu", dtype: str = "auto") -> Any:
    """Load a causal LM from a local directory (never from the network)."""
    transformers = require_transformers()
    import torch

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a local Hugging Face model directory (no config.json); "
                         "capture loads local weights only.")
    if dtype not in _DTYPES:
        raise InputError(f"Expected dtype in {_DTYPES}, got {dtype!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but CUDA is not available.")
    major = int(transformers.__version__.split(".")[0])
    kw: dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype":
                          dtype if dtype == "auto" else getattr(torch, dtype)}
    hf_logging = transformers.utils.logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress bar is the only one on stderr
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, **kw
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot load the model ({first}).") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def load_config(model_path: str | Path) -> Any:
    """The model directory's config (local files only), read before any weights."""
    transformers = require_transformers()
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a local Hugging Face model directory (no config.json); "
                         "capture loads local weights only.")
    try:
        return transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read config.json ({first}).") from None


def load_tokenizer(model_path: str | Path) -> Any:
    """The model directory's tokenizer (local files only)."""
    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(Path(model_path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{model_path}: cannot load a tokenizer ({first}); pass --token-ids instead."
        ) from None


def capture_routing(
    model_path: str | Path,
    *,
    prompts: Sequence[str] | None = None,
    text: str | None = None,
    token_ids: np.ndarray | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    device: str = "cpu",
    dtype: str = "auto",
    model_name: str | None = None,
    progress: Progress | None = None,
) -> Trace:
    """Capture routing from the model in ``model_path`` over exactly one of:

    * ``prompts``: one sequence per prompt (tokenized with special tokens, cut to
      ``max_length``);
    * ``text``: one long text, tokenized once and cut into ``max_length``-token sequences;
    * ``token_ids``: ``[N, S]`` sequences (``-1`` = padding) or a ``[T]`` stream cut into
      ``max_length`` pieces (no tokenizer needed).

    Sequences are batched ``batch_size`` at a time; each batch is one window of the trace.
    """
    if sum(x is not None for x in (prompts, text, token_ids)) != 1:
        raise InputError("Give exactly one of prompts, text or token ids.")
    if batch_size < 1 or max_length < 1:
        raise InputError(f"Expected batch_size >= 1 and max_length >= 1, got {batch_size} and "
                         f"{max_length}.")
    cfg = load_config(model_path)
    seqs: list[list[int]]
    if token_ids is not None:
        a = np.asarray(token_ids, dtype=np.int64)
        if a.ndim == 1:
            seqs = _split_stream(a.tolist(), max_length)
        else:
            seqs = [[int(t) for t in row[row >= 0][:max_length]] for row in a]
    else:
        tok = load_tokenizer(model_path)
        if prompts is not None:
            enc = tok(list(prompts), add_special_tokens=True, truncation=True,
                      max_length=max_length)["input_ids"]
            seqs = [list(map(int, s)) for s in enc]
        else:
            assert text is not None
            stream = tok(text, add_special_tokens=False)["input_ids"]
            seqs = _split_stream(list(map(int, stream)), max_length)
    seqs = [s for s in seqs if s]
    if not seqs:
        raise InputError("no tokens to capture (the inputs are empty).")
    vocab = getattr(cfg, "vocab_size", None)
    top = max(max(s) for s in seqs)
    if isinstance(vocab, int) and top >= vocab:
        raise InputError(f"token id {top} is outside the model's vocabulary ({vocab}).")
    model = load_model(model_path, device=device, dtype=dtype)
    name = model_name if model_name is not None else Path(model_path).resolve().name
    return capture_model(model, list(make_batches(seqs, batch_size)), model_name=name,
                         progress=progress)
