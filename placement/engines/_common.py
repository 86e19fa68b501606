"""Shared pieces of the engine formats: layer specs, the model's layer layout, trivial rows,
checks, the file loaders (no pickle of untrusted data) and :class:`EngineFile`.

Vocabulary as in ``placement.plan``: ``phy2log [L, P]`` is the logical expert of every physical
slot; slot ``p`` lives on EP rank ``p // slots_per_gpu``.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from placement._io import json_loads, read_npz
from placement._util import format_ids, int_array, parse_ids
from placement.errors import EngineFormatError, InputError, PlanError

if TYPE_CHECKING:
    from placement.filekinds import Probe

__all__ = [
    "FILL_CHOICES",
    "Built",
    "EngineFile",
    "ExportRequest",
    "LayerLayout",
    "Usage",
    "check_rows",
    "format_ids",
    "layers_phrase",
    "parse_layer_spec",
    "resolve_layout",
    "trivial_row",
]

FILL_CHOICES: tuple[str, ...] = ("error", "trivial")
"""What to do with an MoE layer the plan does not cover: refuse, or write a trivial row."""

FillMissing = Literal["error", "trivial"]


# ---------------------------------------------------------------------------------------------
# layer ids
# ---------------------------------------------------------------------------------------------
def parse_layer_spec(spec: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """``"3-60,62"`` -> ``(3, 4, ..., 60, 62)``; an iterable of ints is checked and sorted.

    Raises :class:`InputError` on anything else (negative ids, reversed ranges, junk).
    """
    return parse_ids(spec, "layer ids")


def layers_phrase(ids: Iterable[int], noun: str = "layer") -> str:
    """``"layer 3"`` / ``"layers 0-2"`` (``noun`` may be ``"row"``, ``"MoE layer"``...)."""
    vals = sorted(int(i) for i in ids)
    return f"{noun}{'s' if len(vals) != 1 else ''} {format_ids(vals)}"


def _verb(ids: Sequence[int], one: str, many: str) -> str:
    return one if len(ids) == 1 else many


# ---------------------------------------------------------------------------------------------
# the model's layer layout
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerLayout:
    """Which decoder layers get which row in an engine file.

    Args:
        num_hidden_layers: decoder layers of the model (dense ones included), when known.
        planned: decoder-layer ids the plan places (sorted).
        dense: decoder layers without routed experts (sorted; empty when unknown).
        filled: MoE layers the plan does not cover, written with a trivial row (sorted).
        dense_inferred: the dense layers were taken to be the ones below the first planned
            layer (DeepSeek's ``first_k_dense_replace`` pattern) rather than given.
        moe_assumed: the number of decoder layers is unknown, so the plan is assumed to cover
            every MoE layer of the model.
    """

    num_hidden_layers: int | None
    planned: tuple[int, ...]
    dense: tuple[int, ...]
    filled: tuple[int, ...] = ()
    dense_inferred: bool = False
    moe_assumed: bool = False

    @property
    def moe(self) -> tuple[int, ...]:
        """Every MoE layer the file must hold (planned and filled), sorted."""
        return tuple(sorted(self.planned + self.filled))

    def notes(self, trivial: str, dense_rows: bool = False) -> list[str]:
        """Lines that say what was assumed or filled (``trivial`` names the trivial row;
        ``dense_rows``: the file has rows for the dense layers too, written as ``trivial``)."""
        out: list[str] = []
        written = f", written as {trivial}" if dense_rows else ""
        if self.dense_inferred and self.dense:
            out.append(
                f"{layers_phrase(self.dense)} {_verb(self.dense, 'is', 'are')} below the first "
                f"planned layer {self.planned[0]}: taken as dense{written} (pass --dense-layers "
                "to say otherwise)"
            )
        elif dense_rows and self.dense:
            out.append(f"dense {layers_phrase(self.dense)}{written}")
        if self.filled:
            out.append(f"{layers_phrase(self.filled, 'MoE layer')} "
                       f"{_verb(self.filled, 'is', 'are')} not in the plan: "
                       f"filled with {trivial}")
        if self.moe_assumed:
            out.append("the number of decoder layers is unknown: assuming the plan covers every "
                       "MoE layer of the model (pass --num-hidden-layers to check)")
        return out


def resolve_layout(
    layer_ids: Sequence[int] | np.ndarray,
    *,
    num_hidden_layers: int | None,
    dense_layers: Sequence[int] | None,
    fill_missing: str = "error",
    need_num_hidden_layers: bool = False,
    fmt: str = "",
) -> LayerLayout:
    """Work out the model's layers from a plan's ``layer_ids [L]`` and what the user said.

    Rules (the same for every format):

    1. Dense layers are ``dense_layers`` when given, else the decoder layers below the first
       planned layer (DeepSeek-V3: 0-2), else none.
    2. With ``num_hidden_layers`` known, every decoder layer that is neither planned nor dense is
       an MoE layer the plan misses: an error, unless ``fill_missing="trivial"``.
    3. Without it, the plan is taken to cover every MoE layer, except where the format needs one
       row per decoder layer (``need_num_hidden_layers``): then a plan whose layers are exactly
       ``0..L-1`` (or together with the given dense layers ``0..n-1``) defines it, and anything
       else is an error naming ``--num-hidden-layers``.
    """
    if fill_missing not in FILL_CHOICES:
        raise InputError(f"Expected fill_missing in {FILL_CHOICES}, got {fill_missing!r}.")
    planned = tuple(sorted(int(i) for i in np.asarray(layer_ids).reshape(-1)))
    if not planned:
        raise PlanError("the plan has no layers to export.")
    what = f"{fmt} " if fmt else ""
    dense = tuple(sorted(int(i) for i in dense_layers)) if dense_layers is not None else None
    if dense is not None:
        both = sorted(set(dense) & set(planned))
        if both:
            raise PlanError(f"{layers_phrase(both)} {_verb(both, 'is', 'are')} declared dense "
                            "but the plan places experts there.")
    nhl = None if num_hidden_layers is None else int(num_hidden_layers)
    if nhl is not None and nhl <= planned[-1]:
        raise PlanError(f"num_hidden_layers={nhl} but the plan has layer {planned[-1]}.")
    if nhl is None and need_num_hidden_layers:
        known = set(planned) | set(dense or ())
        if known == set(range(len(known))):
            nhl = len(known)
        else:
            raise PlanError(
                f"the {what}file needs one row per decoder layer (dense layers included), but "
                f"the plan does not say how many decoder layers the model has and its layers "
                f"({format_ids(planned)}) are not 0..{len(planned) - 1}: pass "
                "--num-hidden-layers N."
            )
    inferred = False
    if dense is None:
        dense = tuple(range(planned[0]))
        inferred = bool(dense)
    if nhl is None:
        return LayerLayout(None, planned, dense, (), inferred, True)
    beyond = [d for d in dense if d >= nhl]
    if beyond:
        raise PlanError(f"dense {layers_phrase(beyond)} beyond num_hidden_layers={nhl}.")
    missing = tuple(sorted(set(range(nhl)) - set(planned) - set(dense)))
    if missing and fill_missing != "trivial":
        raise PlanError(
            f"the plan has no placement for decoder {layers_phrase(missing)} of {nhl}, "
            "not declared dense: pass --dense-layers if they have no routed experts, or "
            "--fill-missing trivial to give them the engine's default placement."
        )
    return LayerLayout(nhl, planned, dense, missing, inferred, False)


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def trivial_row(num_slots: int, num_experts: int) -> np.ndarray:
    """``[P]`` SGLang's trivial placement ``arange(P) % E`` (``init_trivial``)."""
    return np.arange(num_slots, dtype=np.int64) % num_experts


def check_rows(rows: np.ndarray, num_experts: int, num_gpus: int, labels: Sequence[int],
               what: str) -> None:
    """Check ``rows [R, P]`` before writing: integers in ``[0, E)``, every expert present in
    every row, ``P`` divisible by the EP size. ``labels`` name the rows in messages."""
    if rows.ndim != 2 or rows.shape[0] != len(labels):
        raise PlanError(f"{what}: expected {len(labels)} rows, got shape {rows.shape}.")
    R, P = rows.shape
    if P % num_gpus:
        raise PlanError(f"{what}: {P} slots are not divisible by the EP size {num_gpus}.")
    if P < num_experts:
        raise PlanError(f"{what}: {P} slots cannot hold {num_experts} experts.")
    if rows.size and (rows.min() < 0 or rows.max() >= num_experts):
        raise PlanError(f"{what}: expert ids outside [0, {num_experts}).")
    flat = rows.astype(np.int64) + (np.arange(R, dtype=np.int64) * num_experts)[:, None]
    cnt = np.bincount(flat.reshape(-1), minlength=R * num_experts).reshape(R, num_experts)
    missing = np.argwhere(cnt == 0)
    if missing.size:
        r, e = missing[0]
        raise PlanError(f"{what}: expert {e} has no slot in layer {labels[r]}.")


# ---------------------------------------------------------------------------------------------
# what an engine file holds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineFile:
    """The placement an engine file holds, before it is tied to a cluster and a model.

    Args:
        path: the file.
        fmt: one of :data:`FORMATS`.
        phy2log: ``[R, P]`` logical expert of every physical slot, one row per file row.
        row_layer_ids: ``[R]`` decoder-layer id of every row where the file says (TensorRT-LLM
            keys, SGLang row numbers, EPLB ``layer_ids``); None where rows are MoE-layer
            indices only (vLLM-Ascend).
        all_decoder_layers: the rows are every decoder layer, dense ones included (SGLang).
        num_experts: E where the file says.
        num_devices: EP size where the file says (vLLM-Ascend ``device_count``, EPLB files).
        num_nodes: nodes where the file says (EPLB files written by ``placement``).
        num_hidden_layers: decoder layers where the file says.
        mtp_layers: rows that belong to MTP (draft) layers, where the file says.
        may_hold_mtp: rows are keyed by decoder-layer id and may include MTP layers, which an
            import leaves out (TensorRT-LLM).
        model: model name where the file says.
        notes: what the reader noticed.
    """

    path: Path
    fmt: str
    phy2log: np.ndarray
    row_layer_ids: np.ndarray | None
    all_decoder_layers: bool = False
    num_experts: int | None = None
    num_devices: int | None = None
    num_nodes: int | None = None
    num_hidden_layers: int | None = None
    mtp_layers: tuple[int, ...] = ()
    may_hold_mtp: bool = False
    model: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_slots(self) -> int:
        """P, physical slots per layer."""
        return int(self.phy2log.shape[1])


@dataclass(frozen=True)
class ExportRequest:
    """What the user asked of an export, checked and completed by
    :func:`placement.engines.export_plan` before a format builds its file.

    Args:
        num_hidden_layers: decoder layers of the model (given, the plan's, or its model
            preset's), or None when unknown.
        dense_layers: decoder layers without routed experts, or None (the layers below the
            first planned one).
        fill_missing: ``"error"`` or ``"trivial"``: MoE layers the plan does not cover.
        mtp_layers: MTP layer ids that need an assignment (formats with ``"mtp_layers"`` in
            their ``options``).
        mtp_copy_from: the layer MTP layers copy (default: the last planned one).
    """

    num_hidden_layers: int | None = None
    dense_layers: tuple[int, ...] | None = None
    fill_missing: str = "error"
    mtp_layers: tuple[int, ...] = ()
    mtp_copy_from: int | None = None

    @property
    def layout_kw(self) -> dict[str, Any]:
        """The keyword arguments of :func:`resolve_layout` and the ``build_*`` functions."""
        return dict(num_hidden_layers=self.num_hidden_layers, dense_layers=self.dense_layers,
                    fill_missing=self.fill_missing)


@dataclass(frozen=True)
class Built:
    """An engine file in memory, before it is checked and written.

    Args:
        obj: what the format writes (a dict of arrays, a config dict...).
        description: one line saying what the file holds.
        layer_ids: the layer label of every row in the file.
        notes: what was assumed or filled in.
        meta: extra facts the writer may record (TensorRT-LLM's ``# placement:`` line).
        warnings: what the engine will trip on with this file as asked for (printed as
            ``warning:`` lines, before the usage's).
    """

    obj: Any
    description: str
    layer_ids: tuple[int, ...]
    notes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    """How to use a written file: lines to print, and what would undo the placement."""

    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def int_rows(path: Path, name: str, value: Any, ndim: int = 2) -> np.ndarray:
    """``value`` as an int64 array of ``ndim`` dimensions (whole floats accepted), or
    :class:`EngineFormatError`."""
    return int_array(value, name, ndim, error=EngineFormatError, path=path, whole_floats=True,
                     allow_empty=False).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# loaders: JSON, YAML, torch (weights_only), npz (allow_pickle=False)
# ---------------------------------------------------------------------------------------------
Container = Literal["json", "yaml", "torch", "npz"]


def load_container(path: Path, probe: Probe | None = None) -> tuple[Container, Any, str]:
    """Read ``path`` once and say what it is: ``(container, data, text)``.

    ``.pt`` files load with ``torch.load(weights_only=True)`` (tensors, lists, dicts only),
    ``.npz`` with ``allow_pickle=False``; text is JSON, else YAML (``yaml.safe_load``).
    ``text`` is the file's text for JSON/YAML (empty otherwise). A ``probe`` of the file lends
    the bytes and parsed JSON it has read already.
    """
    if probe is not None and probe.container == "json":
        from placement.filekinds import INVALID

        if probe.json is not INVALID and probe.text is not None:
            return "json", probe.json, probe.text
    try:
        raw = probe.raw if probe is not None and probe.raw else path.read_bytes()
    except FileNotFoundError:
        raise EngineFormatError("no such file.", path) from None
    except IsADirectoryError:
        raise EngineFormatError("is a directory, not an engine file.", path) from None
    except OSError as exc:
        raise EngineFormatError(f"cannot read ({exc.strerror or exc}).", path) from None
    if not raw.strip():
        raise EngineFormatError("is empty.", path)
    if raw[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        except zipfile.BadZipFile as exc:
            raise EngineFormatError(f"a broken zip archive ({exc}).", path) from None
        if any(n.endswith(".npy") for n in names):
            return "npz", read_npz(path, EngineFormatError, raw), ""
        return "torch", _load_torch(path, raw), ""
    if raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
        # a bare pickle stream (legacy torch.save or pickle.dump): try torch's safe loader
        return "torch", _load_torch(path, raw), ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineFormatError(
            "is neither text (JSON/YAML) nor a .pt/.npz archive.", path
        ) from None
    try:
        return "json", json_loads(text), text
    except json.JSONDecodeError as jexc:
        if jexc.msg == "nested too deeply":
            raise EngineFormatError("not valid JSON (nested too deeply).", path) from None
        import yaml

        try:
            data = yaml.load(text, Loader=safe_yaml_loader())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON or YAML"
            detail = getattr(exc, "problem", None) or jexc.msg
            raise EngineFormatError(f"not valid {kind}{where} ({detail}).", path) from None
        return "yaml", data, text


def safe_yaml_loader() -> Any:
    """``yaml.CSafeLoader`` where libyaml is built in, else ``yaml.SafeLoader`` (same rules as
    ``yaml.safe_load``, faster)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_torch(path: Path, raw: bytes) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise EngineFormatError(
            "holds pickled Python objects beyond tensors, lists and dicts; refusing to load "
            f"them (torch.load weights_only=True){': ' + first if first else ''}", path
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise EngineFormatError(f"not a readable .pt file ({exc}).", path) from None


def to_numpy(value: Any) -> Any:
    """Tensors (and tensors inside dicts/lists) to numpy arrays; other values unchanged."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_numpy(v) for v in value]
    return value


def scalar_int(path: Path, name: str, value: Any) -> int:
    """An integer scalar (plain, 0-d array or tensor), or :class:`EngineFormatError`."""
    a = np.asarray(to_numpy(value))
    if a.ndim != 0 or not (np.issubdtype(a.dtype, np.integer) and a.dtype != bool):
        raise EngineFormatError(f"{name} must be an integer scalar, got {value!r}.", path)
    return int(a)
